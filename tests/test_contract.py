"""The tools' contract as a real MCP client sees it: strict argument types, one-line argument errors,
self-contained schemas, bounded token ids, and idempotency keys that never hide changed content."""
from __future__ import annotations

import json
from typing import Any

import pytest
from mcp import Client

from mcp_servers import call
from metaclaw_mcp.models import MAX_TOKEN_ID
from metaclaw_mcp.server import build_server

pytestmark = pytest.mark.anyio

USER = [{"role": "user", "content": "What is 2 + 2?"}]
TABLES = ("turns", "ratings", "skills", "skill_versions", "skill_uses", "evolutions")


@pytest.fixture
async def client(app):
    async with Client(build_server(app)) as c:
        yield c


async def counts(app) -> dict[str, int]:
    return {t: await app.db.scalar(f"SELECT COUNT(*) FROM {t}") for t in TABLES}


async def report(client, **kw: Any) -> tuple[bool, Any]:
    return await call(client, "report_turn", {"session_id": "s1", "messages": USER, "response": "4", **kw})


def refs_in(schema: Any) -> list[str]:
    """Every `$ref` / `$defs` key anywhere in a JSON schema."""
    if isinstance(schema, dict):
        return [k for k in schema if k in ("$ref", "$defs")] + [r for v in schema.values() for r in refs_in(v)]
    if isinstance(schema, list):
        return [r for v in schema for r in refs_in(v)]
    return []


async def assert_one_line_refusal(app, client, tool: str, args: dict[str, Any], *needles: str) -> str:
    before = await counts(app)
    err, text = await call(client, tool, args)
    assert err, f"{tool} {args} was accepted: {text}"
    assert "\n" not in text and "https://" not in text, text
    for needle in needles:
        assert needle in text, f"{needle!r} not in {text!r}"
    assert await counts(app) == before
    return text


# ---- booleans are not numbers ----

async def test_score_false_is_refused_not_a_zero(app, client):
    err, rep = await report(client)
    assert not err
    await assert_one_line_refusal(app, client, "rate_turn", {"turn_id": rep["turn_id"], "score": False},
                                  "score", "boolean")
    await assert_one_line_refusal(app, client, "rate_turn", {"turn_id": rep["turn_id"], "score": "-1"}, "score")
    err, rated = await call(client, "rate_turn", {"turn_id": rep["turn_id"], "score": -1})  # an integer is a number
    assert not err and rated["reward"] == -1.0


async def test_k_true_is_refused_not_one(app, client):
    await assert_one_line_refusal(app, client, "fetch_skills", {"query": "write unit tests", "k": True}, "k", "boolean")
    await assert_one_line_refusal(app, client, "fetch_skills", {"query": "write unit tests", "k": "3"}, "k")
    await assert_one_line_refusal(app, client, "evolve_skills", {"max_new": True}, "max_new")
    await assert_one_line_refusal(app, client, "evolve_skills", {"dry_run": 1}, "dry_run")
    await assert_one_line_refusal(app, client, "evolve_skills", {"dry_run": "true"}, "dry_run")
    err, fetched = await call(client, "fetch_skills", {"query": "write unit tests", "k": 2})
    assert not err and len(fetched["skills"]) == 2


async def test_nested_numbers_and_booleans_are_strict(app, client):
    await assert_one_line_refusal(app, client, "report_turn", {
        "session_id": "s", "messages": USER, "response": "4",
        "tokens": {"prompt_ids": [1, True], "completion_ids": [3]}}, "tokens.prompt_ids.1", "boolean")
    await assert_one_line_refusal(app, client, "report_turn", {
        "session_id": "s", "messages": USER, "response": "4",
        "tokens": {"prompt_ids": [1], "completion_ids": [3], "logprobs": [False]}}, "tokens.logprobs.0")


# ---- strings stay strings ----

async def test_json_looking_strings_stay_strings(app, client):
    err, a = await report(client, idempotency_key="null")
    assert not err and a["duplicate"] is False
    err, b = await report(client, idempotency_key="[]")
    assert not err and b["duplicate"] is False
    err, c = await report(client, idempotency_key="null")
    assert not err and c == {**a, "duplicate": True}, "the key 'null' is a key, not no key"
    rows = await app.db.fetchall("SELECT id, idempotency_key FROM turns ORDER BY idempotency_key")
    assert sorted(r["idempotency_key"] for r in rows) == ["[]", "null"]

    err, d = await report(client, model="null", session_id="{}", retrieval_id=None)
    assert not err
    turn = await app.turns.get(d["turn_id"])
    assert turn["model"] == "null" and turn["session_id"] == "{}"
    err, fetched = await call(client, "fetch_skills", {"query": "[1, 2]", "session_id": "null"})
    assert not err


async def test_a_string_is_not_taken_for_a_missing_value(app, client):
    err, rep = await report(client)
    err, rated = await call(client, "rate_turn", {"turn_id": rep["turn_id"], "score": 0.5, "feedback": "null"})
    assert not err
    assert (await app.turns.get(rep["turn_id"]))["ratings"][0]["feedback"] == "null"


async def test_unknown_argument_is_refused(app, client):
    text = await assert_one_line_refusal(app, client, "report_turn", {
        "session_id": "s", "messages": USER, "response": "4", "idempotencyKey": "k1"}, "idempotencyKey")
    assert "unknown" in text or "not permitted" in text.lower()


async def test_argument_errors_are_one_line_naming_the_argument(app, client):
    text = await assert_one_line_refusal(app, client, "report_turn", {"messages": USER, "response": 4},
                                         "session_id", "response")
    assert text.startswith("Error executing tool report_turn:")
    await assert_one_line_refusal(app, client, "report_turn", {
        "session_id": "s", "messages": [{"role": "robot", "content": "x"}], "response": "r"}, "messages.0.role")
    await assert_one_line_refusal(app, client, "rate_turn", {"turn_id": "t", "score": 1.5},
                                  "score: must be ≤ 1 (got 1.5)")


# ---- token ids are bounded ----

async def test_token_ids_beyond_the_vocabulary_bound_are_refused(app, client):
    for ids in ([1, 2**70], [1, MAX_TOKEN_ID + 1], [-1]):
        await assert_one_line_refusal(app, client, "report_turn", {
            "session_id": "rl", "messages": USER, "response": "4",
            "tokens": {"prompt_ids": ids, "completion_ids": [3]}}, "tokens.prompt_ids")
        await assert_one_line_refusal(app, client, "report_turn", {
            "session_id": "rl", "messages": USER, "response": "4",
            "tokens": {"prompt_ids": [1], "completion_ids": ids}}, "tokens.completion_ids")
    err, rep = await report(client, tokens={"prompt_ids": [0, MAX_TOKEN_ID], "completion_ids": [MAX_TOKEN_ID]})
    assert not err
    assert (await app.turns.get(rep["turn_id"]))["prompt_ids"] == [0, MAX_TOKEN_ID]


# ---- idempotency keys never hide changed content ----

CHANGES = [
    ("session_id", {"session_id": "s2"}),
    ("messages", {"messages": [{"role": "user", "content": "What is 3 + 3?"}]}),
    ("response", {"response": "5"}),
    ("model", {"model": "other-model"}),
    ("tokens", {"tokens": {"prompt_ids": [1, 2], "completion_ids": [9]}}),
    ("tokens", {"tokens": {"prompt_ids": [1, 2], "completion_ids": [3], "logprobs": [-0.1]}}),
    ("tokens", {"tokens": None}),
    ("metadata", {"metadata": {"task": "other"}}),
    ("skill_ids", {"skill_ids": ["iso8601-timestamps"]}),
    ("skill_ids", {"skill_ids": []}),
    ("retrieval_id", {"retrieval_id": None}),
]


@pytest.mark.parametrize("field,change", CHANGES, ids=[f"{f}-{i}" for i, (f, _) in enumerate(CHANGES)])
async def test_reused_key_with_a_changed_field_is_refused(app, client, field, change):
    err, fetched = await call(client, "fetch_skills", {"query": "write unit tests", "k": 2})
    assert not err
    first = {"session_id": "s1", "messages": USER, "response": "4", "model": "m1",
             "retrieval_id": fetched["retrieval_id"], "skill_ids": ["write-unit-tests"],
             "tokens": {"prompt_ids": [1, 2], "completion_ids": [3], "logprobs": [-0.5]},
             "metadata": {"task": "sums"}, "idempotency_key": "key-1"}
    err, rep = await call(client, "report_turn", first)
    assert not err, rep
    err, again = await call(client, "report_turn", first)
    assert not err and again == {**rep, "duplicate": True}
    # the same skill named by id, and metadata keys in another order, are the same content
    skill = await app.library.get("default", "write-unit-tests")
    err, again = await call(client, "report_turn", {**first, "skill_ids": [skill.id],
                                                   "metadata": dict(reversed(list(first["metadata"].items())))})
    assert not err and again["duplicate"] is True

    text = await assert_one_line_refusal(app, client, "report_turn", {**first, **change}, "key-1", rep["turn_id"],
                                         field)
    others = {f for f, _ in CHANGES} - {field}
    assert not any(f"different {o}" in text or f", {o}" in text for o in others), text
    turn = await app.turns.get(rep["turn_id"])
    assert turn["model"] == "m1" and turn["metadata"] == {"task": "sums"} and turn["completion_ids"] == [3]


async def test_reused_key_names_every_changed_field(app, client):
    err, rep = await report(client, idempotency_key="k2", model="m1")
    assert not err
    text = await assert_one_line_refusal(app, client, "report_turn", {
        "session_id": "s1", "messages": USER, "response": "5", "model": "m2", "metadata": {"a": 1},
        "idempotency_key": "k2"}, "k2")
    assert "response" in text and "model" in text and "metadata" in text and "session_id" not in text


# ---- schemas are self-contained ----

async def test_every_schema_is_self_contained_and_calls_still_validate(app, client):
    tools = (await client.list_tools()).tools
    assert {t.name for t in tools} == {"fetch_skills", "report_turn", "rate_turn", "evolve_skills"}
    for tool in tools:
        for schema in (tool.input_schema, tool.output_schema):
            assert schema is not None and schema["type"] == "object", tool.name
            assert refs_in(schema) == [], f"{tool.name}: {refs_in(schema)}"
            assert "$ref" not in json.dumps(schema) and "$defs" not in json.dumps(schema)
    by_name = {t.name: t for t in tools}
    # what the inlined definitions say is still what validation enforces
    tokens = by_name["report_turn"].input_schema["properties"]["tokens"]
    token_model = next(s for s in tokens["anyOf"] if s.get("type") == "object")
    assert token_model["additionalProperties"] is False
    assert token_model["properties"]["prompt_ids"]["items"]["maximum"] == MAX_TOKEN_ID
    role = by_name["report_turn"].input_schema["properties"]["messages"]["items"]["properties"]["role"]
    assert "user" in role["enum"]
    proposal = by_name["evolve_skills"].input_schema["properties"]["proposals"]
    assert any("pattern" in str(s) for s in proposal["anyOf"])
    await assert_one_line_refusal(app, client, "evolve_skills", {
        "proposals": [{"name": "Bad Name!!", "description": "Use when testing things.", "body": "x" * 30}]},
        "proposals.0.name")
    err, rep = await report(client, tokens={"prompt_ids": [1], "completion_ids": [2], "logprobs": [-0.1]})
    assert not err
    err, ev = await call(client, "evolve_skills", {"dry_run": True})
    assert not err and ev["dry_run"] is True


async def test_an_array_sent_as_json_text_is_read_where_no_string_is_allowed(app, client):
    err, rep = await call(client, "report_turn", {"session_id": "s", "messages": json.dumps(USER), "response": "4"})
    assert not err, rep
    assert (await app.turns.get(rep["turn_id"]))["messages"] == USER
    # but "null" is not taken for a missing value there either
    await assert_one_line_refusal(app, client, "report_turn", {
        "session_id": "s", "messages": USER, "response": "4", "tokens": "null"}, "tokens", "object")
