"""Pure retrieval helpers: query terms, FTS5 match expressions, budgets and retrieval ids."""
from __future__ import annotations

import pytest

from metaclaw_mcp.skills.retrieval import (INJECTION_HEADER, MAX_TERMS, estimate_tokens, fit_to_budget,
                                           make_retrieval_id, match_expression, parse_retrieval_id, query_terms,
                                           render_injection, render_skill)


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


def test_fit_to_budget_none_keeps_all():
    blocks = ["x" * 4000, "y", "z" * 10]
    assert fit_to_budget(blocks, None) == [0, 1, 2]
    assert fit_to_budget([], None) == []


def test_fit_to_budget_skips_big_block_keeps_later_small_ones():
    small = "s" * 40           # 10 tokens (+1)
    big = "b" * 4000           # 1000 tokens
    header = estimate_tokens(INJECTION_HEADER)
    budget = header + 3 * 11
    assert fit_to_budget([small, big, small, small, small], budget) == [0, 2, 3]


def test_fit_to_budget_respects_budget():
    blocks = [render_skill(f"skill-{i}", "Use when testing budgets.", "step " * (20 + 10 * i)) for i in range(8)]
    for budget in (50, 100, 200, 400, 1000):
        keep = fit_to_budget(blocks, budget)
        assert keep == sorted(keep)
        used = estimate_tokens(INJECTION_HEADER) + sum(estimate_tokens(blocks[i]) + 1 for i in keep)
        assert used <= budget
        # greedy: every block left out would not fit even now
        for i in set(range(len(blocks))) - set(keep):
            assert used + estimate_tokens(blocks[i]) + 1 > budget
    assert fit_to_budget(blocks, 1) == []


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
