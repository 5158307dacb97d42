"""Bounded fuzz of the four tools through a real MCP client (in-process `Client(server)`): whatever the
arguments, a call answers with a result or a one-line tool error, writes all or nothing, and the
server goes on answering everyone."""
from __future__ import annotations

import sqlite3
from contextlib import asynccontextmanager

import pytest
from anyio.from_thread import start_blocking_portal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mcp import Client

from metaclaw_mcp.app import App
from metaclaw_mcp.config import load_config
from metaclaw_mcp.server import build_server

JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True)
                    | st.text(max_size=40),
                    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children,
                                                                                        max_size=4),
                    max_leaves=12)
MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "tool", "robot", ""]),
                                 "content": st.one_of(st.text(max_size=80), JSON)})
ARGUMENTS = {
    "fetch_skills": st.fixed_dictionaries({"query": st.one_of(st.text(max_size=120), JSON)}, optional={
        "k": JSON | st.integers(-3, 60), "namespace": st.one_of(st.text(max_size=20), JSON),
        "categories": JSON, "token_budget": JSON | st.integers(0, 10**6), "messages": st.lists(MESSAGE, max_size=3)}),
    "report_turn": st.fixed_dictionaries({"session_id": st.one_of(st.text(max_size=20), JSON),
                                          "messages": st.one_of(st.lists(MESSAGE, max_size=3), JSON),
                                          "response": st.one_of(st.text(max_size=80), JSON)}, optional={
        "retrieval_id": st.one_of(st.text(max_size=40), JSON), "skill_ids": JSON, "model": JSON,
        "tokens": st.one_of(JSON, st.fixed_dictionaries({"prompt_ids": st.lists(st.integers(-5, 2**40), max_size=4),
                                                         "completion_ids": st.lists(st.integers(-5, 2**40), max_size=4),
                                                         "logprobs": st.lists(st.floats(), max_size=4)})),
        "metadata": JSON, "idempotency_key": st.one_of(st.sampled_from(["k1", "k2", "null", "[]"]), JSON),
        "unknown": JSON}),
    "rate_turn": st.fixed_dictionaries({"turn_id": st.one_of(st.text(max_size=30), JSON), "score": JSON}, optional={
        "source": st.one_of(st.sampled_from(["user", "env", "agent", "judge", "boss"]), JSON),
        "feedback": st.one_of(st.text(max_size=80), JSON)}),
    "evolve_skills": st.fixed_dictionaries({}, optional={
        "namespace": st.one_of(st.text(max_size=20), JSON), "max_new": JSON, "dry_run": JSON,
        "proposals": st.one_of(JSON, st.lists(st.fixed_dictionaries({
            "name": st.text(max_size=30), "description": st.text(max_size=60), "body": st.text(max_size=120)},
            optional={"category": JSON, "addresses": JSON, "scope": JSON}), max_size=2))}),
}


@pytest.fixture(scope="module")
def server_app(tmp_path_factory):
    config = load_config(home=tmp_path_factory.mktemp("fuzz"), embedding_encoder="static", max_namespaces=50,
                         retrieval_mode="lexical")
    return config


def counts(config) -> tuple[int, int, int]:
    con = sqlite3.connect(config.database)
    try:
        return tuple(con.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("turns", "ratings", "skills"))
    finally:
        con.close()


@asynccontextmanager
async def running_client(config):
    async with App(config).running() as app, Client(build_server(app)) as client:
        yield client


@pytest.mark.parametrize("tool", sorted(ARGUMENTS))
def test_any_arguments_get_an_answer_and_write_all_or_nothing(server_app, tool):
    config = server_app
    with start_blocking_portal() as portal, portal.wrap_async_context_manager(running_client(config)) as client:

        async def one(arguments) -> None:
            before = counts(config)
            result = await client.call_tool(tool, arguments)
            after = counts(config)
            if result.is_error:
                text = "".join(getattr(c, "text", "") for c in result.content)
                assert text and "\n" not in text.strip() and "Traceback" not in text, text
                assert after == before, (arguments, text)          # an error writes nothing
            elif tool == "report_turn":
                assert after[0] - before[0] in (0, 1)              # one turn, or a duplicate
            elif tool == "rate_turn":
                assert after[1] == before[1] + 1
            ok = await client.call_tool("fetch_skills", {"query": "write a test"})   # still answering
            assert not ok.is_error

        @settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(arguments=ARGUMENTS[tool])
        def run(arguments):
            portal.call(one, arguments)

        run()
    con = sqlite3.connect(config.database)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        con.close()
