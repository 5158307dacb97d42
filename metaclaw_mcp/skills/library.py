"""The skill library: skills with immutable versions and a status, kept in SQLite with an FTS5 index.

A skill has a stable integer id and a slug unique in its namespace; each edit adds a
version; `current_version` says which one is shown; rollback points it at an older one.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import sqlite3
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import aiosqlite
import anyio

from ..errors import Conflict, InvalidInput, NotFound
from ..screening import screen
from ..store import Database, dumps, set_kv, utcnow
from .retrieval import BM25_WEIGHTS, TOKENISER_VERSION, index_text, match_expression, query_terms
from .skillmd import (NOT_FOLLOWED, SkillDoc, find_skill_files, read_skill_folder, starter_dir, validate_doc,
                      write_skill_folders)

# Called as progress(done, total) while an import runs (the CLI draws a bar with it).
Progress = Callable[[int, int], None]
FTS_KEY = "skills_fts_tokeniser"

# An import writes at most this many skills, or for about this long, per transaction, then lets go
# of the write lock for IMPORT_PAUSE_S: longer than a waiting writer's poll (store.db.POLL_MAX_S plus
# one attempt), so a server's report_turn gets in between chunks instead of timing out.
IMPORT_CHUNK_ROWS = 500
IMPORT_CHUNK_SECONDS = 0.25
IMPORT_PAUSE_S = 0.02
# A batch untouched this long is abandoned even when its process cannot be checked (another host).
ABANDONED_AFTER_S = 3600.0
# (database file, batch id) of the imports under way in this process.
_LIVE_BATCHES: set[tuple[str, int]] = set()


def content_hash(description: str, body: str) -> str:
    """Hash of the normalised text, so whitespace and case changes still count as the same skill."""
    norm = re.sub(r"\s+", " ", f"{description}\n{body}".lower()).strip()
    return hashlib.sha256(norm.encode()).hexdigest()


@dataclass
class SkillRecord:
    """A skill at its current version, as reads return it (`record_from_row`); `score` is what a search
    ranked it by (0 outside a search), `provenance` the ids of the turns it was learned from ([] for none)."""
    id: int
    namespace: str
    slug: str
    status: str
    version: int
    name: str
    description: str
    body: str
    category: str
    source: str
    provenance: list[str]
    status_reason: str | None = None
    created_at: str = ""
    updated_at: str = ""
    score: float = 0.0
    metadata: dict[str, Any] = field(default_factory=dict)

    def doc(self) -> SkillDoc:
        """Its current text as a SkillDoc named by its slug (a copy: editing it changes nothing stored)."""
        return SkillDoc(name=self.slug, description=self.description, body=self.body, category=self.category,
                        metadata=dict(self.metadata))

    def as_dict(self) -> dict[str, Any]:
        """Every field but `score`, as plain data (for JSON output)."""
        return {k: v for k, v in self.__dict__.items() if k != "score"}


@dataclass
class SkillVersion:
    """One published version of a skill, as `SkillLibrary.versions` returns it: its text, where it
    came from (`source`; `provenance`: ids of the turns it was learned from) and the version it
    revised (`parent_version`, None for the first)."""
    version: int
    name: str
    description: str
    body: str
    category: str
    source: str
    provenance: list[str]
    parent_version: int | None
    created_at: str

    def as_dict(self) -> dict[str, Any]:
        """Every field, as plain data (for JSON output)."""
        return dict(self.__dict__)


# Leaves out the versions an import has written but not published yet (`v` is skill_versions).
NOT_STAGED = ("NOT EXISTS (SELECT 1 FROM import_staged st WHERE st.skill_id = v.skill_id "
              "AND st.version = v.version)")

SELECT_SKILL = """
SELECT s.id, s.namespace, s.slug, s.status, s.current_version AS version, v.name, v.description, v.body,
       v.category, v.source, v.provenance, s.status_reason, s.created_at, s.updated_at, v.metadata
FROM skills s JOIN skill_versions v ON v.skill_id = s.id AND v.version = s.current_version
"""


def record_from_row(row: sqlite3.Row, score: float = 0.0) -> SkillRecord:
    """A `SELECT_SKILL` row as a SkillRecord (`score`: what a search ranked it by)."""
    return SkillRecord(id=row["id"], namespace=row["namespace"], slug=row["slug"], status=row["status"],
                       version=row["version"], name=row["name"], description=row["description"], body=row["body"],
                       category=row["category"], source=row["source"], provenance=json.loads(row["provenance"]),
                       status_reason=row["status_reason"], created_at=row["created_at"],
                       updated_at=row["updated_at"], score=score, metadata=json.loads(row["metadata"] or "{}"))


@dataclass
class ImportReport:
    """What an import did: the names it wrote, the (path or name, reason) pairs it skipped, and of
    those the names skipped because their text was already stored."""
    imported: list[str]
    skipped: list[tuple[str, str]]  # (path or name, reason)
    unchanged: list[str] = field(default_factory=list)


async def _fts_insert(db: aiosqlite.Connection, skill_id: int, name: str, description: str, body: str) -> None:
    """Index a skill's current text; identifiers are expanded so `getUserDetails` matches "user details"."""
    await db.execute("INSERT INTO skills_fts(rowid, name, description, body) VALUES (?, ?, ?, ?)",
                     (skill_id, index_text(name), index_text(description), index_text(body)))


SQLITE_MAX_ID = 2**63 - 1   # the largest INTEGER SQLite can bind


def skill_ref(ref: str | int) -> tuple[str, int | str] | None:
    """How a skill reference is looked up: ("id", n) for an integer or a string of digits, ("slug", s)
    otherwise; None for an id no skill can have (negative, or past SQLite's INTEGER range)."""
    if isinstance(ref, int) or (isinstance(ref, str) and ref.isascii() and ref.isdigit()):
        n = int(ref)
        return ("id", n) if 0 <= n <= SQLITE_MAX_ID else None
    return ("slug", ref)


async def _versions(db: aiosqlite.Connection, skill_id: int) -> tuple[int, int] | None:
    """Inside a transaction: (current version, the number a new version gets) of a skill; None when
    there is no such skill."""
    row = await (await db.execute(
        "SELECT current_version, (SELECT MAX(version) FROM skill_versions WHERE skill_id = ?) FROM skills "
        "WHERE id = ?", (skill_id, skill_id))).fetchone()
    return None if row is None else (int(row[0]), int(row[1]) + 1)


class SkillLibrary:
    """The skills of every namespace in one database: reads, versioned writes (each public write one
    transaction), status changes, and SKILL.md / JSONL import and export. Skills are named by id or
    slug (`skill_ref`); an unknown one is NotFound. Bodies are at most `max_body_chars` characters."""

    def __init__(self, db: Database, max_body_chars: int = 8000):
        self.db = db
        self.max_body_chars = max_body_chars

    # ---- reads ----

    async def slugs_starting(self, namespace: str, prefix: str, limit: int) -> list[str]:
        """Slugs of `namespace` that begin with `prefix`, in order, at most `limit`: just `prefix` when a
        skill has that whole slug (a range scan of the (namespace, slug) index otherwise)."""
        if await self.db.scalar("SELECT 1 FROM skills WHERE namespace = ? AND slug = ?", (namespace, prefix)):
            return [prefix]
        rows = await self.db.fetchall("SELECT slug FROM skills WHERE namespace = ? AND slug >= ? AND slug < ? "
                                      "ORDER BY slug LIMIT ?", (namespace, prefix, prefix + "\U0010ffff", limit))
        return [r["slug"] for r in rows]

    async def get(self, namespace: str, ref: str | int) -> SkillRecord:
        """A skill by id or slug; NotFound names what was asked for."""
        found = skill_ref(ref)
        row = None if found is None else await self.db.fetchone(
            SELECT_SKILL + f" WHERE s.{found[0]} = ? AND s.namespace = ?", (found[1], namespace))
        if row is None:
            raise NotFound(f"no skill {ref!r} in namespace {namespace!r}; `metaclaw-mcp skills list` shows them")
        return record_from_row(row)

    async def list(self, namespace: str | None = "default", status: str | None = None,
                   category: str | None = None, limit: int | None = None) -> list[SkillRecord]:
        """Skills at their current version, by namespace then slug; None or empty filters (namespace None:
        every namespace; limit None or 0: no limit) select all."""
        where, params = [], []
        if namespace is not None:
            where.append("s.namespace = ?")
            params.append(namespace)
        if status:
            where.append("s.status = ?")
            params.append(status)
        if category:
            where.append("v.category = ?")
            params.append(category)
        sql = SELECT_SKILL + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY s.namespace, s.slug"
        if limit:
            sql += f" LIMIT {int(limit)}"
        return [record_from_row(r) for r in await self.db.fetchall(sql, params)]

    async def versions(self, skill_id: int) -> list[SkillVersion]:
        """Every published version of skill `skill_id`, oldest first ([] for an unknown id)."""
        rows = await self.db.fetchall(
            "SELECT version, name, description, body, category, source, provenance, parent_version, created_at "
            "FROM skill_versions v WHERE skill_id = ? AND " + NOT_STAGED + " ORDER BY version", (skill_id,))
        return [SkillVersion(**(dict(r) | {"provenance": json.loads(r["provenance"])})) for r in rows]

    async def counts(self) -> dict[str, int]:
        """Skills per status over every namespace (a status with none is absent)."""
        rows = await self.db.fetchall(  # an import's unpublished skills (current_version 0) are not counted
            "SELECT status, COUNT(*) FROM skills WHERE current_version > 0 GROUP BY status")
        return {r[0]: r[1] for r in rows}

    async def find_by_hash(self, namespace: str, digest: str) -> SkillRecord | None:
        """The skill of `namespace` one of whose versions has `content_hash` `digest`, or None."""
        row = await self.db.fetchone(
            SELECT_SKILL + " WHERE s.namespace = ? AND EXISTS (SELECT 1 FROM skill_versions x "
            "WHERE x.skill_id = s.id AND x.content_hash = ?)", (namespace, digest))
        return record_from_row(row) if row else None

    async def search(self, query: str, namespace: str = "default", k: int = 5,
                     categories: Sequence[str] | None = None, statuses: Sequence[str] = ("active",),
                     candidates: int | None = None) -> list[SkillRecord]:
        """Skills ranked by FTS5 BM25 over name, description and body; best first, `score` = -bm25."""
        expr = match_expression(query_terms(query))
        if expr is None:
            return []
        w_name, w_desc, w_body = BM25_WEIGHTS
        sql = (SELECT_SKILL.replace("SELECT s.id", f"SELECT bm25(skills_fts, {w_name}, {w_desc}, {w_body}) AS rank, s.id")
               + " JOIN skills_fts ON skills_fts.rowid = s.id WHERE skills_fts MATCH ? AND s.namespace = ?"
               + f" AND s.status IN ({','.join('?' * len(statuses))})")
        params: list[Any] = [expr, namespace, *statuses]
        if categories:
            sql += f" AND v.category IN ({','.join('?' * len(categories))})"
            params += list(categories)
        sql += " ORDER BY rank LIMIT ?"
        params.append(candidates or k)
        rows = await self.db.fetchall(sql, params)
        return [record_from_row(r, score=-float(r["rank"])) for r in rows]

    # ---- writes (each public one is one transaction) ----

    async def add(self, doc: SkillDoc, namespace: str = "default", status: str = "active", source: str = "user",
                  provenance: Iterable[str] = ()) -> SkillRecord:
        """A new skill at version 1 named `doc.name`. InvalidInput for a bad doc (`validate_doc`);
        Conflict when the name is taken in `namespace` or being imported into it."""
        doc = validate_doc(doc, self.max_body_chars, where=f"skill {doc.name!r}")
        async with self.db.transaction() as db:
            skill_id = await self.insert(db, doc, namespace, status, source, list(provenance))
        return await self.get(namespace, skill_id)

    async def insert(self, db: aiosqlite.Connection, doc: SkillDoc, namespace: str, status: str, source: str,
                     provenance: list[str], metadata: dict[str, Any] | None = None, *, staged: bool = False,
                     principal: str | None = None) -> int:
        """Inside a transaction: a new skill at version 1. Conflict when the slug is taken.

        `staged`: written by an import that publishes it later (current version 0 until then:
        no read sees it). `principal`: the token that wrote it (None: the single-user default)."""
        now = utcnow()
        try:
            cur = await db.execute(
                "INSERT INTO skills(namespace, slug, status, current_version, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?)", (namespace, doc.name, status, 0 if staged else 1, now, now))
        except sqlite3.IntegrityError:
            taken = await (await db.execute("SELECT current_version FROM skills WHERE namespace = ? AND slug = ?",
                                            (namespace, doc.name))).fetchone()
            if taken is not None and taken[0] == 0:
                raise Conflict(f"a skill named {doc.name!r} is being imported into namespace {namespace!r}; "
                               f"try again when that import has finished") from None
            raise Conflict(f"a skill named {doc.name!r} already exists in namespace {namespace!r}") from None
        skill_id = int(cur.lastrowid)
        await self._insert_version(db, skill_id, 1, doc, source, provenance, None, metadata or doc.metadata, now,
                                   principal)
        await _fts_insert(db, skill_id, doc.name, doc.description, doc.body)
        return skill_id

    async def _insert_version(self, db: aiosqlite.Connection, skill_id: int, version: int, doc: SkillDoc,
                              source: str, provenance: list[str], parent: int | None,
                              metadata: dict[str, Any], now: str, principal: str | None = None) -> None:
        await db.execute(
            "INSERT INTO skill_versions(skill_id, version, name, description, body, category, source, provenance, "
            "parent_version, content_hash, metadata, created_at, principal) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (skill_id, version, doc.name, doc.description, doc.body, doc.category, source, dumps(provenance),
             parent, content_hash(doc.description, doc.body), dumps(metadata), now, principal))

    async def _point_at(self, db: aiosqlite.Connection, skill_id: int, version: int) -> None:
        row = await (await db.execute(
            "SELECT name, description, body FROM skill_versions WHERE skill_id = ? AND version = ?",
            (skill_id, version))).fetchone()
        await db.execute("UPDATE skills SET current_version = ?, updated_at = ? WHERE id = ?",
                         (version, utcnow(), skill_id))
        await db.execute("DELETE FROM skills_fts WHERE rowid = ?", (skill_id,))
        await _fts_insert(db, skill_id, row["name"], row["description"], row["body"])

    async def reindex_if_stale(self) -> bool:
        """Rebuild the FTS5 index when it was built by an older tokeniser; True when it did."""
        if await self.db.get_kv(FTS_KEY) == TOKENISER_VERSION:
            return False
        await self.reindex()
        return True

    async def reindex(self) -> int:
        """Rebuild the FTS5 index from the current version of every skill, in one transaction."""
        rows = await self.db.fetchall(  # an import's unpublished new skills keep their index row too
            "SELECT s.id, v.name, v.description, v.body FROM skills s "
            "JOIN skill_versions v ON v.skill_id = s.id AND v.version = MAX(s.current_version, 1)")
        async with self.db.transaction() as db:
            await db.execute("DELETE FROM skills_fts")
            await db.executemany(
                "INSERT INTO skills_fts(rowid, name, description, body) VALUES (?, ?, ?, ?)",
                [(r["id"], index_text(r["name"]), index_text(r["description"]), index_text(r["body"])) for r in rows])
            await set_kv(db, FTS_KEY, TOKENISER_VERSION)
        return len(rows)

    async def add_version(self, db: aiosqlite.Connection, skill_id: int, doc: SkillDoc, source: str,
                          provenance: Sequence[str], parent: int | None = None, principal: str | None = None) -> int:
        """Inside a transaction: `doc` as the newest version of skill `skill_id`, made current; returns
        its version number. `parent` is the version it was derived from (default: the current one);
        `principal` the token that wrote it (None: the single-user default)."""
        versions = await _versions(db, skill_id)
        if versions is None:
            raise NotFound(f"no skill with id {skill_id}")
        current, version = versions
        await self._insert_version(db, skill_id, version, doc, source, list(provenance),
                                   current if parent is None else parent, doc.metadata, utcnow(), principal)
        await self._point_at(db, skill_id, version)
        return version

    async def revise(self, namespace: str, ref: str | int, doc: SkillDoc, source: str = "user",
                     provenance: Iterable[str] = ()) -> SkillRecord:
        """Add a new version of an existing skill and make it current."""
        current = await self.get(namespace, ref)
        doc.name = current.slug
        doc = validate_doc(doc, self.max_body_chars, where=f"skill {current.slug!r}")
        async with self.db.transaction() as db:
            await self.add_version(db, current.id, doc, source, list(provenance))
        return await self.get(namespace, current.id)

    async def merge(self, namespace: str, keep: str | int, other: str | int) -> SkillRecord:
        """Fold skill `other` into skill `keep`: `keep` gets a new version with its own text, the
        descriptions' situations merged (`lessons.merge_descriptions`) and both provenances; `other`
        is retired with the reason "merged into ...". Nothing is deleted (rollback and activate undo
        it). InvalidInput when both name the same skill or `other` is already retired into it."""
        from .lessons import merge_descriptions, merge_provenance
        a, b = await self.get(namespace, keep), await self.get(namespace, other)
        if a.id == b.id:
            raise InvalidInput(f"cannot merge skill {a.slug!r} into itself")
        doc = a.doc()
        doc.description = merge_descriptions(b.description, a.description)
        doc.metadata = {**b.metadata, **a.metadata}
        async with self.db.transaction() as db:
            version = await self.add_version(db, a.id, doc, "merge", merge_provenance(a.provenance, b.provenance))
            await db.execute("UPDATE skills SET status = 'retired', status_reason = ?, updated_at = ? WHERE id = ?",
                             (f"merged into {a.slug!r} (v{version})", utcnow(), b.id))
            if a.status == "candidate" and b.status == "active":
                await db.execute("UPDATE skills SET status = 'active', status_reason = ? WHERE id = ?",
                                 (f"merged with active skill {b.slug!r}", a.id))
        return await self.get(namespace, a.id)

    async def rollback(self, namespace: str, ref: str | int, version: int | None = None) -> SkillRecord:
        """Point the skill at an older version (default: the one before the current)."""
        current = await self.get(namespace, ref)
        target = version if version is not None else current.version - 1
        exists = await self.db.scalar("SELECT 1 FROM skill_versions v WHERE skill_id = ? AND version = ? AND "
                                      + NOT_STAGED, (current.id, target))
        if not exists:
            raise NotFound(f"skill {current.slug!r} has no version {target}; "
                           f"`metaclaw-mcp skills show {current.slug}` lists its versions")
        if target == current.version:
            raise Conflict(f"skill {current.slug!r} is already at version {target}")
        async with self.db.transaction() as db:
            await self._point_at(db, current.id, target)
        return await self.get(namespace, current.id)

    async def set_status(self, namespace: str, ref: str | int, status: str, reason: str | None = None) -> SkillRecord:
        """Set a skill's status (candidate, active or retired) and its reason; InvalidInput for another status."""
        if status not in ("candidate", "active", "retired"):
            raise InvalidInput(f"status {status!r} is not one of candidate, active, retired")
        current = await self.get(namespace, ref)
        async with self.db.transaction() as db:
            await db.execute("UPDATE skills SET status = ?, status_reason = ?, updated_at = ? WHERE id = ?",
                             (status, reason, utcnow(), current.id))
        return await self.get(namespace, current.id)

    # ---- import and export: SKILL.md folders and JSONL ----

    async def import_folder(self, path: Path, namespace: str = "default", status: str = "active",
                            source: str = "import", progress: Progress | None = None, *,
                            chunk_size: int = IMPORT_CHUNK_ROWS) -> ImportReport:
        """Import every SKILL.md under `path` (a folder, or one SKILL.md file), all or nothing
        (`import_docs`); bad files are reported and skipped.

        A skill whose name already exists gets a new version when its text differs. Symbolic links
        below `path` are never followed: a linked SKILL.md or folder is skipped with that reason
        (`path` itself may be one).
        """
        path = Path(path)
        if not path.exists():
            raise NotFound(f"nothing to import at {path}")
        files, links = ([path], []) if path.is_file() else find_skill_files(path)

        def parsed() -> Iterator[tuple[str, SkillDoc | InvalidInput]]:
            for link in links:
                yield str(link), InvalidInput(f"{link}: {NOT_FOLLOWED}")
            for f in files:
                try:
                    doc = read_skill_folder(f, within=None if f == path else path)
                    yield str(f), validate_doc(doc, self.max_body_chars, where=str(f))
                except InvalidInput as exc:
                    yield str(f), exc
        return await self.import_docs(parsed(), len(links) + len(files), namespace, status, source, progress,
                                      chunk_size=chunk_size)

    async def import_jsonl(self, path: Path, namespace: str = "default", status: str = "active",
                           source: str = "import", progress: Progress | None = None, *,
                           chunk_size: int = IMPORT_CHUNK_ROWS) -> ImportReport:
        """Import a JSONL file, one skill a line: {"name", "description", "body", "category"?, "metadata"?}.

        A bad line is reported as `path:line` and skipped; the good ones land all or nothing (`import_docs`).
        """
        path = Path(path)
        if not path.is_file():
            raise NotFound(f"nothing to import at {path}")
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidInput(f"{path}: cannot read: {exc}") from None
        numbered = [(i, line) for i, line in enumerate(lines, 1) if line.strip()]

        def parsed() -> Iterator[tuple[str, SkillDoc | InvalidInput]]:
            for i, line in numbered:
                where = f"{path}:{i}"
                try:
                    yield where, validate_doc(doc_from_json(line, where), self.max_body_chars, where=where)
                except InvalidInput as exc:
                    yield where, exc
        return await self.import_docs(parsed(), len(numbered), namespace, status, source, progress,
                                      chunk_size=chunk_size)

    async def import_docs(self, docs: Iterable[tuple[str, SkillDoc | InvalidInput]], total: int,
                          namespace: str = "default", status: str = "active", source: str = "import",
                          progress: Progress | None = None, *, chunk_size: int = IMPORT_CHUNK_ROWS) -> ImportReport:
        """Apply parsed docs, `(where, doc or the error that made it bad)`, all or nothing.

        Bad ones, ones that fail the screening evolve_skills proposals pass, and second copies of a name
        are skipped with their reason (without the `where` prefix: that is the pair's first half); all the
        rest lands or, on any failure (a kill included), nothing does. The skills are written
        `chunk_size` at a time (each chunk a short transaction, invisible to every read) and published
        together by one last one, so other writers are not kept waiting. Conflict when another import
        into `namespace` is under way, or when a skill of the same name appeared meanwhile.
        """
        if status not in ("candidate", "active", "retired"):
            raise InvalidInput(f"status {status!r} is not one of candidate, active, retired")
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise InvalidInput(f"chunk_size must be a positive integer, not {chunk_size!r}")
        good: list[tuple[str, SkillDoc]] = []
        skipped: list[tuple[str, str]] = []
        seen: set[str] = set()
        done = 0
        for where, doc in docs:
            done += 1
            if progress is not None and done % 200 == 0:
                progress(done // 2, total)  # parsing is the first half of the work
            if isinstance(doc, InvalidInput):
                why = str(doc)
                skipped.append((where, why[len(where) + 2:] if why.startswith(f"{where}: ") else why))
            elif (problem := screen(doc.name, doc.description, doc.body)) is not None:
                skipped.append((where, f"screening: {problem}"))
            elif doc.name in seen:
                skipped.append((where, f"a second skill named {doc.name!r} in this import"))
            else:
                seen.add(doc.name)
                good.append((where, doc))
        existing = {r["slug"]: (r["id"], r["content_hash"]) for r in await self.db.fetchall(
            "SELECT s.id, s.slug, v.content_hash FROM skills s "
            "JOIN skill_versions v ON v.skill_id = s.id AND v.version = s.current_version WHERE s.namespace = ?",
            (namespace,))}
        todo: list[tuple[SkillDoc, int | None]] = []  # (doc, id of the skill it revises)
        unchanged: list[str] = []
        for _, doc in good:
            skill_id, digest = existing.get(doc.name, (None, None))
            if digest == content_hash(doc.description, doc.body):
                unchanged.append(doc.name)
                skipped.append((doc.name, "unchanged"))
            else:
                todo.append((doc, skill_id))
        if todo:
            def step(i: int) -> None:
                if progress is not None and i % 200 == 0:
                    progress((total + i * total // len(todo)) // 2, total)
            await self._stage_and_publish(todo, namespace, status, source, chunk_size, step)
        if progress is not None:
            progress(total, total)
        return ImportReport(imported=[doc.name for doc, _ in todo], skipped=skipped, unchanged=unchanged)

    async def _stage_and_publish(self, todo: Sequence[tuple[SkillDoc, int | None]], namespace: str, status: str,
                                 source: str, chunk_size: int, step: Callable[[int], None]) -> None:
        batch = await self._open_batch(namespace)
        live = self._live_key(batch)
        try:
            i = 0
            while i < len(todo):
                async with self.db.transaction() as db:
                    cur = await db.execute("UPDATE import_batches SET touched_at = ? WHERE id = ?", (utcnow(), batch))
                    if cur.rowcount != 1:
                        raise Conflict(ABANDONED_IMPORT)
                    deadline = anyio.current_time() + IMPORT_CHUNK_SECONDS
                    start, end = i, min(i + chunk_size, len(todo))
                    staged = []
                    while i < end and (i == start or anyio.current_time() < deadline):
                        step(i)
                        staged.append(await self._stage(db, batch, *todo[i], namespace, status, source))
                        i += 1
                    await db.executemany(
                        "INSERT INTO import_staged(batch_id, skill_id, version, new_skill, fts_name, fts_description, "
                        "fts_body) VALUES (?, ?, ?, ?, ?, ?, ?)", staged)
                if i < len(todo):
                    await anyio.sleep(IMPORT_PAUSE_S)
            await self._publish(batch)
        except BaseException:
            with anyio.CancelScope(shield=True):
                try:
                    await self._discard_batch(batch)
                except Exception:  # noqa: BLE001 - the batch is recognised as abandoned and removed later
                    pass
            raise
        finally:
            _LIVE_BATCHES.discard(live)

    def _live_key(self, batch: int) -> tuple[str, int]:
        return str(self.db.path.resolve()), batch

    async def _open_batch(self, namespace: str) -> int:
        """Register an import into `namespace` (after removing abandoned ones) as under way in this
        process; its batch id."""
        await self.discard_abandoned_imports()
        batch = None
        try:
            async with self.db.transaction() as db:
                for row in await (await db.execute("SELECT id, host, pid, touched_at FROM import_batches "
                                                   "WHERE namespace = ?", (namespace,))).fetchall():
                    if not self._abandoned(row):
                        raise Conflict(f"another import into namespace {namespace!r} is under way (process "
                                       f"{row['pid']} on {row['host']}); run this one when it has finished")
                now = utcnow()
                cur = await db.execute(
                    "INSERT INTO import_batches(namespace, host, pid, started_at, touched_at) VALUES (?, ?, ?, ?, ?)",
                    (namespace, socket.gethostname(), os.getpid(), now, now))
                batch = int(cur.lastrowid)
                # live before it is committed: no other task of this process may take it for abandoned
                _LIVE_BATCHES.add(self._live_key(batch))
        except BaseException:
            if batch is not None:
                _LIVE_BATCHES.discard(self._live_key(batch))
            raise
        return batch

    async def _stage(self, db: aiosqlite.Connection, batch: int, doc: SkillDoc, skill_id: int | None,
                     namespace: str, status: str, source: str) -> tuple[Any, ...]:
        """Inside a chunk's transaction: write one imported skill where no read sees it yet; its
        `import_staged` row."""
        if skill_id is None:
            new_id = await self.insert(db, doc, namespace, status, source, [], staged=True)
            return batch, new_id, 1, 1, None, None, None
        versions = await _versions(db, skill_id)
        if versions is None:
            raise Conflict(f"skill {doc.name!r} was removed from namespace {namespace!r} during the import")
        current, version = versions
        await self._insert_version(db, skill_id, version, doc, source, [], current, doc.metadata, utcnow())
        return batch, skill_id, version, 0, index_text(doc.name), index_text(doc.description), index_text(doc.body)

    async def _publish(self, batch: int) -> None:
        """Make everything `batch` staged current, in one short transaction of set-wise statements."""
        async with self.db.transaction() as db:
            if not await (await db.execute("SELECT 1 FROM import_batches WHERE id = ?", (batch,))).fetchone():
                raise Conflict(ABANDONED_IMPORT)
            await db.execute(
                "UPDATE skills SET updated_at = ?, current_version = (SELECT st.version FROM import_staged st "
                "WHERE st.batch_id = ? AND st.skill_id = skills.id) "
                "WHERE id IN (SELECT skill_id FROM import_staged WHERE batch_id = ?)", (utcnow(), batch, batch))
            await db.execute("DELETE FROM skills_fts WHERE rowid IN "
                             "(SELECT skill_id FROM import_staged WHERE batch_id = ? AND new_skill = 0)", (batch,))
            await db.execute("INSERT INTO skills_fts(rowid, name, description, body) SELECT skill_id, fts_name, "
                             "fts_description, fts_body FROM import_staged WHERE batch_id = ? AND new_skill = 0",
                             (batch,))
            await db.execute("DELETE FROM import_staged WHERE batch_id = ?", (batch,))
            await db.execute("DELETE FROM import_batches WHERE id = ?", (batch,))

    async def _discard_batch(self, batch: int, chunk: int = 500) -> None:
        """Remove what `batch` staged, `chunk` skills a transaction (none of it is visible meanwhile)."""
        while True:
            async with self.db.transaction() as db:
                rows = await (await db.execute(
                    "SELECT skill_id, version, new_skill FROM import_staged WHERE batch_id = ? LIMIT ?",
                    (batch, chunk))).fetchall()
                if not rows:
                    await db.execute("DELETE FROM import_batches WHERE id = ?", (batch,))
                    return
                pairs = [(r["skill_id"], r["version"]) for r in rows]
                fresh = [(r["skill_id"],) * 2 for r in rows if r["new_skill"]]
                await db.executemany("DELETE FROM skill_embeddings WHERE skill_id = ? AND version = ?", pairs)
                # a version a turn's use points at stays (and keeps its skill): such rows stay invisible
                await db.executemany(
                    "DELETE FROM skill_versions WHERE skill_id = ?1 AND version = ?2 "
                    "AND version != (SELECT current_version FROM skills WHERE id = ?1) "
                    "AND NOT EXISTS (SELECT 1 FROM skill_uses u WHERE u.skill_id = ?1 AND u.version = ?2)", pairs)
                await db.executemany("DELETE FROM skills WHERE id = ? AND current_version = 0 "
                                     "AND NOT EXISTS (SELECT 1 FROM skill_versions WHERE skill_id = ?)", fresh)
                await db.executemany("DELETE FROM skills_fts WHERE rowid = ? "
                                     "AND NOT EXISTS (SELECT 1 FROM skills WHERE id = ?)", fresh)
                await db.executemany("DELETE FROM import_staged WHERE batch_id = ? AND skill_id = ?",
                                     [(batch, sid) for sid, _ in pairs])

    def _abandoned(self, row: Mapping[str, Any]) -> bool:
        """Whether the import batch `row` (host, pid, touched_at) will never be published."""
        if row["host"] == socket.gethostname():
            if row["pid"] == os.getpid():
                return self._live_key(row["id"]) not in _LIVE_BATCHES
            if not _process_alive(row["pid"]):
                return True
        touched = datetime.fromisoformat(row["touched_at"])
        return (datetime.now(timezone.utc) - touched).total_seconds() > ABANDONED_AFTER_S

    async def discard_abandoned_imports(self) -> int:
        """Remove what imports that will never finish (their process died, or they were untouched
        for ABANDONED_AFTER_S) had staged, so their names are free again; returns how many.
        Every import calls it first; a server may call it when it starts."""
        rows = await self.db.fetchall("SELECT id, host, pid, touched_at FROM import_batches")
        abandoned = [r["id"] for r in rows if self._abandoned(r)]
        for batch in abandoned:
            await self._discard_batch(batch)
        return len(abandoned)

    async def export_folder(self, path: Path, namespace: str = "default", status: str | None = None, *,
                            force: bool = False) -> list[Path]:
        """Write each skill's current version to `<path>/<slug>/SKILL.md`; returns those paths.

        `path` must be new or empty unless `force` (then the SKILL.md files of the skills exported
        are replaced, other files left alone). No symbolic link in `path` is written through, and each
        file is written whole. Conflict, before anything is written, when `path` is a non-empty
        folder without `force`, not a folder, or holds a link or a file where a skill's folder goes."""
        path = Path(path)
        docs = [skill.doc() for skill in await self.list(namespace, status=status)]
        return await anyio.to_thread.run_sync(write_skill_folders, path, docs, force)

    async def export_jsonl(self, path: Path, namespace: str = "default", status: str | None = None, *,
                           force: bool = False) -> int:
        """Write each skill's current version as one JSON line; returns how many.

        The file is written whole (a temporary file beside it, then renamed over it: a link at
        `path` is replaced, not written through). Conflict when `path` exists and `force` is false,
        or is a folder."""
        path = Path(path)
        if path.is_dir():
            raise Conflict(f"{path} is a folder; name a .jsonl file to write")
        if (path.exists() or path.is_symlink()) and not force:
            raise Conflict(f"{path} already exists; pass force (`skills export --force`) to replace it")
        path.parent.mkdir(parents=True, exist_ok=True)
        skills = await self.list(namespace, status=status)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
                for s in skills:
                    f.write(dumps(doc_to_json(s.doc()) | {"status": s.status, "version": s.version}) + "\n")
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return len(skills)

    async def seed_starter(self, namespace: str = "default") -> int:
        """Load the bundled starter skills into `namespace` once; return how many were added."""
        key = f"starter_loaded:{namespace}"
        if await self.db.get_kv(key):
            return 0
        report = await self.import_folder(starter_dir(), namespace, status="active", source="starter")
        async with self.db.transaction() as db:
            await set_kv(db, key, {"at": utcnow(), "count": len(report.imported)})
        return len(report.imported)


ABANDONED_IMPORT = ("this import's staged skills were removed by another process that took the import "
                    "for abandoned; nothing was imported, run it again")


def _process_alive(pid: int) -> bool:
    """Whether process `pid` on this host still runs (True when that cannot be told safely)."""
    if os.name == "nt":  # os.kill there would end the process: let the age rule decide
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists but belongs to someone else
        return True
    return True


JSONL_KEYS = {"name", "description", "body", "category", "metadata", "status", "version"}


def doc_to_json(doc: SkillDoc) -> dict[str, Any]:
    """A SkillDoc as one JSONL line's object (what `doc_from_json` reads back)."""
    return {"name": doc.name, "description": doc.description, "body": doc.body, "category": doc.category,
            "metadata": doc.metadata}


def doc_from_json(line: str, where: str) -> SkillDoc:
    """One JSONL line as a SkillDoc; InvalidInput (with `where`) when it is not one."""
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"{where}: not valid JSON: {exc.msg} at column {exc.colno}") from None
    if not isinstance(data, dict):
        raise InvalidInput(f"{where}: each line must be a JSON object with name, description and body")
    unknown = set(data) - JSONL_KEYS
    if unknown:
        raise InvalidInput(f"{where}: unknown keys {sorted(unknown)}; allowed: {sorted(JSONL_KEYS)}")
    metadata = data.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise InvalidInput(f"{where}: 'metadata' must be an object")
    return SkillDoc(name=data.get("name"), description=data.get("description"), body=data.get("body"),  # type: ignore[arg-type]
                    category=str(data.get("category") or "general"), metadata=metadata)
