"""On-policy distillation: a teacher's per-token logprobs on the tokens the policy sampled.

With `teacher_model` set, each RL turn's completion is scored by the teacher, and its per-token
advantage gains `teacher_kl_coef * (teacher logprob - sampler logprob)`: the reverse-KL signal
of on-policy distillation (the policy is pushed toward what the teacher would have said, on the
policy's own samples), trained through the same `importance_sampling` loss. The teacher is a
Tinker base model or sampler checkpoint (`tinker://...`), or a local model folder.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import tinker

from ..config import MetaClawConfig
from ..threads import run_daemon
from .backends import TransientTrainingError
from .datums import DatumError


class Teacher(Protocol):
    """Scores sampled tokens: one logprob per completion token, given the prompt."""
    name: str

    async def logprobs(self, prompt_ids: Sequence[int], completion_ids: Sequence[int]) -> list[float]:
        """log p_teacher(completion_i | prompt, completion_<i) for each completion token; shape (C,)."""
        ...


def kl_advantages(teacher_C: Sequence[float], sampler_C: Sequence[float], coef: float) -> list[float]:
    """coef * (teacher - sampler) per completion token: minus the per-token reverse-KL estimate."""
    if len(teacher_C) != len(sampler_C):
        raise DatumError(f"the teacher scored {len(teacher_C)} tokens of {len(sampler_C)}")
    return [coef * (t - s) for t, s in zip(teacher_C, sampler_C)]


def _completion_part(values: Sequence[float | None], n: int, name: str) -> list[float]:
    part = list(values)[-n:]
    if len(part) != n or any(v is None or not math.isfinite(v) for v in part):
        raise DatumError(f"the teacher {name} returned no finite logprob for some completion tokens")
    return [float(v) for v in part]   # type: ignore[arg-type]


class TinkerTeacher:
    """The teacher on Tinker: `SamplingClient.compute_logprobs` of `teacher_model` (a base model name or
    a `tinker://` sampler path) on prompt + completion. `service`: a `tinker.ServiceClient` (built from the
    config when None; tests pass a stand-in). Service outages are TransientTrainingError (the batch waits)."""

    def __init__(self, config: MetaClawConfig, service: Any = None):
        assert config.teacher_model is not None
        self.name = config.teacher_model
        self.config = config
        self._service = service
        self._client: Any = None

    async def _sampling_client(self) -> Any:
        if self._client is None:
            if self._service is None:
                key = self.config.tinker_api_key.get_secret_value() if self.config.tinker_api_key else None
                self._service = tinker.ServiceClient(api_key=key, base_url=self.config.tinker_base_url)
            if self.name.startswith("tinker://"):
                self._client = await self._service.create_sampling_client(model_path=self.name)
            else:
                self._client = await self._service.create_sampling_client(base_model=self.name)
        return self._client

    async def logprobs(self, prompt_ids: Sequence[int], completion_ids: Sequence[int]) -> list[float]:
        """The teacher's logprob of each completion token (`Teacher.logprobs`)."""
        from .tinker_backend import TRANSIENT
        try:
            client = await self._sampling_client()
            out = await client.compute_logprobs(tinker.ModelInput.from_ints([*prompt_ids, *completion_ids]))
        except TRANSIENT as exc:
            self._client = None
            raise TransientTrainingError(f"the teacher {self.name} is unreachable or busy ({type(exc).__name__})") from exc
        return _completion_part(out, len(completion_ids), self.name)


class LocalTeacher:
    """The teacher as a local causal LM folder (extra `[local]`), scored on the CPU in a daemon thread."""

    def __init__(self, path: str):
        self.name = path
        self._model: Any = None

    def _score(self, prompt_ids: Sequence[int], completion_ids: Sequence[int]) -> list[float]:
        import torch

        from .local_backend import load_base_model
        if self._model is None:
            self._model = load_base_model(self.name).eval()
        ids = torch.tensor([[*prompt_ids, *completion_ids]], dtype=torch.long)
        with torch.inference_mode():
            logp = torch.log_softmax(self._model(input_ids=ids).logits[0, :-1].float(), -1)
        targets = ids[0, 1:]
        values = logp.gather(-1, targets[:, None])[:, 0].tolist()
        return _completion_part(values, len(completion_ids), self.name)

    async def logprobs(self, prompt_ids: Sequence[int], completion_ids: Sequence[int]) -> list[float]:
        """The teacher's logprob of each completion token (`Teacher.logprobs`)."""
        return await run_daemon(self._score, list(prompt_ids), list(completion_ids))


def make_teacher(config: MetaClawConfig) -> Teacher | None:
    """The configured teacher: a local folder when `teacher_model` names one, else a Tinker model; None unset."""
    if not config.teacher_model:
        return None
    if Path(config.teacher_model).expanduser().is_dir():
        return LocalTeacher(str(Path(config.teacher_model).expanduser()))
    return TinkerTeacher(config)
