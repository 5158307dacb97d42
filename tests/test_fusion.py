"""Reward fusion: source priority first, then the latest rating, then insertion order."""
from __future__ import annotations

import itertools

import pytest

from metaclaw_mcp.ratings import SOURCE_PRIORITY, Rating, fuse_ratings

T1, T2, T3 = "2026-01-01T00:00:01.000000+00:00", "2026-01-01T00:00:02.000000+00:00", "2026-01-01T00:00:03.000000+00:00"


def test_empty_is_none():
    assert fuse_ratings([]) is None
    assert fuse_ratings(iter(())) is None


def test_single_rating():
    assert fuse_ratings([Rating("judge", -0.25, T1)]) == (-0.25, "judge")


@pytest.mark.parametrize("order", list(itertools.permutations(range(4))))
def test_source_priority_regardless_of_order(order):
    ratings = [Rating("user", 0.9, T1, 1), Rating("env", -0.5, T3, 2),
               Rating("agent", 0.1, T3, 3), Rating("judge", -1.0, T3, 4)]
    assert fuse_ratings([ratings[i] for i in order]) == (0.9, "user")


@pytest.mark.parametrize("sources, winner", [
    (["judge", "agent"], "agent"),
    (["agent", "env"], "env"),
    (["judge", "env", "agent"], "env"),
    (["env", "user"], "user"),
])
def test_pairwise_priority(sources, winner):
    scores = {"user": 1.0, "env": 0.5, "agent": -0.5, "judge": -1.0}
    # the lower-priority rating is always the newer one: priority still wins
    ratings = [Rating(s, scores[s], T3 if s != winner else T1, i) for i, s in enumerate(sources)]
    for perm in itertools.permutations(ratings):
        assert fuse_ratings(perm) == (scores[winner], winner)


def test_priority_table():
    assert sorted(SOURCE_PRIORITY, key=SOURCE_PRIORITY.get, reverse=True) == ["user", "env", "agent", "judge"]


def test_latest_within_source_wins():
    old, new = Rating("user", -1.0, T1, 1), Rating("user", 0.75, T2, 2)
    assert fuse_ratings([old, new]) == (0.75, "user")
    assert fuse_ratings([new, old]) == (0.75, "user")
    # even when the newer one has the smaller seq
    assert fuse_ratings([Rating("env", 0.3, T2, 1), Rating("env", -0.3, T1, 9)]) == (0.3, "env")


def test_tie_on_timestamp_broken_by_seq():
    a, b = Rating("agent", -0.5, T2, 5), Rating("agent", 0.5, T2, 6)
    assert fuse_ratings([a, b]) == (0.5, "agent")
    assert fuse_ratings([b, a]) == (0.5, "agent")


def test_unknown_source_raises():
    with pytest.raises(ValueError, match="unknown rating source 'oracle'"):
        fuse_ratings([Rating("user", 1.0, T1), Rating("oracle", 1.0, T2)])
    with pytest.raises(ValueError):
        fuse_ratings([Rating("oracle", 1.0, T1)])
