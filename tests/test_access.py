"""Tokens bound to namespaces and a role: the token file, and each tool, resource and turn checked."""
from __future__ import annotations

import pytest

from metaclaw_mcp.access import LOCAL, Principal, TokenTable, new_token, token_entry
from metaclaw_mcp.errors import ConfigError, Forbidden


def test_token_file_entries_map_tokens_to_principals(tmp_path):
    agent, admin = new_token(), "plain-admin-token-0123456789"
    path = tmp_path / "tokens.toml"
    path.write_text(token_entry("laptop", agent, ["proj-a", "proj-b"]) + "\n"
                    f'[[token]]\nname = "ops"\ntoken = "{admin}"\nnamespaces = ["*"]\nrole = "admin"\n')
    table = TokenTable.load(path)
    assert agent not in path.read_text()                      # only its digest is stored
    laptop = table.lookup(agent)
    assert laptop == Principal("laptop", frozenset({"proj-a", "proj-b"}), "agent")
    assert laptop.may_use("proj-a") and not laptop.may_use("default")
    assert table.lookup(admin).every_namespace and table.lookup(admin).role == "admin"
    assert table.lookup("wrong") is None and table.lookup(agent + "x") is None and table.lookup("") is None


def test_check_says_which_namespaces_a_token_may_use():
    p = Principal("laptop", frozenset({"proj-a"}), "agent")
    p.check("proj-a")
    with pytest.raises(Forbidden, match="may not use namespace 'default'.*proj-a"):
        p.check("default")
    with pytest.raises(Forbidden, match="admin token"):
        p.check_admin("pausing training")
    LOCAL.check("anything")
    LOCAL.check_admin("anything")


@pytest.mark.parametrize("body, message", [
    ('[[token]]\nname = "a"\nnamespaces = ["x"]\n', "exactly one of `token` and `sha256`"),
    ('[[token]]\nname = "a"\ntoken = "short"\nnamespaces = ["x"]\n', "at least 16"),
    ('[[token]]\nname = "a"\nsha256 = "abc"\nnamespaces = ["x"]\n', "64 hex digits"),
    ('[[token]]\nname = "a"\ntoken = "0123456789abcdef"\nnamespaces = []\n', "non-empty list"),
    ('[[token]]\nname = "a"\ntoken = "0123456789abcdef"\nnamespaces = ["x"]\nrole = "root"\n', "role 'root'"),
    ('[[token]]\nname = "a"\ntoken = "0123456789abcdef"\nnamespaces = ["x"]\nnamespace = "y"\n', "unknown key"),
    ('[[token]]\ntoken = "0123456789abcdef"\nnamespaces = ["x"]\n', "`name`"),
    ('', "no [[token]] entries"),
    ('[[token]\n', "cannot be read"),
])
def test_a_bad_token_file_is_one_clear_error(tmp_path, body, message):
    path = tmp_path / "tokens.toml"
    path.write_text(body)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        TokenTable.load(path)


def test_a_missing_token_file_says_how_to_make_one(tmp_path):
    with pytest.raises(ConfigError, match="tokens add"):
        TokenTable.load(tmp_path / "none.toml")


# ---- through the real server over HTTP and SSE: a token sees only its namespaces ----

@pytest.mark.anyio
@pytest.mark.parametrize("transport", ["http", "sse"])
async def test_tokens_bound_to_namespaces_isolate_clients(tmp_path, transport):
    from mcp_servers import call, connect, served

    home = tmp_path / "home"
    home.mkdir()
    alice, bob = new_token(), new_token()
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(token_entry("alice", alice, ["team-a"]) + "\n" + token_entry("bob", bob, ["team-b"]))
    with served(home, transport, METACLAW_TOKENS_FILE=str(tokens)) as (port, _):
        async with connect(transport, home, port, "auto", token=alice) as a:
            err, out = await call(a, "report_turn", {"session_id": "s", "namespace": "team-a",
                                                     "messages": [{"role": "user", "content": "secret plan A"}],
                                                     "response": "done"})
            assert not err
            turn_a = out["turn_id"]
            err, _ = await call(a, "rate_turn", {"turn_id": turn_a, "score": -1.0, "feedback": "wrong"})
            assert not err
            err, text = await call(a, "fetch_skills", {"query": "plan", "namespace": "team-b"})
            assert err and "may not use namespace 'team-b'" in text and "\n" not in text
            err, text = await call(a, "evolve_skills", {"namespace": "default"})
            assert err and "may not use namespace 'default'" in text
            err, out = await call(a, "evolve_skills", {"namespace": "team-a", "proposals": [{
                "name": "plan-a-checklist", "description": "Use when writing a plan for team A.",
                "body": "List the owner and the due date of every step.", "addresses": [turn_a]}]})
            assert not err and [p["slug"] for p in out["accepted"]] == ["plan-a-checklist"]
            listed = [str(r.uri) for r in (await a.list_resources()).resources]
            assert [u for u in listed if u.startswith("skill://")] == ["skill://team-a/plan-a-checklist"]
            assert "metaclaw://status" not in listed
        async with connect(transport, home, port, "auto", token=bob) as b:
            assert not any(str(r.uri).startswith("skill://") for r in (await b.list_resources()).resources)
            err, text = await call(b, "rate_turn", {"turn_id": turn_a, "score": 1.0})    # another team's turn
            assert err and "no turn" in text
            err, out = await call(b, "evolve_skills", {"namespace": "team-b"})
            assert not err and out["digest"]["failures"] == []                          # A's failure is not B's
            err, text = await call(b, "evolve_skills", {"namespace": "team-a"})
            assert err and "may not use namespace 'team-a'" in text
            with pytest.raises(Exception, match="no skill"):
                await b.read_resource("skill://default/answer-first-summaries")
    import sqlite3
    ratings = sqlite3.connect(home / "metaclaw.db").execute("SELECT source, score FROM ratings").fetchall()
    assert ratings == [("user", -1.0)]                                                  # bob's re-rating never landed


# ---- a namespace several tokens share: one agent's lesson does not reach the others unproven ----

@pytest.mark.anyio
async def test_a_candidate_one_token_wrote_reaches_other_tokens_only_once_approved(tmp_path):
    from metaclaw_mcp.app import open_app
    from metaclaw_mcp.config import load_config
    from metaclaw_mcp.models import Message, SkillProposal

    alice = Principal("alice", frozenset({"team"}), "agent")
    bob = Principal("bob", frozenset({"team"}), "agent")
    config = load_config(home=tmp_path / "home", load_starter_skills=False, embedding_encoder="static")
    async with open_app(config) as app:
        rep = await app.report_turn("s", [Message(role="user", content="Export the invoices to a csv file")], "done",
                                    namespace="team", caller=alice)
        await app.rate_turn(rep.turn_id, -1.0, feedback="no index column, utf-8 please", caller=alice)
        out = await app.evolve_skills("team", proposals=[SkillProposal(
            name="csv-without-index", description="Use when writing a CSV file.",
            body="Write CSV files with a header, UTF-8, and without the dataframe index.", category="general",
            addresses=[rep.turn_id])], caller=alice)
        assert out.accepted and out.accepted[0].status == "candidate"
        query = "write the invoice list to a csv file"
        assert "csv-without-index" in [s.slug for s in (await app.fetch_skills(query, namespace="team",
                                                                               caller=alice)).skills]
        assert "csv-without-index" not in [s.slug for s in (await app.fetch_skills(query, namespace="team",
                                                                                   caller=bob)).skills]
        assert "csv-without-index" in [s.slug for s in (await app.fetch_skills(query, namespace="team")).skills]
        await app.library.set_status("team", "csv-without-index", "active", "approved by an admin")
        assert "csv-without-index" in [s.slug for s in (await app.fetch_skills(query, namespace="team",
                                                                               caller=bob)).skills]


@pytest.mark.anyio
async def test_where_tokens_share_a_namespace_one_token_alone_neither_promotes_nor_retires(tmp_path):
    """One client rates its own candidate up and a shared skill down, with user ratings: while its
    token is the only one rating them, nothing moves; when a second token's ratings agree, it does."""
    from metaclaw_mcp.app import open_app
    from metaclaw_mcp.config import load_config
    from metaclaw_mcp.models import Message
    from metaclaw_mcp.skills.skillmd import SkillDoc

    alice = Principal("alice", frozenset({"team"}), "agent")
    bob = Principal("bob", frozenset({"team"}), "agent")
    config = load_config(home=tmp_path / "home", load_starter_skills=False, embedding_encoder="static")
    async with open_app(config) as app:
        for name, status in (("mine", "candidate"), ("shared-security", "active"), ("other", "active")):
            await app.library.add(SkillDoc(name=name, description=f"Use when {name} matters.", body="1. Do it."),
                                  namespace="team", status=status)

        async def turns(who: Principal, slug: str, score: float, n: int) -> None:
            for i in range(n):
                rep = await app.report_turn(f"{who.name}-{slug}-{i}", [Message(role="user", content="task")], "done",
                                            skill_ids=[slug], namespace="team", caller=who)
                await app.rate_turn(rep.turn_id, score, "user", caller=who)

        await turns(bob, "other", 0.0, 12)               # bob rates too: the namespace is shared
        await turns(alice, "mine", 1.0, 20)
        await turns(alice, "shared-security", -1.0, 20)
        assert await app.review_skills("team") == []
        assert (await app.library.get("team", "mine")).status == "candidate"
        assert (await app.library.get("team", "shared-security")).status == "active"
        await turns(bob, "mine", 1.0, 10)                # a second token's evidence agrees
        changes = {c["slug"]: c["status"] for c in await app.review_skills("team")}
        assert changes.get("mine") == "active"
        assert (await app.library.get("team", "shared-security")).status == "active"


@pytest.mark.anyio
async def test_the_single_user_default_still_decides_on_its_own_ratings(tmp_path):
    from metaclaw_mcp.app import open_app
    from metaclaw_mcp.config import load_config
    from metaclaw_mcp.models import Message
    from metaclaw_mcp.skills.skillmd import SkillDoc

    config = load_config(home=tmp_path / "home", load_starter_skills=False, embedding_encoder="static")
    async with open_app(config) as app:
        await app.library.add(SkillDoc(name="mine", description="Use when mine matters.", body="1. Do it."),
                              namespace="solo", status="candidate")
        await app.library.add(SkillDoc(name="other", description="Use when other matters.", body="1. Do it."),
                              namespace="solo")
        for i, (slug, score) in enumerate([("other", 0.0)] * 12 + [("mine", 1.0)] * 20):
            rep = await app.report_turn(f"s{i}", [Message(role="user", content="task")], "done", skill_ids=[slug],
                                        namespace="solo")
            await app.rate_turn(rep.turn_id, score, "user")
        changes = {c["slug"]: c["status"] for c in await app.review_skills("solo")}
        assert changes.get("mine") == "active"
