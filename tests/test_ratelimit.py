"""Per-caller rate limits: token buckets, and the ASGI middleware in front of a real Starlette app
(through httpx's ASGI transport: the same requests and responses as over a socket)."""
from __future__ import annotations

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from metaclaw_mcp.access import Principal
from metaclaw_mcp.ratelimit import RateLimit, TokenBuckets

pytestmark = pytest.mark.anyio


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_allows_its_burst_then_its_rate():
    clock = Clock()
    buckets = TokenBuckets(rate=2.0, burst=3, clock=clock)
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a") == pytest.approx(0.5)          # empty: one token comes in 1/rate s
    assert buckets.take("b") == 0.0                          # another caller has its own bucket
    clock.now += 0.5
    assert buckets.take("a") == 0.0
    clock.now += 10.0                                       # refills up to the burst, not beyond
    assert [buckets.take("a") for _ in range(4)][-1] > 0.0


def test_buckets_are_bounded_and_arguments_checked():
    buckets = TokenBuckets(rate=1.0, burst=1, max_keys=3, clock=Clock())
    for key in "abcde":
        buckets.take(key)
    assert len(buckets) == 3
    with pytest.raises(ValueError, match="rate must be > 0"):
        TokenBuckets(rate=0.0, burst=1)
    with pytest.raises(ValueError, match="burst must be at least 1"):
        TokenBuckets(rate=1.0, burst=0)


def principal_app(name: str | None):
    """The app the middleware guards, behind a stand-in for the bearer check that puts `name`'s
    principal in the scope as the real one does."""
    calls = {"n": 0}

    async def hit(request):
        calls["n"] += 1
        return JSONResponse({"ok": True})

    inner = RateLimit(Starlette(routes=[Route("/mcp", hit, methods=["POST"]),
                                        Route("/v1/chat/completions", hit, methods=["POST"])]),
                      TokenBuckets(rate=1.0, burst=2), principal_key="principal")

    async def app(scope, receive, send):
        if name is not None and scope["type"] == "http":
            scope = {**scope, "state": {"principal": Principal(name)}}
        await inner(scope, receive, send)
    return app, calls


async def test_over_the_rate_gets_429_with_retry_after_and_never_reaches_the_app():
    app, calls = principal_app("alice")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as c:
        codes = [(await c.post("/mcp", json={})).status_code for _ in range(3)]
        assert codes == [200, 200, 429] and calls["n"] == 2
        limited = await c.post("/mcp", json={})
        assert limited.headers["retry-after"] == "1"
        assert limited.json()["error"] == "rate_limited" and "1 requests per second" in limited.json()["detail"]
        v1 = await c.post("/v1/chat/completions", json={})
        assert v1.status_code == 429 and v1.json()["error"]["type"] == "rate_limit_error"
    assert calls["n"] == 2


async def test_without_tokens_each_client_address_has_its_own_bucket():
    app, calls = principal_app(None)
    for address in ("10.0.0.1", "10.0.0.2"):
        transport = httpx.ASGITransport(app=app, client=(address, 5000))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
            assert [(await c.post("/mcp", json={})).status_code for _ in range(3)] == [200, 200, 429]
    assert calls["n"] == 4


async def test_a_served_token_over_its_rate_gets_429_then_works_again(tmp_path):
    """Through `metaclaw-mcp serve --transport http --auth-token`: past the burst a token's requests
    get 429 with Retry-After (a wrong token still gets 401); after a moment a real MCP client works."""
    import anyio

    from mcp_servers import call, connect, served

    with served(tmp_path / "home", "http", "--auth-token", "tok-1", METACLAW_HTTP_RATE_LIMIT="5",
                METACLAW_HTTP_RATE_BURST="5") as (port, _):
        url = f"http://127.0.0.1:{port}/metrics"
        async with httpx.AsyncClient() as http:
            codes = [(await http.get(url, headers={"Authorization": "Bearer tok-1"})).status_code for _ in range(6)]
            assert codes == [200] * 5 + [429]
            limited = await http.get(url, headers={"Authorization": "Bearer tok-1"})
            assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
            assert (await http.get(url, headers={"Authorization": "Bearer wrong"})).status_code == 401
        await anyio.sleep(1.2)
        async with connect("http", tmp_path / "home", port, "auto", token="tok-1") as client:
            is_error, out = await call(client, "fetch_skills", {"query": "parse a date"})
            assert not is_error and out["skills"]
