"""SIGKILL the server while it trains, restart it, and check every turn was trained exactly once."""
from __future__ import annotations

import os
import signal
import sqlite3
import time
from pathlib import Path

import anyio
import pytest

from mcp_servers import call, connect, served

pytestmark = pytest.mark.anyio
GROUPS = 6  # prompts, each answered twice with rewards +1 and -1


def db_rows(home: Path, sql: str) -> list[tuple]:
    con = sqlite3.connect(f"file:{home / 'metaclaw.db'}?mode=ro", uri=True, timeout=10)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def tiny_model(tmp_path: Path) -> Path:
    pytest.importorskip("torch")
    pytest.importorskip("peft")
    from tiny_models import make_tiny_llama

    return make_tiny_llama(tmp_path / "tiny-llama", hidden=64)


async def report_and_kill(home: Path, env: dict[str, str]) -> None:
    """Report and rate 2 x GROUPS turns, then SIGKILL the server as soon as training begins."""
    with served(home, "http", **env) as (port, proc):
        async with connect("http", home, port, "auto") as client:
            for g in range(GROUPS):
                for k, reward in enumerate((1.0, -1.0)):
                    err, rep = await call(client, "report_turn", {
                        "session_id": f"g{g}", "messages": [{"role": "user", "content": f"question {g}"}],
                        "response": f"answer {k}", "idempotency_key": f"{g}-{k}",
                        "tokens": {"prompt_ids": [1, 100 + g, 2], "completion_ids": [300 + 10 * g + k, 2],
                                   "logprobs": [-1.0, -0.5]}})
                    assert not err, rep
                    err, _ = await call(client, "rate_turn", {"turn_id": rep["turn_id"], "score": reward, "source": "env"})
                    assert not err
        # kill the moment a batch is claimed but not yet committed (or as soon as training has begun)
        with anyio.fail_after(60):
            while not db_rows(home, "SELECT 1 FROM batches WHERE state = 'claimed' "
                                    "UNION ALL SELECT 1 FROM train_steps LIMIT 1"):
                await anyio.sleep(0.002)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)

@pytest.mark.parametrize("backend", ["export", "local"])
async def test_sigkill_during_training_then_restart_trains_each_turn_once(tmp_path, backend):
    env = {"METACLAW_BATCH_SIZE": "2", "METACLAW_BACKEND": backend, "METACLAW_LOAD_STARTER_SKILLS": "false"}
    if backend == "local":
        model = tiny_model(tmp_path)
        env |= {"METACLAW_LOCAL_MODEL_PATH": str(model), "METACLAW_TOKENIZER_PATH": str(model)}
    # The kill must land while training is under way; the export backend is so fast that it
    # sometimes finishes every batch first. Then the run proves nothing: start over on a new home.
    for attempt in range(4):
        home = tmp_path / f"home{attempt}"
        await report_and_kill(home, env)
        if db_rows(home, "SELECT COUNT(*) FROM turns WHERE train_state IN ('pending', 'rated', 'claimed')")[0][0]:
            break
    else:
        pytest.fail("the kill never landed before training finished, in 4 attempts")
    interrupted = db_rows(home, "SELECT id FROM batches WHERE state = 'claimed'")
    trained_before = db_rows(home, "SELECT COUNT(*) FROM train_steps")[0][0]
    with served(home, "http", **env):
        deadline = time.time() + 120
        while db_rows(home, "SELECT COUNT(*) FROM turns WHERE train_state IN ('pending', 'rated', 'claimed')")[0][0]:
            assert time.time() < deadline, "training did not finish after the restart"
            await anyio.sleep(0.2)
    states = db_rows(home, "SELECT train_state, COUNT(*) FROM turns GROUP BY train_state")
    assert states == [("trained", 2 * GROUPS)]
    batches = db_rows(home, "SELECT id, state FROM batches ORDER BY id")
    steps = db_rows(home, "SELECT batch_id, n_datums FROM train_steps ORDER BY step")
    assert all(state == "trained" for _, state in batches)
    assert sorted(b for b, _ in steps) == [b for b, _ in batches]  # one step per batch, none twice
    assert sum(n for _, n in steps) == 2 * GROUPS                     # each turn in exactly one step
    per_turn = db_rows(home, "SELECT COUNT(DISTINCT batch_id), COUNT(*) FROM turns")
    assert per_turn == [(len(batches), 2 * GROUPS)]
    for (batch_id,) in interrupted:  # the batch cut off by the kill was trained once, after the restart
        assert [b for b, _ in steps].count(batch_id) == 1
    if backend == "export":
        lines = [line for f in (home / "exports").glob("batch-*.jsonl") for line in f.read_text().splitlines()]
        assert len(lines) == 2 * GROUPS == len(set(lines))
    assert trained_before < len(steps)
