"""The turn log: reporting, idempotency, skill links, ratings; and the input models."""
from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from metaclaw_mcp.app import open_app
from metaclaw_mcp.config import load_config
from metaclaw_mcp.errors import InvalidInput, NotFound
from metaclaw_mcp.models import MAX_TOKEN_ID, Message, TokenData
from metaclaw_mcp.skills.skillmd import SkillDoc
from metaclaw_mcp.turns import MAX_FEEDBACK_CHARS

pytestmark = pytest.mark.anyio


def user(text: str = "What is 2 + 2?") -> Message:
    return Message(role="user", content=text)


async def count(app, table: str) -> int:
    return await app.db.scalar(f"SELECT COUNT(*) FROM {table}")


async def report(app, text: str = "What is 2 + 2?", response: str = "4", **kw):
    return await app.report_turn("s1", [user(text)], response, **kw)


async def test_report_stores_everything(app):
    messages = [
        Message(role="system", content="You are terse."),
        Message.model_validate({"role": "user", "content": [
            {"type": "text", "text": "Describe this image"},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}),
        Message.model_validate({"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": '{"q": "cat"}'}}]}),
        Message(role="tool", content="a cat", tool_call_id="call_1", name="lookup"),
    ]
    tokens = TokenData(prompt_ids=[1, 2, 3], completion_ids=[4, 5], logprobs=[-0.1, -2.5])
    out = await app.report_turn("sess-A", messages, "It is a cat.", model="m-1", tokens=tokens,
                                metadata={"task": "vision", "n": 1})
    assert out.duplicate is False and out.skills_linked == 0
    assert out.turn_id.startswith("t-")

    turn = await app.turns.get(out.turn_id)
    assert turn["session_id"] == "sess-A" and turn["namespace"] == "default"
    assert turn["response"] == "It is a cat." and turn["model"] == "m-1"
    assert turn["prompt_ids"] == [1, 2, 3] and turn["completion_ids"] == [4, 5]
    assert turn["logprobs"] == [-0.1, -2.5]
    assert turn["metadata"] == {"task": "vision", "n": 1}
    assert turn["reward"] is None and turn["train_state"] == "pending"
    assert turn["ratings"] == [] and turn["skills"] == []
    assert "request_hash" not in turn
    stored = turn["messages"]
    assert [m["role"] for m in stored] == ["system", "user", "assistant", "tool"]
    assert stored[1]["content"] == [{"type": "text", "text": "Describe this image"},
                                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]
    assert stored[2]["tool_calls"] == [{"id": "call_1", "type": "function",
                                        "function": {"name": "lookup", "arguments": '{"q": "cat"}'}}]
    assert "content" not in stored[2]  # None is dropped, not stored as null
    assert stored[3] == {"role": "tool", "content": "a cat", "tool_call_id": "call_1", "name": "lookup"}

    listed = await app.turns.list("default")
    assert [r["id"] for r in listed] == [out.turn_id]
    assert listed[0]["has_tokens"] == 1


async def test_report_without_tokens(app):
    out = await report(app)
    turn = await app.turns.get(out.turn_id)
    assert turn["prompt_ids"] is None and turn["completion_ids"] is None and turn["logprobs"] is None
    assert turn["metadata"] == {}


async def test_empty_messages_rejected(app):
    with pytest.raises(InvalidInput, match="messages is empty"):
        await app.report_turn("s1", [], "x")
    assert await count(app, "turns") == 0


async def test_idempotency_same_content_is_duplicate(app):
    first = await report(app, idempotency_key="key-1")
    again = await report(app, idempotency_key="key-1")
    assert again.duplicate is True and again.turn_id == first.turn_id
    assert await count(app, "turns") == 1
    # the same key in another namespace is a different turn
    other = await report(app, idempotency_key="key-1", namespace="elsewhere")
    assert other.duplicate is False and other.turn_id != first.turn_id
    # without a key, identical content is two turns
    a, b = await report(app), await report(app)
    assert a.turn_id != b.turn_id
    assert await count(app, "turns") == 4


async def test_idempotency_key_reuse_with_other_content(app):
    first = await report(app, idempotency_key="key-2")
    with pytest.raises(InvalidInput, match="key-2") as exc:
        await report(app, response="5", idempotency_key="key-2")
    assert first.turn_id in str(exc.value) and "different response;" in str(exc.value)
    with pytest.raises(InvalidInput, match="different session_id;"):
        await app.report_turn("other-session", [user()], "4", idempotency_key="key-2")
    with pytest.raises(InvalidInput, match="different model, tokens;"):
        await report(app, idempotency_key="key-2", model="m",
                     tokens=TokenData(prompt_ids=[1], completion_ids=[2]))
    assert await count(app, "turns") == 1
    assert (await app.turns.get(first.turn_id))["response"] == "4"


async def test_duplicate_reports_its_links(app):
    first = await report(app, skill_ids=["write-unit-tests"], idempotency_key="k")
    again = await report(app, skill_ids=["write-unit-tests"], idempotency_key="k")
    assert again.duplicate and again.skills_linked == first.skills_linked == 1
    assert await count(app, "skill_uses") == 1


async def test_retrieval_id_links_exact_versions(app):
    fetched = await app.fetch_skills("debug a failing test", k=3)
    assert len(fetched.skills) == 3 and fetched.skills[0].slug == "debug-failing-test"
    top = fetched.skills[0]
    # the skill changes after the fetch: the turn is still linked to the version that was shown
    await app.library.revise("default", top.id, SkillDoc(name="x", description="Use when v2.", body="1. v2 step."))
    out = await report(app, retrieval_id=fetched.retrieval_id)
    assert out.skills_linked == 3
    turn = await app.turns.get(out.turn_id)
    assert turn["retrieval_id"] == fetched.retrieval_id
    assert [(s["skill_id"], s["slug"], s["version"], s["rank"]) for s in turn["skills"]] == [
        (s.id, s.slug, 1, i) for i, s in enumerate(fetched.skills)]
    # skill_ids given too: a skill already in the retrieval keeps the retrieval's version
    out2 = await report(app, retrieval_id=fetched.retrieval_id, skill_ids=[top.id, "iso8601-timestamps"])
    links = {s["slug"]: s["version"] for s in (await app.turns.get(out2.turn_id))["skills"]}
    assert links[top.slug] == 1 and links["iso8601-timestamps"] == 1 and len(links) == 4


async def test_fetch_writes_retrieval_log(app):
    fetched = await app.fetch_skills("timestamps timezone offset", k=2, session_id="s9")
    await app.flush_retrievals()
    row = await app.db.fetchone("SELECT namespace, session_id, query FROM retrievals WHERE id = ?",
                                (fetched.retrieval_id,))
    assert tuple(row) == ("default", "s9", "timestamps timezone offset")


async def test_empty_retrieval_links_nothing(app):
    fetched = await app.fetch_skills("xylophonequux zzyzx")
    assert fetched.skills == [] and fetched.injection == ""
    out = await report(app, retrieval_id=fetched.retrieval_id)
    assert out.skills_linked == 0 and out.duplicate is False


async def test_skill_ids_by_id_and_slug(app):
    wut = await app.library.get("default", "write-unit-tests")
    iso = await app.library.get("default", "iso8601-timestamps")
    out = await report(app, skill_ids=[wut.id, "iso8601-timestamps", str(wut.id)])
    assert out.skills_linked == 2
    skills = (await app.turns.get(out.turn_id))["skills"]
    assert [(s["skill_id"], s["version"]) for s in skills] == [(wut.id, 1), (iso.id, 1)]
    # skill_ids link the current version
    await app.library.revise("default", wut.id, SkillDoc(name="x", description="Use when v2.", body="1. v2 step."))
    out = await report(app, skill_ids=["write-unit-tests"])
    assert [s["version"] for s in (await app.turns.get(out.turn_id))["skills"]] == [2]


@pytest.mark.parametrize("bad", [999_999, "no-such-skill", "99999999999999999999999"])
async def test_unknown_skill_writes_no_turn(app, bad):
    with pytest.raises(InvalidInput, match="skill_ids"):
        await report(app, skill_ids=["write-unit-tests", bad], idempotency_key="k-unknown")
    assert await count(app, "turns") == 0
    assert await count(app, "skill_uses") == 0
    # the key was not consumed
    assert (await report(app, idempotency_key="k-unknown")).duplicate is False


async def test_skill_from_other_namespace_is_unknown(app):
    await app.library.add(SkillDoc(name="private-skill", description="Use when private.", body="1. x"),
                          namespace="private")
    with pytest.raises(InvalidInput):
        await report(app, skill_ids=["private-skill"])
    fetched = await app.fetch_skills("write unit tests", k=1)
    with pytest.raises(InvalidInput, match="namespace"):
        await report(app, retrieval_id=fetched.retrieval_id, namespace="private")
    assert await count(app, "turns") == 0


@pytest.mark.parametrize("bad", ["nonsense", "r-0123456789ab-1v", "r-XYZ-1v1", "r-0123456789ab-999999v1",
                                 "r-0123456789ab-99999999999999999999v1"])
async def test_bad_retrieval_id(app, bad):
    with pytest.raises(InvalidInput, match="retrieval_id"):
        await report(app, retrieval_id=bad)
    assert await count(app, "turns") == 0


async def test_oversized_turn_rejected(tmp_path):
    async with open_app(load_config(home=tmp_path / "small", max_turn_bytes=1000,
                                    load_starter_skills=False)) as app:
        with pytest.raises(InvalidInput, match="at most 1000"):
            await report(app, text="x" * 600, response="y" * 600)
        with pytest.raises(InvalidInput, match="bytes"):
            await report(app, text="short", response="é" * 600)  # bytes, not characters
        with pytest.raises(InvalidInput):
            await report(app, text="short", response="ok", metadata={"blob": "z" * 1000})
        assert await count(app, "turns") == 0
        assert (await report(app, text="short", response="ok")).duplicate is False
        assert await count(app, "turns") == 1


async def test_non_json_metadata_rejected(app):
    with pytest.raises(InvalidInput, match="plain JSON"):
        await report(app, metadata={"x": math.nan})
    assert await count(app, "turns") == 0


async def test_rate_fuses_and_queues(app):
    out = await report(app)
    rated = await app.rate_turn(out.turn_id, -0.5, "agent", feedback="wrong answer")
    # a text-only turn rated below distill_threshold is not imitated: rate_turn says so
    assert (rated.turn_id, rated.reward, rated.reward_source, rated.queued_for_training) == (
        out.turn_id, -0.5, "agent", False)
    assert "not trained" in rated.training and "distill_threshold=0.5" in rated.training
    turn = await app.turns.get(out.turn_id)
    assert turn["reward"] == -0.5 and turn["reward_source"] == "agent"
    assert turn["train_state"] == "rated" and turn["rated_at"] is not None
    assert turn["ratings"][0]["feedback"] == "wrong answer"

    user_rating = await app.rate_turn(out.turn_id, 1.0, "user")
    assert (user_rating.reward, user_rating.reward_source) == (1.0, "user")
    env_rating = await app.rate_turn(out.turn_id, -1.0, "env")  # later, but lower priority
    assert (env_rating.reward, env_rating.reward_source) == (1.0, "user")
    assert env_rating.queued_for_training is True and env_rating.training.startswith("queued for distillation")
    changed = await app.rate_turn(out.turn_id, 0.25, "user")  # the user changes their mind
    assert (changed.reward, changed.reward_source) == (0.25, "user")
    turn = await app.turns.get(out.turn_id)
    assert turn["reward"] == 0.25 and turn["reward_source"] == "user"
    assert [(r["source"], r["score"]) for r in turn["ratings"]] == [
        ("agent", -0.5), ("user", 1.0), ("env", -1.0), ("user", 0.25)]
    counts = await app.turns.counts()
    assert counts["by_state"] == {"rated": 1} and counts["ratings"] == 4


async def test_rate_trained_turn_is_not_requeued(app):
    out = await report(app)
    async with app.db.transaction() as db:
        await db.execute("UPDATE turns SET train_state = 'trained' WHERE id = ?", (out.turn_id,))
    rated = await app.rate_turn(out.turn_id, 1.0)
    assert rated.queued_for_training is False and rated.reward == 1.0
    assert (await app.turns.get(out.turn_id))["train_state"] == "trained"


async def test_rate_unknown_turn(app):
    with pytest.raises(NotFound, match="t-nope"):
        await app.rate_turn("t-nope", 1.0)
    assert await count(app, "ratings") == 0
    with pytest.raises(NotFound):
        await app.turns.get("t-nope")


async def test_feedback_too_long(app):
    out = await report(app)
    with pytest.raises(InvalidInput, match=str(MAX_FEEDBACK_CHARS)):
        await app.rate_turn(out.turn_id, 1.0, feedback="f" * (MAX_FEEDBACK_CHARS + 1))
    assert await count(app, "ratings") == 0
    assert (await app.turns.get(out.turn_id))["train_state"] == "pending"
    ok = await app.rate_turn(out.turn_id, 1.0, feedback="f" * MAX_FEEDBACK_CHARS)
    assert ok.reward == 1.0


async def test_export_iterates_all_turns_oldest_first(app):
    ids = [(await report(app, text=f"q{i}")).turn_id for i in range(3)]
    await app.rate_turn(ids[1], 0.5)
    exported = [t async for t in app.turns.iter_export()]
    assert [t["id"] for t in exported] == sorted(ids)
    assert [t["ratings"] for t in exported if t["id"] == ids[1]][0][0]["score"] == 0.5
    assert [t["id"] async for t in app.turns.iter_export(rated_only=True)] == [ids[1]]


# ---- input models ----

def test_token_data_valid():
    t = TokenData(prompt_ids=[0, 1], completion_ids=[2, 3, 4], logprobs=[0.0, -1.0, -30.5])
    assert t.logprobs == [0.0, -1.0, -30.5]
    assert TokenData(prompt_ids=[1], completion_ids=[2]).logprobs is None


def test_token_data_length_mismatch():
    with pytest.raises(ValidationError, match="2 values but tokens.completion_ids has 3"):
        TokenData(prompt_ids=[1], completion_ids=[2, 3, 4], logprobs=[-0.1, -0.2])


@pytest.mark.parametrize("bad", [0.5, math.nan, -math.inf, math.inf])
def test_token_data_bad_logprob(bad):
    with pytest.raises(ValidationError, match=r"tokens.logprobs\[1\]"):
        TokenData(prompt_ids=[1], completion_ids=[2, 3], logprobs=[-0.1, bad])


@pytest.mark.parametrize("kw", [dict(prompt_ids=[], completion_ids=[1]), dict(prompt_ids=[1], completion_ids=[]),
                                dict(prompt_ids=[-1], completion_ids=[1]), dict(prompt_ids=[1], completion_ids=[1],
                                                                                extra=1),
                                dict(prompt_ids=[1, 2**70], completion_ids=[1]),
                                dict(prompt_ids=[1], completion_ids=[MAX_TOKEN_ID + 1])])
def test_token_data_shape(kw):
    with pytest.raises(ValidationError):
        TokenData(**kw)


def test_message_needs_content_or_tool_calls():
    with pytest.raises(ValidationError, match="needs content or tool_calls"):
        Message(role="assistant")
    with pytest.raises(ValidationError, match="needs content or tool_calls"):
        Message(role="assistant", content=None, tool_calls=[])
    assert Message(role="assistant", content="").text() == ""
    m = Message.model_validate({"role": "assistant", "tool_calls": [{"function": {"name": "f"}}]})
    assert m.tool_calls[0].function.name == "f"


def test_tool_message_needs_tool_call_id():
    with pytest.raises(ValidationError, match="tool_call_id"):
        Message(role="tool", content="result")
    assert Message(role="tool", content="result", tool_call_id="c1").tool_call_id == "c1"


def test_message_role_and_text():
    with pytest.raises(ValidationError):
        Message(role="robot", content="hi")
    m = Message.model_validate({"role": "user", "content": [{"type": "text", "text": "a"},
                                                            {"type": "image_url", "image_url": {"url": "u"}},
                                                            {"type": "text", "text": "b"}]})
    assert m.text() == "a\nb"
