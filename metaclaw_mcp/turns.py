"""The turn log: reported turns, their ratings and the skill versions injected into them."""
from __future__ import annotations

import hashlib
import json
import math
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import InvalidInput, NotFound
from .models import Message, TokenData
from .privacy import redact, redact_json
from .ratings import SOURCE_PRIORITY, Rating, fuse_ratings
from .skills.library import skill_ref
from .skills.retrieval import parse_retrieval_id, request_text
from .store import Database, dumps, utcnow

MAX_FEEDBACK_CHARS = 8000


def new_turn_id() -> str:
    """Time-ordered and unique: `t-<ms since epoch, hex>-<random>`."""
    return f"t-{int(time.time() * 1000):x}-{secrets.token_hex(5)}"


@dataclass
class ReportOutcome:
    """What `TurnLog.report` did: the turn's id, whether it was an idempotent duplicate, the skill versions
    linked, and the fields redacted."""
    turn_id: str
    duplicate: bool
    skills_linked: int
    redacted: list[str] = field(default_factory=list)   # fields whose secrets were replaced before storage


@dataclass
class RateOutcome:
    """What `TurnLog.rate` did: the turn's fused reward in [-1, 1] and its source, whether the turn is
    in the training queue (state `rated`), whether it carries sampler tokens (RL) or only text
    (distillation), and its training state after the rating."""
    turn_id: str
    reward: float
    reward_source: str
    queued_for_training: bool
    has_tokens: bool = False
    train_state: str = "rated"


def _request_hash(session_id: str, messages: list[dict[str, Any]], response: str) -> str:
    return hashlib.sha256(dumps([session_id, messages, response]).encode()).hexdigest()


def _same_json(stored: str | None, given: str | None) -> bool:
    """Two stored JSON texts hold the same value: object keys in any order, but 1, 1.0 and true differ."""
    if stored is None or given is None:
        return stored is given
    return _canonical(json.loads(stored)) == _canonical(json.loads(given))


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


class TurnLog:
    """The log of reported turns and their ratings.

    With `redact` (the default; `redact_secrets` in the config), secrets in messages, response,
    metadata and rating feedback are replaced by `[REDACTED:<kind>]` (`privacy.redact`) before
    anything is stored. Token ids cannot be redacted: a turn whose text carried a secret is
    stored without them (as a text-only turn), and the report says which fields were redacted."""

    def __init__(self, db: Database, max_turn_bytes: int = 2_000_000, redact: bool = True):
        self.db = db
        self.max_turn_bytes = max_turn_bytes
        self.redact = redact

    async def report(self, *, session_id: str, messages: Sequence[Message], response: str,
                     retrieval_id: str | None = None, skill_ids: Sequence[int | str] | None = None,
                     model: str | None = None, tokens: TokenData | None = None,
                     metadata: dict[str, Any] | None = None, idempotency_key: str | None = None,
                     namespace: str = "default", principal: str | None = None) -> ReportOutcome:
        """Store one turn and link it to the skill versions that were injected into it. `principal`:
        the token that reported it (None: the single-user default).

        With an `idempotency_key` already used in this namespace: the same content (session, messages,
        response, retrieval_id, the skills `skill_ids` name, model, tokens, metadata) returns that turn as
        a duplicate; any difference is InvalidInput naming the fields that differ, and nothing is written.
        Other InvalidInput: empty messages, non-JSON metadata, a turn over max_turn_bytes, an unknown
        retrieval_id or skill. Secrets are redacted first (see the class docstring); the outcome's
        `redacted` names the fields that had them ("tokens" when the token ids were not stored)."""
        msgs = [m.model_dump(mode="json", exclude_none=True) for m in messages]
        if not msgs:
            raise InvalidInput("messages is empty: give at least the user message the response answers")
        redacted: list[str] = []
        if self.redact:
            clean_msgs, clean_response = redact_json(msgs), redact(response)
            clean_meta = redact_json(metadata) if metadata else metadata
            redacted = [name for name, before, after in (("messages", msgs, clean_msgs), ("response", response,
                        clean_response), ("metadata", metadata, clean_meta)) if before != after]
            msgs, response, metadata = clean_msgs, clean_response, clean_meta
            if redacted and tokens is not None:
                tokens = None            # the ids spell the secret out: the turn is kept as text only
                redacted.append("tokens")
        try:
            msgs_json, meta_json = dumps(msgs), dumps(metadata or {})
        except ValueError as exc:
            raise InvalidInput(f"messages or metadata are not plain JSON: {exc}") from None
        size = len(msgs_json.encode()) + len(response.encode()) + len(meta_json.encode())
        if size > self.max_turn_bytes:
            raise InvalidInput(f"the turn is {size} bytes; at most {self.max_turn_bytes} "
                               "(messages + response + metadata). Trim long tool outputs before reporting")
        refs = self._retrieval_refs(retrieval_id)
        req_hash, request = _request_hash(session_id, msgs, response), request_text(msgs)
        token_cols = (dumps(tokens.prompt_ids) if tokens else None, dumps(tokens.completion_ids) if tokens else None,
                      dumps(tokens.logprobs) if tokens and tokens.logprobs is not None else None)

        def write(db: sqlite3.Connection) -> ReportOutcome:   # one trip to the writer's thread
            links, named = self._resolve_skills(db, namespace, refs, skill_ids or [])
            if idempotency_key is not None:
                row = db.execute(
                    "SELECT id, session_id, messages, response, retrieval_id, model, prompt_ids, completion_ids,"
                    " logprobs, metadata FROM turns WHERE namespace = ? AND idempotency_key = ?",
                    (namespace, idempotency_key)).fetchone()
                if row is not None:
                    stored_named = {r[0] for r in db.execute(
                        "SELECT skill_id FROM skill_uses WHERE turn_id = ? AND named = 1", (row["id"],))}
                    changed = [name for name, same in (
                        ("session_id", row["session_id"] == session_id),
                        ("messages", _same_json(row["messages"], msgs_json)),
                        ("response", row["response"] == response),
                        ("retrieval_id", row["retrieval_id"] == retrieval_id),
                        ("skill_ids", stored_named == named),
                        ("model", row["model"] == model),
                        ("tokens", all(_same_json(row[c], v) for c, v in
                                       zip(("prompt_ids", "completion_ids", "logprobs"), token_cols))),
                        ("metadata", _same_json(row["metadata"], meta_json))) if not same]
                    if changed:
                        raise InvalidInput(f"idempotency_key {idempotency_key!r} was already used for turn {row['id']} "
                                           f"with different {', '.join(changed)}; use a new key for a new turn, "
                                           "or resend the same content to retry")
                    linked = db.execute("SELECT COUNT(*) FROM skill_uses WHERE turn_id = ?", (row["id"],)).fetchone()[0]
                    return ReportOutcome(row["id"], True, linked, redacted)
            turn_id = new_turn_id()
            db.execute(
                "INSERT INTO turns(id, namespace, session_id, messages, request, response, model, prompt_ids,"
                " completion_ids, logprobs, metadata, retrieval_id, idempotency_key, request_hash, created_at,"
                " principal) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (turn_id, namespace, session_id, msgs_json, request, response, model, *token_cols,
                 meta_json, retrieval_id, idempotency_key, req_hash, utcnow(), principal))
            # credit follows what the agent said it used: when it named skills, only those (migration 6)
            db.executemany(
                "INSERT INTO skill_uses(turn_id, skill_id, version, rank, named, credited) VALUES (?, ?, ?, ?, ?, ?)",
                [(turn_id, sid, ver, rank, int(sid in named), int(sid in named or not named))
                 for rank, (sid, ver) in enumerate(links)])
            return ReportOutcome(turn_id, False, len(links), redacted)

        return await self.db.write(write)

    @staticmethod
    def _retrieval_refs(retrieval_id: str | None) -> list[tuple[int, int]]:
        if retrieval_id is None:
            return []
        refs = parse_retrieval_id(retrieval_id)
        if refs is None:
            raise InvalidInput(f"retrieval_id {retrieval_id[:80]!r} is not one fetch_skills returned; "
                               "pass the retrieval_id from fetch_skills unchanged, or omit it")
        return refs

    @staticmethod
    def _resolve_skills(db: sqlite3.Connection, namespace: str, refs: list[tuple[int, int]],
                        skill_ids: Sequence[int | str]) -> tuple[list[tuple[int, int]], set[int]]:
        """Check the retrieval's versions and resolve `skill_ids` (ids or slugs) to current versions.

        Returns the (skill id, version) links, and the ids the agent named as used."""
        out: dict[int, int] = {}
        named: set[int] = set()
        for sid, ver in refs:
            ok = db.execute(
                "SELECT 1 FROM skill_versions v JOIN skills s ON s.id = v.skill_id "
                "WHERE v.skill_id = ? AND v.version = ? AND s.namespace = ?", (sid, ver, namespace)).fetchone()
            if not ok:
                raise InvalidInput(f"retrieval_id names skill {sid} version {ver}, which is not in namespace "
                                   f"{namespace!r}; report with the namespace you fetched from")
            out.setdefault(sid, ver)
        for ref in skill_ids:
            found = skill_ref(ref)
            if found is None:
                raise InvalidInput(f"skill_ids: no skill {ref!r} in namespace {namespace!r}")
            # current_version 0: a skill an unfinished import holds, not yet a skill
            row = db.execute(f"SELECT id, current_version FROM skills WHERE {found[0]} = ? "
                             "AND namespace = ? AND current_version > 0", (found[1], namespace)).fetchone()
            if row is None:
                raise InvalidInput(f"skill_ids: no skill {ref!r} in namespace {namespace!r}")
            out.setdefault(row["id"], row["current_version"])
            named.add(row["id"])
        return list(out.items()), named

    async def rate(self, turn_id: str, score: float, source: str = "user", feedback: str | None = None,
                   may_use: Callable[[str], bool] | None = None, principal: str | None = None) -> RateOutcome:
        """Add a rating, re-fuse the turn's reward, and queue the turn for training if it still can be.

        `may_use(namespace)`: whether the caller may rate turns of the turn's namespace; a turn it may
        not is NotFound, as if there were none (its existence is not told)."""
        if source not in SOURCE_PRIORITY:
            raise InvalidInput(f"source {source!r} is not one of {', '.join(SOURCE_PRIORITY)}")
        if not isinstance(score, (int, float)) or not math.isfinite(score) or not -1.0 <= score <= 1.0:
            raise InvalidInput(f"score {score!r} must be a finite number in [-1, 1]")
        if feedback is not None and len(feedback) > MAX_FEEDBACK_CHARS:
            raise InvalidInput(f"feedback has {len(feedback)} chars; at most {MAX_FEEDBACK_CHARS}")
        if feedback is not None and self.redact:
            feedback = redact(feedback)

        def write(db: sqlite3.Connection) -> RateOutcome:   # one trip to the writer's thread
            turn = db.execute("SELECT train_state, batch_id, namespace, prompt_ids IS NOT NULL AS has_tokens "
                              "FROM turns WHERE id = ?", (turn_id,)).fetchone()
            if turn is None or (may_use is not None and not may_use(turn["namespace"])):
                raise NotFound(f"no turn {turn_id[:80]!r}; use the turn_id that report_turn returned")
            now = utcnow()
            db.execute("INSERT INTO ratings(turn_id, source, score, feedback, created_at, principal) "
                       "VALUES (?, ?, ?, ?, ?, ?)", (turn_id, source, score, feedback, now, principal))
            rows = db.execute("SELECT id, source, score, created_at FROM ratings WHERE turn_id = ?", (turn_id,)).fetchall()
            fused = fuse_ratings(Rating(r["source"], r["score"], r["created_at"], r["id"]) for r in rows)
            assert fused is not None  # the rating above is among them
            reward, reward_source = fused
            # A turn skipped before any batch (e.g. rated too low to imitate) is queued again by a new rating.
            requeue = turn["train_state"] in ("pending", "rated") or (turn["train_state"] == "skipped"
                                                                       and turn["batch_id"] is None)
            state = "rated" if requeue else turn["train_state"]
            db.execute("UPDATE turns SET reward = ?, reward_source = ?, rated_at = ?, train_state = ?, "
                       "skip_reason = CASE WHEN ? = 'rated' THEN NULL ELSE skip_reason END WHERE id = ?",
                       (reward, reward_source, now, state, state, turn_id))
            return RateOutcome(turn_id, reward, reward_source, state == "rated", bool(turn["has_tokens"]), state)

        return await self.db.write(write)

    async def ids_starting(self, prefix: str, limit: int) -> list[str]:
        """Turn ids that begin with `prefix`, in order, at most `limit`: just `prefix` when a turn has
        that whole id (a range scan of the primary key otherwise)."""
        if await self.db.scalar("SELECT 1 FROM turns WHERE id = ?", (prefix,)):
            return [prefix]
        rows = await self.db.fetchall("SELECT id FROM turns WHERE id >= ? AND id < ? ORDER BY id LIMIT ?",
                                      (prefix, prefix + "\U0010ffff", limit))
        return [r["id"] for r in rows]

    async def get(self, turn_id: str) -> dict[str, Any]:
        """One turn as a dict (messages parsed, its ratings and linked skills); NotFound for an unknown id."""
        row = await self.db.fetchone("SELECT * FROM turns WHERE id = ?", (turn_id,))
        if row is None:
            raise NotFound(f"no turn {turn_id[:80]!r}; `metaclaw-mcp turns list` shows recent ones")
        turn = _turn_dict(row)
        turn["ratings"] = [dict(r) for r in await self.db.fetchall(
            "SELECT source, score, feedback, created_at FROM ratings WHERE turn_id = ? ORDER BY id", (turn_id,))]
        turn["skills"] = [dict(r) for r in await self.db.fetchall(
            "SELECT u.skill_id, s.slug, u.version, u.rank FROM skill_uses u JOIN skills s ON s.id = u.skill_id "
            "WHERE u.turn_id = ? ORDER BY u.rank", (turn_id,))]
        return turn

    async def list(self, namespace: str | None = "default", session_id: str | None = None,
                   state: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
        """The newest `limit` turns (dicts, newest first), filtered by namespace (None: all), session and
        training state."""
        where, params = [], []
        for col, val in (("namespace", namespace), ("session_id", session_id), ("train_state", state)):
            if val is not None:
                where.append(f"{col} = ?")
                params.append(val)
        sql = ("SELECT id, namespace, session_id, model, reward, reward_source, train_state, created_at,"
               " substr(response, 1, 200) AS response, prompt_ids IS NOT NULL AS has_tokens FROM turns"
               + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY created_at DESC, id DESC LIMIT ?")
        return [dict(r) for r in await self.db.fetchall(sql, [*params, limit])]

    async def iter_export(self, namespace: str | None = None, rated_only: bool = False) -> AsyncIterator[dict[str, Any]]:
        """Every turn (oldest first) with its ratings, in pages, for JSONL export."""
        last = ""
        while True:
            where = ["id > ?"]
            params: list[Any] = [last]
            if namespace is not None:
                where.append("namespace = ?")
                params.append(namespace)
            if rated_only:
                where.append("reward IS NOT NULL")
            rows = await self.db.fetchall(f"SELECT * FROM turns WHERE {' AND '.join(where)} ORDER BY id LIMIT 500", params)
            if not rows:
                return
            ids = [r["id"] for r in rows]
            marks = ",".join("?" * len(ids))
            ratings: dict[str, list[dict[str, Any]]] = {}
            for r in await self.db.fetchall(f"SELECT turn_id, source, score, feedback, created_at FROM ratings "
                                            f"WHERE turn_id IN ({marks}) ORDER BY id", ids):
                ratings.setdefault(r["turn_id"], []).append({k: r[k] for k in r.keys() if k != "turn_id"})
            for row in rows:
                yield _turn_dict(row) | {"ratings": ratings.get(row["id"], [])}
            last = ids[-1]

    async def failures(self, namespace: str, threshold: float, limit: int) -> list[dict[str, Any]]:
        """Recent turns rated below `threshold` that no skill version yet cites in its provenance."""
        rows = await self.db.fetchall(
            "SELECT t.id, t.session_id, t.reward, t.messages, t.response FROM turns t "
            "WHERE t.namespace = ? AND t.reward IS NOT NULL AND t.reward < ? AND NOT EXISTS ("
            "  SELECT 1 FROM skill_versions v JOIN skills s ON s.id = v.skill_id, json_each(v.provenance) p"
            "  WHERE s.namespace = t.namespace AND p.value = t.id) "
            "ORDER BY t.rated_at DESC LIMIT ?", (namespace, threshold, limit))
        out = []
        for r in rows:
            feedback = [f["feedback"] for f in await self.db.fetchall(
                "SELECT feedback FROM ratings WHERE turn_id = ? AND feedback IS NOT NULL ORDER BY id", (r["id"],))]
            msgs = json.loads(r["messages"])
            out.append({"turn_id": r["id"], "session_id": r["session_id"], "reward": r["reward"],
                        "messages": msgs, "response": r["response"], "feedback": feedback})
        return out

    async def counts(self) -> dict[str, Any]:
        """Turns by training state, ratings, and the recent mean reward (for `status`)."""
        rows = await self.db.fetchall("SELECT train_state, COUNT(*) FROM turns GROUP BY train_state")
        by_state = {r[0]: r[1] for r in rows}
        recent = await self.db.fetchone(
            "SELECT AVG(reward) AS mean, COUNT(*) AS n FROM (SELECT reward FROM turns WHERE reward IS NOT NULL "
            "ORDER BY rated_at DESC LIMIT 100)")
        return {"total": sum(by_state.values()), "by_state": by_state,
                "ratings": await self.db.scalar("SELECT COUNT(*) FROM ratings"),
                "recent_reward": {"mean": recent["mean"], "n": recent["n"]}}


def _turn_dict(row: sqlite3.Row) -> dict[str, Any]:
    out = {k: row[k] for k in row.keys() if k != "request_hash"}
    for key in ("messages", "metadata", "prompt_ids", "completion_ids", "logprobs"):
        if out.get(key) is not None:
            out[key] = json.loads(out[key])
    return out
