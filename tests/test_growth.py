"""Bounded growth: the retrieval log is pruned, namespaces are capped, idle namespaces cost no review."""
from __future__ import annotations

import sqlite3

import pytest
from mcp import Client

from metaclaw_mcp.app import open_app
from metaclaw_mcp.config import load_config
from metaclaw_mcp.models import Message
from metaclaw_mcp.server import build_server
from metaclaw_mcp.skills.skillmd import SkillDoc


@pytest.mark.anyio
async def test_retrieval_log_keeps_the_newest_rows_and_drops_old_ones(tmp_path):
    config = load_config(home=tmp_path / "home", retrieval_log_max_rows=100, retrieval_log_days=1.0)
    async with open_app(config) as app:
        for i in range(250):
            await app.fetch_skills(f"how do I write test number {i}?", session_id="s")
        await app.flush_retrievals()
        async with app.db.transaction() as db:   # one row from a week ago, as an old server left it
            await db.execute("UPDATE retrievals SET created_at = '2000-01-01T00:00:00+00:00' WHERE rowid = "
                             "(SELECT MAX(rowid) FROM retrievals)")
        removed = await app.prune_retrievals()
        assert removed == 151                     # 150 beyond the newest 100, and the stale one among those
        queries = [r[0] for r in sqlite3.connect(config.database).execute("SELECT query FROM retrievals")]
        assert len(queries) == 99 and "how do I write test number 249?" not in queries
        assert "how do I write test number 248?" in queries and "how do I write test number 149?" not in queries


@pytest.mark.anyio
async def test_a_new_namespace_past_max_namespaces_is_refused_with_a_clear_error(tmp_path):
    config = load_config(home=tmp_path / "home", max_namespaces=3)   # 'default' has the starter skills
    async with open_app(config) as app, Client(build_server(app)) as client:
        for ns in ("a", "b"):
            ok = await client.call_tool("fetch_skills", {"query": "write a test", "namespace": ns})
            assert not ok.is_error
        refused = await client.call_tool("report_turn", {"session_id": "s", "namespace": "c",
                                                          "messages": [{"role": "user", "content": "hi"}],
                                                          "response": "hello"})
        assert refused.is_error
        text = refused.content[0].text
        assert "max_namespaces" in text and "'c'" in text and "\n" not in text
        again = await client.call_tool("fetch_skills", {"query": "write a test", "namespace": "a"})
        assert not again.is_error                # known namespaces still work
    assert sqlite3.connect(config.database).execute("SELECT COUNT(*) FROM turns WHERE namespace = 'c'").fetchone()[0] == 0


@pytest.mark.anyio
async def test_background_review_looks_only_at_namespaces_whose_ratings_or_skills_changed(tmp_path):
    config = load_config(home=tmp_path / "home", load_starter_skills=False)
    async with open_app(config) as app:
        turns = {}
        for i in range(30):
            ns = f"ns{i}"
            await app.library.add(SkillDoc(name=f"skill-{i}", description="Use when testing.", body="1. Test."),
                                  namespace=ns)
            rep = await app.report_turn("s", [Message(role="user", content="hi")], "ok", namespace=ns)
            await app.rate_turn(rep.turn_id, 1.0)
            turns[ns] = rep.turn_id
        review = app.retriever.credit_review
        assert len(await review.due()) == 30      # the first review looks at every namespace
        assert await review.due() == []           # nothing changed since
        await app.rate_turn(turns["ns7"], -1.0)
        await app.library.add(SkillDoc(name="another", description="Use when testing.", body="1. Test."),
                              namespace="ns12")
        assert await review.due() == ["ns12", "ns7"]
        assert await review.due() == []
