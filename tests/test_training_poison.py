"""A turn or a batch that cannot be trained never stops training for the others.

Everything is real here: the SQLite store, the app and its trainer, the planning code, the
export backend and the packaged SmolLM2 tokenizer; only the Tinker service, which this machine
cannot reach, is the stand-in of tests/test_tinker_backend.py. Old rows are written with SQL,
the way a version that accepted any token id would have stored them.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import anyio
import pytest

from metaclaw_mcp.app import open_app
from metaclaw_mcp.config import load_config
from metaclaw_mcp.models import Message, TokenData
from metaclaw_mcp.training import Trainer
from metaclaw_mcp.training.tinker_backend import TinkerBackend
from test_tinker_backend import StandInService  # the stand-in for the Tinker service this machine cannot reach

pytestmark = pytest.mark.anyio

TOKENIZER_DIR = Path(__file__).parent / "data" / "smollm2-tokenizer"
HUGE = 2 ** 70


@pytest.fixture(scope="module")
def no_template(tmp_path_factory) -> Path:
    """The packaged tokenizer without its chat template: it loads, but cannot render a conversation."""
    folder = tmp_path_factory.mktemp("no-template")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(TOKENIZER_DIR / name, folder / name)
    return folder


async def claim_a_distillation_batch(home: Path) -> list[str]:
    """Two text-only turns, claimed as one batch by a process whose tokenizer works, which then stops."""
    async with open_app(load_config(home=home, batch_size=2, load_starter_skills=False,
                                    tokenizer_path=str(TOKENIZER_DIR))) as app:
        ids = await text_turns(app, 2, "hi")
        assert await app.trainer.claim() is not None
    return ids


async def rl_turns(app, prompt: list[int], rewards: list[float]) -> list[str]:
    ids = []
    for i, r in enumerate(rewards):
        rep = await app.report_turn(f"s{prompt[0]}", [Message(role="user", content=f"q{prompt}{i}")], f"a{i}",
                                    tokens=TokenData(prompt_ids=prompt, completion_ids=[40 + i, 41],
                                                     logprobs=[-0.2, -0.3]))
        await app.rate_turn(rep.turn_id, r, "env")
        ids.append(rep.turn_id)
    return ids


async def text_turns(app, n: int, tag: str) -> list[str]:
    ids = []
    for i in range(n):
        rep = await app.report_turn("t", [Message(role="user", content=f"say {tag} {i}")], f"{tag} {i}!")
        await app.rate_turn(rep.turn_id, 1.0)
        ids.append(rep.turn_id)
    return ids


async def store_as_an_old_version_did(app, turn_ids: list[str], **columns: str) -> None:
    """Overwrite stored columns with text no current report_turn would write."""
    sets = ", ".join(f"{c} = ?" for c in columns)
    async with app.db.transaction() as db:
        await db.executemany(f"UPDATE turns SET {sets} WHERE id = ?", [(*columns.values(), t) for t in turn_ids])


async def states(app, ids: list[str]) -> list[str]:
    return [(await outcome(app, t))["train_state"] for t in ids]


async def outcome(app, turn_id: str) -> dict:
    """The turn's training state and skip reason, read from the store (its other columns may be unreadable)."""
    return dict(await app.db.fetchone("SELECT train_state, skip_reason FROM turns WHERE id = ?", (turn_id,)))


async def run_trainer_until(trainer, done, seconds: float = 20.0) -> None:
    """The trainer's own background loop, as the server runs it, until `done()` holds (or the time is up)."""
    async with anyio.create_task_group() as tg:
        tg.start_soon(trainer.run)
        with anyio.move_on_after(seconds):
            while not await done():
                await anyio.sleep(0.02)
        tg.cancel_scope.cancel()


def loud_records(caplog) -> list[logging.LogRecord]:
    """Records at WARNING or above that carry a traceback, or ERROR and above at all."""
    return [r for r in caplog.records if r.levelno >= logging.ERROR or (r.levelno >= logging.WARNING and r.exc_info)]


def exported_rows(config) -> list[dict]:
    return [json.loads(line) for f in sorted(config.exports_dir.glob("batch-*.jsonl"))
            for line in f.read_text().splitlines()]


def trainer_for(app, config, backend: str, service: StandInService):
    """The app's own trainer (export), or one on the Tinker backend over the stand-in service."""
    if backend == "export":
        return app.trainer
    return Trainer(app.db, config, TinkerBackend(config, service_factory=lambda: service))


@pytest.mark.parametrize("backend", ["export", "tinker"])
async def test_a_turn_with_an_out_of_range_token_id_is_skipped_and_the_rest_train_across_a_restart(
        tmp_path, caplog, backend):
    caplog.set_level(logging.INFO, logger="metaclaw_mcp")
    tinker_cfg = {"backend": "tinker", "tinker_api_key": "tml-test-key", "model_name": "Qwen/Qwen3-4B"}
    config = load_config(home=tmp_path / "home", batch_size=4, load_starter_skills=False, max_batch_attempts=2,
                         batch_retry_base_seconds=0.001, train_poll_seconds=0.05, batch_max_wait_seconds=0,
                         **(tinker_cfg if backend == "tinker" else {}))
    service = StandInService()
    async with open_app(config) as app:
        poison = await rl_turns(app, [1, 2], [1.0, -1.0])
        await store_as_an_old_version_did(app, poison, prompt_ids=json.dumps([1, HUGE]))
        good = await rl_turns(app, [5, 6, 7], [1.0, -1.0])
        # claimed together, as the old trainer did just before it wedged on them
        assert await trainer_for(app, config, backend, service).claim() is not None
    later: list[str] = []
    async with open_app(config) as app:  # a restart
        later += await rl_turns(app, [8, 9], [0.5, -0.5])
        trainer = trainer_for(app, config, backend, service)

        async def later_trained() -> bool:
            return await states(app, later) == ["trained", "trained"]
        await run_trainer_until(trainer, later_trained)

        assert await states(app, good) == ["trained", "trained"]
        assert await states(app, later) == ["trained", "trained"]
        for t in poison:
            turn = await outcome(app, t)
            assert turn["train_state"] == "skipped"
            assert "prompt_ids[1]" in turn["skip_reason"] and "not a token id" in turn["skip_reason"]
        assert await app.db.scalar("SELECT COUNT(*) FROM batches WHERE state != 'trained'") == 0
        assert (await trainer.status())["last_error"] is None
    if backend == "export":
        sent = [[r["model_input"] for r in exported_rows(config)]]
    else:
        sent = service.trained_batches
    inputs = [ids for batch in sent for ids in batch]
    assert len(inputs) == 4 and all(HUGE not in ids for ids in inputs)
    assert loud_records(caplog) == []


async def test_old_rows_that_cannot_become_datums_are_skipped_one_by_one(tmp_path):
    config = load_config(home=tmp_path / "home", batch_size=16, load_starter_skills=False,
                         tokenizer_path=str(TOKENIZER_DIR))
    bad = {  # column -> stored text -> what the reason names
        "negative": ({"prompt_ids": "[1, -3]"}, "prompt_ids[1]"),
        "float": ({"prompt_ids": "[1, 2.5]"}, "prompt_ids[1]"),
        "bool": ({"completion_ids": "[true, 2]"}, "completion_ids[0]"),
        "huge completion": ({"completion_ids": json.dumps([3, 10 ** 30])}, "completion_ids[1]"),
        "not a list": ({"prompt_ids": '"1 2 3"'}, "prompt_ids"),
        "not json": ({"prompt_ids": "[1, 2"}, "not valid JSON"),
        "bad logprob": ({"logprobs": '["x", -0.1]'}, "logprobs[0]"),
    }
    async with open_app(config) as app:
        good = await rl_turns(app, [5, 6, 7], [1.0, -1.0])
        broken: dict[str, list[str]] = {}
        for n, (name, (columns, _)) in enumerate(bad.items()):
            broken[name] = await rl_turns(app, [100 + n, 1], [1.0, -1.0])
            await store_as_an_old_version_did(app, broken[name], **columns)
        assert await app.trainer.once(force=True) is True
        assert await states(app, good) == ["trained", "trained"]
        for name, (_, named) in bad.items():
            for t in broken[name]:
                turn = await outcome(app, t)
                assert turn["train_state"] == "skipped", name
                assert named in turn["skip_reason"], (name, turn["skip_reason"])

        fine = await text_turns(app, 2, "hi")
        unreadable = await text_turns(app, 1, "no")
        await store_as_an_old_version_did(app, unreadable, messages='{"role": "user"')
        not_messages = await text_turns(app, 1, "odd")
        await store_as_an_old_version_did(app, not_messages, messages='[1, 2]')
        assert await app.trainer.once(force=True) is True
        assert await states(app, fine) == ["trained", "trained"]
        assert "not valid JSON" in (await outcome(app, unreadable[0]))["skip_reason"]
        odd = await outcome(app, not_messages[0])
        assert odd["train_state"] == "skipped" and "cannot be rendered" in odd["skip_reason"]
        assert await app.db.scalar("SELECT COUNT(*) FROM batches WHERE state != 'trained'") == 0


async def test_a_batch_that_cannot_be_planned_is_skipped_after_max_batch_attempts_and_the_rest_go_on(
        tmp_path, caplog, no_template):
    caplog.set_level(logging.INFO, logger="metaclaw_mcp")
    home = tmp_path / "home"
    distill = await claim_a_distillation_batch(home)
    # The restart trains on Tinker (which needs token datums, unlike an export) with a tokenizer that has
    # no chat template: that batch cannot be planned.
    config = load_config(home=home, batch_size=2, load_starter_skills=False, tokenizer_path=str(no_template),
                         max_batch_attempts=2, batch_retry_base_seconds=0.001, train_poll_seconds=0.05,
                         backend="tinker", tinker_api_key="tml-test-key", model_name="Qwen/Qwen3-4B")
    service = StandInService()
    async with open_app(config) as app:
        rl = await rl_turns(app, [5, 6], [1.0, -1.0])
        trainer = trainer_for(app, config, "tinker", service)

        async def rl_trained() -> bool:
            return await states(app, rl) == ["trained", "trained"]
        await run_trainer_until(trainer, rl_trained)

        assert await states(app, rl) == ["trained", "trained"]
        batch = await app.db.fetchone("SELECT state, attempts, last_error FROM batches WHERE kind = 'distill'")
        assert (batch["state"], batch["attempts"]) == ("failed", 2) and "chat template" in batch["last_error"]
        for t in distill:
            turn = await outcome(app, t)
            assert turn["train_state"] == "skipped"
            assert "failed 2 times" in turn["skip_reason"] and "chat template" in turn["skip_reason"]
        status = await trainer.status()
        assert "chat template" in status["distillation"]
        assert status["failed_batches"] == 1 and "chat template" in status["last_failed_batch"]["error"]
        # new text-only turns wait for a usable tokenizer instead of failing batch after batch
        waiting = await text_turns(app, 2, "later")
        assert await trainer.once(force=True) is False
        assert await states(app, waiting) == ["rated", "rated"]
    failures = [r for r in caplog.records if r.levelno == logging.WARNING and "cannot be planned" in r.getMessage()]
    assert len(failures) == 2 and all(r.exc_info is None for r in failures)
    assert loud_records(caplog) == []
    async with open_app(config) as app:  # the reason outlives the process that saw it
        status = await app.trainer.status()
        assert status["last_failed_batch"]["attempts"] == 2 and "chat template" in status["last_failed_batch"]["error"]


async def test_once_reports_a_failed_attempt_as_one_clear_error(tmp_path, no_template):
    from metaclaw_mcp.errors import MetaClawError
    from metaclaw_mcp.training import BatchFailed
    home = tmp_path / "home"
    await claim_a_distillation_batch(home)
    config = load_config(home=home, batch_size=2, load_starter_skills=False, max_batch_attempts=2,
                         tokenizer_path=str(no_template), backend="tinker", tinker_api_key="tml-test-key",
                         model_name="Qwen/Qwen3-4B")
    async with open_app(config) as app:
        trainer = trainer_for(app, config, "tinker", StandInService())
        with pytest.raises(BatchFailed, match=r"batch 1 cannot be planned \(attempt 1 of 2\): .*chat template") as caught:
            await trainer.once()
        assert isinstance(caught.value, MetaClawError) and caught.value.retry_in > 0
        with pytest.raises(BatchFailed, match=r"attempt 2 of 2.*its 2 turns are skipped") as caught:
            await trainer.once()
        assert caught.value.retry_in is None
        assert await trainer.once() is False


async def test_an_export_writes_text_only_turns_as_conversations_even_without_a_tokenizer(tmp_path, no_template):
    """The export needs no tokenizer for distillation: the claimed batch becomes chat-format lines."""
    home = tmp_path / "home"
    distill = await claim_a_distillation_batch(home)
    config = load_config(home=home, batch_size=2, load_starter_skills=False, tokenizer_path=str(no_template))
    async with open_app(config) as app:
        assert await app.trainer.once() is True
        assert await states(app, distill) == ["trained", "trained"]
        rows = [json.loads(line) for f in sorted((config.exports_dir / "conversations").glob("*.jsonl"))
                for line in f.read_text().splitlines()]
        assert [r["turn_id"] for r in rows] == distill
        assert rows[0]["messages"] == [{"role": "user", "content": "say hi 0"}, {"role": "assistant", "content": "hi 0!"}]
        assert rows[0]["reward"] == 1.0
        assert exported_rows(config) == []   # no token datums without a usable tokenizer
        assert "chat template" in (await app.trainer.status())["distillation"]
