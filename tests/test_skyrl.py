"""The whole weights loop against a real Tinker-API server: SkyRL's (JAX on CPU, tests/skyrl_harness.py) on a
tiny randomly initialised Llama with SmolLM2's real tokenizer, and the real `metaclaw-mcp serve --transport
http` on its `tinker` backend, driven only through its public faces: `/v1` over HTTP, `rate_turn` and the
`metaclaw://status` resource over MCP, and its SQLite file read read-only.

Skipped (with the reason) when SkyRL's venv cannot be built here, or with METACLAW_SKIP_SKYRL=1;
METACLAW_REQUIRE_SKYRL=1 (CI) makes that a failure instead. `pytest -s` prints the step and swap times."""
from __future__ import annotations

import json
import math
import os
import time
from datetime import datetime
from pathlib import Path

import anyio
import httpx
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from mcp import Client  # noqa: E402

import skyrl_harness  # noqa: E402
from metaclaw_mcp.config import load_config  # noqa: E402
from metaclaw_mcp.policy import tinker_policy  # noqa: E402
from metaclaw_mcp.training.render import load_tokenizer  # noqa: E402
from mcp_servers import call, served, turn_row  # noqa: E402
from tiny_models import TOKENIZER_DIR, make_tiny_llama  # noqa: E402

pytestmark = pytest.mark.anyio

LORA_RANK = 8          # <= the server's max_lora_rank (16)
STEP_TIMEOUT = 900.0   # the first forward_backward and sample compile under JAX; a loaded CPU is slow


def _unavailable(reason: str) -> None:
    if os.environ.get("METACLAW_REQUIRE_SKYRL") == "1":
        pytest.fail(f"METACLAW_REQUIRE_SKYRL=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def skyrl(tmp_path_factory):
    """(the SkyRL server, the model folder it was started with)."""
    if os.environ.get("METACLAW_SKIP_SKYRL") == "1":
        _unavailable("METACLAW_SKIP_SKYRL=1: the SkyRL Tinker-API server is not run")
    try:
        skyrl_harness.ensure_venv()
    except (skyrl_harness.SkyRLUnavailable, OSError, PermissionError) as exc:
        _unavailable(f"no SkyRL venv ({skyrl_harness.venv_dir()}): {exc}")
    work = tmp_path_factory.mktemp("skyrl")
    model = make_tiny_llama(work / "tiny-llama")
    t0 = time.monotonic()
    with skyrl_harness.skyrl_server(model, work / "server", max_lora_rank=16) as server:
        print(f"\n[skyrl] server ready in {time.monotonic() - t0:.1f}s at {server.base_url}")
        yield server, model


def product_env(server: skyrl_harness.SkyRLServer, model: Path) -> dict[str, str]:
    return {"METACLAW_BACKEND": "tinker", "TINKER_BASE_URL": server.base_url, "TINKER_API_KEY": "tml-anything",
            "METACLAW_MODEL_NAME": str(model), "METACLAW_TOKENIZER_PATH": str(model),
            "METACLAW_SAVE_EVERY": "1", "METACLAW_BATCH_SIZE": "4", "METACLAW_LORA_RANK": str(LORA_RANK),
            "METACLAW_LOAD_STARTER_SKILLS": "false", "METACLAW_RETRIEVAL_MODE": "lexical",
            "METACLAW_POLICY_INJECT_SKILLS": "false", "METACLAW_TRAIN_POLL_SECONDS": "0.5"}


def assert_recorded_with_tokens(home: Path, turn_ids: list[str], texts: list[str]) -> None:
    prompts = set()
    for turn_id, text in zip(turn_ids, texts, strict=True):
        row = turn_row(home, turn_id)
        prompt, completion, logprobs = (json.loads(row[c]) for c in ("prompt_ids", "completion_ids", "logprobs"))
        assert prompt and len(completion) == len(logprobs) > 0, row
        assert all(isinstance(t, int) for t in prompt + completion)
        assert all(math.isfinite(lp) and lp <= 0 for lp in logprobs)
        assert row["response"] == text
        prompts.add(tuple(prompt))
    assert len(prompts) == 1   # the n answers of one request: one group for advantage centring


def chat(**kw) -> dict:
    return {"model": "metaclaw", "messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 8,
            "temperature": 1.0, **kw}


async def test_tinker_policy_loads_its_tokenizer_once_when_asked_during_the_warm_up(tmp_path, monkeypatch):
    """Found against SkyRL: the first /v1 request came while the warm-up was still loading the tokenizer,
    and the two loads at once (two threads importing transformers) failed the request with "module
    'transformers' has no attribute 'AutoTokenizer'". Now the second waits for the first. (No server needed.)"""
    loads = []

    def slow_load(source: str, allow_downloads: bool = False):
        loads.append(source)
        time.sleep(0.3)
        return load_tokenizer(str(TOKENIZER_DIR))

    import metaclaw_mcp.training.render as render
    monkeypatch.setattr(render, "load_tokenizer", slow_load)
    config = load_config(home=tmp_path / "home", backend="tinker", tokenizer_path=str(TOKENIZER_DIR))
    policy = tinker_policy.TinkerPolicy(config, db=None, service=object())
    got = []

    async def ask() -> None:
        got.append(await policy.tokenizer())

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(ask)
    assert len(loads) == 1 and len(got) == 3 and got[0] is got[1] is got[2]


async def status(client: Client) -> dict:
    return json.loads((await client.read_resource("metaclaw://status")).contents[0].text)


async def test_v1_answers_train_and_hot_swap_through_a_real_tinker_api_server(skyrl, tmp_path):
    server, model = skyrl
    home = tmp_path / "home"
    home.mkdir()
    with served(home, "http", **product_env(server, model)) as (port, proc):
        base = f"http://127.0.0.1:{port}"

        def diagnose(what: str, st: dict | None = None) -> str:
            log = (home.parent / f"serve-http-{port}.log").read_text(errors="replace").splitlines()[-25:]
            training = (st or {}).get("training", {})
            return (f"{what}\ntraining.next: {training.get('next')}\ntrainer: {training.get('trainer')}\n"
                    "--- metaclaw log ---\n" + "\n".join(log) + "\n--- skyrl log ---\n" + server.log_tail(25))

        async with httpx.AsyncClient(base_url=base, timeout=600) as h, \
                Client(f"{base}/mcp", read_timeout_seconds=120) as mcp:
            # 1. the base model answers four times; each answer is a turn with its tokens and logprobs
            models = (await h.get("/v1/models")).json()["data"][0]
            assert models["metaclaw"] == {"backend": "tinker", "checkpoint": f"base:{model}"}, models
            t0 = time.monotonic()
            r = await h.post("/v1/chat/completions", json=chat(n=4))
            first_sample_s = time.monotonic() - t0
            assert r.status_code == 200, diagnose(r.text)
            body = r.json()
            ids = body["metaclaw"]["turn_ids"]
            texts = [c["message"]["content"] for c in body["choices"]]
            assert len(ids) == len(set(ids)) == 4 and r.headers["x-metaclaw-turn-ids"].split(",") == ids
            assert body["metaclaw"]["checkpoint"] == f"base:{model}"
            assert_recorded_with_tokens(home, ids, texts)

            # 2. different scores: two through MCP rate_turn, two through POST /v1/feedback
            for turn_id, score in zip(ids[:2], (1.0, 0.5)):
                err, out = await call(mcp, "rate_turn", {"turn_id": turn_id, "score": score, "source": "env"})
                assert not err and out["queued_for_training"] is True, out
            for turn_id, score in zip(ids[2:], (-0.5, -1.0)):
                fb = await h.post("/v1/feedback", json={"turn_id": turn_id, "score": score, "source": "env"})
                assert fb.status_code == 200 and fb.json()["queued_for_training"] is True, fb.text
            rated = time.time()

            # 3. the server's trainer takes a step on SkyRL and saves sampler weights, which /v1 then serves
            #    (hot swap): /v1/models is watched every 50 ms, the status (halted? exited?) every second
            base_label, polls, st, seen_step = f"base:{model}", 0, {}, None
            while True:
                served_now = (await h.get("/v1/models")).json()["data"][0]["metaclaw"]["checkpoint"]
                if served_now != base_label:
                    swapped = time.time()
                    break
                if polls % 20 == 0:
                    st = await status(mcp)
                    assert proc.poll() is None, diagnose("metaclaw-mcp exited", st)
                    assert not str(st["training"]["next"]).startswith("halted"), diagnose("training halted", st)
                    if st["training"]["steps"] and seen_step is None:
                        seen_step = time.time()
                    assert seen_step is None or time.time() - seen_step < 120, \
                        diagnose(f"a step, but /v1 still serves {served_now}", st)
                assert time.time() - rated < STEP_TIMEOUT, diagnose("no step", st)
                polls += 1
                await anyio.sleep(0.05)
            st = await status(mcp)
            training = st["training"]
            # "step recorded": the step's row in the store, written just before the commit that hands its
            # checkpoints to the policy
            stepped = datetime.fromisoformat(training["last_step"]["created_at"]).timestamp()
            assert training["steps"] == 1 and training["trained"] == 4, diagnose("step", st)
            # a finite loss: SkyRL reports no loss:sum, the product computes it from the returned logprobs
            loss = training["last_step"]["loss"]
            assert isinstance(loss, float) and math.isfinite(loss), diagnose(f"loss {loss!r}", st)
            # importance_sampling on the first step: the trained weights still are the sampler's, so each
            # ratio is ~1 and the loss ~ -sum over turns of (reward - group mean) * completion length
            rows = [turn_row(home, t) for t in ids]
            mean = sum(r["reward"] for r in rows) / len(rows)
            weights = [(r["reward"] - mean, len(json.loads(r["completion_ids"]))) for r in rows]
            expected = -sum(a * n for a, n in weights)
            assert abs(loss - expected) <= 0.01 * sum(abs(a) * n for a, n in weights) + 1e-6, (loss, expected)
            assert training["last_step"]["mean_reward"] == pytest.approx(mean)
            checkpoints = json.loads((await mcp.read_resource("metaclaw://checkpoints")).contents[0].text)
            samplers = [c["path"] for c in checkpoints if c["kind"] == "sampler" and c["step"] == 1]
            assert len(samplers) == 1 and samplers[0].startswith("tinker://"), checkpoints
            sampler = samplers[0]
            assert training["last_checkpoint"]["step"] == 1 and training["last_checkpoint"]["backend"] == "tinker"
            assert training["last_checkpoint"]["path"] in {c["path"] for c in checkpoints if c["step"] == 1}
            assert served_now == sampler, (served_now, sampler)

            # 4. the new checkpoint answers, and its answers are turns with tokens and logprobs again
            t1 = time.monotonic()
            r2 = await h.post("/v1/chat/completions", json=chat(n=2))
            trained_sample_s = time.monotonic() - t1
            assert r2.status_code == 200, diagnose(r2.text)
            body2 = r2.json()
            assert body2["metaclaw"]["checkpoint"] == sampler
            assert_recorded_with_tokens(home, body2["metaclaw"]["turn_ids"],
                                        [c["message"]["content"] for c in body2["choices"]])
    print(f"\n[skyrl] first /v1 sample (n=4, 8 tokens): {first_sample_s:.1f}s"
          f"\n[skyrl] step time (last rating -> step recorded): {stepped - rated:.1f}s, loss {loss:.4f}"
          f"\n[skyrl] swap time (step recorded -> /v1 serving {sampler}): {swapped - stepped:.2f}s"
          " (/v1/models polled every 50 ms)"
          f"\n[skyrl] sample from the trained checkpoint (n=2): {trained_sample_s:.1f}s"
          "\n[skyrl] the server's own timings:\n  " + "\n  ".join(server.timings()))
