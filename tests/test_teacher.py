"""On-policy distillation: the teacher's per-token logprobs on the sampled tokens, and the reverse-KL
advantages they give, token by token. The real store, trainer, planning and export backend; the Tinker
service, which this machine cannot reach, is a stand-in that returns what `compute_logprobs` returns
(a list with None for the first token) and raises the SDK's own connection error."""
from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
import tinker

from metaclaw_mcp.app import open_app
from metaclaw_mcp.config import load_config
from metaclaw_mcp.models import Message, TokenData
from metaclaw_mcp.training import TransientTrainingError
from metaclaw_mcp.training.teacher import TinkerTeacher, kl_advantages
from metaclaw_mcp.training.trainer import plan_rl_batch
from test_tinker_backend import RecordingFuture

pytestmark = pytest.mark.anyio


def turn(tid: str, prompt: list[int], completion: list[int], logprobs: list[float], reward: float) -> dict:
    return {"id": tid, "namespace": "default", "prompt_ids": prompt, "completion_ids": completion,
            "logprobs": logprobs, "reward": reward}


def advantages_of(datum: tinker.Datum) -> list[float]:
    return [float(v) for v in datum.loss_fn_inputs["advantages"].data]


def test_the_teacher_adds_its_reverse_kl_to_each_completion_token():
    assert kl_advantages([-1.0, -0.5], [-2.0, -0.25], 0.5) == [0.5, -0.125]
    equal = [turn("a", [1, 2], [3, 4], [-1.0, -2.0], 1.0), turn("b", [1, 2], [5, 6], [-0.5, -0.5], 1.0)]
    contrast = [turn("c", [7, 8, 9], [3], [-1.0], 1.0), turn("d", [7, 8, 9], [4], [-3.0], -1.0)]
    without = plan_rl_batch(equal + contrast, {}, 64)
    assert set(without.skipped) == {"a", "b"}    # equal rewards: nothing to learn from the reward alone
    teacher = {"a": [-0.5, -1.0], "b": [-1.5, -0.5], "c": [-2.0], "d": [-1.0]}
    plan = plan_rl_batch(equal + contrast, {}, 64, teacher, kl_coef=2.0)
    assert plan.trained == ["a", "b", "c", "d"] and plan.skipped == {}
    by_id = dict(zip(plan.trained, plan.datums))
    # prompt positions carry nothing; each completion token gets reward advantage + 2 * (teacher - sampler)
    assert advantages_of(by_id["a"]) == pytest.approx([0.0, 2 * 0.5, 2 * 1.0])
    assert advantages_of(by_id["b"]) == pytest.approx([0.0, 2 * -1.0, 0.0])
    assert advantages_of(by_id["c"]) == pytest.approx([0.0, 0.0, 1.0 + 2 * -1.0])
    assert advantages_of(by_id["d"]) == pytest.approx([0.0, 0.0, -1.0 + 2 * 2.0])
    assert [float(v) for v in by_id["a"].loss_fn_inputs["logprobs"].data] == [0.0, -1.0, -2.0]


class TeacherService:
    """Stand-in for tinker.ServiceClient as a teacher: a sampling client whose `compute_logprobs` gives the
    logprob of every token of the sequence (None for the first), here -0.1 times the token id."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.created: list[str] = []
        self.down = False

    def create_sampling_client(self, model_path=None, base_model=None, **_):
        self.created.append(model_path or f"base:{base_model}")
        return RecordingFuture(self.log, "create", self)

    def compute_logprobs(self, prompt: tinker.ModelInput, prompt_logprobs_last_n=None):
        ids = prompt.to_ints()
        error = tinker.APIConnectionError(request=httpx.Request("POST", "https://tinker.invalid")) if self.down else None
        return RecordingFuture(self.log, "compute_logprobs", [None] + [-0.1 * t for t in ids[1:]], error)


async def test_trained_datums_carry_the_teachers_advantages_and_an_outage_waits(tmp_path):
    config = load_config(home=tmp_path / "home", load_starter_skills=False, batch_size=2,
                         teacher_model="Qwen/Qwen3-235B-A22B-Instruct-2507", tinker_api_key="tml-test-key",
                         backend="export", teacher_kl_coef=1.0)
    service = TeacherService()
    async with open_app(config) as app:
        app.trainer.teacher = TinkerTeacher(config, service=service)
        ids = []
        for completion, lps in (([30, 31], [-1.0, -2.0]), ([40, 41], [-3.0, -0.5])):
            rep = await app.report_turn("s", [Message(role="user", content="q")], "a",
                                        tokens=TokenData(prompt_ids=[5, 6], completion_ids=completion, logprobs=lps))
            await app.rate_turn(rep.turn_id, 1.0, "env")   # equal rewards: only the teacher has a signal
            ids.append(rep.turn_id)
        service.down = True
        with pytest.raises(TransientTrainingError, match="unreachable"):
            await app.trainer.once()
        assert [(await app.turns.get(t))["train_state"] for t in ids] == ["claimed", "claimed"]
        service.down = False
        assert await app.trainer.once() is True
        assert [(await app.turns.get(t))["train_state"] for t in ids] == ["trained", "trained"]
    assert service.created == ["base:Qwen/Qwen3-235B-A22B-Instruct-2507"] * 2   # rebuilt after the outage
    rows = [json.loads(line) for line in (config.exports_dir / "batch-000001.jsonl").read_text().splitlines()]
    expected = [[0.0] + [-0.1 * t - s for t, s in zip(c, lps)] for c, lps in (([30, 31], [-1.0, -2.0]),
                                                                             ([40, 41], [-3.0, -0.5]))]
    for row, want in zip(rows, expected):
        assert row["loss_fn"] == "importance_sampling"
        assert np.allclose(row["loss_fn_inputs"]["advantages"], want, atol=1e-5)
