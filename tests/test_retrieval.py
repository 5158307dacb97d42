"""Pure retrieval helpers: query terms, FTS5 match expressions, budgets and retrieval ids."""
from __future__ import annotations

import pytest

from metaclaw_mcp.skills.injection import (INJECTION_HEADER, SHORT_BODY_CHARS, Entry, compose, render_injection,
                                           render_skill)
from metaclaw_mcp.text import estimate_tokens
from metaclaw_mcp.skills.retrieval import MAX_TERMS, make_retrieval_id, match_expression, parse_retrieval_id, query_terms


def test_query_terms_drop_stopwords_and_lowercase():
    assert query_terms("Please help me WRITE the Unit tests for a Python function") == [
        "write", "unit", "tests", "python", "function"]


def test_query_terms_dedup_keeps_first_order():
    assert query_terms("CSV parse csv Parse json CSV") == ["csv", "parse", "json"]


def test_query_terms_drop_single_chars_and_punctuation():
    assert query_terms("a b c -- x_y: z?? go!") == ["go"]
    assert query_terms("") == []
    assert query_terms("the and of to") == []


def test_query_terms_unicode():
    assert query_terms("Café naïve résumé") == ["café", "naïve", "résumé"]


def test_query_terms_cap():
    words = [f"word{i}" for i in range(200)]
    terms = query_terms(" ".join(words))
    assert MAX_TERMS == 64
    assert terms == words[:64]
    # duplicates do not count towards the cap
    assert query_terms(" ".join(["dup"] * 100 + words[:3])) == ["dup", *words[:3]]


def test_match_expression():
    assert match_expression([]) is None
    assert match_expression(["alpha"]) == '"alpha"'
    assert match_expression(["alpha", "beta"]) == '"alpha" OR "beta"'
    assert match_expression(['say"hi']) == '"say""hi"'
    assert match_expression(['or', 'near']) == '"or" OR "near"'  # FTS5 keywords stay quoted


def entry(i: int, body_chars: int, description: str = "Use when testing budgets.") -> Entry:
    return Entry(i, f"skill://d/skill-{i}", f"skill-{i}", description, ("step " * body_chars)[:body_chars])


def test_compose_without_budget_shows_every_skill():
    ranked = [entry(i, 2000) for i in range(6)]
    text, shown = compose(ranked, [], None, full_skills=2)
    assert [s.key for s in shown] == list(range(6))
    # the top two with their bodies, the rest as one-line entries naming their resource
    assert [s.disclosure for s in shown] == ["full", "full", "brief", "brief", "brief", "brief"]
    assert text.count("### skill-") == 2 and "`skill-5`: Use when testing budgets. (skill://d/skill-5)" in text
    assert compose([], [], None) == ("", [])


def test_compose_short_bodies_are_whole_wherever_they_rank():
    ranked = [entry(0, 2000), entry(1, 2000), entry(2, 2000), entry(3, SHORT_BODY_CHARS)]
    _, shown = compose(ranked, [], None, full_skills=1)
    assert [s.disclosure for s in shown] == ["full", "brief", "brief", "full"]


def test_compose_standing_lessons_come_first_in_the_text_and_last_in_the_list():
    rule = Entry(9, "skill://d/summary-first", "summary-first", "Use for every answer.", "Open with a Summary: line.")
    text, shown = compose([entry(0, 100), rule], [rule], None)
    assert [(s.key, s.disclosure) for s in shown] == [(0, "full"), (9, "standing")]
    assert text.index("summary-first") < text.index("skill-0") and text.count("summary-first") == 1


def test_compose_respects_budget():
    ranked = [entry(i, 200 + 300 * i) for i in range(8)]
    standing = [Entry(20, "skill://d/rule", "rule", "Use for every answer.", "Say it once. " * 10)]
    for budget in (40, 60, 100, 200, 400, 1000):
        text, shown = compose(ranked, standing, budget)
        assert estimate_tokens(text) <= budget
        for s in shown:  # what is listed is what the text shows
            assert (f"skill-{s.key}" if s.key < 20 else "**rule**") in text
    assert compose(ranked, standing, 1) == ("", [])


def test_compose_a_body_that_does_not_fit_becomes_an_entry():
    ranked = [entry(0, 4000), entry(1, 40)]
    text, shown = compose(ranked, [], 200)
    assert [(s.key, s.disclosure) for s in shown] == [(0, "brief"), (1, "full")]
    assert estimate_tokens(text) <= 200


def test_render_injection():
    assert render_injection([]) == ""
    block = render_skill("write-unit-tests", "Use when testing.", "  1. Do it.  \n")
    assert block == "### write-unit-tests\n_Use when testing._\n\n1. Do it.\n"
    text = render_injection([block, block])
    assert text.startswith(INJECTION_HEADER) and text.count("### write-unit-tests") == 2


def test_retrieval_id_round_trip():
    refs = [(12, 3), (7, 1), (123456, 42)]
    rid = make_retrieval_id(refs)
    assert rid.startswith("r-") and rid.endswith("-12v3.7v1.123456v42")
    assert parse_retrieval_id(rid) == refs
    assert make_retrieval_id(refs) != rid  # a fresh nonce each time


def test_retrieval_id_empty_refs():
    rid = make_retrieval_id([])
    assert rid.endswith("-")
    assert parse_retrieval_id(rid) == []


@pytest.mark.parametrize("bad", [
    "", "r-", "r-abc-1v1", "x-0123456789ab-1v1", "r-0123456789AB-1v1", "r-0123456789ab-1v", "r-0123456789ab-v1",
    "r-0123456789ab-1v1.", "r-0123456789ab-1v1..2v2", "r-0123456789ab-1x1", "r-0123456789ab-1v1 ", " r-0123456789ab-1v1",
    "r-0123456789ab-1v1;DROP TABLE turns", "r-0123456789ab--1v1",
    "r-0123456789ab-99999999999999999999v1",  # too large for an SQLite integer
])
def test_malformed_retrieval_ids(bad):
    assert parse_retrieval_id(bad) is None


def test_score_relevance_explains_each_score():
    from metaclaw_mcp.skills.scoring import score_relevance
    lexical = {1: 9.0, 2: 3.0, 3: 6.0}
    dense = {1: 0.5, 2: 0.9, 4: 0.2}
    votes = {4: 0.8, 5: 1.0}                 # 5 is not retrievable here: its vote is ignored
    out = score_relevance(lexical, dense, votes, lexical_weight=0.5, votable={1, 2, 3, 4}, standing={2},
                          lessons={3, 4}, lesson_min=0.45, explain=True)
    assert max(out.relevance.values()) == 1.0 and 2 not in out.relevance and 5 not in out.relevance
    assert out.explain[2]["dropped"].startswith("standing lesson")
    assert out.explain[5]["votes_ignored"] == "not retrievable here"
    # 4 comes by its vote; every kept score is explained by what it came from
    assert out.relevance[4] > 0 and out.from_votes[4] > 0.5
    for sid, rel in out.relevance.items():
        assert out.explain[sid]["relevance"] == round(rel, 4)
    dropped = {sid for sid, note in out.explain.items() if "dropped" in note}
    assert all(out.explain[sid]["relevance"] == 0.0 for sid in dropped)
    # a lesson that fits too poorly is dropped, with the reason
    weak = score_relevance({1: 9.0, 3: 1.0}, {}, {}, lexical_weight=0.5, lessons={3}, lesson_min=0.45, explain=True)
    assert 3 not in weak.relevance and "below 0.45" in weak.explain[3]["dropped"]
    # votes for one skill do not push a lesson whose text fits about as well as the best below the floor
    voted = score_relevance({1: 9.0, 3: 8.0}, {}, {1: 1.0}, lexical_weight=1.0, lessons={3}, lesson_min=0.45)
    assert voted.relevance[3] < 0.45 < voted.relevance[3] * 2 and voted.relevance[1] == 1.0
    assert score_relevance({}, {}, {}, lexical_weight=0.5).relevance == {}
