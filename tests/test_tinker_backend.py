"""The Tinker backend against a stand-in for ServiceClient / TrainingClient at the SDK boundary.

The stand-in returns the SDK's own future base class (`tinker.APIFuture`) and result types
(`ForwardBackwardOutput`, `OptimStepResponse`, `SaveWeightsForSamplerResponse`,
`SaveWeightsResponse`) and raises the SDK's own exception classes, as the real service would.
"""
from __future__ import annotations

from concurrent.futures import Future as ConcurrentFuture
from typing import Any

import anyio
import httpx
import pytest
import tinker
from tinker.types import SaveWeightsForSamplerResponse, SaveWeightsResponse

from metaclaw_mcp.app import open_app
from metaclaw_mcp.config import load_config
from metaclaw_mcp.models import Message, TokenData
from metaclaw_mcp.training import Trainer, TrainingHalted, TransientTrainingError
from metaclaw_mcp.training.tinker_backend import TinkerBackend

pytestmark = pytest.mark.anyio
REQUEST = httpx.Request("POST", "https://tinker.invalid/api/v1/forward_backward")


class RecordingFuture(tinker.APIFuture):
    """An SDK future that logs when it is awaited, then yields its value or raises its error."""

    def __init__(self, log: list[str], name: str, value: Any = None, error: Exception | None = None):
        self.log, self.name, self.value, self.error = log, name, value, error

    async def result_async(self, timeout: float | None = None) -> Any:
        self.log.append(f"await:{self.name}")
        if self.error is not None:
            raise self.error
        return self.value

    def result(self, timeout: float | None = None) -> Any:
        if self.error is not None:
            raise self.error
        return self.value

    def future(self) -> ConcurrentFuture:
        f: ConcurrentFuture = ConcurrentFuture()
        f.set_exception(self.error) if self.error else f.set_result(self.value)
        return f


class StandInTrainingClient:
    """Stand-in for tinker.TrainingClient: validates what it is sent like the service does."""

    def __init__(self, service: StandInService):
        self.service = service
        self.log = service.log

    def _fail(self, what: str) -> Exception | None:
        return self.service.faults.pop(what, None)

    def forward_backward(self, data: list[tinker.Datum], loss_fn: str, loss_fn_config: dict | None = None):
        self.log.append("submit:forward_backward")
        if loss_fn not in self.service.losses:   # as a server without that loss answers
            return RecordingFuture(self.log, "forward_backward", None, tinker.BadRequestError(
                f"Unsupported loss function: {loss_fn}", response=httpx.Response(400, request=REQUEST), body=None))
        assert all(isinstance(d, tinker.Datum) for d in data)
        for d in data:  # the service accepts only the loss's own keys, all of one length
            assert set(d.loss_fn_inputs) == {"target_tokens", "logprobs", "advantages"}
            assert all(len(v.data) == d.model_input.length for v in d.loss_fn_inputs.values())
        self.service.trained_batches.append([d.model_input.to_ints() for d in data])
        out = tinker.ForwardBackwardOutput(loss_fn_output_type="ArrayRecord",
                                           loss_fn_outputs=[{"logprobs": d.loss_fn_inputs["logprobs"]} for d in data],
                                           metrics={"loss:sum": 1.5 * len(data)} if self.service.reports_loss else {})
        return RecordingFuture(self.log, "forward_backward", out, self._fail("forward_backward"))

    def optim_step(self, params: tinker.AdamParams):
        self.log.append("submit:optim_step")
        assert isinstance(params, tinker.AdamParams)
        return RecordingFuture(self.log, "optim_step", tinker.OptimStepResponse(metrics={"lr": params.learning_rate}),
                               self._fail("optim_step"))

    def save_weights_for_sampler(self, name: str):
        self.log.append(f"save_weights_for_sampler:{name}")
        return RecordingFuture(self.log, "save_weights_for_sampler",
                               SaveWeightsForSamplerResponse(path=f"tinker://run-1/sampler_weights/{name}"))

    def save_state(self, name: str):
        self.log.append(f"save_state:{name}")
        return RecordingFuture(self.log, "save_state", SaveWeightsResponse(path=f"tinker://run-1/weights/{name}"))


class StandInService:
    """Stand-in for tinker.ServiceClient: client creation returns a future of the training client."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.faults: dict[str, Exception] = {}
        self.trained_batches: list[list[list[int]]] = []
        self.reports_loss = True   # False: like SkyRL's server, forward_backward's metrics carry no loss:sum
        self.losses = ("importance_sampling", "ppo", "cispo")

    def create_lora_training_client(self, base_model: str, rank: int = 32, **_: Any):
        self.log.append(f"create:{base_model}:{rank}")
        return RecordingFuture(self.log, "create", StandInTrainingClient(self), self.faults.pop("create", None))

    def create_training_client_from_state_with_optimizer(self, path: str, **_: Any):
        self.log.append(f"resume:{path}")
        return RecordingFuture(self.log, "create", StandInTrainingClient(self), self.faults.pop("create", None))


async def rated_group(app, prompt: list[int], rewards: list[float]) -> list[str]:
    ids = []
    for i, r in enumerate(rewards):
        rep = await app.report_turn(f"s{prompt[0]}", [Message(role="user", content="q")], "a",
                                    tokens=TokenData(prompt_ids=prompt, completion_ids=[50 + i, 2], logprobs=[-0.4, -0.1]))
        await app.rate_turn(rep.turn_id, r, "env")
        ids.append(rep.turn_id)
    return ids


async def run_until_halted(trainer: Trainer) -> None:
    """The trainer's own background loop, as the server runs it, until it halts (at most 10 s)."""
    async with anyio.create_task_group() as tg:
        tg.start_soon(trainer.run)
        with anyio.fail_after(10):
            while not await trainer.halted():
                await anyio.sleep(0.05)
        tg.cancel_scope.cancel()


def make(tmp_path, service: StandInService, **cfg: Any):
    config = load_config(home=tmp_path / "home", batch_size=2, load_starter_skills=False, backend="tinker",
                         tinker_api_key="tml-test-key", model_name="Qwen/Qwen3-4B", lora_rank=8, **cfg)
    return config, TinkerBackend(config, service_factory=lambda: service)


async def test_both_calls_are_submitted_before_either_is_awaited_and_loss_is_recorded(tmp_path):
    service = StandInService()
    config, backend = make(tmp_path, service, save_every=2)
    async with open_app(config) as app:
        trainer = Trainer(app.db, config, backend)
        await rated_group(app, [1, 2, 3], [1.0, -1.0])
        await rated_group(app, [4, 5, 6], [0.5, -0.5])
        assert await trainer.once() and await trainer.once()
        steps = await app.db.fetchall("SELECT step, loss, n_datums FROM train_steps ORDER BY step")
        ckpts = await app.db.fetchall("SELECT step, kind, path, backend FROM checkpoints ORDER BY id")
    assert service.log[:5] == ["create:Qwen/Qwen3-4B:8", "await:create", "submit:forward_backward",
                               "submit:optim_step", "await:forward_backward"]
    assert service.log[5] == "await:optim_step"
    assert [(r["step"], r["loss"], r["n_datums"]) for r in steps] == [(1, 3.0, 2), (2, 3.0, 2)]
    assert [(r["step"], r["kind"], r["path"]) for r in ckpts] == [
        (1, "state", "tinker://run-1/weights/step-000001"),
        (2, "sampler", "tinker://run-1/sampler_weights/step-000002"),
        (2, "state", "tinker://run-1/weights/step-000002")]
    assert {r["backend"] for r in ckpts} == {"tinker"}


async def test_auth_failure_halts_training_with_a_clear_status_and_keeps_the_turns(tmp_path):
    service = StandInService()
    service.faults["create"] = tinker.AuthenticationError(
        "Invalid API key", response=httpx.Response(401, request=REQUEST), body=None)
    config, backend = make(tmp_path, service)
    async with open_app(config) as app:
        trainer = Trainer(app.db, config, backend)
        ids = await rated_group(app, [1, 2, 3], [1.0, -1.0])
        await run_until_halted(trainer)
        status = await trainer.status()
        assert "TINKER_API_KEY" in status["halted"] and status["paused"] is True
        assert {(await app.turns.get(t))["train_state"] for t in ids} == {"claimed"}
        # once the key is fixed, resume trains the same batch
        await trainer.set_paused(False)
        assert await trainer.halted() is None
        assert await trainer.once() is True
        assert {(await app.turns.get(t))["train_state"] for t in ids} == {"trained"}


async def test_connection_failure_backs_off_and_replays_on_a_client_rebuilt_from_the_last_state(tmp_path):
    service = StandInService()
    config, backend = make(tmp_path, service)
    async with open_app(config) as app:
        trainer = Trainer(app.db, config, backend)
        await rated_group(app, [1, 2, 3], [1.0, -1.0])
        assert await trainer.once()
        second = await rated_group(app, [7, 8, 9], [1.0, 0.0])
        service.faults["optim_step"] = tinker.APIConnectionError(request=REQUEST)
        with pytest.raises(TransientTrainingError, match="APIConnectionError"):
            await trainer.once()
        batch = await app.db.fetchone("SELECT state, attempts FROM batches ORDER BY id DESC LIMIT 1")
        assert (batch["state"], batch["attempts"]) == ("claimed", 0)  # not the batch's fault
        # the run loop waits (backoff) and replays on a new client made from the last committed state
        async with anyio.create_task_group() as tg:
            tg.start_soon(trainer.run)
            with anyio.fail_after(15):
                while (await app.turns.get(second[0]))["train_state"] != "trained":
                    await anyio.sleep(0.05)
            tg.cancel_scope.cancel()
    assert "resume:tinker://run-1/weights/step-000001" in service.log
    assert service.log.count("submit:optim_step") == 3


async def test_restart_resumes_from_the_newest_committed_state(tmp_path):
    service = StandInService()
    config, backend = make(tmp_path, service)
    async with open_app(config) as app:
        await rated_group(app, [1, 2, 3], [1.0, -1.0])
        assert await Trainer(app.db, config, backend).once()
    restarted = StandInService()
    config, backend = make(tmp_path, restarted)
    async with open_app(config) as app:
        await rated_group(app, [4, 5, 6], [1.0, -1.0])
        assert await Trainer(app.db, config, backend).once()
    assert restarted.log[0] == "resume:tinker://run-1/weights/step-000001"
    assert len(restarted.trained_batches) == 1  # the first batch is not trained again


async def test_a_missing_key_is_reported_not_retried(tmp_path):
    config = load_config(home=tmp_path / "home", backend="tinker", load_starter_skills=False, batch_size=2)
    backend = TinkerBackend(config, service_factory=lambda: tinker.ServiceClient(api_key=None))
    async with open_app(config) as app:
        await rated_group(app, [1, 2, 3], [1.0, -1.0])
        with pytest.raises(TrainingHalted, match="TINKER_API_KEY"):
            await Trainer(app.db, config, backend).once()


async def test_a_server_that_reports_no_loss_still_records_each_steps_loss_from_its_outputs(tmp_path):
    """Some Tinker-API servers (SkyRL's) send no loss:sum; the loss is computed from the logprobs they return."""
    service = StandInService()
    service.reports_loss = False
    config, backend = make(tmp_path, service)
    async with open_app(config) as app:
        trainer = Trainer(app.db, config, backend)
        await rated_group(app, [1, 2, 3], [1.0, -0.5])
        assert await trainer.once()
        (step,) = await app.db.fetchall("SELECT loss FROM train_steps")
    # the stand-in returns the sampler's own logprobs: every ratio is 1, so the loss is -sum of the advantages
    # (+0.75 and -0.75 on each of the two completion tokens): 0, finite and recorded
    assert step["loss"] == pytest.approx(0.0, abs=1e-6)


async def test_a_loss_the_server_lacks_is_a_clear_halt_not_a_crash(tmp_path):
    service = StandInService()
    service.losses = ("cross_entropy", "importance_sampling", "ppo")
    config, backend = make(tmp_path, service, loss_fn="cispo", tinker_base_url="http://127.0.0.1:9")
    async with open_app(config) as app:
        trainer = Trainer(app.db, config, backend)
        ids = await rated_group(app, [1, 2, 3], [1.0, -1.0])
        await run_until_halted(trainer)
        halted = await trainer.halted()
        assert "does not accept loss_fn 'cispo'" in halted and "importance_sampling" in halted
        assert {(await app.turns.get(t))["train_state"] for t in ids} == {"claimed"}   # kept for after the fix
