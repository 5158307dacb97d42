"""GET /metrics: Prometheus text whose database figures equal the SQLite file after a replay through a real
MCP client, whose tool counters equal the calls made, and which only the bearer token (an admin one, with a
token file) may read."""
from __future__ import annotations

import math
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from metaclaw_mcp.access import new_token, token_entry

FAST = {"METACLAW_RETRIEVAL_MODE": "lexical", "METACLAW_LOAD_STARTER_SKILLS": "false",
        "METACLAW_BATCH_MAX_WAIT_SECONDS": "3600"}   # nothing trains meanwhile: the figures hold still
TOOLS = ("fetch_skills", "report_turn", "rate_turn", "evolve_skills")


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape: (sample name, sorted labels) -> value."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def scrape(port: int, token: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.get(f"http://127.0.0.1:{port}/metrics", headers=headers, timeout=30)


def db_figures(db: Path) -> dict[str, Any]:
    """What /metrics must show, read straight from the SQLite file (read-only)."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        def grouped(sql: str) -> dict[str, int]:
            return {k: n for k, n in con.execute(sql)}
        return {
            "turns": con.execute("SELECT COUNT(*) FROM turns").fetchone()[0],
            "by_state": grouped("SELECT train_state, COUNT(*) FROM turns GROUP BY train_state"),
            "ratings": grouped("SELECT source, COUNT(*) FROM ratings GROUP BY source"),
            "reward_mean": con.execute("SELECT AVG(reward) FROM turns WHERE reward IS NOT NULL").fetchone()[0],
            "skills": grouped("SELECT status, COUNT(*) FROM skills WHERE current_version > 0 GROUP BY status"),
            "steps": con.execute("SELECT COUNT(*) FROM train_steps").fetchone()[0],
            "last_loss": (con.execute("SELECT loss FROM train_steps ORDER BY id DESC LIMIT 1").fetchone() or [None])[0],
            "llm": [tuple(r) for r in con.execute("SELECT purpose, COUNT(*), SUM(prompt_tokens), "
                                                  "SUM(completion_tokens) FROM llm_usage GROUP BY purpose")],
        }
    finally:
        con.close()


def write_elsewhere(db: Path) -> None:
    """Rows another process writes (a trainer, an LLM call): two training steps and three LLM calls."""
    con = sqlite3.connect(db, timeout=30)
    try:
        with con:
            now = "2026-01-01T00:00:00+00:00"
            batch = con.execute("INSERT INTO batches(namespace, kind, loss_fn, state, created_at) "
                                "VALUES ('default', 'rl', 'importance_sampling', 'trained', ?)", (now,)).lastrowid
            con.executemany("INSERT INTO train_steps(batch_id, step, loss, mean_reward, n_datums, created_at) "
                            "VALUES (?, ?, ?, 0.1, 4, ?)", [(batch, 1, 0.5, now), (batch, 2, 0.25, now)])
            con.executemany("INSERT INTO llm_usage(namespace, provider, purpose, prompt_tokens, completion_tokens, "
                            "created_at) VALUES ('default', 'openai', ?, ?, ?, ?)",
                            [("judge", 100, 7, now), ("judge", 50, 3, now), ("evolve", 900, 400, now)])
    finally:
        con.close()


def check_database_figures(got: dict[Any, float], db: Path) -> None:
    want = db_figures(db)
    assert got[("metaclaw_turns_total", ())] == want["turns"]
    for state in ("pending", "rated", "claimed", "trained", "skipped"):
        assert got[("metaclaw_turns_in_state", (("state", state),))] == want["by_state"].get(state, 0), state
    for source in ("user", "env", "agent", "judge"):
        assert got[("metaclaw_ratings_total", (("source", source),))] == want["ratings"].get(source, 0), source
    assert math.isclose(got[("metaclaw_reward_mean", ())], want["reward_mean"], rel_tol=1e-9)
    for status in ("active", "candidate", "retired"):
        assert got[("metaclaw_skills", (("status", status),))] == want["skills"].get(status, 0), status
    assert got[("metaclaw_train_steps_total", ())] == want["steps"]
    assert got[("metaclaw_train_backlog_turns", ())] == want["by_state"].get("rated", 0)
    if want["last_loss"] is None:
        assert ("metaclaw_train_last_loss", ()) not in got
    else:
        assert got[("metaclaw_train_last_loss", ())] == want["last_loss"]
    llm = {k: v for k, v in got.items() if k[0].startswith("metaclaw_llm_")}
    assert llm == {**{("metaclaw_llm_calls_total", (("purpose", p),)): n for p, n, _, _ in want["llm"]},
                   **{("metaclaw_llm_tokens_total", (("kind", "prompt"), ("purpose", p))): t for p, _, t, _ in want["llm"]},
                   **{("metaclaw_llm_tokens_total", (("kind", "completion"), ("purpose", p))): t
                      for p, _, _, t in want["llm"]}}


@pytest.mark.anyio
async def test_metrics_after_a_replay_match_the_database_and_the_calls_made(tmp_path):
    from mcp_servers import call, connect, served

    home = tmp_path / "home"
    token = new_token()
    made: Counter[tuple[str, str]] = Counter()
    with served(home, "http", METACLAW_AUTH_TOKEN=token, **FAST) as (port, _):
        assert scrape(port, None).status_code == 401
        assert scrape(port, "not-the-token").status_code == 401
        async with connect("http", home, port, "auto", token=token) as client:
            async def tool(name: str, args: dict[str, Any], fails: bool = False) -> Any:
                err, out = await call(client, name, args)
                assert err == fails, out
                made[(name, "error" if err else "ok")] += 1
                return out

            await tool("evolve_skills", {"proposals": [
                {"name": "check-the-units", "description": "Use when a calculation mixes units of measure.",
                 "body": "1. Write every quantity with its unit.\n2. Convert before adding.\nAvoid: bare numbers."},
                {"name": "cite-the-source", "description": "Use when a claim rests on a document or a page.",
                 "body": "1. Name the document and the section.\n2. Quote the line.\nAvoid: paraphrase only."}]})
            scores = [("user", 1.0), ("env", -0.5), ("agent", 0.25), ("user", -1.0), ("env", 0.75)]
            turns = []
            for i, _ in enumerate(scores):
                fetched = await tool("fetch_skills", {"query": f"convert units in calculation {i}"})
                out = await tool("report_turn", {"session_id": f"s{i % 2}", "retrieval_id": fetched["retrieval_id"],
                                                 "messages": [{"role": "user", "content": f"how far is {i} miles?"}],
                                                 "response": f"{i * 1.609:.3f} km"})
                turns.append(out["turn_id"])
            await tool("report_turn", {"session_id": "s9", "messages": [{"role": "user", "content": "unrated"}],
                                       "response": "left unrated"})
            for turn, (source, score) in zip(turns, scores):
                await tool("rate_turn", {"turn_id": turn, "score": score, "source": source, "feedback": "checked"})
            await tool("rate_turn", {"turn_id": turns[0], "score": 0.5, "source": "agent"})   # a second rating
            await tool("rate_turn", {"turn_id": "no-such-turn", "score": 1.0}, fails=True)     # the app's error
            await tool("fetch_skills", {"query": "   "}, fails=True)                            # empty query
            await tool("rate_turn", {"turn_id": turns[1], "score": "high"}, fails=True)       # a bad argument

        first = scrape(port, token)
        assert first.status_code == 200
        assert first.headers["content-type"].startswith("text/plain; version=0.0.4")
        got = samples(first.text)
        check_database_figures(got, home / "metaclaw.db")
        assert got[("metaclaw_skills", (("status", "candidate"),))] == 2
        assert got[("metaclaw_ratings_total", (("source", "agent"),))] == 2
        assert ("metaclaw_train_last_loss", ()) not in got           # no step yet: no loss to show

        for name in TOOLS:
            for outcome in ("ok", "error"):
                assert got[("metaclaw_tool_calls_total", (("outcome", outcome), ("tool", name)))] == \
                    made[(name, outcome)], (name, outcome)
            calls = made[(name, "ok")] + made[(name, "error")]
            assert got[("metaclaw_tool_duration_seconds_count", (("tool", name),))] == calls
            assert got[("metaclaw_tool_duration_seconds_bucket", (("le", "+Inf"), ("tool", name)))] == calls
            assert got[("metaclaw_tool_duration_seconds_sum", (("tool", name),))] > 0
        assert sum(v for (n, _), v in got.items() if n == "metaclaw_tool_calls_total") == sum(made.values())

        # Rows written by another process show at the next scrape: the figures are read, not counted here.
        write_elsewhere(home / "metaclaw.db")
        got = samples(scrape(port, token).text)
        check_database_figures(got, home / "metaclaw.db")
        assert got[("metaclaw_train_steps_total", ())] == 2 and got[("metaclaw_train_last_loss", ())] == 0.25
        assert got[("metaclaw_llm_tokens_total", (("kind", "prompt"), ("purpose", "judge")))] == 150
        assert got[("metaclaw_llm_calls_total", (("purpose", "evolve"),))] == 1
        # scraping is not a tool call
        assert sum(v for (n, _), v in got.items() if n == "metaclaw_tool_calls_total") == sum(made.values())

        openmetrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30, headers={
            "Authorization": f"Bearer {token}", "Accept": "application/openmetrics-text; version=1.0.0"})
        assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
        assert openmetrics.text.endswith("# EOF\n") and "metaclaw_turns_total 6.0" in openmetrics.text

        assert httpx.post(f"http://127.0.0.1:{port}/metrics", headers={"Authorization": f"Bearer {token}"},
                          timeout=30).status_code == 405


@pytest.mark.anyio
async def test_with_a_token_file_only_an_admin_token_reads_metrics_on_sse(tmp_path):
    from mcp_servers import call, connect, served

    home = tmp_path / "home"
    home.mkdir()
    admin, agent = new_token(), new_token()
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(token_entry("ops", admin, ["*"], role="admin") + "\n" + token_entry("bot", agent, ["team-a"]))
    with served(home, "sse", "--tokens-file", str(tokens), **FAST) as (port, _):
        async with connect("sse", home, port, "auto", token=agent) as client:
            err, _ = await call(client, "report_turn", {"session_id": "s", "namespace": "team-a", "response": "ok",
                                                        "messages": [{"role": "user", "content": "hello"}]})
            assert not err
            err, _ = await call(client, "fetch_skills", {"query": "plan", "namespace": "team-b"})   # Forbidden
            assert err
        assert scrape(port, None).status_code == 401
        refused = scrape(port, agent)
        assert refused.status_code == 403 and "admin" in refused.json()["detail"]
        ok = scrape(port, admin)
        assert ok.status_code == 200
        got = samples(ok.text)
        assert got[("metaclaw_turns_total", ())] == 1
        assert got[("metaclaw_tool_calls_total", (("outcome", "ok"), ("tool", "report_turn")))] == 1
        assert got[("metaclaw_tool_calls_total", (("outcome", "error"), ("tool", "fetch_skills")))] == 1
        assert ("metaclaw_reward_mean", ()) not in got      # nothing rated: no mean to show


@pytest.mark.anyio
async def test_each_app_has_its_own_registry_and_unknown_tools_share_one_label(tmp_path):
    from metaclaw_mcp.app import open_app
    from metaclaw_mcp.config import load_config
    from metaclaw_mcp.metrics import metrics_for
    from metaclaw_mcp.server import build_server

    def config(name: str) -> Any:
        return load_config(home=tmp_path / name, retrieval_mode="lexical", load_starter_skills=False)

    async with open_app(config("a")) as a, open_app(config("b")) as b:
        server_a, server_b = build_server(a), build_server(b)
        assert metrics_for(a) is server_a.metrics and metrics_for(b) is server_b.metrics
        assert metrics_for(a).registry is not metrics_for(b).registry
        await server_a.call_tool("report_turn", {"session_id": "s", "response": "r",
                                                 "messages": [{"role": "user", "content": "q"}]})
        with pytest.raises(Exception):
            await server_a.call_tool("no_such_tool", {})
        with pytest.raises(Exception):
            await server_a.call_tool("rate_turn", {"turn_id": "missing", "score": 1.0})
        got_a = samples((await metrics_for(a).render())[0].decode())
        got_b = samples((await metrics_for(b).render())[0].decode())
    assert got_a[("metaclaw_tool_calls_total", (("outcome", "ok"), ("tool", "report_turn")))] == 1
    assert got_a[("metaclaw_tool_calls_total", (("outcome", "error"), ("tool", "unknown")))] == 1
    assert got_a[("metaclaw_tool_calls_total", (("outcome", "error"), ("tool", "rate_turn")))] == 1
    assert not any(dict(labels).get("tool") == "no_such_tool" for _, labels in got_a)
    assert got_a[("metaclaw_turns_total", ())] == 1
    assert got_b[("metaclaw_tool_calls_total", (("outcome", "ok"), ("tool", "report_turn")))] == 0
    assert got_b[("metaclaw_turns_total", ())] == 0
