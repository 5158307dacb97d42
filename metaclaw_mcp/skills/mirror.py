"""The in-memory mirror of the skill tables that retrieval reads: per namespace, each skill's
status, version, category and lesson evidence, its vector, and its version's reward sums.

Per fetch: one small read to see whether anything changed (`change_counters`, bumped by triggers
whoever writes: this server, the CLI in another process, a migration); what changed is read
again incrementally (only rows whose generation is newer than the last one seen). A namespace is
published only once it is loaded whole.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio

from ..store import Database
from .credit import Effect, RewardStats
from .experience import Boilerplate
from .lessons import TEACHING_SOURCES, Lesson, TaughtIndex, declared_scope
from .library import SkillLibrary

if TYPE_CHECKING:
    from .dense import DenseIndex
    from .experience import ExperienceIndex

RETRIEVABLE = ("active", "candidate")


@dataclass
class SkillMeta:
    """What retrieval keeps in memory of one skill: id, slug, status, current version, category, its lesson
    (if its provenance cites turns) and the token that wrote the current version."""
    id: int
    slug: str
    status: str
    version: int
    category: str
    lesson: Lesson | None = None   # for versions whose provenance cites turns (see lessons.py)
    author: str | None = None      # the token that wrote the current version (None: single user)

    @property
    def taught(self) -> bool:
        """Its current version cites a turn rated by the user or the environment (lessons.py)."""
        return self.lesson is not None and self.lesson.taught

    @property
    def scope(self) -> str:
        """`always` (a standing lesson, on every fetch) or `topic` (retrieved by relevance)."""
        return self.lesson.scope if self.lesson is not None else "topic"


@dataclass(frozen=True)
class Correction:
    """A turn's negative rating with feedback, from the user or the environment: its request, when
    it was rated, the skills the turn named as used, and the feedback's vector ([D])."""
    request: str
    created_at: str
    named: frozenset[int]
    feedback_D: Any


@dataclass
class NamespaceState:
    """One namespace's in-memory mirror: skill metas, lesson ids, per-version reward sums, the dense index,
    experience and taught-request indexes, and the change counters it was read at."""
    metas: dict[int, SkillMeta] = field(default_factory=dict)
    lessons: set[int] = field(default_factory=set)   # ids of the metas with a lesson (`SkillMeta.lesson`)
    # (skill id, version) -> (uses, sums of rated rewards, sums of their residuals)
    stats: dict[tuple[int, int], tuple[int, RewardStats, RewardStats]] = field(default_factory=dict)
    totals: RewardStats = RewardStats()
    dense: DenseIndex | None = None
    effects: dict[tuple[int, int], Effect] = field(default_factory=dict)   # fitted at the last review
    missing: set[int] = field(default_factory=set)   # retrievable skills whose current version has no vector
    unsaved: set[int] = field(default_factory=set)   # of those, vectors a fetch computed in memory only
    experience: ExperienceIndex | None = None
    experience_since: str = ""                       # rated_at of the newest turn read into `experience`
    experience_stats: int = -1                       # the stats counter it was read at
    experience_lock: anyio.Lock = field(default_factory=lambda: anyio.Lock(fast_acquire=True))  # one reader
    warming: bool = False                            # the warm-up has yet to read its experience
    taught: TaughtIndex | None = None                # the requests lessons were taught from, encoded
    taught_stale: bool = True                        # a lesson changed since `taught` was built
    taught_vectors: dict[str, Any] = field(default_factory=dict)  # turn id -> its request's vector
    taught_background: int = 0                       # experience turns when `taught` was built
    boilerplate: Boilerplate = field(default_factory=Boilerplate)  # lines most requests share
    requests: dict[str, str] = field(default_factory=dict)  # turn id -> request, for turns in `experience`
    # lesson id -> {turn id: request} of the turns whose correction named it (`lessons.reminded`)
    reminders: dict[int, dict[str, str]] = field(default_factory=dict)
    reminders_key: frozenset[tuple[int, int]] = frozenset()   # the (lesson, version)s they were linked with
    corrections: dict[str, Correction] = field(default_factory=dict)   # turn id -> its correction, oldest first
    corrections_since: str = ""                      # rated_at of the newest correction read
    lesson_vectors: dict[tuple[int, int], Any] = field(default_factory=dict)  # (id, version) -> text's vector



class Mirror:
    """The namespaces' in-memory state for one database. `encoder()` gives the dense encoder (its
    `dim` and `model_id` say which stored vectors to load), or None on a lexical server."""

    def __init__(self, db: Database, library: SkillLibrary, encoder: Callable[[], Any]):
        self.db = db
        self.library = library
        self.encoder = encoder
        self.namespaces: dict[str, NamespaceState] = {}
        self.seen = (-1, -1, -1)   # change_counters: skills, skills_reset, stats
        self.refresh_lock = anyio.Lock()
        self.fts_checked = False

    def peek(self, namespace: str) -> NamespaceState | None:
        """The namespace's state if it is loaded, without loading or refreshing it."""
        return self.namespaces.get(namespace)

    async def state(self, namespace: str) -> NamespaceState:
        """The namespace's in-memory state, refreshed with whatever changed since the last call."""
        if not self.fts_checked:
            await self.library.reindex_if_stale()
            self.fts_checked = True
        row = await self.db.fetchone(
            "SELECT (SELECT value FROM change_counters WHERE name = 'skills'),"
            " (SELECT value FROM change_counters WHERE name = 'skills_reset'),"
            " (SELECT value FROM change_counters WHERE name = 'stats')")
        seen = (int(row[0]), int(row[1]), int(row[2]))
        if seen != self.seen or namespace not in self.namespaces:
            async with self.refresh_lock:
                await self._refresh(namespace, seen)
        return self.namespaces[namespace]

    async def _refresh(self, namespace: str, seen: tuple[int, int, int]) -> None:
        skills_gen, reset_gen, stats_gen = self.seen
        if seen[1] != reset_gen:
            self.namespaces.clear()  # a skill was deleted: start over
        if namespace not in self.namespaces:
            await self._load_namespace(namespace)
        if self.namespaces and seen[0] != skills_gen:
            rows = await self.db.fetchall(
                "SELECT s.id, s.namespace, s.slug, s.status, s.current_version, v.category, v.principal FROM skills s "
                "JOIN skill_versions v ON v.skill_id = s.id AND v.version = s.current_version WHERE s.gen > ?",
                (skills_gen,))
            lessons = await self.read_lessons(None, [r["id"] for r in rows if r["namespace"] in self.namespaces])
            for r in rows:
                if r["namespace"] in self.namespaces:
                    await self._put_meta(self.namespaces[r["namespace"]], r, lessons.get(r["id"]))
        if self.namespaces and seen[2] != stats_gen:
            rows = await self.db.fetchall(
                "SELECT st.skill_id, st.version, st.uses, st.rated, st.reward_sum, st.reward_sq, st.resid_sum, "
                "st.resid_sq, s.namespace FROM skill_stats st JOIN skills s ON s.id = st.skill_id WHERE st.gen > ?",
                (stats_gen,))
            for r in rows:
                if r["namespace"] in self.namespaces:
                    self.namespaces[r["namespace"]].stats[(r["skill_id"], r["version"])] = _stats_row(r)
            for r in await self.db.fetchall("SELECT namespace, rated, reward_sum, reward_sq FROM reward_totals"):
                if r["namespace"] in self.namespaces:
                    self.namespaces[r["namespace"]].totals = RewardStats(r["rated"], r["reward_sum"], r["reward_sq"])
        self.seen = seen

    async def _load_namespace(self, namespace: str) -> None:
        # Built aside and published whole at the end: `state()` hands out what is in `_ns` without
        # the lock, and a half-loaded namespace (no metas yet) would answer a fetch with nothing.
        state = NamespaceState()
        encoder = self.encoder()
        if encoder is not None:
            from .dense import DenseIndex
            state.dense = DenseIndex(await anyio.to_thread.run_sync(lambda: encoder.dim))
        rows = await self.db.fetchall(
            "SELECT s.id, s.namespace, s.slug, s.status, s.current_version, v.category, v.principal FROM skills s "
            "JOIN skill_versions v ON v.skill_id = s.id AND v.version = s.current_version WHERE s.namespace = ?",
            (namespace,))
        if state.dense is not None:
            from .dense import from_blob
            vectors = {(r[0], r[1]): from_blob(r[2], r[3]) for r in await self.db.fetchall(
                "SELECT e.skill_id, e.version, e.vector, e.dim FROM skill_embeddings e JOIN skills s "
                "ON s.id = e.skill_id AND e.version = s.current_version WHERE s.namespace = ? AND e.model = ?",
                (namespace, encoder.model_id))}
        lessons = await self.read_lessons(namespace)
        for r in rows:
            meta = SkillMeta(r["id"], r["slug"], r["status"], r["current_version"], r["category"],
                             lessons.get(r["id"]), r["principal"])
            state.metas[meta.id] = meta
            if meta.lesson is not None:
                state.lessons.add(meta.id)
            if state.dense is not None and meta.status in RETRIEVABLE:
                vector = vectors.get((meta.id, meta.version))
                if vector is None:
                    state.missing.add(meta.id)
                else:
                    state.dense.put(meta.id, vector)
        for r in await self.db.fetchall(
                "SELECT st.skill_id, st.version, st.uses, st.rated, st.reward_sum, st.reward_sq, st.resid_sum, "
                "st.resid_sq FROM skill_stats st JOIN skills s ON s.id = st.skill_id WHERE s.namespace = ?",
                (namespace,)):
            state.stats[(r["skill_id"], r["version"])] = _stats_row(r)
        totals = await self.db.fetchone("SELECT rated, reward_sum, reward_sq FROM reward_totals WHERE namespace = ?",
                                        (namespace,))
        if totals is not None:
            state.totals = RewardStats(totals[0], totals[1], totals[2])
        self.namespaces[namespace] = state

    async def read_lessons(self, namespace: str | None, ids: Sequence[int] | None = None) -> dict[int, Lesson]:
        """skill id -> what its current version's provenance says (`lessons.Lesson`), for the skills
        of `namespace` (or the given `ids`) whose current version cites turns."""
        if ids is not None and not ids:
            return {}
        sql = ("SELECT s.id, s.created_at, v.provenance, v.description, v.metadata FROM skills s JOIN skill_versions v "
               "ON v.skill_id = s.id AND v.version = s.current_version WHERE v.provenance != '[]' AND ")
        rows = []
        if ids is None:
            rows = await self.db.fetchall(sql + "s.namespace = ?", (namespace,))
        else:
            for start in range(0, len(ids), 500):
                chunk = list(ids[start:start + 500])
                rows += await self.db.fetchall(sql + f"s.id IN ({','.join('?' * len(chunk))})", chunk)
        cited: dict[int, list[str]] = {}
        out: dict[int, Lesson] = {}
        for r in rows:
            try:
                turns = [t for t in json.loads(r["provenance"]) if isinstance(t, str)]
                metadata = json.loads(r["metadata"] or "{}")
            except ValueError:
                continue
            cited[r["id"]] = turns
            out[r["id"]] = Lesson(scope=declared_scope(r["description"], metadata if isinstance(metadata, dict)
                                                       else None), since=r["created_at"])
        turn_ids = sorted({t for ts in cited.values() for t in ts})
        found: dict[str, tuple[str, bool]] = {}
        marks_sources = ",".join("?" * len(TEACHING_SOURCES))
        for start in range(0, len(turn_ids), 500):
            chunk = turn_ids[start:start + 500]
            for t in await self.db.fetchall(
                    f"SELECT t.id, t.request, EXISTS (SELECT 1 FROM ratings g WHERE g.turn_id = t.id AND g.source "
                    f"IN ({marks_sources})) AS taught FROM turns t WHERE t.id IN ({','.join('?' * len(chunk))})",
                    [*TEACHING_SOURCES, *chunk]):
                found[t["id"]] = (t["request"] or "", bool(t["taught"]))
        for sid, turns in cited.items():
            lesson = out[sid]
            lesson.requests = [(t, found[t][0]) for t in turns if t in found and found[t][0].strip()]
            lesson.taught = any(found[t][1] for t in turns if t in found)
        return out

    async def _put_meta(self, state: NamespaceState, r: Any, lesson: Lesson | None = None) -> None:
        old = state.metas.get(r["id"])
        meta = SkillMeta(r["id"], r["slug"], r["status"], r["current_version"], r["category"], lesson, r["principal"])
        state.metas[meta.id] = meta
        if lesson is not None:
            state.lessons.add(meta.id)
        else:
            state.lessons.discard(meta.id)
        if lesson is not None or (old is not None and old.lesson is not None):
            state.taught_stale = True
        if state.dense is None:
            return
        if meta.status not in RETRIEVABLE:
            state.dense.put(meta.id, None)
            state.missing.discard(meta.id)
        elif old is None or old.version != meta.version or meta.id not in state.dense:
            blob = await self.db.fetchone(
                "SELECT vector, dim FROM skill_embeddings WHERE skill_id = ? AND version = ? AND model = ?",
                (meta.id, meta.version, self.encoder().model_id))
            if blob is None:
                state.dense.put(meta.id, None)
                state.missing.add(meta.id)
            else:
                from .dense import from_blob
                state.dense.put(meta.id, from_blob(blob[0], blob[1]))
                state.missing.discard(meta.id)


def _stats_row(r: Any) -> tuple[int, RewardStats, RewardStats]:
    return (r["uses"], RewardStats(r["rated"], r["reward_sum"], r["reward_sq"]),
            RewardStats(r["rated"], r["resid_sum"], r["resid_sq"]))


