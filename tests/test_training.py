"""Datum building (pure, real tinker types) and the durable batcher with the export backend."""
from __future__ import annotations

import json

import numpy as np
import pytest
import tinker

from metaclaw_mcp.app import open_app
from metaclaw_mcp.config import load_config
from metaclaw_mcp.errors import ConfigError
from metaclaw_mcp.models import Message, TokenData
from metaclaw_mcp.training.datums import (DatumError, RLSample, centred_advantages, check_keys, datum_to_json,
                                          rl_datum, sft_datum, truncate_left)
from metaclaw_mcp.training.trainer import plan_rl_batch


def test_rl_datum_alignment_token_by_token():
    s = RLSample("t", prompt_ids=[10, 11, 12], completion_ids=[20, 21], logprobs_C=[-0.5, -0.25], reward=1.0)
    d = rl_datum(s, advantage=0.75, max_seq_len=100)
    assert isinstance(d, tinker.Datum)
    assert d.model_input.to_ints() == [10, 11, 12, 20]
    li = d.loss_fn_inputs
    assert li["target_tokens"].dtype == "int64" and li["target_tokens"].data == [11, 12, 20, 21]
    assert li["logprobs"].dtype == "float32" and li["logprobs"].data == [0.0, 0.0, -0.5, -0.25]
    assert li["advantages"].data == [0.0, 0.0, 0.75, 0.75]
    check_keys(d, "importance_sampling")
    row = datum_to_json(d, "ppo")
    assert set(row) == {"loss_fn", "model_input", "loss_fn_inputs"} and row["loss_fn"] == "ppo"


def test_truncation_cuts_the_prompt_from_the_left_never_the_completion():
    assert truncate_left([1, 2, 3, 4, 5], [6, 7], max_seq_len=4) == [4, 5]
    d = rl_datum(RLSample("t", list(range(1, 50)), [100, 101, 102], [-1.0] * 3, 1.0), 1.0, max_seq_len=8)
    assert d.model_input.to_ints() == [45, 46, 47, 48, 49, 100, 101]
    assert d.loss_fn_inputs["advantages"].data == [0, 0, 0, 0, 1, 1, 1]
    with pytest.raises(DatumError, match="max_seq_len"):
        truncate_left([1], list(range(10)), max_seq_len=10)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_values_never_become_datums(bad):
    with pytest.raises(DatumError):
        rl_datum(RLSample("t", [1, 2], [3], [-0.1], 1.0), bad, 10)
    with pytest.raises(DatumError):
        rl_datum(RLSample("t", [1, 2], [3], [bad], 1.0), 0.5, 10)


def test_sft_datum_weights_fall_on_the_assistant_tokens_after_the_shift():
    d = sft_datum([1, 2, 3, 4, 5], [0, 0, 0, 1, 1], max_seq_len=16)
    assert d.model_input.to_ints() == [1, 2, 3, 4]
    assert d.loss_fn_inputs["target_tokens"].data == [2, 3, 4, 5]
    assert d.loss_fn_inputs["weights"].data == [0.0, 0.0, 1.0, 1.0]
    check_keys(d, "cross_entropy")
    cut = sft_datum([1, 2, 3, 4, 5], [0, 0, 0, 1, 1], max_seq_len=4)
    assert cut.model_input.to_ints() == [2, 3, 4] and cut.loss_fn_inputs["weights"].data == [0.0, 1.0, 1.0]
    with pytest.raises(DatumError):
        sft_datum([1, 2, 3], [0, 1, 1], max_seq_len=2)


def test_advantages_are_centred_per_group_and_constant_groups_skipped():
    assert np.allclose(centred_advantages([1, -1, 1, 1]), [0.5, -1.5, 0.5, 0.5])
    turns = [{"id": f"a{i}", "namespace": "n", "prompt_ids": [1, 2], "completion_ids": [3], "logprobs": [-0.1],
              "reward": r} for i, r in enumerate([1.0, -1.0])]
    turns += [{"id": f"b{i}", "namespace": "n", "prompt_ids": [7, 8], "completion_ids": [9], "logprobs": [-0.1],
               "reward": 1.0} for i in range(3)]
    plan = plan_rl_batch(turns, {}, 64)
    assert plan.trained == ["a0", "a1"]
    assert set(plan.skipped) == {"b0", "b1", "b2"} and "constant" in plan.skipped["b0"]
    assert [d.loss_fn_inputs["advantages"].data[-1] for d in plan.datums] == [1.0, -1.0]


def test_a_turn_that_is_not_a_valid_sample_is_skipped_before_its_group_is_centred():
    turns = [{"id": f"g{i}", "namespace": "n", "prompt_ids": [1, 2], "completion_ids": [3], "logprobs": [-0.1],
              "reward": r} for i, r in enumerate([1.0, -1.0])]
    turns.append({"id": "bad", "namespace": "n", "prompt_ids": [1, 2], "completion_ids": [2 ** 70], "logprobs": [-0.1],
                  "reward": 1.0})
    plan = plan_rl_batch(turns, {}, 64)
    assert plan.trained == ["g0", "g1"] and "completion_ids[0]" in plan.skipped["bad"]
    assert [d.loss_fn_inputs["advantages"].data[-1] for d in plan.datums] == [1.0, -1.0]  # the mean left it out
    with pytest.raises(DatumError, match="prompt_ids"):
        rl_datum(RLSample("t", [-1], [3], [-0.1], 1.0), 1.0, 10)


def test_a_lone_turn_uses_the_running_baseline():
    lone = [{"id": "x", "namespace": "n", "prompt_ids": [1], "completion_ids": [2], "logprobs": [-0.1], "reward": 1.0}]
    first = plan_rl_batch(lone, {"n": None}, 64)
    assert first.trained == [] and "baseline" in first.skipped["x"] and first.baselines == {"n": 1.0}
    later = plan_rl_batch(lone, {"n": 0.2}, 64)
    assert later.trained == ["x"]
    assert later.datums[0].loss_fn_inputs["advantages"].data[-1] == pytest.approx(0.8)
    assert later.baselines["n"] == pytest.approx(0.9 * 0.2 + 0.1 * 1.0)


async def _rated_rl_turns(app, rewards, prompt=(5, 6, 7)):
    ids = []
    for i, r in enumerate(rewards):
        rep = await app.report_turn(f"s{i}", [Message(role="user", content=f"q{i}")], f"a{i}", model="m",
                                    tokens=TokenData(prompt_ids=list(prompt), completion_ids=[30 + i, 31],
                                                     logprobs=[-0.2, -0.3]))
        await app.rate_turn(rep.turn_id, r, "env")
        ids.append(rep.turn_id)
    return ids


@pytest.mark.anyio
async def test_export_batcher_trains_each_turn_once_and_replays_a_claimed_batch(tmp_path):
    config = load_config(home=tmp_path / "home", batch_size=4, load_starter_skills=False)
    async with open_app(config) as app:
        ids = await _rated_rl_turns(app, [1.0, -1.0, 1.0, 1.0])
        assert await app.trainer.once() is True
        assert await app.trainer.once() is False  # nothing left
        files = sorted(config.exports_dir.glob("batch-*.jsonl"))
        rows = [json.loads(line) for f in files for line in f.read_text().splitlines()]
        assert len(rows) == 4
        assert sum(r["loss_fn_inputs"]["advantages"][-1] for r in rows) == pytest.approx(0.0)
        states = {(await app.turns.get(t))["train_state"] for t in ids}
        assert states == {"trained"}
        # a batch claimed just before a crash ...
        more = await _rated_rl_turns(app, [0.5, -0.5, 0.0, 1.0], prompt=(8, 9))
        batch_id = await app.trainer.claim()
        assert batch_id is not None
    # ... is replayed by the next process, once
    async with open_app(config) as app:
        assert await app.trainer.once() is True
        assert await app.trainer.once() is False
        assert {(await app.turns.get(t))["train_state"] for t in more} == {"trained"}
        assert await app.db.scalar("SELECT COUNT(*) FROM train_steps") == 2
        status = await app.status()
        assert status["training"]["steps"] == 2 and status["training"]["backlog"] == 0
    rows = [json.loads(line) for f in sorted(config.exports_dir.glob("batch-*.jsonl")) for line in f.read_text().splitlines()]
    assert len(rows) == 8


@pytest.mark.anyio
async def test_pause_holds_training_and_max_steps_is_honoured(tmp_path):
    config = load_config(home=tmp_path / "home", batch_size=2, max_steps=1, load_starter_skills=False)
    async with open_app(config) as app:
        await _rated_rl_turns(app, [1.0, -1.0])
        await app.trainer.set_paused(True)
        assert await app.trainer.once() is False
        assert (await app.status())["training"]["next"].startswith("paused")
        await app.trainer.set_paused(False)
        assert "2 RL and 0 distillation turns queued" in (await app.status())["training"]["next"]
        assert await app.trainer.once() is True
        [step] = (await app.status())["training"]["recent_steps"]
        assert step["step"] == 1 and step["mean_reward"] == 0.0 and step["n_datums"] == 2
        await _rated_rl_turns(app, [1.0, -1.0], prompt=(3, 4))
        assert await app.trainer.once() is False  # max_steps=1 reached
        assert (await app.status())["training"]["backlog"] == 2
        assert "max_steps=1" in (await app.status())["training"]["next"]


TOKENIZER_DIR = str(__import__("pathlib").Path(__file__).parent / "data" / "smollm2-tokenizer")


@pytest.fixture(scope="module")
def smol_tokenizer():
    """SmolLM2-135M-Instruct's real tokenizer and chat template, made once from the packaged GGUF."""
    from metaclaw_mcp.training.render import load_tokenizer
    return load_tokenizer(TOKENIZER_DIR)


def test_distillation_weights_fall_exactly_on_the_reply_with_the_real_chat_template(smol_tokenizer):
    from metaclaw_mcp.training.render import render_sft
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Capital of France?"}]}]
    tokens, weights = render_sft(smol_tokenizer, messages, "Paris.")
    trained = [t for t, w in zip(tokens, weights) if w]
    assert smol_tokenizer.decode(trained) == "Paris.<|im_end|>"
    first = weights.index(1.0)
    assert smol_tokenizer.decode(tokens[:first]).endswith("<|im_start|>assistant\n")
    assert "Capital of France?" in smol_tokenizer.decode(tokens[:first])
    assert weights[-1] == 0.0 and smol_tokenizer.decode(tokens[-1:]) == "\n"  # template padding is not trained
    d = sft_datum(tokens, weights, max_seq_len=4096)
    shifted = d.loss_fn_inputs["weights"].data
    targets = d.loss_fn_inputs["target_tokens"].data
    assert smol_tokenizer.decode([t for t, w in zip(targets, shifted) if w]) == "Paris.<|im_end|>"


@pytest.mark.anyio
async def test_text_only_turns_are_distilled_when_rated_well_and_left_to_evolution_when_not(tmp_path):
    config = load_config(home=tmp_path / "home", batch_size=2, load_starter_skills=False, tokenizer_path=TOKENIZER_DIR,
                         distill_threshold=0.5)
    async with open_app(config) as app:
        good, bad = [], None
        for i in range(2):
            rep = await app.report_turn("s", [Message(role="user", content=f"Say hi {i}")], f"Hi {i}!")
            await app.rate_turn(rep.turn_id, 1.0)
            good.append(rep.turn_id)
        rep = await app.report_turn("s", [Message(role="user", content="Say bye")], "No.")
        await app.rate_turn(rep.turn_id, -1.0, feedback="rude")
        bad = rep.turn_id
        assert await app.trainer.once() is True
        assert {(await app.turns.get(t))["train_state"] for t in good} == {"trained"}
        low = await app.turns.get(bad)
        assert low["train_state"] == "skipped" and "distill_threshold" in low["skip_reason"]
        batch = await app.db.fetchone("SELECT kind, loss_fn FROM batches")
        assert (batch["kind"], batch["loss_fn"]) == ("distill", "cross_entropy")
        # a better rating later puts the skipped turn back in the queue
        out = await app.rate_turn(bad, 1.0, "user")
        assert out.queued_for_training is True and (await app.turns.get(bad))["skip_reason"] is None
    rows = [json.loads(line) for f in sorted(config.exports_dir.glob("batch-*.jsonl")) for line in f.read_text().splitlines()]
    assert len(rows) == 2 and {r["loss_fn"] for r in rows} == {"cross_entropy"}
    assert all(set(r["loss_fn_inputs"]) == {"target_tokens", "weights"} for r in rows)


@pytest.mark.anyio
async def test_secrets_never_reach_training_data(tmp_path):
    # the store keeps text raw here (redact_secrets off): the trainer is the last line
    config = load_config(home=tmp_path / "home", batch_size=3, load_starter_skills=False, tokenizer_path=TOKENIZER_DIR,
                         redact_secrets=False)
    key = "sk-" + "A1b2C3d4" * 4
    async with open_app(config) as app:
        ids = []
        for i, text in enumerate(["fine", f"my key is {key}", "also fine"]):
            rep = await app.report_turn("s", [Message(role="user", content=text)], f"ok {i}",
                                        tokens=TokenData(prompt_ids=[1, 2], completion_ids=[3 + i], logprobs=[-0.5]))
            await app.rate_turn(rep.turn_id, [1.0, 0.0, -1.0][i], "env")
            ids.append(rep.turn_id)
        assert await app.trainer.once() is True
        leaked = await app.turns.get(ids[1])
        assert leaked["train_state"] == "skipped" and "API key" in leaked["skip_reason"]
        assert [(await app.turns.get(t))["train_state"] for t in (ids[0], ids[2])] == ["trained", "trained"]
        for i in range(3):  # text-only turns: the secret is redacted before rendering
            rep = await app.report_turn("t", [Message(role="user", content=f"use {key} please {i}")], f"done {i}")
            await app.rate_turn(rep.turn_id, 1.0)
        assert await app.trainer.once() is True
    tok = __import__("metaclaw_mcp.training.render", fromlist=["load_tokenizer"]).load_tokenizer(TOKENIZER_DIR)
    for f in config.exports_dir.glob("batch-*.jsonl"):
        for line in f.read_text().splitlines():
            text = tok.decode(json.loads(line)["model_input"])
            assert key not in text and "A1b2C3d4" not in text


@pytest.mark.anyio
async def test_every_kind_of_secret_is_redacted_from_distillation_exports(tmp_path):
    """Text-only turns carrying an AWS secret key, a fine-grained GitHub token, a live Stripe key,
    URL credentials and a whole PEM key (body included): the exported datums decode to none of them."""
    config = load_config(home=tmp_path / "home", batch_size=5, load_starter_skills=False, tokenizer_path=TOKENIZER_DIR,
                         redact_secrets=False)   # the store keeps them raw: the trainer must still not export them
    pem_body = "MIIEpAIBAAKCAQEA7Vt1q2K3xZp9LmNoPqRsTuVwXyZaBcDeFgHiJkLmNoPqRsTu"
    secrets = ["wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
               "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUV12345",
               "sk_live_4eC39HqLyjWDarjtT1zdp7dc", "hunter2pass", pem_body]
    texts = ["aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
             f"token {secrets[1]}", f"stripe {secrets[2]}", "db at postgres://admin:hunter2pass@db.example.com/app",
             f"-----BEGIN RSA PRIVATE KEY-----\n{pem_body}\n-----END RSA PRIVATE KEY-----"]
    async with open_app(config) as app:
        for i, text in enumerate(texts):
            rep = await app.report_turn("t", [Message(role="user", content=f"deploy with {text}")], f"done: {text}")
            await app.rate_turn(rep.turn_id, 1.0)
        assert await app.trainer.once() is True
    tok = __import__("metaclaw_mcp.training.render", fromlist=["load_tokenizer"]).load_tokenizer(TOKENIZER_DIR)
    decoded = [tok.decode(json.loads(line)["model_input"]) for f in config.exports_dir.glob("batch-*.jsonl")
               for line in f.read_text().splitlines()]
    assert len(decoded) == 5
    for text in decoded:
        assert "[REDACTED:" in text
        for secret in secrets:
            assert secret not in text and secret[:12] not in text


class FailingBackend:
    """A backend whose steps fail with a batch-specific error (like a request the service rejects)."""
    name = "export"

    def __init__(self, failures: int):
        self.failures, self.calls = failures, 0

    async def restore(self, state_path):
        return None

    async def train(self, batch_id, step, datums, loss_fn, loss_fn_config):
        self.calls += 1
        if self.calls <= self.failures:
            raise ValueError(f"rejected datum shape (call {self.calls})")
        from metaclaw_mcp.training import StepResult
        return StepResult(loss=0.5)


@pytest.mark.anyio
@pytest.mark.parametrize("failures,state", [(2, "trained"), (3, "skipped")])
async def test_a_failing_batch_is_retried_then_its_turns_skipped_with_the_error(tmp_path, failures, state):
    from metaclaw_mcp.training import BatchFailed, Trainer
    config = load_config(home=tmp_path / "home", batch_size=2, load_starter_skills=False, max_batch_attempts=3,
                         batch_retry_base_seconds=0.001)
    async with open_app(config) as app:
        ids = await _rated_rl_turns(app, [1.0, -1.0])
        trainer = Trainer(app.db, config, FailingBackend(failures))
        for _ in range(3):
            try:
                await trainer.once()
            except BatchFailed as exc:  # the attempt is recorded; the error names the backend's reason
                assert "rejected datum shape" in str(exc)
        turns = [await app.turns.get(t) for t in ids]
        batch = await app.db.fetchone("SELECT state, attempts, last_error FROM batches")
    assert {t["train_state"] for t in turns} == {state}
    if state == "skipped":
        assert batch["state"] == "failed" and batch["attempts"] == 3
        assert all("failed 3 times" in t["skip_reason"] and "rejected datum shape" in t["skip_reason"] for t in turns)
    else:
        assert batch["state"] == "trained" and "call 2" in batch["last_error"]


# ---- training windows ----

@pytest.mark.anyio
async def test_steps_run_only_in_the_training_window_and_after_the_quiet_period(tmp_path):
    import time
    from datetime import datetime

    from metaclaw_mcp.schedule import in_window, next_opening, parse_window
    night = parse_window("22:00-06:00")
    assert in_window(datetime(2026, 1, 1, 23, 30), night) and in_window(datetime(2026, 1, 2, 5, 59), night)
    assert not in_window(datetime(2026, 1, 2, 6, 0), night)
    assert next_opening(datetime(2026, 1, 2, 12, 0), night) == datetime(2026, 1, 2, 22, 0)
    assert next_opening(datetime(2026, 1, 2, 23, 0), parse_window("01:00-06:00")) == datetime(2026, 1, 3, 1, 0)
    with pytest.raises(ConfigError, match="HH:MM-HH:MM"):
        load_config(home=tmp_path / "x", train_window="1am-6am")

    config = load_config(home=tmp_path / "home", load_starter_skills=False, batch_size=1,
                         train_window="01:00-06:00", train_when_idle_seconds=60)
    async with open_app(config) as app:
        rep = await app.report_turn("s", [Message(role="user", content="q")], "a",
                                    tokens=TokenData(prompt_ids=[1, 2], completion_ids=[3], logprobs=[-0.5]))
        await app.rate_turn(rep.turn_id, 1.0, "env")
        app.trainer.clock = lambda: datetime(2026, 3, 1, 12, 0)      # noon: outside the window
        assert await app.trainer.once() is False
        status = await app.status()
        assert "outside the training window 01:00-06:00 (opens at 2026-03-02 01:00)" in status["training"]["next"]
        assert status["training"]["backlog"] == 1
        app.trainer.clock = lambda: datetime(2026, 3, 2, 2, 0)       # in the window, but a request just came
        assert await app.trainer.once() is False
        assert "without requests" in (await app.status())["training"]["trainer"]["waiting_for"]
        app.last_request = time.monotonic() - 61                      # a quiet minute
        assert (await app.status())["training"]["trainer"]["waiting_for"] is None
        await app.trainer.once()   # the lone turn's first baseline: claimed and looked at, in the window
        assert (await app.turns.get(rep.turn_id))["train_state"] != "rated"
