"""Per-caller rate limits for the HTTP and SSE transports: one token bucket per bearer token (per
client address where the server has no tokens), so one client cannot take the server from the
others by the number of its requests.

A bucket holds at most `burst` requests and refills at `rate` per second (the token-bucket
algorithm, as in RFC 2697's single-rate meter without the colours). A request finds its bucket
empty: 429 with `Retry-After` (whole seconds, at least 1, as RFC 9110 has it) and a one-line body
in the shape of the route it came to (`/v1`: OpenAI's error object; elsewhere the server's own).
Nothing reaches the application, so a limited request writes nothing.

Memory is bounded: past `max_keys` callers, the buckets that have been idle longest are dropped
(an idle bucket has refilled, so dropping it loses nothing but its key).
"""
from __future__ import annotations

import json
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

MAX_KEYS = 10_000   # callers whose buckets are kept; past it the longest idle go


class TokenBuckets:
    """Buckets keyed by caller: `take(key)` spends one request's token or says how long to wait.

    `rate`: requests per second each bucket refills (> 0); `burst`: its size (>= 1); `clock`: a
    monotonic time in seconds (tests pass their own). Not thread-safe: one event loop uses it."""

    def __init__(self, rate: float, burst: int, max_keys: int = MAX_KEYS,
                 clock: Callable[[], float] = time.monotonic):
        if not rate > 0:
            raise ValueError(f"rate must be > 0 requests per second (got {rate!r})")
        if burst < 1:
            raise ValueError(f"burst must be at least 1 request (got {burst!r})")
        self.rate, self.burst, self.max_keys, self.clock = float(rate), int(burst), max_keys, clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()   # key -> (tokens, at)

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str) -> float:
        """Spend one token of `key`'s bucket: 0.0 when there was one, else the seconds until there is."""
        now = self.clock()
        tokens, at = self._buckets.pop(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * self.rate)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self.rate
        self._buckets[key] = (tokens, now)   # most recently used last
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return wait


class RateLimit:
    """ASGI middleware: HTTP requests over their caller's rate get 429 before the app sees them.

    The caller is `key(scope)`: by default the principal the bearer check put in the scope's state
    under `principal_key` (its `name`), else the client's address. Run it inside the bearer check,
    so a token's requests share one bucket from whatever address they come."""

    def __init__(self, app: Any, buckets: TokenBuckets, principal_key: str | None = None,
                 key: Callable[[dict[str, Any]], str] | None = None):
        self.app = app
        self.buckets = buckets
        self.principal_key = principal_key
        self.key = key or self._default_key

    def _default_key(self, scope: dict[str, Any]) -> str:
        principal = (scope.get("state") or {}).get(self.principal_key) if self.principal_key else None
        if principal is not None:
            return f"token:{getattr(principal, 'name', principal)}"
        client = scope.get("client") or ("unknown", 0)
        return f"address:{client[0]}"

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        wait = self.buckets.take(self.key(scope))
        if wait <= 0.0:
            await self.app(scope, receive, send)
            return
        await send_limited(scope, send, self.buckets.rate, wait)


def limited_body(path: str, rate: float, wait: float) -> bytes:
    """The 429 body: OpenAI's error shape under `/v1`, the server's own elsewhere; one line each."""
    message = f"more than {rate:g} requests per second from this caller; retry in {wait:.2f} s"
    if path == "/v1" or path.startswith("/v1/"):
        return json.dumps({"error": {"message": message, "type": "rate_limit_error", "param": None,
                                     "code": "rate_limit_exceeded"}}).encode()
    return json.dumps({"error": "rate_limited", "detail": message}).encode()


async def send_limited(scope: dict[str, Any], send: Any, rate: float, wait: float) -> None:
    """Answer 429 with `Retry-After` (whole seconds, at least 1) and `limited_body`."""
    body = limited_body(scope.get("path", ""), rate, wait)
    await send({"type": "http.response.start", "status": 429, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"retry-after", str(max(1, math.ceil(wait))).encode())]})
    await send({"type": "http.response.body", "body": body})


__all__ = ["MAX_KEYS", "RateLimit", "TokenBuckets", "limited_body", "send_limited"]
