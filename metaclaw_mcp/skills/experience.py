"""Experience: skills that went well on similar past requests, voted by those requests' rewards.

Text alone cannot tell that a refund request will also need the skill that looks the order up:
the words never say so. The turns this namespace has rated can. Each rated turn that used skills
is kept as (its request's vector, what it says of each of its skills). For a new query, the few
most similar past requests vote: each of their skills gets the turn's value for it, weighted by
how far the similarity is above `min_similarity`, averaged over the neighbours' weights. A skill
that helped on requests like this one rises; one that was in the way of them sinks.

What a turn says of a skill (`turn_values`): a skill the agent named as used (`skill_ids`) gets
the turn's reward, and when the turn went well, the skills it was shown but did not name get
minus half that reward: they were not needed for a request like it. A skill only injected into
a turn that named none (`retrieval_id`; the agent did not say whether it used it) gets the
reward minus the namespace's baseline at rating time, as credit does: a success
that every turn has tells nothing about the skills that happened to be shown, and counting it
would only reinforce whatever retrieval already picked. A failure is never charged to a taught
lesson (`turn_values(spared=...)`): the user said requests like this need that rule, so a turn
rated down while it was applied lacked something else, most often another rule.

Credit (`credit.py`) asks "does this skill help at all"; experience asks "does it help with this
kind of request". Pure numpy, no I/O: the retriever loads and refreshes it. Requests are compared
by the dense encoder's vectors when the server has them, else by their words (`TermVectors`).
"""
from __future__ import annotations

import re
import zlib
from collections.abc import Mapping, Sequence, Set

import numpy as np

from .retrieval import query_terms, request_text


class ExperienceIndex:
    """The rated turns of one namespace that used skills, as one matrix of request vectors."""

    def __init__(self, dim: int, capacity: int):
        self.dim = dim
        self.capacity = capacity
        self.turns: dict[str, tuple[np.ndarray, dict[int, float]]] = {}
        self._snapshot: tuple[np.ndarray, list[dict[int, float]]] = (np.zeros((0, dim), dtype=np.float32), [])
        self._dirty = False

    def __len__(self) -> int:
        return len(self.turns)

    def put(self, turn_id: str, vector_D: np.ndarray, values: Mapping[int, float]) -> None:
        """Add or replace a turn: its request's vector and skill id -> value (`turn_values`). A
        re-rated turn replaces its old values; past `capacity` the oldest go."""
        self.turns.pop(turn_id, None)
        self.turns[turn_id] = (np.asarray(vector_D, dtype=np.float32), dict(values))
        while len(self.turns) > self.capacity:
            del self.turns[next(iter(self.turns))]
        self._dirty = True

    def remove(self, turn_id: str) -> None:
        """Forget a turn (nothing happens for an unknown one); applied at the next `fold`."""
        if self.turns.pop(turn_id, None) is not None:
            self._dirty = True

    def fold(self) -> None:
        """Apply pending changes now (the owner's thread; `vote(fold=False)` may then run in another)."""
        if not self._dirty:
            return
        rows = list(self.turns.values())
        vectors_ND = np.stack([r[0] for r in rows]) if rows else np.zeros((0, self.dim), dtype=np.float32)
        self._dirty = False
        self._snapshot = (vectors_ND, [r[1] for r in rows])

    def vote(self, query_D: np.ndarray, neighbours: int, min_similarity: float,
             fold: bool = True) -> dict[int, float]:
        """skill id -> weighted mean of the skill's value over the `neighbours` most similar past turns.

        A neighbour weighs `similarity - min_similarity` (none below it); a skill a neighbour did
        not use counts 0 for that neighbour, so a skill used by one of five equally close
        neighbours gets a fifth of its value in that turn. In [-2, 2] (values are rewards in
        [-1, 1], or rewards minus a baseline).

        With `fold=False` pending changes are not applied here, so a worker thread can vote on
        one consistent snapshot while the owner's thread keeps calling `put`.
        """
        if fold:
            self.fold()
        vectors_ND, skills = self._snapshot
        n = len(skills)
        if n == 0 or neighbours <= 0:
            return {}
        sims_N = vectors_ND @ query_D
        m = min(neighbours, n)
        top = np.argpartition(-sims_N, m - 1)[:m]
        weights = np.maximum(sims_N[top] - min_similarity, 0.0)
        total = float(weights.sum())
        if total <= 0.0:
            return {}
        votes: dict[int, float] = {}
        for i, w in zip(top, weights):
            if w <= 0.0:
                continue
            share = float(w) / total
            for sid, value in skills[i].items():
                votes[sid] = votes.get(sid, 0.0) + share * value
        return votes


class TermVectors:
    """Request vectors without a model, for servers without the `[embeddings]` extra: each content
    word (`query_terms`: identifiers split, stopwords dropped; then plural and -ed/-ing endings cut)
    hashed to one of `dim` coordinates with a hashed sign, the whole of unit length. Two requests'
    dot product is then about the share of words they have in common (0.2 is a few of ten).
    Measured on tau2-bench (two-fold, as `bench/retrieval.py`), lexical retrieval after the train
    split's turns: test R@5 73.7 against 41.6 for BM25 alone."""

    dim = 256
    fast = True
    ready = True
    model_id = "terms-v1"

    def encode_query(self, text: str) -> np.ndarray:
        """[D] float32 of unit length (all zeros for a text without content words)."""
        vector_D = np.zeros(self.dim, dtype=np.float32)
        for term in query_terms(text):
            h = zlib.crc32(_stem(term).encode())
            vector_D[h % self.dim] += 1.0 if (h >> 16) & 1 else -1.0
        norm = float(np.linalg.norm(vector_D))
        return vector_D / norm if norm > 0 else vector_D

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """[N, D] float32, one `encode_query` row per text."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self.encode_query(t) for t in texts])


SHAPE_DIGITS = re.compile(r"\d+")
SHAPE_TOKENS = re.compile(r"[0-9a-fA-F-]{16,}|[A-Za-z0-9+/=_-]{32,}")   # ids, hashes, tokens


def line_shape(line: str) -> str:
    """A line with what varies between otherwise equal lines (numbers, ids, hashes) blanked out:
    `{"ts": "2026-12-01T10:00", "client": "ide"}` and the same line a day later have one shape."""
    return SHAPE_DIGITS.sub("0", SHAPE_TOKENS.sub("X", " ".join(line.split())))


class Boilerplate:
    """Lines that many of a namespace's requests share (a metadata envelope a client prepends, a
    pasted system preamble): they say nothing about what this request asks, and compared by
    them, every past request looks like every other. A line shape seen in at least `min_count`
    requests and in at least `min_share` of them is boilerplate; `strip` drops it, from stored
    requests and queries alike. Lines are compared by `line_shape`; blank lines never count."""

    def __init__(self, min_count: int = 3, min_share: float = 0.05):
        self.min_count = min_count
        self.min_share = min_share
        self.counts: dict[str, int] = {}
        self.requests = 0
        self.shapes: frozenset[str] = frozenset()

    def observe(self, texts: Sequence[str]) -> frozenset[str]:
        """Count `texts`' line shapes (each once per text); return the shapes that became boilerplate."""
        for text in texts:
            self.requests += 1
            for shape in {line_shape(line) for line in text.splitlines() if line.strip()}:
                self.counts[shape] = self.counts.get(shape, 0) + 1
        need = max(self.min_count, self.min_share * self.requests)
        shapes = frozenset(k for k, n in self.counts.items() if n >= need)
        added = shapes - self.shapes
        self.shapes = shapes
        if len(self.counts) > 200_000:   # bounded memory: forget shapes seen once
            self.counts = {k: n for k, n in self.counts.items() if n > 1}
        return added

    def strip(self, text: str) -> str:
        """`text` without its boilerplate lines (itself when there are none)."""
        if not self.shapes or not text:
            return text
        kept = [line for line in text.splitlines() if line.strip() and line_shape(line) not in self.shapes]
        return "\n".join(kept)


def _stem(word: str) -> str:
    for suffix in ("ing", "ed", "es", "s"):
        if len(word) > len(suffix) + 2 and word.endswith(suffix):
            return word[:-len(suffix)]
    return word


def turn_values(links: str, reward: float, baseline: float | None,
                spared: Set[int] = frozenset()) -> dict[int, float]:
    """skill id -> value from a turn's `skill_id:named` links (named: 1 if the agent listed it in
    `skill_ids`): the reward for the named ones; reward minus baseline for the only-injected ones
    when the turn named none; nothing for the injected ones it did not name (it said what it used).

    `spared` (taught lessons): never charged with a failure. The user taught that rule for
    requests like this one; a turn rated down while it was applied lacked something else (most
    often another rule), and whether the lesson itself hurts is credit's question, over all its
    uses. A success still counts for it, and so does a success without it (it was not needed)."""
    pairs = [(int(a), b == "1") for a, _, b in (x.partition(":") for x in links.split(",") if x)]
    if any(named for _, named in pairs):
        # A turn that went well without the shown skills it did not name says they were not
        # needed for a request like it (a skipped result, in IR terms): half its reward against them.
        skipped = -0.5 * reward if reward > 0 else 0.0
        return {sid: reward if named else skipped for sid, named in pairs
                if (named and not (reward < 0 and sid in spared)) or (not named and skipped)}
    residual = reward - (reward if baseline is None else baseline)
    return {sid: residual for sid, _ in pairs if not (residual < 0 and sid in spared)} if residual else {}


__all__ = ["Boilerplate", "ExperienceIndex", "TermVectors", "line_shape", "request_text", "turn_values"]
