"""The OpenAI-compatible provider against a real local HTTP server; config and make_chat_model."""
from __future__ import annotations

import logging
import socket
import time
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import anyio
import pytest
from llm_server import Reply, completion, serve_chat

from metaclaw_mcp.config import load_config
from metaclaw_mcp.errors import ConfigError
from metaclaw_mcp.llm import (ChatMessage, Completion, LLMAuthError, LLMBadResponse, LLMRateLimited,
                              LLMRequestRejected, LLMTimeout, LLMUnavailable, MeteredModel, OpenAIChatModel,
                              make_chat_model)
from metaclaw_mcp.llm.openai import parse_retry_after, shown_url

pytestmark = pytest.mark.anyio

KEY = "sk-test-SECRET-0123456789abcdef"
HELLO = [ChatMessage("system", "Be brief."), ChatMessage("user", "Say hi")]


def model(base_url: str, **kw) -> OpenAIChatModel:
    kw = {"timeout_seconds": 5.0, "max_retries": 3, "backoff_seconds": 0.01, "max_backoff_seconds": 0.05} | kw
    return OpenAIChatModel(base_url, KEY, "fake-model", **kw)


async def ask(m: OpenAIChatModel) -> Completion:
    """One completion, closing the model's connection pool afterwards."""
    async with m:
        return await m.complete(HELLO, max_tokens=5)


async def test_success_sends_the_wire_format_and_parses_usage():
    async with serve_chat([Reply(body=completion("hi there", 21, 3, model="fake-model-2026"))]) as srv:
        m = model(srv.base_url)
        try:
            out = await m.complete(HELLO, max_tokens=50, temperature=0.2)
        finally:
            await m.aclose()
    assert out.text == "hi there" and out.model == "fake-model-2026"
    assert (out.prompt_tokens, out.completion_tokens, out.total_tokens) == (21, 3, 24)
    assert srv.paths == ["/v1/chat/completions"]
    assert srv.bodies[0] == {"model": "fake-model", "max_tokens": 50, "temperature": 0.2,
                             "messages": [{"role": "system", "content": "Be brief."},
                                          {"role": "user", "content": "Say hi"}]}
    assert srv.headers[0]["authorization"] == f"Bearer {KEY}"
    assert m.provider == "openai:fake-model"


async def test_no_key_sends_no_authorization_and_missing_usage_is_estimated():
    async with serve_chat([Reply(body=completion("x" * 40, None, None))]) as srv:
        m = OpenAIChatModel(srv.base_url + "/", None, "local", backoff_seconds=0.01)
        out = await m.complete(HELLO, max_tokens=10)
        await m.aclose()
    assert "authorization" not in srv.headers[0]
    assert srv.paths == ["/v1/chat/completions"]  # the trailing slash of base_url is dropped
    assert out.completion_tokens == 10 and out.prompt_tokens > 0
    assert out.model == "fake-model"  # the model the server says answered


async def test_401_raises_auth_error_without_retrying():
    async with serve_chat([Reply(401, {"error": {"message": "Incorrect API key provided"}})]) as srv:
        with pytest.raises(LLMAuthError, match="Incorrect API key provided") as info:
            await ask(model(srv.base_url))
    assert srv.count == 1
    assert "llm_api_key" in str(info.value)


async def test_403_is_an_auth_error_and_other_4xx_are_rejected_without_retry():
    async with serve_chat([Reply(403, {"error": {"message": "no access to model"}})]) as srv:
        with pytest.raises(LLMAuthError):
            await ask(model(srv.base_url))
        assert srv.count == 1
    async with serve_chat([Reply(404, {"error": {"message": "The model `nope` does not exist"}})]) as srv:
        with pytest.raises(LLMRequestRejected, match="does not exist"):
            await ask(model(srv.base_url))
        assert srv.count == 1


async def test_429_is_retried_after_retry_after():
    script = [Reply(429, {"error": {"message": "slow down"}}, {"Retry-After": "0.3"}), Reply(body=completion("ok"))]
    async with serve_chat(script) as srv:
        out = await ask(model(srv.base_url, backoff_seconds=0.01))
    assert out.text == "ok" and srv.count == 2
    assert srv.times[1] - srv.times[0] >= 0.3


async def test_429_asking_for_too_long_a_wait_gives_up_at_once():
    script = [Reply(429, {"error": {"message": "quota"}}, {"Retry-After": "3600"})]
    async with serve_chat(script) as srv:
        with pytest.raises(LLMRateLimited) as info:
            await ask(model(srv.base_url, max_retry_after_seconds=10))
    assert srv.count == 1 and info.value.retry_after == 3600


async def test_429_without_retry_after_backs_off_and_gives_up_after_all_attempts():
    async with serve_chat([Reply(429, {"error": {"message": "busy"}})]) as srv:
        with pytest.raises(LLMRateLimited, match="gave up after 3 attempts"):
            await ask(model(srv.base_url, max_retries=2))
    assert srv.count == 3


async def test_500_then_success_is_retried():
    async with serve_chat([Reply(500, "internal error"), Reply(502, "bad gateway"), Reply()]) as srv:
        out = await ask(model(srv.base_url))
    assert out.text == "ok" and srv.count == 3


async def test_5xx_on_every_attempt_raises_unavailable():
    async with serve_chat([Reply(503, {"error": {"message": "overloaded"}})]) as srv:
        with pytest.raises(LLMUnavailable, match=r"overloaded.*gave up after 2 attempts"):
            await ask(model(srv.base_url, max_retries=1))
    assert srv.count == 2


async def test_malformed_json_body_is_a_bad_response_and_not_retried():
    async with serve_chat([Reply(200, "{not json")]) as srv:
        with pytest.raises(LLMBadResponse, match="not JSON"):
            await ask(model(srv.base_url))
    assert srv.count == 1


@pytest.mark.parametrize("body", [{"choices": []}, {"id": "x"}, {"choices": [{"message": {"role": "assistant"}}]},
                                  {"choices": [{"message": {"content": None}, "finish_reason": "content_filter"}]},
                                  [1, 2]])
async def test_missing_fields_are_a_bad_response(body):
    async with serve_chat([Reply(body=body)]) as srv:
        with pytest.raises(LLMBadResponse, match=r"choices\[0\]\.message\.content"):
            await ask(model(srv.base_url))
    assert srv.count == 1


async def test_a_slow_server_times_out_after_every_attempt():
    async with serve_chat([Reply(delay=3.0)]) as srv:
        start = time.monotonic()
        with pytest.raises(LLMTimeout, match="gave up after 2 attempts"):
            await ask(model(srv.base_url, timeout_seconds=0.3, max_retries=1))
        elapsed = time.monotonic() - start
        assert srv.count == 2
    assert 0.6 <= elapsed < 2.5


async def test_a_timeout_then_success_is_retried():
    async with serve_chat([Reply(delay=3.0), Reply()]) as srv:
        out = await ask(model(srv.base_url, timeout_seconds=0.3))
    assert out.text == "ok" and srv.count == 2


async def test_connection_refused_raises_unavailable_after_retries():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(LLMUnavailable, match=r"cannot reach .*gave up after 3 attempts"):
        await ask(model(f"http://127.0.0.1:{port}/v1", max_retries=2))


async def test_concurrency_limit_is_respected():
    async with serve_chat([Reply(delay=0.2)]) as srv:
        m = model(srv.base_url, max_concurrency=2)
        results = []

        async def one() -> None:
            results.append(await m.complete(HELLO, max_tokens=5))

        async with anyio.create_task_group() as tg:
            for _ in range(6):
                tg.start_soon(one)
        await m.aclose()
    assert len(results) == 6 and srv.count == 6
    assert srv.max_active == 2


async def test_the_api_key_never_reaches_logs_errors_or_repr(caplog):
    caplog.set_level(logging.DEBUG)

    def echo_key(n, body, headers):  # a hostile or careless server that echoes the credentials back
        if n < 2:
            return Reply(500, {"error": {"message": f"oops, got {headers['authorization']}"}})
        return Reply(401, {"error": {"message": f"bad key {headers['authorization']}"}})

    async with serve_chat(echo_key) as srv:
        m = model(srv.base_url)
        with pytest.raises(LLMAuthError) as info:
            await m.complete(HELLO, max_tokens=5)
        await m.aclose()
    assert srv.count == 3
    assert "retrying" in caplog.text  # the retries were logged ...
    assert KEY not in caplog.text  # ... without the key
    assert KEY not in str(info.value) and "[api key]" in str(info.value)
    assert KEY not in repr(m)


def test_parse_retry_after():
    now = datetime(2026, 11, 25, 12, 0, 0, tzinfo=timezone.utc)
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after(" 0.5 ") == 0.5
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True), now=now) == 30.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("nan") is None


async def test_credentials_in_the_base_url_are_not_shown():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    m = model(f"http://user:hunter2@127.0.0.1:{port}/v1?key=hunter2", max_retries=0)
    assert "hunter2" not in repr(m)
    with pytest.raises(LLMUnavailable) as info:
        await ask(m)
    assert "hunter2" not in str(info.value) and f"127.0.0.1:{port}/v1" in str(info.value)
    assert shown_url("https://[::1]:8443/v1?x=1") == "https://[::1]:8443/v1"


def test_constructor_rejects_bad_settings():
    with pytest.raises(ValueError, match="http"):
        OpenAIChatModel("api.openai.com/v1", KEY, "m")
    with pytest.raises(ValueError):
        OpenAIChatModel("http://x", KEY, "m", max_concurrency=0)


# ---- configuration and make_chat_model ----

def test_llm_config_defaults_and_validation(tmp_path):
    cfg = load_config(home=tmp_path)
    assert cfg.llm_provider == "sampling" and cfg.llm_base_url is None and cfg.llm_token_cap is None
    assert (cfg.llm_timeout_seconds, cfg.llm_max_retries, cfg.llm_max_concurrency) == (60, 4, 4)
    assert (cfg.judge_enabled, cfg.judge_delay_seconds, cfg.judge_votes) == (False, 300, 3)
    with pytest.raises(ConfigError, match="llm_base_url"):
        load_config(home=tmp_path, llm_base_url="ftp://example.com")
    with pytest.raises(ConfigError, match="judge_votes"):
        load_config(home=tmp_path, judge_votes=10)
    cfg = load_config(home=tmp_path, llm_api_key=KEY)
    assert cfg.shown()["llm_api_key"] == "**********" and KEY not in repr(cfg)


def test_llm_config_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("METACLAW_LLM_PROVIDER", "openai")
    monkeypatch.setenv("METACLAW_LLM_BASE_URL", "https://llm.example/v1")
    monkeypatch.setenv("METACLAW_LLM_TOKEN_CAP", "5000")
    monkeypatch.setenv("METACLAW_JUDGE_ENABLED", "true")
    cfg = load_config(home=tmp_path)
    assert (cfg.llm_provider, cfg.llm_base_url, cfg.llm_token_cap, cfg.judge_enabled) == (
        "openai", "https://llm.example/v1", 5000, True)


async def test_make_chat_model(app, tmp_path):
    for provider in ("none", "sampling"):
        assert make_chat_model(load_config(home=tmp_path, llm_provider=provider), app.db) is None
    with pytest.raises(ConfigError, match="llm_model is not set"):
        make_chat_model(load_config(home=tmp_path, llm_provider="openai", llm_base_url="http://x/v1"), app.db)
    with pytest.raises(ConfigError, match="llm_base_url and llm_model are not set"):
        make_chat_model(load_config(home=tmp_path, llm_provider="openai"), app.db)


async def test_make_chat_model_meters_real_calls(app, tmp_path):
    async with serve_chat([Reply(body=completion("hello", 30, 7))]) as srv:
        cfg = load_config(home=tmp_path, llm_provider="openai", llm_base_url=srv.base_url, llm_model="fake-model",
                          llm_api_key=KEY, llm_token_cap=40, llm_max_concurrency=3)
        m = make_chat_model(cfg, app.db)
        assert isinstance(m, MeteredModel) and isinstance(m.inner, OpenAIChatModel)
        assert m.inner.max_concurrency == 3 and m.provider == "openai:fake-model"
        out = await m.complete(HELLO, max_tokens=5, purpose="evolve", namespace="proj")
        await m.aclose()
    assert out.text == "hello"
    rows = [dict(r) for r in await app.db.fetchall(
        "SELECT namespace, provider, purpose, prompt_tokens, completion_tokens FROM llm_usage")]
    assert rows == [{"namespace": "proj", "provider": "openai:fake-model", "purpose": "evolve",
                     "prompt_tokens": 30, "completion_tokens": 7}]
    assert await m.used("proj") == 37 and await m.used("default") == 0
