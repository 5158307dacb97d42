"""An OpenAI-compatible chat-completions provider over `httpx2` (the MCP SDK's HTTP client).

Works with any server speaking `POST {base_url}/chat/completions` (OpenAI, vLLM, Ollama,
LiteLLM, Tinker's OpenAI-compatible endpoint, ...). Contract:

- each attempt has a hard deadline of `timeout_seconds` (connect + send + full answer);
- 429, 408, 5xx, connection errors and timeouts are retried up to `max_retries` times after the
  first attempt, with exponential backoff and jitter; a 429's `Retry-After` is honoured
  (and when it asks for more than `max_retry_after_seconds`, the call gives up at once);
- 401/403 raise `LLMAuthError` and other 4xx `LLMRequestRejected`, without retrying;
- at most `max_concurrency` requests are in flight per instance (sleeping retries hold no slot);
- the API key is sent only in the Authorization header: it is not in `repr`, logs or error
  messages (text echoed by the server is scrubbed of it too).
"""
from __future__ import annotations

import json
import logging
import math
import random
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import httpx2
from pydantic import SecretStr

from ..text import estimate_tokens
from .base import (ChatMessage, Completion, LLMAuthError, LLMBadResponse, LLMError, LLMRateLimited,
                   LLMRequestRejected, LLMTimeout, LLMUnavailable)

log = logging.getLogger("metaclaw_mcp.llm")

DETAIL_CHARS = 300


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = (when - (now or datetime.now(timezone.utc))).total_seconds()
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def shown_url(url: str) -> str:
    """`url` without user info or query, for logs and messages (either may carry a credential)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # IPv6
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class OpenAIChatModel:
    """`ChatModel` for an OpenAI-compatible `/chat/completions` endpoint. Use one instance per process;
    `aclose()` it at shutdown."""

    def __init__(self, base_url: str, api_key: str | SecretStr | None, model: str, *,
                 timeout_seconds: float = 60.0, max_retries: int = 4, max_concurrency: int = 4,
                 backoff_seconds: float = 0.5, max_backoff_seconds: float = 30.0,
                 max_retry_after_seconds: float = 120.0):
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url {base_url!r} must start with http:// or https://")
        if timeout_seconds <= 0 or max_retries < 0 or max_concurrency < 1:
            raise ValueError("timeout_seconds must be > 0, max_retries >= 0 and max_concurrency >= 1")
        self.base_url = base_url.rstrip("/")
        self.shown_url = shown_url(self.base_url)
        self.model = model
        self.provider = f"openai:{model}"
        self.timeout_seconds = timeout_seconds
        self.max_retries = max_retries
        self.max_concurrency = max_concurrency
        self.backoff_seconds = backoff_seconds
        self.max_backoff_seconds = max_backoff_seconds
        self.max_retry_after_seconds = max_retry_after_seconds
        self._api_key = api_key if isinstance(api_key, SecretStr) or api_key is None else SecretStr(api_key)
        self._url = f"{self.base_url}/chat/completions"
        # Built on first use: both belong to the event loop that runs the calls.
        self._client: httpx2.AsyncClient | None = None
        self._slots: anyio.Semaphore | None = None

    def __repr__(self) -> str:
        return f"OpenAIChatModel(base_url={self.shown_url!r}, model={self.model!r})"

    async def aclose(self) -> None:
        """Close the HTTP connection pool. The instance builds a new one if used again."""
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    async def __aenter__(self) -> OpenAIChatModel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def complete(self, messages: list[ChatMessage], *, max_tokens: int, temperature: float = 0.0,
                       purpose: str = "judge", namespace: str = "default") -> Completion:
        """One chat completion, retried as the module docstring says. Raises an `LLMError`."""
        if not messages:
            raise ValueError("messages is empty")
        body = {"model": self.model, "max_tokens": max_tokens, "temperature": temperature,
                "messages": [{"role": m.role, "content": m.content} for m in messages]}
        attempts = self.max_retries + 1
        for attempt in range(1, attempts + 1):
            try:
                return await self._attempt(body, attempt, attempts)
            except LLMError as exc:
                if not exc.retryable:
                    raise
                too_long = (isinstance(exc, LLMRateLimited) and exc.retry_after is not None
                            and exc.retry_after > self.max_retry_after_seconds)
                if attempt == attempts or too_long:
                    raise _gave_up(exc, attempt) from None
                delay = self._delay(attempt, exc)
                log.warning("%s (%s, purpose %s): %s; retrying in %.2fs (attempt %d of %d)",
                            self.provider, self.shown_url, purpose, exc, delay, attempt + 1, attempts)
                await anyio.sleep(delay)
        raise AssertionError("unreachable")  # the loop returns or raises

    def _delay(self, attempt: int, exc: LLMError) -> float:
        if isinstance(exc, LLMRateLimited) and exc.retry_after is not None:
            # Jitter on top of the hint, so clients told the same time do not return in lockstep.
            return exc.retry_after + random.uniform(0, self.backoff_seconds)
        cap = min(self.max_backoff_seconds, self.backoff_seconds * 2 ** (attempt - 1))
        return random.uniform(cap / 2, cap)  # "equal jitter": never retries at once, spreads clients

    def _scrub(self, text: str) -> str:
        key = self._api_key.get_secret_value() if self._api_key else ""
        return text.replace(key, "[api key]") if key else text

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key is not None and self._api_key.get_secret_value():
            headers["Authorization"] = f"Bearer {self._api_key.get_secret_value()}"
        return headers

    async def _attempt(self, body: dict[str, Any], attempt: int, attempts: int) -> Completion:
        if self._client is None:
            connect = min(10.0, self.timeout_seconds)
            self._client = httpx2.AsyncClient(
                timeout=httpx2.Timeout(self.timeout_seconds, connect=connect),
                limits=httpx2.Limits(max_connections=self.max_concurrency,
                                     max_keepalive_connections=self.max_concurrency))
        if self._slots is None:
            self._slots = anyio.Semaphore(self.max_concurrency)
        async with self._slots:
            log.debug("POST %s/chat/completions model=%s (attempt %d of %d)", self.shown_url, self.model,
                      attempt, attempts)
            try:
                # httpx's read timeout is per chunk; this bounds the whole answer.
                with anyio.fail_after(self.timeout_seconds):
                    resp = await self._client.post(self._url, json=body, headers=self._headers())
            except (TimeoutError, httpx2.TimeoutException):
                raise LLMTimeout(f"{self.provider} at {self.shown_url} gave no answer within "
                                 f"{self.timeout_seconds:g}s; raise llm_timeout_seconds or ask for fewer "
                                 "tokens") from None
            except httpx2.TransportError as exc:
                raise LLMUnavailable(f"cannot reach {self.shown_url} ({type(exc).__name__}: "
                                     f"{self._scrub(str(exc))[:DETAIL_CHARS]}); check llm_base_url and the "
                                     "network") from None
        return self._parse(resp)

    def _detail(self, resp: httpx2.Response) -> str:
        """The provider's error message (OpenAI puts it in error.message), clipped and scrubbed."""
        text = resp.text
        try:
            data = json.loads(text)
            err = data.get("error") if isinstance(data, dict) else None
            if isinstance(err, dict) and isinstance(err.get("message"), str):
                text = err["message"]
            elif isinstance(err, str):
                text = err
        except ValueError:
            pass
        return self._scrub(" ".join(text.split()))[:DETAIL_CHARS] or "(empty body)"

    def _parse(self, resp: httpx2.Response) -> Completion:
        status = resp.status_code
        where = f"{self.provider} at {self.shown_url}"
        if status in (401, 403):
            raise LLMAuthError(f"{where} refused the credentials (HTTP {status}: {self._detail(resp)}); "
                               "check llm_api_key (METACLAW_LLM_API_KEY) and that it may use this model")
        if status == 429:
            retry_after = parse_retry_after(resp.headers.get("retry-after"))
            hint = f", retry after {retry_after:g}s" if retry_after is not None else ""
            raise LLMRateLimited(f"{where} is rate limiting (HTTP 429{hint}: {self._detail(resp)}); "
                                 "lower llm_max_concurrency or judge_votes, or wait", retry_after)
        if status == 408 or status >= 500:
            raise LLMUnavailable(f"{where} failed (HTTP {status}: {self._detail(resp)}); it may be overloaded "
                                 "or down, try again later")
        if not 200 <= status < 300:
            raise LLMRequestRejected(f"{where} rejected the request (HTTP {status}: {self._detail(resp)}); "
                                     "check llm_model and llm_base_url (it usually ends in /v1)")
        try:
            data = json.loads(resp.content)
        except ValueError:
            raise LLMBadResponse(f"{where} answered HTTP {status} with a body that is not JSON "
                                 f"({self._scrub(resp.text[:120])!r}); is llm_base_url an OpenAI-compatible "
                                 "API (usually ending in /v1)?") from None
        choices = data.get("choices") if isinstance(data, dict) else None
        first = choices[0] if isinstance(choices, list) and choices else None
        message = first.get("message") if isinstance(first, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):  # some servers send content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if not isinstance(content, str):
            finish = first.get("finish_reason") if isinstance(first, dict) else None
            raise LLMBadResponse(f"{where} answered without choices[0].message.content (finish_reason "
                                 f"{finish!r}); the model may have refused or the server is not chat-completions "
                                 "compatible")
        usage = data.get("usage")
        usage = usage if isinstance(usage, dict) else {}
        prompt_tokens = _count(usage.get("prompt_tokens"))
        completion_tokens = _count(usage.get("completion_tokens"))
        if prompt_tokens is None:  # no usage reported: estimate, so spend caps still bite
            prompt_tokens = sum(estimate_tokens(m.get("content", "")) for m in self._sent_messages(resp))
        if completion_tokens is None:
            completion_tokens = estimate_tokens(content)
        model = data.get("model") if isinstance(data.get("model"), str) and data.get("model") else self.model
        return Completion(text=content, model=model, prompt_tokens=prompt_tokens,
                          completion_tokens=completion_tokens)

    @staticmethod
    def _sent_messages(resp: httpx2.Response) -> list[dict[str, Any]]:
        try:
            sent = json.loads(resp.request.content)
            msgs = sent.get("messages", [])
            return [m for m in msgs if isinstance(m, dict) and isinstance(m.get("content"), str)]
        except (ValueError, AttributeError, RuntimeError):
            return []


def _count(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        return None
    return int(value)


def _gave_up(exc: LLMError, attempts: int) -> LLMError:
    """The same error type, its message saying how many attempts were made."""
    message = f"{exc} (gave up after {attempts} attempt{'s' if attempts != 1 else ''})"
    if isinstance(exc, LLMRateLimited):
        return LLMRateLimited(message, exc.retry_after)
    return type(exc)(message)
