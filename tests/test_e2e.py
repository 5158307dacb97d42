"""End to end: the installed `metaclaw-mcp` driven by real MCP clients over stdio, streamable HTTP and SSE,
in both protocol eras, with a restart in between; bad input leaves the SQLite file unchanged."""
from __future__ import annotations

import contextlib
import json
import math
import subprocess

import anyio
import httpx
import pytest

from mcp_servers import CLI, call, cli_json, connect, free_port, served, server_env, table_counts

pytestmark = pytest.mark.anyio

MSGS = [{"role": "system", "content": "You are a coding agent."},
        {"role": "user", "content": [{"type": "text", "text": "Write unit tests for a Python function that parses dates."}]},
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "read_file", "arguments": "{\"path\": \"d.py\"}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "def parse(s): ..."}]

TRANSPORTS = [("stdio", "auto"), ("stdio", "legacy"), ("http", "auto"), ("http", "legacy"), ("sse", "auto"), ("sse", "legacy")]


@contextlib.contextmanager
def server_for(transport: str, home, *args: str):
    if transport == "stdio":
        yield None
    else:
        with served(home, transport, *args) as (port, _):
            yield port


async def full_session(client, tag: str) -> dict:
    """fetch -> report (and a retry) -> rate -> evolve (digest, then proposals) -> resources."""
    assert "fetch_skills" in (client.instructions or "")
    tools = {t.name: t for t in (await client.list_tools()).tools}
    assert {"fetch_skills", "report_turn", "rate_turn", "evolve_skills"} <= set(tools)
    assert tools["fetch_skills"].annotations.read_only_hint is True
    assert tools["fetch_skills"].output_schema and tools["report_turn"].output_schema
    schemas = json.dumps([[t.input_schema, t.output_schema] for t in tools.values()])
    assert "$ref" not in schemas and "$defs" not in schemas, "every schema is self-contained"

    err, fetched = await call(client, "fetch_skills", {"query": "write unit tests for a python function", "k": 3})
    assert not err, fetched
    assert 1 <= len(fetched["skills"]) <= 3
    assert fetched["skills"][0]["slug"] == "write-unit-tests"
    assert fetched["skills"][0]["name"] in fetched["injection"]

    report = {"session_id": f"s-{tag}", "messages": MSGS, "response": "def test_parse(): assert parse('2026-01-01')",
              "retrieval_id": fetched["retrieval_id"], "idempotency_key": f"k-{tag}", "model": "test-model",
              "tokens": {"prompt_ids": [1, 2, 3], "completion_ids": [4, 5], "logprobs": [-0.5, -0.25]}}
    err, rep = await call(client, "report_turn", report)
    assert not err, rep
    assert rep["duplicate"] is False and rep["skills_linked"] == len(fetched["skills"])
    err, again = await call(client, "report_turn", report)
    assert not err and again == {**rep, "duplicate": True}

    err, rated = await call(client, "rate_turn", {"turn_id": rep["turn_id"], "score": -0.5, "source": "env",
                                                 "feedback": "tests miss the leap-year case"})
    assert not err and math.isclose(rated["reward"], -0.5) and rated["queued_for_training"] is True
    err, rated = await call(client, "rate_turn", {"turn_id": rep["turn_id"], "score": -1.0, "source": "user",
                                                 "feedback": "no test for 29 February"})
    assert not err and rated["reward"] == -1.0 and rated["reward_source"] == "user"
    err, judged = await call(client, "rate_turn", {"turn_id": rep["turn_id"], "score": 1.0, "source": "judge"})
    assert not err and judged["reward"] == -1.0, "a judge never overrides the user"

    err, ev = await call(client, "evolve_skills", {})
    assert not err and ev["digest"] and ev["accepted"] == []
    failure = next(f for f in ev["digest"]["failures"] if f["turn_id"] == rep["turn_id"])
    assert "29 February" in " ".join(failure["feedback"]) and "unit tests" in failure["request"]
    assert "name" in ev["digest"]["proposal_schema"]["properties"]

    slug = f"leap-day-date-tests-{tag}"
    err, ev = await call(client, "evolve_skills", {"proposals": [{
        "name": slug, "category": "coding", "addresses": [rep["turn_id"]],
        "description": f"Use when writing tests for date parsing or calendar code ({tag}).",
        "body": "1. Include 29 February of a leap year and of a non-leap year.\n2. Include year boundaries.\n\n"
                "Anti-pattern: testing only one ordinary date."}]})
    assert not err, ev
    assert [a["slug"] for a in ev["accepted"]] == [slug] and ev["accepted"][0]["status"] == "candidate"

    uris = {str(r.uri) for r in (await client.list_resources()).resources}
    assert "metaclaw://status" in uris and f"skill://default/{slug}" in uris
    status = json.loads((await client.read_resource("metaclaw://status")).contents[0].text)
    assert status["turns"]["total"] >= 1 and status["skills"]["candidate"] >= 1
    skill_md = (await client.read_resource(f"skill://default/{slug}")).contents[0].text
    assert skill_md.startswith("---\nname: " + slug) and "29 February" in skill_md
    return {"turn_id": rep["turn_id"], "slug": slug}


@pytest.mark.parametrize("transport,mode", TRANSPORTS, ids=[f"{t}-{m}" for t, m in TRANSPORTS])
async def test_full_session_then_restart(tmp_path, transport, mode):
    home = tmp_path / "home"
    with server_for(transport, home) as port:
        async with connect(transport, home, port, mode) as client:
            assert client.protocol_version == ("2026-07-28" if mode == "auto" else "2025-11-25")
            made = await full_session(client, f"{transport}-{mode}")
    # a new process on the same home still has everything that was acknowledged
    with server_for(transport, home) as port:
        async with connect(transport, home, port, mode) as client:
            err, rated = await call(client, "rate_turn", {"turn_id": made["turn_id"], "score": 0.5, "source": "user"})
            assert not err and rated["reward"] == 0.5
            text = (await client.read_resource(f"skill://default/{made['slug']}")).contents[0].text
            assert made["slug"] in text
    turn = cli_json(home, "turns", "show", made["turn_id"])
    assert [r["source"] for r in turn["ratings"]] == ["env", "user", "judge", "user"]
    assert turn["messages"][2]["tool_calls"][0]["function"]["name"] == "read_file"
    assert turn["completion_ids"] == [4, 5] and len(turn["skills"]) >= 1


BAD_INPUTS = [
    ("fetch_skills", {"k": 3}, "query"),
    ("fetch_skills", {"query": "x" * 40_000}, "at most"),
    ("fetch_skills", {"query": "tests", "k": 0}, "k"),
    ("fetch_skills", {"query": "tests", "categories": ["astro\nlogy"]}, "categories"),  # free-form, but one line
    ("fetch_skills", {"query": "tests", "namespace": "bad namespace!"}, "namespace"),
    ("report_turn", {"session_id": "s", "response": "r"}, "messages"),
    ("report_turn", {"session_id": "s", "messages": "hello", "response": "r"}, "messages"),
    ("report_turn", {"session_id": "s", "messages": [{"role": "robot", "content": "x"}], "response": "r"}, "role"),
    ("report_turn", {"session_id": "s", "messages": [{"role": "tool", "content": "x"}], "response": "r"}, "tool_call_id"),
    ("report_turn", {"session_id": "s", "messages": [{"role": "user", "content": "q"}], "response": "r",
                     "tokens": {"prompt_ids": [1, 2], "completion_ids": [3, 4, 5], "logprobs": [-0.1]}}, "logprobs"),
    ("report_turn", {"session_id": "s", "messages": [{"role": "user", "content": "q"}], "response": "r",
                     "tokens": {"prompt_ids": [1], "completion_ids": [3], "logprobs": [0.5]}}, "log-probability"),
    ("report_turn", {"session_id": "s", "messages": [{"role": "user", "content": "q"}], "response": "r",
                     "retrieval_id": "made-up"}, "retrieval_id"),
    ("report_turn", {"session_id": "s", "messages": [{"role": "user", "content": "q"}], "response": "r",
                     "skill_ids": [999999]}, "999999"),
    ("report_turn", {"session_id": "s", "messages": [{"role": "user", "content": "q"}], "response": "y" * 2_100_000},
     "bytes"),
    ("rate_turn", {"turn_id": "t-nope", "score": 1.0}, "no turn"),
    ("rate_turn", {"turn_id": "TURN", "score": 1.5}, "score: must be ≤ 1 (got 1.5)"),
    ("rate_turn", {"turn_id": "TURN", "score": -2}, "score: must be ≥ -1 (got -2)"),
    ("rate_turn", {"turn_id": "TURN", "score": "good"}, "score"),
    ("rate_turn", {"turn_id": "TURN", "score": False}, "score: must be a number (got boolean)"),
    ("fetch_skills", {"query": "tests", "k": True}, "k: must be an integer (got boolean)"),
    ("report_turn", {"session_id": "s", "messages": [{"role": "user", "content": "q"}], "response": "r",
                     "tokens": {"prompt_ids": [1, 2**70], "completion_ids": [3]}}, "tokens.prompt_ids.1"),
    ("report_turn", {"session_id": "s", "messages": [{"role": "user", "content": "q"}], "response": "r",
                     "idempotencyKey": "k"}, "idempotencyKey: unknown argument"),
    ("rate_turn", {"turn_id": "TURN", "score": 1, "source": "boss"}, "source"),
    ("evolve_skills", {"proposals": [{"name": "Bad Name!!", "description": "", "body": ""}]}, "proposals.0.name"),
    ("evolve_skills", {"proposals": [{"name": "ok-name", "description": "Use when testing.", "body": "x" * 30,
                                      "category": "cook\ning"}]}, "category"),  # labels are free-form, one line
    ("evolve_skills", {"proposals": [{"name": "ok-name", "description": "Use when testing things.",
                                      "body": "steps " * 3000}]}, "at most"),
    ("evolve_skills", {"max_new": -1}, "max_new"),
]


@pytest.mark.parametrize("transport", ["stdio", "http"])
async def test_bad_input_is_a_tool_error_and_writes_nothing(tmp_path, transport):
    home = tmp_path / "home"
    with server_for(transport, home) as port:
        async with connect(transport, home, port, "auto") as client:
            err, rep = await call(client, "report_turn", {"session_id": "s", "messages": [{"role": "user", "content": "q"}],
                                                          "response": "r"})
            assert not err
            before = table_counts(home / "metaclaw.db")
            for tool, args, needle in BAD_INPUTS:
                args = json.loads(json.dumps(args).replace('"TURN"', json.dumps(rep["turn_id"])))
                err, text = await call(client, tool, args)
                assert err, f"{tool} {str(args)[:80]} was accepted"
                assert needle in text, f"{tool}: {needle!r} not in {text[:300]!r}"
                assert "\n" not in text, f"{tool}: the error is not one line: {text[:300]!r}"
            assert table_counts(home / "metaclaw.db") == before
            err, fetched = await call(client, "fetch_skills", {"query": "debug a failing test", "k": 1})
            assert not err and fetched["skills"][0]["slug"] == "debug-failing-test"


async def test_oversized_http_body_is_refused_and_server_lives_on(tmp_path):
    home = tmp_path / "home"
    with served(home, "http") as (port, _):
        r = httpx.post(f"http://127.0.0.1:{port}/mcp", content=b"{" + b" " * 5_000_000 + b"}",
                       headers={"Accept": "application/json, text/event-stream", "Content-Type": "application/json"})
        assert r.status_code == 413
        async with connect("http", home, port, "auto") as client:
            err, _ = await call(client, "fetch_skills", {"query": "unit tests"})
            assert not err


async def test_bearer_token_guards_http_and_sse(tmp_path):
    home = tmp_path / "home"
    for transport, path in (("http", "/mcp"), ("sse", "/sse")):
        with served(home, transport, "--auth-token", "s3cret-token") as (port, _):
            r = httpx.get(f"http://127.0.0.1:{port}{path}", headers={"Authorization": "Bearer wrong"})
            assert r.status_code == 401 and "bearer" in r.headers["www-authenticate"].lower()
            assert httpx.get(f"http://127.0.0.1:{port}{path}").status_code == 401
            async with connect(transport, home, port, "auto", token="s3cret-token") as client:
                err, _ = await call(client, "fetch_skills", {"query": "unit tests"})
                assert not err
        log = (home.parent / f"serve-{transport}-{port}.log").read_text()
        assert "s3cret-token" not in log


def test_non_loopback_bind_needs_a_token(tmp_path):
    p = subprocess.run([CLI, "serve", "--transport", "http", "--host", "0.0.0.0", "--port", str(free_port())],
                       env=server_env(tmp_path / "home"), capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    assert "--auth-token" in p.stderr and "0.0.0.0" in p.stderr


async def test_a_new_training_step_is_announced_to_listening_clients(tmp_path):
    home = tmp_path / "home"
    with served(home, "http", METACLAW_BATCH_SIZE="2") as (port, _):
        async with connect("http", home, port, "auto") as client:
            async with client.listen(resource_subscriptions=["metaclaw://status", "metaclaw://checkpoints"]) as sub:
                for k, reward in enumerate((1.0, -1.0)):
                    err, rep = await call(client, "report_turn", {
                        "session_id": "rl", "messages": [{"role": "user", "content": "q"}], "response": f"a{k}",
                        "tokens": {"prompt_ids": [1, 2], "completion_ids": [3 + k], "logprobs": [-0.5]}})
                    await call(client, "rate_turn", {"turn_id": rep["turn_id"], "score": reward, "source": "env"})
                with anyio.fail_after(30):
                    event = await sub.__anext__()
            assert getattr(event, "uri", None) == "metaclaw://status"
            status = json.loads((await client.read_resource("metaclaw://status")).contents[0].text)
            assert status["training"]["steps"] == 1
            ckpts = json.loads((await client.read_resource("metaclaw://checkpoints")).contents[0].text)
            assert ckpts == []  # the export backend keeps no weights: nothing to checkpoint
