"""Lessons: skills that a rated failure taught, and what their evidence says. Pure functions, no I/O.

A skill written for failures (`evolve_skills(proposals=[{..., "addresses": [turn ids]}])`) cites
those turns in its version's provenance. When one of them was rated by the user or by the
environment, the lesson is *taught*: somebody who knows said this turn went wrong, and the
lesson says what it lacked. That is evidence, not a guess, so retrieval ranks a taught
candidate by relevance from its first fetch, like an active skill; exploration (a few bounded
places per fetch) is left to what is truly unproven: proposals an LLM wrote on its own, or
agent proposals that cite no rated failure.

Two more things the evidence says:

- **Where it applies.** Each failure it was taught from is a request that needed it. Those
  requests vote for the lesson when a new request resembles them (`TaughtIndex`), the way
  experience votes for the skills of rated turns: a money-format lesson taught on "What did the
  Oslo team spend on hotels?" comes back for "What did the Oslo team spend on travel?" although
  neither names the rule.
- **Where it was needed but missing.** A later correction from the user or the environment that
  names the lesson ("you forgot the money rule again", on a turn that did not use it: `reminded`)
  adds that turn's request to the ones it was taught from, as if the agent had written the
  lesson again for it.
- **Whether it applies whatever the topic** (`scope`). A standing preference ("start every answer
  with a summary line") is needed by requests that share nothing with its text. Its scope is
  `always` when the proposal says so (`scope: "always"`), when its description says it is for
  every answer, reply, task or request, or when most of the namespace's turns needed it
  (`learned_always`; corrections that named it count as turns that needed it); an `always`
  lesson is injected on every fetch, compactly. Everything else is `topic`: retrieved by relevance.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

# Rating sources whose verdict makes a lesson taught: people and environments, not the agent
# grading itself or an LLM judge.
TEACHING_SOURCES = ("user", "env")
SCOPES = ("topic", "always")

# A description that says it is for every answer: "Use for every answer", "Use on all responses",
# "Use whenever replying", "Applies to any task", "whatever the topic".
_EVERY = r"(?:every|all|any|each)"
_UTTERANCE = r"(?:answers?|repl(?:y|ies)|responses?|messages?|tasks?|requests?|topics?|conversations?|turns?|outputs?)"
ALWAYS_DESCRIPTION = re.compile(
    rf"\b{_EVERY}\s+(?:\w+\s+){{0,2}}{_UTTERANCE}\b|\bwhatever\s+the\s+{_UTTERANCE}\b|\bwhenever\s+(?:replying|answering|"
    rf"responding)\b|\bon\s+any\s+topic\b|\bregardless\s+of\s+the\s+{_UTTERANCE}\b", re.I)


def declared_scope(description: str, metadata: Mapping[str, object] | None = None) -> str:
    """`always` when the version's metadata says so or its description says it is for every
    answer (see `ALWAYS_DESCRIPTION`), else what the metadata says, else `topic`."""
    scope = (metadata or {}).get("scope")
    if scope in SCOPES:
        return str(scope)
    return "always" if ALWAYS_DESCRIPTION.search(description or "") else "topic"


ALWAYS_MIN_NEEDED = 5   # turns that needed a lesson before its scope can be learned
ALWAYS_SHARE = 0.5      # the share of the namespace's turns that needed it, from which it is standing


def learned_always(needed: int, turns: int) -> bool:
    """True when a lesson was needed by more than `ALWAYS_SHARE` of the namespace's rated turns since
    it was first taught (`needed`: turns it was taught from, plus rated turns that named it as used
    and were not rated down; `turns`: rated turns in that time, its teaching turns included, less
    those that named it and were rated down: the correction of such a turn is most often about
    another rule, so it says nothing either way), and
    by at least `ALWAYS_MIN_NEEDED`: from there on, showing it on every request is right more often
    than not, whatever the request says. A count, so no similarity scale to tune per encoder."""
    return needed >= ALWAYS_MIN_NEEDED and turns > 0 and needed / turns > ALWAYS_SHARE


@dataclass
class Lesson:
    """What a skill version's provenance says: whether it was taught, its scope, and the requests
    (turn id, text) it was taught from."""
    taught: bool = False
    scope: str = "topic"
    requests: list[tuple[str, str]] = field(default_factory=list)
    since: str = ""          # when the skill was created (ISO time)


class TaughtIndex:
    """The requests each lesson was taught from, as vectors: a new request votes for the lessons
    whose teaching requests it resembles.

    `vote` gives each lesson its best match above `min_similarity`, rescaled to (0, 1]:
    `(cos - min_similarity) / (1 - min_similarity)`. Unlike experience (a weighted mean over the
    nearest rated turns), one close teaching request is enough: the user said that request needed it.
    """

    def __init__(self, dim: int):
        self.dim = dim
        self.owners: list[int] = []
        self.vectors_ND = np.zeros((0, dim), dtype=np.float32)

    def __len__(self) -> int:
        return len(self.owners)

    def build(self, rows: Iterable[tuple[int, np.ndarray]]) -> None:
        """Replace the contents with (lesson id, request vector) rows."""
        rows = list(rows)
        self.owners = [sid for sid, _ in rows]
        self.vectors_ND = (np.stack([np.asarray(v, dtype=np.float32) for _, v in rows]) if rows
                           else np.zeros((0, self.dim), dtype=np.float32))

    def vote(self, query_D: np.ndarray, min_similarity: float) -> dict[int, float]:
        """lesson id -> its best teaching request's rescaled cosine to `query_D` (D), in (0, 1]."""
        if not self.owners:
            return {}
        sims_N = self.vectors_ND @ query_D
        out: dict[int, float] = {}
        span = max(1.0 - min_similarity, 1e-6)
        for sid, sim in zip(self.owners, sims_N.tolist(), strict=True):
            if sim <= min_similarity:
                continue
            v = min((sim - min_similarity) / span, 1.0)
            if v > out.get(sid, 0.0):
                out[sid] = v
        return out


REMINDED_MAX = 3   # lessons one correction can name ("you forgot the csv and money rules")


def reminded(feedback_D: np.ndarray, lessons: Mapping[int, np.ndarray], min_similarity: float,
             limit: int = REMINDED_MAX) -> list[tuple[int, float]]:
    """The lessons a correction names, as (id, cosine): those whose texts' vectors (`lessons`: id -> [S, D] or [D], unit
    length; a consolidated lesson has one row per situation its description names) have a best
    cosine with the feedback's (`feedback_D`, [D]) of at least `min_similarity` (the encoder's,
    from which two requests count as alike), best first, at most `limit`.

    "You forgot the money rule again" on a turn that did not use the money lesson says that its
    request needed the lesson: the request then counts as one it was taught from (it votes for
    the lesson on requests like it, and counts towards `learned_always`), as if the agent had
    written the lesson again for that turn."""
    query_D = np.asarray(feedback_D, dtype=np.float32)
    best = {sid: float(np.max(np.atleast_2d(np.asarray(v, dtype=np.float32)) @ query_D)) for sid, v in lessons.items()}
    order = sorted(best, key=best.__getitem__, reverse=True)[:limit]
    return [(sid, best[sid]) for sid in order if best[sid] >= min_similarity]


SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def situations(description: str) -> list[str]:
    """The situations a lesson's description names, one per sentence (a consolidated lesson's
    description is its versions' descriptions joined: `merge_descriptions`); the whole first."""
    parts = [p.strip() for p in SENTENCE_END.split(description or "") if p.strip()]
    return list(dict.fromkeys([description.strip(), *parts])) if len(parts) > 1 else [description.strip()]


def merge_descriptions(old: str, new: str, limit: int = 1024) -> str:
    """The description of a consolidated version: the new one, then the old one's sentence when it
    names situations the new one does not (so the skill keeps every trigger it was taught for),
    within `limit` characters."""
    new, old = new.strip(), old.strip()
    old_words = set(re.findall(r"[a-z0-9]{3,}", old.lower()))
    new_words = set(re.findall(r"[a-z0-9]{3,}", new.lower()))
    if not old or old_words <= new_words:
        return new
    merged = f"{new.rstrip('.')}. {old}"
    return merged if len(merged) <= limit else new


def merge_provenance(*lists: Sequence[str]) -> list[str]:
    """Turn ids of several provenances, each once, in first-seen order."""
    return list(dict.fromkeys(x for items in lists for x in items))


__all__ = ["ALWAYS_DESCRIPTION", "Lesson", "REMINDED_MAX", "SCOPES", "TEACHING_SOURCES", "TaughtIndex",
           "declared_scope", "learned_always", "merge_descriptions", "merge_provenance", "reminded", "situations"]
