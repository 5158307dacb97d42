"""Credit: the pure arithmetic, the trigger-kept sums in a real SQLite file, and the decisions."""
from __future__ import annotations

import math
import random

import pytest

from metaclaw_mcp.models import Message
from metaclaw_mcp.skills.credit import (Candidate, Credit, CreditPolicy, Effect, RewardStats, credit,
                                        credit_from_effect, decide, ebh, fit_effects, rank, retirement_evalue)
from metaclaw_mcp.skills.skillmd import SkillDoc

POLICY = CreditPolicy()


# ---- pure arithmetic ----

def test_reward_stats_sums_mean_and_variance():
    s = RewardStats()
    for r in (1.0, 0.0, -1.0, 0.5):
        s = s.add(r)
    assert (s.n, s.total, s.total_sq) == (4, 0.5, 2.25)
    assert s.mean == pytest.approx(0.125)
    # sample variance 0.729..., smoothed towards prior_sd^2 with 2 pseudo-observations
    ss = 2.25 - 0.5 ** 2 / 4
    assert s.variance(0.5) == pytest.approx((ss + 2 * 0.25) / (3 + 2))
    assert RewardStats().mean is None and RewardStats().variance(0.5) == 0.25
    assert (s - RewardStats(1, 1.0, 1.0)) == RewardStats(3, -0.5, 1.25)


def test_credit_without_evidence_is_neutral_and_uncertain():
    c = credit(RewardStats(), RewardStats(), uses=3, policy=POLICY)
    assert c.uses == 3 and c.rated == 0 and c.uplift == 0.0 and c.usefulness == 0.0
    assert math.isinf(c.se) and c.posterior_sd == POLICY.prior_sd


def test_credit_uplift_se_and_shrinkage():
    residuals = RewardStats()
    for r in (0.4, 0.6, 0.5, 0.5):
        residuals = residuals.add(r)
    rewards = RewardStats(4, 3.0, 2.5)
    c = credit(rewards, residuals, uses=5, policy=POLICY)
    assert c.uplift == pytest.approx(0.5)
    assert c.mean == pytest.approx(0.75)
    se = math.sqrt(residuals.variance(POLICY.reward_sd) / 4)
    assert c.se == pytest.approx(se)
    shrink = POLICY.prior_sd ** 2 / (POLICY.prior_sd ** 2 + se ** 2)
    assert c.usefulness == pytest.approx(0.5 * shrink) and 0 < c.usefulness < c.uplift
    assert c.posterior_sd == pytest.approx(math.sqrt(shrink) * se)
    # more of the same evidence: less shrinkage, tighter bounds
    many = RewardStats(40, 20.0, 40 * 0.26)
    c40 = credit(RewardStats(40, 30.0, 25.0), many, 40, POLICY)
    assert c40.se < c.se and c40.usefulness > c.usefulness
    assert c40.lower(1.96) < c40.uplift < c40.upper(1.96)


def make_credit(uplift: float, se: float, rated: int) -> Credit:
    return Credit(rated, rated, 0.0, uplift, se, uplift, se)


def test_decide_retires_what_the_library_wide_selection_chose_with_reason():
    c = make_credit(-0.4, 0.1, 6)
    e = retirement_evalue(c, POLICY)
    d = decide("active", c, POLICY, baseline_n=50, harmful=e)
    assert d is not None and d.status == "retired"
    assert "reliably negative" in d.reason and "-0.400" in d.reason and "6 rated uses" in d.reason
    assert "e-value" in d.reason
    # not selected, no baseline yet, or already retired: no decision
    assert decide("active", c, POLICY, 50) is None
    assert decide("active", c, POLICY, baseline_n=2, harmful=e) is None
    assert decide("retired", make_credit(-0.9, 0.01, 60), POLICY, 50, harmful=1e9) is None


def test_retirement_evalue_grows_with_evidence_of_harm_only():
    assert retirement_evalue(make_credit(-0.4, 0.1, 4), POLICY) == 0.0       # fewer than retire_min_uses
    assert retirement_evalue(make_credit(0.2, 0.1, 30), POLICY) == 0.0       # not harmful
    weak, strong = retirement_evalue(make_credit(-0.1, 0.1, 20), POLICY), retirement_evalue(make_credit(-0.4, 0.1, 20), POLICY)
    assert 0.0 < weak < 1.0 < strong
    assert retirement_evalue(make_credit(-0.4, 0.05, 80), POLICY) > strong


def test_ebh_selects_by_rank_and_lowers_the_bar_for_many():
    # one skill among 35 needs e >= 35 / 0.05 = 700; two need the second-best >= 350
    assert ebh({1: 800.0, **{i: 0.5 for i in range(2, 36)}}, 0.05) == {1}
    assert ebh({1: 600.0, **{i: 0.5 for i in range(2, 36)}}, 0.05) == set()
    assert ebh({1: 600.0, 2: 400.0, **{i: 0.5 for i in range(3, 36)}}, 0.05) == {1, 2}
    assert ebh({}, 0.05) == set()


def test_noise_alone_retires_nothing_across_a_library_reviewed_again_and_again():
    """35 skills rated by pure noise, reviewed after every 10 ratings for 1,000 ratings each: the
    library-wide selection retires none (a fixed 1.96 bound retires several)."""
    rng = random.Random(11)
    skills = 35
    sums = [RewardStats() for _ in range(skills)]
    fixed_bound, selected = set(), set()
    for step in range(1000):
        for i in range(skills):
            sums[i] = sums[i].add(rng.uniform(-1.0, 1.0))
        if step % 10 == 9:
            credits = {i: credit(sums[i], sums[i], sums[i].n, POLICY) for i in range(skills)}
            fixed_bound |= {i for i, c in credits.items() if c.rated >= POLICY.retire_min_uses and c.upper(1.96) < 0}
            selected |= ebh({i: retirement_evalue(c, POLICY) for i, c in credits.items()}, POLICY.alpha)
    assert selected == set()
    assert len(fixed_bound) >= 3


def test_decide_promotes_candidate_with_positive_evidence():
    d = decide("candidate", make_credit(0.3, 0.1, 8), POLICY, 50)
    assert d is not None and d.status == "active" and d.reason.startswith("promoted")
    assert decide("candidate", make_credit(0.3, 0.1, 7), POLICY, 50) is None      # too few uses
    assert decide("candidate", make_credit(0.1, 0.1, 20), POLICY, 50) is None     # lower bound below 0
    assert decide("active", make_credit(0.3, 0.1, 30), POLICY, 50) is None        # already active
    stale = decide("candidate", make_credit(0.05, 0.1, POLICY.candidate_max_uses), POLICY, 50)
    assert stale is not None and stale.status == "retired" and "no measurable uplift" in stale.reason


def cand(key: int, relevance: float, status: str = "active", uplift: float = 0.0, se: float = math.inf,
         rated: int = 0) -> Candidate:
    usefulness = uplift if rated else 0.0
    return Candidate(key, relevance, status, Credit(rated, rated, None, uplift, se, usefulness,
                                                    se if rated else POLICY.prior_sd))


def test_rank_blends_relevance_and_usefulness():
    policy = CreditPolicy(usefulness_weight=2.0, explore_slots=0)
    cands = [cand(1, 1.0), cand(2, 0.8, uplift=0.2, se=0.05, rated=30), cand(3, 0.9, uplift=-0.2, se=0.05, rated=30)]
    ranked = rank(cands, 3, policy)
    assert [r.key for r in ranked] == [2, 1, 3]
    assert ranked[0].why == "usefulness" and ranked[1].why == "relevance"
    assert ranked[0].score == pytest.approx(0.8 * (1 + 2 * 0.2))
    assert len(rank(cands, 2, policy)) == 2


def test_usefulness_scales_relevance_and_never_pulls_an_irrelevant_skill_in():
    policy = CreditPolicy(usefulness_weight=2.0, explore_slots=0)
    # a skill that helped a lot elsewhere, barely relevant here, stays below the one that fits
    cands = [cand(1, 1.0), cand(2, 0.2, uplift=0.5, se=0.05, rated=40)]
    assert [r.key for r in rank(cands, 2, policy)] == [1, 2]
    # among skills that fit about as well, usefulness decides
    cands = [cand(1, 1.0), cand(2, 0.9, uplift=0.3, se=0.05, rated=40)]
    assert [r.key for r in rank(cands, 2, policy)] == [2, 1]


def test_rank_candidates_only_through_bounded_exploration():
    policy = CreditPolicy(explore_slots=1, explore_min_relevance=0.3)
    cands = [cand(1, 1.0, rated=50, uplift=0.0, se=0.05), cand(2, 0.9, rated=50, uplift=0.0, se=0.05),
             cand(3, 0.95, rated=50, uplift=0.0, se=0.05), cand(10, 0.99, "candidate"), cand(11, 0.2, "candidate")]
    rng = random.Random(1)
    for _ in range(50):
        ranked = rank(cands, 3, policy, rng)
        assert len(ranked) == 3
        explored = [r for r in ranked if r.why == "exploration"]
        assert len(explored) <= 1                      # bounded: one place at most
        assert 11 not in [r.key for r in ranked]        # too irrelevant to explore
        assert ranked[-1].key == 10 and explored[0].key == 10  # the candidate takes the last place
    no_explore = rank(cands, 3, policy, rng, explore=False)
    assert [r.key for r in no_explore] == [1, 3, 2] and all(r.why != "exploration" for r in no_explore)
    assert rank(cands, 1, policy, rng)[0].key == 1       # k=1: no place to spare


def test_fit_effects_separates_skills_that_share_turns():
    rng = random.Random(3)
    truth = {0: 0.4, 1: 0.0, 2: -0.4, 3: 0.4, 4: 0.0}
    turns = []
    for _ in range(3000):
        keys = rng.sample(sorted(truth), 2)
        turns.append((0.1 + sum(truth[k] for k in keys) + rng.gauss(0, 0.2), keys))
    b0, effects = fit_effects(turns, prior_sd=0.5)
    # only differences are identified when every turn has two skills: compare them centred
    mean_fit = sum(e.effect for e in effects.values()) / len(effects)
    mean_true = sum(truth.values()) / len(truth)
    for k, e in effects.items():
        assert e.effect - mean_fit == pytest.approx(truth[k] - mean_true, abs=0.03)
        assert 0 < e.se < 0.02 and e.rated > 900
    assert fit_effects([], 0.5) == (0.0, {})
    c = credit_from_effect(Effect(0.2, 0.05, 10), uses=12, mean=0.5, policy=POLICY)
    assert (c.uses, c.rated, c.uplift, c.usefulness, c.se) == (12, 10, 0.2, 0.2, 0.05)


# ---- the trigger-kept sums in a real database ----

pytestmark_anyio = pytest.mark.anyio


async def report_and_rate(app, ns: str, slugs: list[str], reward: float | None, i: int = 0) -> str:
    fetched_ids = [(await app.library.get(ns, s)).id for s in slugs]
    out = await app.report_turn(f"s{i}", [Message(role="user", content="task")], "done",
                                skill_ids=fetched_ids, namespace=ns)
    if reward is not None:
        await app.rate_turn(out.turn_id, reward, source="env")
    return out.turn_id


def doc(name: str) -> SkillDoc:
    return SkillDoc(name=name, description=f"Use when {name.replace('-', ' ')} matters.",
                    body=f"1. Do the {name} thing.")


@pytest.mark.anyio
async def test_stats_follow_reports_ratings_and_rerating(app):
    ns = "credit"
    for name in ("alpha-skill", "beta-skill"):
        await app.library.add(doc(name), namespace=ns)
    t1 = await report_and_rate(app, ns, ["alpha-skill", "beta-skill"], 0.5, 1)
    await report_and_rate(app, ns, ["alpha-skill"], -0.5, 2)
    await report_and_rate(app, ns, ["beta-skill"], None, 3)   # reported, never rated
    state = await app.retriever.state(ns)
    alpha = (await app.library.get(ns, "alpha-skill")).id
    beta = (await app.library.get(ns, "beta-skill")).id
    uses, rewards, _ = state.stats[(alpha, 1)]
    assert uses == 2 and rewards == RewardStats(2, 0.0, 0.5)
    uses, rewards, _ = state.stats[(beta, 1)]
    assert uses == 2 and rewards.n == 1 and rewards.total == pytest.approx(0.5)
    assert state.totals.n == 2 and state.totals.total == pytest.approx(0.0)
    # a user rating outranks the env one: the sums move with the fused reward, not a new row
    await app.rate_turn(t1, -1.0, source="user")
    state = await app.retriever.state(ns)
    assert state.stats[(alpha, 1)][1] == RewardStats(2, -1.5, 1.25)
    assert state.totals.n == 2 and state.totals.total == pytest.approx(-1.5)
    # what the triggers kept equals a recount from the turns
    row = await app.db.fetchone(
        "SELECT COUNT(*), SUM(t.reward) FROM skill_uses u JOIN turns t ON t.id = u.turn_id "
        "WHERE u.skill_id = ? AND t.reward IS NOT NULL", (alpha,))
    assert (row[0], row[1]) == (2, pytest.approx(-1.5))


@pytest.mark.anyio
async def test_credit_is_per_version_and_survives_rollback(app):
    ns = "versions"
    sk = await app.library.add(doc("versioned-skill"), namespace=ns)
    for i in range(3):
        await report_and_rate(app, ns, ["versioned-skill"], 0.8, i)
    await app.library.revise(ns, sk.id, SkillDoc(name="x", description="Use when v2 matters.", body="1. v2 step."))
    for i in range(2):
        await report_and_rate(app, ns, ["versioned-skill"], -0.6, 10 + i)
    state = await app.retriever.state(ns)
    assert state.stats[(sk.id, 1)][1].n == 3 and state.stats[(sk.id, 2)][1].n == 2
    assert app.retriever.credit_of(state, sk.id, 2).mean == pytest.approx(-0.6)
    back = await app.library.rollback(ns, sk.id, 1)
    assert back.version == 1
    report = {r["slug"]: r for r in await app.retriever.credit_report(ns)}
    assert report["versioned-skill"]["version"] == 1 and report["versioned-skill"]["rated"] == 3
    assert report["versioned-skill"]["mean_reward"] == pytest.approx(0.8)


@pytest.mark.anyio
async def test_review_retires_harmful_and_promotes_helpful_with_reasons(app):
    ns = "review"
    names = ["good-skill", "bad-skill", "plain-skill", "new-good-skill"]
    for name in names:
        await app.library.add(doc(name), namespace=ns, status="candidate" if name.startswith("new") else "active")
    rng = random.Random(5)
    effect = {"good-skill": 0.4, "bad-skill": -0.5, "plain-skill": 0.0, "new-good-skill": 0.4}
    for i in range(60):
        pair = rng.sample(names, 2)
        await report_and_rate(app, ns, pair, max(-1.0, min(1.0, sum(effect[s] for s in pair) + rng.gauss(0, 0.1))), i)
    changes = {c["slug"]: c for c in await app.review_skills(ns)}
    assert changes["bad-skill"]["status"] == "retired"
    assert changes["new-good-skill"]["status"] == "active"
    assert "good-skill" not in changes or changes["good-skill"]["status"] != "retired"
    bad = await app.library.get(ns, "bad-skill")
    assert bad.status == "retired" and "reliably negative uplift" in bad.status_reason and "(v1)" in bad.status_reason
    promoted = await app.library.get(ns, "new-good-skill")
    assert promoted.status == "active" and promoted.status_reason.startswith("promoted")
    # retired skills are not retrieved any more
    fetched = await app.fetch_skills("bad skill matters", k=5, namespace=ns)
    assert "bad-skill" not in [s.slug for s in fetched.skills]
    # a second review with no new evidence changes nothing
    assert await app.review_skills(ns) == []


@pytest.mark.anyio
async def test_an_agents_own_ratings_never_promote_or_retire_alone(app):
    """A client promotes its own candidate with self-rated uses, or retires a rival with them: the
    rules count only uses whose reward came from the user, the environment or the judge."""
    ns = "self-rated"
    await app.library.add(doc("mine"), namespace=ns, status="candidate")
    await app.library.add(doc("rival"), namespace=ns)
    await app.library.add(doc("other"), namespace=ns)
    for i in range(12):                                       # a baseline the user rated
        await report_and_rate(app, ns, ["other"], 0.0 if i % 2 else 0.2, i)
    for i in range(30):
        for slug, score in (("mine", 1.0), ("rival", -1.0)):
            out = await app.report_turn(f"a{i}", [Message(role="user", content="task")], "done",
                                        skill_ids=[slug], namespace=ns)
            await app.rate_turn(out.turn_id, score, source="agent")
    assert await app.review_skills(ns) == []
    assert (await app.library.get(ns, "mine")).status == "candidate"
    assert (await app.library.get(ns, "rival")).status == "active"
    for i in range(10):                                       # the user agrees: now it counts
        await report_and_rate(app, ns, ["mine"], 1.0, 100 + i)
    changes = {c["slug"]: c["status"] for c in await app.review_skills(ns)}
    assert changes.get("mine") == "active"


@pytest.mark.anyio
async def test_fetch_explains_why_and_uses(app):
    ns = "why"
    for name in ("useful-skill", "other-skill"):
        await app.library.add(doc(name), namespace=ns)
    for i in range(12):
        await report_and_rate(app, ns, ["useful-skill"], 0.9, i)
        await report_and_rate(app, ns, ["other-skill"], -0.2, 100 + i)
    await app.review_skills(ns)
    fetched = await app.fetch_skills("skill matters", k=2, namespace=ns)
    top = fetched.skills[0]
    assert top.slug == "useful-skill" and top.why == "usefulness" and top.uses == 12 and top.usefulness > 0
    assert all(s.why in ("relevance", "usefulness", "exploration") for s in fetched.skills)
    assert 0.0 <= top.relevance <= 1.0


@pytest.mark.anyio
async def test_library_budget_retires_the_least_useful_past_the_cap(tmp_path):
    from metaclaw_mcp.app import open_app
    from metaclaw_mcp.config import load_config
    from metaclaw_mcp.models import Message

    config = load_config(home=tmp_path / "home", max_active_skills=33, retrieval_mode="lexical")
    async with open_app(config) as app:
        starters = await app.library.list("default", status="active")
        assert len(starters) == 35
        # one skill proves useful: it must survive the cut
        for i in range(6):
            rep = await app.report_turn(f"s{i}", [Message(role="user", content="q")], "a", skill_ids=["write-unit-tests"])
            await app.rate_turn(rep.turn_id, 1.0)
        changes = await app.retriever.enforce_budget("default")
        assert len(changes) == 2 and all("max_active_skills=33" in d.reason for _, _, d in changes)
        active = {s.slug for s in await app.library.list("default", status="active")}
        assert len(active) == 33 and "write-unit-tests" in active
        retired = await app.library.list("default", status="retired")
        assert {s.slug for s in retired} == {slug for _, slug, _ in changes}
        for s in retired:  # nothing deleted
            assert len(await app.library.versions(s.id)) == 1
        assert await app.retriever.enforce_budget("default") == []
