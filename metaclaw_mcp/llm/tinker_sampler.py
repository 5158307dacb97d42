"""The third LLM provider: the Tinker sampling client of the latest checkpoint the trainer saved.

The model that is learning from the turns also judges them and writes skills, so no other
account is needed. Messages are rendered with the base model's chat template; the sampler
returns token ids, decoded back to text.
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import tinker

from ..training.render import plain_messages, token_ids
from ..training.tinker_backend import TRANSIENT
from .base import ChatMessage, Completion, LLMAuthError, LLMError, LLMUnavailable



class TinkerSamplerModel:
    """`ChatModel` over `tinker.SamplingClient` for the newest sampler checkpoint.

    `latest_path` returns the newest `tinker://.../sampler_weights/...` path (None: the base model);
    the client is rebuilt whenever it changes.
    """

    def __init__(self, service: Any, base_model: str, tokenizer: Any | Callable[[], Any],
                 latest_path: Callable[[], Awaitable[str | None]]):
        self.service = service
        self.base_model = base_model
        self._tokenizer = tokenizer  # the tokenizer, or a function that loads it (on first use: it can be slow)
        self.latest_path = latest_path
        self._client: Any = None
        self._client_path: str | None = None
        self.provider = f"tinker:{base_model}"

    async def _sampling_client(self) -> Any:
        path = await self.latest_path()
        if self._client is None or path != self._client_path:
            future = (self.service.create_sampling_client(model_path=path) if path
                      else self.service.create_sampling_client(base_model=self.base_model))
            self._client = await future
            self._client_path = path
            self.provider = f"tinker:{path or self.base_model}"
        return self._client

    async def tokenizer(self) -> Any:
        """The base model's tokenizer, loaded in a worker thread on first use when given as a loader."""
        if callable(self._tokenizer) and not hasattr(self._tokenizer, "apply_chat_template"):
            self._tokenizer = await anyio.to_thread.run_sync(self._tokenizer)
        return self._tokenizer

    async def complete(self, messages: list[ChatMessage], *, max_tokens: int, temperature: float = 0.0,
                       purpose: str = "judge", namespace: str = "default") -> Completion:
        """One sample from the newest sampler checkpoint (or the base model) for the chat-templated
        messages, decoded; token counts are the prompt's and the sample's. `purpose` and `namespace` are
        unused (`MeteredModel` accounts). LLMAuthError for refused credentials, LLMUnavailable for a
        transient service error, LLMError for any other Tinker error."""
        tokenizer = await self.tokenizer()
        msgs = plain_messages([{"role": m.role, "content": m.content} for m in messages])
        encoded = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
        prompt_ids = token_ids(encoded)
        params = tinker.SamplingParams(max_tokens=max_tokens, temperature=temperature,
                                       stop=[tokenizer.eos_token] if tokenizer.eos_token else None)
        try:
            client = await self._sampling_client()
            response = await client.sample(tinker.ModelInput.from_ints(prompt_ids), 1, params)
        except (tinker.AuthenticationError, tinker.PermissionDeniedError) as exc:
            raise LLMAuthError(f"{self.provider}: Tinker refused the credentials; check TINKER_API_KEY") from exc
        except TRANSIENT as exc:
            self._client = None
            raise LLMUnavailable(f"{self.provider}: Tinker unreachable or busy ({type(exc).__name__}); "
                                 "try again later") from exc
        except tinker.TinkerError as exc:
            self._client = None
            raise LLMError(f"{self.provider}: sampling failed ({type(exc).__name__}: {exc})") from exc
        tokens = list(response.sequences[0].tokens)
        text = tokenizer.decode(tokens, skip_special_tokens=True)
        return Completion(text=text, model=self._client_path or self.base_model, prompt_tokens=len(prompt_ids),
                          completion_tokens=len(tokens))

    async def aclose(self) -> None:
        """Drop the sampling client (the next call builds a new one)."""
        self._client = None
