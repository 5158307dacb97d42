"""The local policy (extra `[local]`): the base model plus the newest PEFT adapter the local backend
saved, sampled on the CPU with torch.

Sampling is a plain loop over the model with its key-value cache, so that each completion's
tokens, the logprob of each under the distribution it was drawn from, stop sequences and a
per-request seed are exact. A swap loads the new adapter into a copy of the base weights, merges
it, and replaces the served model in one assignment: requests already sampling keep the model
(and the checkpoint label) they started with.
"""
from __future__ import annotations

import copy
import inspect
import logging
import threading
from pathlib import Path
from typing import Any

import anyio
import torch

from ..config import MetaClawConfig
from ..store import Database
from ..threads import run_daemon
from ..training.local_backend import load_base_model
from .base import (BaseTokenizer, OnText, int_ids, Sampled, SampledSequence, SamplingRequest, cut_at_stop,
                   newest_sampler_checkpoint, settled_text)

log = logging.getLogger("metaclaw_mcp.policy")


def top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """`probs` (rows of a distribution, shape (B, V)) keeping, per row, the smallest set of most likely
    tokens whose mass reaches `top_p`, renormalised; unchanged for top_p >= 1."""
    if top_p >= 1.0:
        return probs
    sorted_p, order = torch.sort(probs, descending=True, dim=-1)
    keep = (sorted_p.cumsum(-1) - sorted_p) < top_p      # the most likely token is always kept
    sorted_p = sorted_p * keep
    out = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return out / out.sum(-1, keepdim=True)


def _cache_arg(model: Any) -> str:
    """The keyword `model.forward` takes its key-value cache by: `cache` (transformers 5.2x), else `past_key_values`."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _cache_of(out: Any) -> Any:
    return out.cache if getattr(out, "cache", None) is not None else out.past_key_values


def sample_sequences(model: Any, tokenizer: Any, prompt_ids: list[int], request: SamplingRequest,
                     stop_ids: set[int], on_text: OnText | None = None) -> list[SampledSequence]:
    """`request.n` completions of `prompt_ids` from `model`, drawn together (the prompt is computed once).

    Each token is drawn from softmax(logits / temperature), nucleus-filtered by `top_p` (greedy at
    temperature 0); its logprob is log softmax(logits / temperature) at that token (the raw logits'
    at temperature 0), the sampler logprob the RL losses take. A completion ends at a token of
    `stop_ids` (kept, as the model's own end of turn), at a stop sequence, or at `max_tokens`.
    """
    n = request.n
    generator = torch.Generator()
    generator.manual_seed(request.seed if request.seed is not None else int(torch.randint(0, 2**62, (1,))))
    tokens: list[list[int]] = [[] for _ in range(n)]
    logprobs: list[list[float]] = [[] for _ in range(n)]
    finish: list[str | None] = [None] * n
    shown = [0] * n
    cache_arg = _cache_arg(model)
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([prompt_ids], dtype=torch.long), use_cache=True)
        past = _cache_of(out)
        logits = out.logits[:, -1, :].float()
        if n > 1:
            past.batch_repeat_interleave(n)
            logits = logits.expand(n, -1)
        for _ in range(request.max_tokens):
            if request.temperature > 0:
                logp = torch.log_softmax(logits / request.temperature, dim=-1)
                probs = top_p_filter(logp.exp(), request.top_p)
                drawn = torch.multinomial(probs, 1, generator=generator)[:, 0]
            else:
                logp = torch.log_softmax(logits, dim=-1)
                drawn = logits.argmax(-1)
            drawn_lp = logp.gather(-1, drawn[:, None])[:, 0]
            for i in range(n):
                if finish[i] is not None:
                    continue
                token = int(drawn[i])
                tokens[i].append(token)
                logprobs[i].append(max(float(drawn_lp[i]), -1e4))   # a finite value, as report_turn requires
                text = tokenizer.decode(tokens[i], skip_special_tokens=True)
                text, stopped = cut_at_stop(text, request.stop)
                if token in stop_ids or stopped:
                    finish[i] = "stop"
                elif len(tokens[i]) >= request.max_tokens:
                    finish[i] = "length"
                ready = text if finish[i] else settled_text(text, request.stop)
                if on_text is not None and len(ready) > shown[i]:
                    on_text(i, ready[shown[i]:])
                    shown[i] = len(ready)
            if all(f is not None for f in finish):
                break
            out = model(input_ids=drawn[:, None], use_cache=True, **{cache_arg: past})
            past = _cache_of(out)
            logits = out.logits[:, -1, :].float()
    result = []
    for i in range(n):
        text, _ = cut_at_stop(tokenizer.decode(tokens[i], skip_special_tokens=True), request.stop)
        result.append(SampledSequence(tokens[i], logprobs[i], text, finish[i] or "length"))  # type: ignore[arg-type]
    return result


class LocalPolicy:
    """`policy.base.Policy` over the local backend's model: `local_model_path` (else the packaged
    SmolLM2-135M-Instruct) with the newest sampler adapter under `home/adapters/` merged in.
    One request samples at a time (the CPU is shared with training)."""

    backend = "local"

    def __init__(self, config: MetaClawConfig, db: Database):
        self.config = config
        self.db = db
        self.base_model = Path(config.local_model_path).name if config.local_model_path else "SmolLM2-135M-Instruct"
        self._tokenizer = BaseTokenizer(config)
        self._base: Any = None                     # the base weights, kept to build each swapped model from
        self._served: tuple[str, Any] | None = None  # (checkpoint, model): replaced whole by a swap
        self._load_lock = anyio.Lock()
        self._sample_lock = threading.Lock()
        self._generation_stop: set[int] = set()   # end-of-turn ids the model's generation config adds

    @property
    def checkpoint(self) -> str:
        """The checkpoint new requests get ("base:<model>" before the first sampler checkpoint)."""
        return self._served[0] if self._served else f"base:{self.base_model}"

    async def tokenizer(self) -> Any:
        """The base model's tokenizer (`base.BaseTokenizer`)."""
        return await self._tokenizer.get()

    async def warm_up(self) -> None:
        """Load the tokenizer, the base model and the newest sampler adapter the store records."""
        await self.tokenizer()
        await self._model()

    async def _model(self) -> tuple[str, Any]:
        if self._served is None:
            async with self._load_lock:
                if self._served is None:
                    path = await newest_sampler_checkpoint(self.db, self.backend)
                    self._served = await run_daemon(self._build, path)
                    log.info("serving %s", self._served[0])
        return self._served

    def _build(self, path: str | None) -> tuple[str, Any]:
        """(checkpoint, model): the base model, with the adapter at `path` merged into a copy of it."""
        if self._base is None:
            self._base = load_base_model(self.config.local_model_path).eval()
            extra = getattr(getattr(self._base, "generation_config", None), "eos_token_id", None)
            self._generation_stop = int_ids(extra)
        if path is None or not Path(path).exists():
            if path is not None:
                log.warning("sampler checkpoint %s is missing: serving the base model", path)
            return f"base:{self.base_model}", self._base
        from peft import PeftModel

        merged = PeftModel.from_pretrained(copy.deepcopy(self._base), path).merge_and_unload().eval()
        return path, merged

    async def swap(self, path: str) -> None:
        """Serve the adapter at `path` from now on; the load runs beside requests (a daemon thread)."""
        if self._served is None:     # not loaded yet: the first request loads the newest anyway
            return
        async with self._load_lock:
            served = await run_daemon(self._build, path)
            self._served = served
        log.info("serving %s", path)

    async def sample(self, prompt_ids: list[int], request: SamplingRequest, on_text: OnText | None = None) -> Sampled:
        """`request.n` completions (`sample_sequences`) from the model served when the request starts."""
        tokenizer = await self.tokenizer()
        checkpoint, model = await self._model()

        def run() -> list[SampledSequence]:
            with self._sample_lock:
                return sample_sequences(model, tokenizer, prompt_ids, request,
                                        self._tokenizer.stop_ids | self._generation_stop, on_text)
        return Sampled(checkpoint, await run_daemon(run))
