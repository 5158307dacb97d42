"""The one LLM interface the server uses: "complete these chat messages".

Everything that talks to a language model (the judge, LLM-driven evolution) depends only on
`ChatModel`; providers (`openai.OpenAIChatModel`) and wrappers (`accounting.MeteredModel`)
implement it. Errors are the `LLMError` family below, so callers can tell "try again later"
(`LLMRateLimited`, `LLMTimeout`, `LLMUnavailable`) from "a person must fix something"
(`LLMAuthError`, `LLMRequestRejected`, `LLMBudgetExceeded`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from ..errors import MetaClawError

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class ChatMessage:
    """One chat message sent to a model."""
    role: Role
    content: str


@dataclass(frozen=True)
class Completion:
    """A model's answer. Token counts come from the provider (estimated when it sends none)."""
    text: str
    model: str
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens


@runtime_checkable
class ChatModel(Protocol):
    """Completes chat messages.

    `provider` names the backend and model for accounting and logs (e.g. "openai:gpt-4o-mini");
    it never contains credentials. `complete` returns the model's text or raises an `LLMError`;
    `purpose` ("judge", "evolve") and `namespace` are for accounting and spend caps.
    """
    provider: str

    async def complete(self, messages: list[ChatMessage], *, max_tokens: int, temperature: float = 0.0,
                       purpose: str = "judge", namespace: str = "default") -> Completion:
        """The model's answer to `messages`, at most `max_tokens` completion tokens; an LLMError on failure."""
        ...


class LLMError(MetaClawError):
    """Base of every LLM failure. `retryable` says whether the same call may succeed later."""
    retryable = False


class LLMAuthError(LLMError):
    """The provider refused the credentials (HTTP 401/403). Not retried: fix llm_api_key."""


class LLMRequestRejected(LLMError):
    """The provider rejected the request itself (another 4xx: unknown model, prompt too long). Not retried."""


class LLMRateLimited(LLMError):
    """HTTP 429 after every retry. `retry_after` is the provider's hint in seconds, when it gave one."""
    retryable = True

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class LLMTimeout(LLMError):
    """No complete answer within llm_timeout_seconds, on every attempt."""
    retryable = True


class LLMUnavailable(LLMError):
    """The provider could not be reached or answered 5xx on every attempt."""
    retryable = True


class LLMBadResponse(LLMError):
    """The provider answered 2xx but the body is not a chat completion (bad JSON, missing fields)."""


class LLMBudgetExceeded(LLMError):
    """A namespace reached its token cap (llm_token_cap); no call was made."""
