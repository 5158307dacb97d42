"""Relevance for one query, from the signals retrieval gathers: one pure function that can explain
each score (after mem0's `score_and_rank(..., explain=True)`). No I/O.

Signals per skill id: its lexical score (FTS5 BM25, higher is better), its dense score (cosine of
the query's and the skill's vectors) and its votes (experience: similar past turns' rewards for
the skills they used; lessons: the requests a lesson was taught from). Steps:

1. `retrieval.fuse`: one relevance in [0, 1] from the two lists (the best match scores 1);
2. plus `votes_weight` x the votes of the skills that may receive them, rescaled so the best is 1;
3. standing lessons (shown apart, on every fetch) are taken out, and the rest rescaled again;
4. a topic lesson below `lesson_min` (a share of the best match's relevance) is dropped: it is a
   rule the agent would apply, so it is shown only where it fits about as well as the best. The
   share is taken both of the voted scale and of the text's alone (step 1): votes for one skill
   are evidence for it, not against how well another's text fits, so a request that needs two
   rules still gets the second when past turns voted for the first.

Credit then reorders the most relevant few (`credit.rank`: relevance x (1 + w x usefulness),
with bounded exploration).
"""
from __future__ import annotations

from collections.abc import Mapping, Set
from dataclasses import dataclass, field
from typing import Any

from .retrieval import fuse


@dataclass(frozen=True)
class Relevance:
    """skill id -> relevance in [0, 1] (the best is 1), each skill's share of it from votes, and,
    when asked for, what each score came from (`explain[id]`: lexical, dense, fused, votes,
    relevance, and `dropped` with the reason for a skill left out)."""
    relevance: dict[int, float]
    from_votes: dict[int, float]
    explain: dict[int, dict[str, Any]] = field(default_factory=dict)


def _rescale(scores: Mapping[int, float]) -> dict[int, float]:
    top = max(scores.values(), default=0.0)
    return {k: max(v, 0.0) / top for k, v in scores.items() if v > 0.0} if top > 0.0 else {}


def score_relevance(lexical: Mapping[int, float], dense: Mapping[int, float], votes: Mapping[int, float], *,
                    lexical_weight: float, fusion: str = "blend", votes_weight: float = 1.0,
                    votable: Set[int] | None = None, standing: Set[int] = frozenset(),
                    lessons: Set[int] = frozenset(), lesson_min: float = 0.0, explain: bool = False) -> Relevance:
    """Relevance of each skill for one query (the steps in the module docstring).

    `votable`: the skills votes may go to (retrievable, in the asked categories); None: all.
    `standing`: ids taken out (standing lessons). `lessons`: ids subject to `lesson_min`."""
    fused = fuse(lexical, dense, lexical_weight, fusion)
    relevance = dict(fused)
    from_votes: dict[int, float] = {}
    counted = {sid: v for sid, v in votes.items() if votable is None or sid in votable}
    if counted:
        summed = dict(fused)
        for sid, vote in counted.items():
            summed[sid] = summed.get(sid, 0.0) + votes_weight * vote
        scaled = _rescale(summed)
        if scaled:
            relevance = scaled
            from_votes = {sid: max(votes_weight * counted.get(sid, 0.0), 0.0) / summed[sid] for sid in scaled}
    dropped: dict[int, str] = {}
    if standing & relevance.keys():
        dropped.update({sid: "standing lesson: shown apart, on every fetch" for sid in standing & relevance.keys()})
        relevance = _rescale({sid: v for sid, v in relevance.items() if sid not in standing})
    if lesson_min > 0.0:
        # Measured against the text's best match as well as against the voted scale: votes for
        # one skill are evidence for it, not against how well another's text fits.
        text = _rescale({sid: v for sid, v in fused.items() if sid not in standing})
        low = {sid for sid, v in relevance.items()
               if sid in lessons and v < lesson_min and text.get(sid, 0.0) < lesson_min}
        dropped.update({sid: f"lesson below {lesson_min:g} of the best match's relevance" for sid in low})
        relevance = {sid: v for sid, v in relevance.items() if sid not in low}
    notes: dict[int, dict[str, Any]] = {}
    if explain:
        for sid in set(lexical) | set(dense) | set(votes):
            notes[sid] = {"lexical": lexical.get(sid), "dense": dense.get(sid), "fused": round(fused.get(sid, 0.0), 4),
                          "votes": votes.get(sid), "relevance": round(relevance.get(sid, 0.0), 4)}
            if sid in dropped:
                notes[sid]["dropped"] = dropped[sid]
            elif votable is not None and sid in votes and sid not in votable:
                notes[sid]["votes_ignored"] = "not retrievable here"
    return Relevance(relevance, from_votes, notes)


__all__ = ["Relevance", "score_relevance"]
