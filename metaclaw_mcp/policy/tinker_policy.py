"""The Tinker policy: a `tinker.SamplingClient` for the newest sampler checkpoint the Tinker backend
saved (the base model before the first), swapped when a new one is recorded.

The swap builds the new client first and then replaces the served (checkpoint, client) pair in
one assignment: requests already sampling keep the client, and the label, they started with.
"""
from __future__ import annotations

import logging
from typing import Any

import anyio
import tinker

from ..config import MetaClawConfig
from ..store import Database
from .base import BaseTokenizer, OnText, Sampled, SampledSequence, SamplingRequest, cut_at_stop, newest_sampler_checkpoint

log = logging.getLogger("metaclaw_mcp.policy")


class TinkerPolicy:
    """`policy.base.Policy` over the Tinker service for `model_name`. `service` is a `tinker.ServiceClient`
    (built from `tinker_api_key` and `tinker_base_url` when None; tests pass a stand-in). Tinker's own
    errors pass through (the endpoint reports them as a 502 or 503)."""

    backend = "tinker"

    def __init__(self, config: MetaClawConfig, db: Database, service: Any = None):
        self.config = config
        self.db = db
        self.base_model = config.model_name
        self._service = service
        self._tokenizer = BaseTokenizer(config)
        self._served: tuple[str, Any] | None = None
        self._lock = anyio.Lock()

    @property
    def checkpoint(self) -> str:
        """The checkpoint new requests get ("base:<model>" before the first sampler checkpoint)."""
        return self._served[0] if self._served else f"base:{self.base_model}"

    def _service_client(self) -> Any:
        if self._service is None:
            key = self.config.tinker_api_key.get_secret_value() if self.config.tinker_api_key else None
            self._service = tinker.ServiceClient(api_key=key, base_url=self.config.tinker_base_url)
        return self._service

    async def tokenizer(self) -> Any:
        """The base model's tokenizer (`base.BaseTokenizer`: one load, which concurrent requests wait for)."""
        return await self._tokenizer.get()

    async def warm_up(self) -> None:
        """Load the tokenizer and build the sampling client of the newest checkpoint."""
        await self.tokenizer()
        await self._client()

    async def _build(self, path: str | None) -> tuple[str, Any]:
        service = self._service_client()
        if path:
            return path, await service.create_sampling_client(model_path=path)
        return f"base:{self.base_model}", await service.create_sampling_client(base_model=self.base_model)

    async def _client(self) -> tuple[str, Any]:
        if self._served is None:
            async with self._lock:
                if self._served is None:
                    self._served = await self._build(await newest_sampler_checkpoint(self.db, self.backend))
                    log.info("serving %s", self._served[0])
        return self._served

    async def swap(self, path: str) -> None:
        """Serve the sampler weights at `path` (a tinker:// path) to new requests."""
        async with self._lock:
            self._served = await self._build(path)
        log.info("serving %s", path)

    async def sample(self, prompt_ids: list[int], request: SamplingRequest, on_text: OnText | None = None) -> Sampled:
        """`request.n` samples in one `SamplingClient.sample` call; each sequence's tokens and logprobs as
        Tinker returned them, the text decoded and cut at a stop sequence. `on_text` gets each whole text."""
        tokenizer = await self.tokenizer()
        checkpoint, client = await self._client()
        params = tinker.SamplingParams(max_tokens=request.max_tokens, temperature=request.temperature,
                                       top_p=request.top_p, seed=request.seed,
                                       stop=list(request.stop) or sorted(self._tokenizer.stop_ids) or None)
        response = await client.sample(tinker.ModelInput.from_ints(prompt_ids), request.n, params)
        sequences = []
        for i, seq in enumerate(response.sequences):
            tokens = [int(t) for t in seq.tokens]
            logprobs = [max(float(v), -1e4) for v in (seq.logprobs or [0.0] * len(tokens))]
            text, cut = cut_at_stop(tokenizer.decode(tokens, skip_special_tokens=True), request.stop)
            ended = cut or (tokens and tokens[-1] in self._tokenizer.stop_ids) or getattr(seq, "stop_reason", None) == "stop"
            sequences.append(SampledSequence(tokens, logprobs, text, "stop" if ended else "length"))
            if on_text is not None and text:
                on_text(i, text)
        return Sampled(checkpoint, sequences)
