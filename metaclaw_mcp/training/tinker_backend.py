"""The Tinker backend: LoRA training on Thinking Machines' service through the `tinker` SDK (0.38).

Exactly once in weight space: the training state is saved after every step, before the step
is committed in the store. After a crash the client is rebuilt from the last state the store
knows, which predates any uncommitted step, and the trainer replays that step once.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import tinker

from ..config import MetaClawConfig
from .backends import StepResult, TrainingHalted, TransientTrainingError
from .datums import DatumError, loss_from_logprobs

log = logging.getLogger("metaclaw_mcp.training")

# Errors that say the account, not the batch, is the problem: stop and tell the user.
FATAL = (tinker.AuthenticationError, tinker.PermissionDeniedError, tinker.BillingError)
# Errors worth waiting out: the batch is fine, the service or network is not.
TRANSIENT = (tinker.APIConnectionError, tinker.APITimeoutError, tinker.RateLimitError, tinker.InternalServerError)


class TinkerBackend:
    """LoRA training of `model_name` (rank `lora_rank`) on the Tinker service. `service_factory` builds the
    `tinker.ServiceClient` (tests pass a stand-in for the service); the client is built on the first step."""

    name = "tinker"

    def __init__(self, config: MetaClawConfig, service_factory: Callable[[], Any] | None = None):
        self.config = config
        self._service_factory = service_factory or self._default_service
        self._service: Any = None
        self._client: Any = None
        self.resume_path: str | None = None

    def _default_service(self) -> Any:
        key = self.config.tinker_api_key.get_secret_value() if self.config.tinker_api_key else None
        return tinker.ServiceClient(api_key=key, base_url=self.config.tinker_base_url)

    async def restore(self, state_path: str | None) -> None:
        """Continue from this saved state (the newest the store has committed), or from scratch."""
        self.resume_path = state_path
        self._client = None

    async def _training_client(self) -> Any:
        if self._client is None:
            try:
                if self._service is None:
                    self._service = self._service_factory()
                if self.resume_path:
                    log.info("resuming Tinker training from %s", self.resume_path)
                    future = self._service.create_training_client_from_state_with_optimizer(self.resume_path)
                else:
                    future = self._service.create_lora_training_client(base_model=self.config.model_name,
                                                                       rank=self.config.lora_rank)
                self._client = await future
            except Exception as exc:
                raise self._classify(exc) from exc
        return self._client

    def _adam(self) -> tinker.AdamParams:
        return tinker.AdamParams(learning_rate=self.config.learning_rate, beta1=0.9, beta2=0.95, eps=1e-8)

    async def train(self, batch_id: int, step: int, datums: list[tinker.Datum], loss_fn: str,
                    loss_fn_config: dict[str, float] | None) -> StepResult:
        """One `forward_backward` and one Adam `optim_step` (beta1 0.9, beta2 0.95, eps 1e-8, the config's
        learning rate), then the training state saved, and sampler weights every `save_every` steps.
        `loss` is Tinker's `loss:sum` (summed over tokens and datums), or, from a server whose metrics have
        none (SkyRL's), the same sum computed from the `loss_fn_outputs` logprobs it returned and the datums'
        inputs (`datums.loss_from_logprobs`); `metrics` adds `loss:mean_per_datum`. A loss the server refuses
        is TrainingHalted naming it.
        TrainingHalted for refused or missing credentials, TransientTrainingError for a connection,
        timeout, rate-limit or server error; any other error of the SDK as raised."""
        client = await self._training_client()
        try:
            # Submit both before awaiting either: the service runs them in order without an idle cycle.
            fwd_bwd = client.forward_backward(datums, loss_fn, loss_fn_config)
            optim = client.optim_step(self._adam())
            out = await fwd_bwd
            opt = await optim
            name = f"step-{step:06d}"
            checkpoints: list[tuple[str, str]] = []
            if step % self.config.save_every == 0:
                sampler = await client.save_weights_for_sampler(name)
                checkpoints.append(("sampler", sampler.path))
            state = await client.save_state(name)
            checkpoints.append(("state", state.path))
        except Exception as exc:
            self._client = None  # a failed request poisons the client: rebuild it from the last saved state
            raise self._classify(exc, loss_fn) from exc
        self.resume_path = state.path
        metrics = {k: float(v) for k, v in {**(out.metrics or {}), **(opt.metrics or {})}.items()}
        loss = metrics.get("loss:sum")
        if loss is None and datums and len(out.loss_fn_outputs or []) == len(datums):
            # a Tinker-API server that reports no loss (SkyRL's): the same sum from what it returned
            try:
                loss = sum(loss_from_logprobs(d, o["logprobs"].data if hasattr(o["logprobs"], "data") else o["logprobs"],
                                              loss_fn, loss_fn_config) for d, o in zip(datums, out.loss_fn_outputs))
                metrics["loss:sum"] = loss
            except (KeyError, TypeError, DatumError) as exc:
                log.warning("step %d: the service reported no loss and it cannot be computed from its outputs (%s)",
                            step, exc)
        if loss is not None and datums:
            metrics["loss:mean_per_datum"] = loss / len(datums)
        return StepResult(loss=loss, metrics=metrics, checkpoints=checkpoints)

    def _classify(self, exc: Exception, loss_fn: str | None = None) -> Exception:
        if (loss_fn and isinstance(exc, (tinker.BadRequestError, tinker.UnprocessableEntityError,
                                         tinker.RequestFailedError)) and loss_fn in str(exc)):
            where = self.config.tinker_base_url or "the Tinker service"
            return TrainingHalted(f"{where} does not accept loss_fn {loss_fn!r} ({type(exc).__name__}: "
                                  f"{str(exc)[:200]}); set loss_fn to importance_sampling or ppo, then "
                                  "`metaclaw-mcp train resume`")
        if isinstance(exc, FATAL):
            return TrainingHalted(f"Tinker refused the credentials ({type(exc).__name__}): check TINKER_API_KEY, "
                                  "then `metaclaw-mcp train resume`")
        if (isinstance(exc, tinker.TinkerError) and not isinstance(exc, tinker.APIError)
                and ("api_key" in str(exc) or "api key" in str(exc).lower())):
            return TrainingHalted(f"Tinker has no API key: set TINKER_API_KEY, then `metaclaw-mcp train resume` ({exc})")
        if isinstance(exc, TRANSIENT):
            return TransientTrainingError(f"Tinker unreachable or busy ({type(exc).__name__}: {exc})")
        return exc
