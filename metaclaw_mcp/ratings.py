"""A turn's ratings and their fusion into one reward (`fuse_ratings`).

An explicit user rating outranks an environment signal, which outranks the agent's own
rating, which outranks the LLM judge. Within one source the latest rating wins (a user
who changes their mind is believed the second time).
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

SOURCE_PRIORITY = {"user": 3, "env": 2, "agent": 1, "judge": 0}


@dataclass(frozen=True)
class Rating:
    """One rating of a turn: its source (a key of `SOURCE_PRIORITY`), a score in [-1, 1], and when."""
    source: str
    score: float
    created_at: str  # ISO 8601 UTC; sorts in time order
    seq: int = 0     # insertion order, breaks ties between equal timestamps


def fuse_ratings(ratings: Iterable[Rating]) -> tuple[float, str] | None:
    """(reward, source) of the rating that decides, or None when there are no ratings.
    ValueError for a source not in `SOURCE_PRIORITY`."""
    best: Rating | None = None
    for r in ratings:
        if r.source not in SOURCE_PRIORITY:
            raise ValueError(f"unknown rating source {r.source!r}")
        if best is None or (SOURCE_PRIORITY[r.source], r.created_at, r.seq) > (
                SOURCE_PRIORITY[best.source], best.created_at, best.seq):
            best = r
    return None if best is None else (best.score, best.source)
