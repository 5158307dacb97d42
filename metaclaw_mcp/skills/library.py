"""The skill library: skills with immutable versions and a status, kept in SQLite with an FTS5 index.

A skill has a stable integer id and a slug unique in its namespace; each edit adds a
version; `current_version` says which one is shown; rollback points it at an older one.
"""
from __future__ import annotations

import hashlib
import json
import re
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite

from ..errors import Conflict, InvalidInput, NotFound
from ..store import Database, dumps, set_kv, utcnow
from .retrieval import BM25_WEIGHTS, match_expression, query_terms
from .skillmd import SkillDoc, read_skill_folder, render_skill_md, starter_dir, validate_doc


def content_hash(description: str, body: str) -> str:
    """Hash of the normalised text, so whitespace and case changes still count as the same skill."""
    norm = re.sub(r"\s+", " ", f"{description}\n{body}".lower()).strip()
    return hashlib.sha256(norm.encode()).hexdigest()


@dataclass
class SkillRecord:
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

    def doc(self) -> SkillDoc:
        return SkillDoc(name=self.slug, description=self.description, body=self.body, category=self.category)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "score"}


SELECT_SKILL = """
SELECT s.id, s.namespace, s.slug, s.status, s.current_version AS version, v.name, v.description, v.body,
       v.category, v.source, v.provenance, s.status_reason, s.created_at, s.updated_at
FROM skills s JOIN skill_versions v ON v.skill_id = s.id AND v.version = s.current_version
"""


def _record(row: sqlite3.Row, score: float = 0.0) -> SkillRecord:
    return SkillRecord(id=row["id"], namespace=row["namespace"], slug=row["slug"], status=row["status"],
                       version=row["version"], name=row["name"], description=row["description"], body=row["body"],
                       category=row["category"], source=row["source"], provenance=json.loads(row["provenance"]),
                       status_reason=row["status_reason"], created_at=row["created_at"],
                       updated_at=row["updated_at"], score=score)


@dataclass
class ImportReport:
    imported: list[str]
    skipped: list[tuple[str, str]]  # (path or name, reason)


class SkillLibrary:
    def __init__(self, db: Database, max_body_chars: int = 8000):
        self.db = db
        self.max_body_chars = max_body_chars

    # ---- reads ----

    async def get(self, namespace: str, ref: str | int) -> SkillRecord:
        """A skill by id or slug; NotFound names what was asked for."""
        if isinstance(ref, int) or (isinstance(ref, str) and ref.isascii() and ref.isdigit()):
            # an id SQLite cannot bind (>= 2**63) names no skill
            row = (await self.db.fetchone(SELECT_SKILL + " WHERE s.id = ? AND s.namespace = ?", (int(ref), namespace))
                   if 0 <= int(ref) < 2**63 else None)
        else:
            row = await self.db.fetchone(SELECT_SKILL + " WHERE s.slug = ? AND s.namespace = ?", (ref, namespace))
        if row is None:
            raise NotFound(f"no skill {ref!r} in namespace {namespace!r}; `metaclaw-mcp skills list` shows them")
        return _record(row)

    async def list(self, namespace: str | None = "default", status: str | None = None,
                   category: str | None = None, limit: int | None = None) -> list[SkillRecord]:
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
        return [_record(r) for r in await self.db.fetchall(sql, params)]

    async def versions(self, skill_id: int) -> list[dict[str, Any]]:
        rows = await self.db.fetchall(
            "SELECT version, name, description, body, category, source, provenance, parent_version, created_at "
            "FROM skill_versions WHERE skill_id = ? ORDER BY version", (skill_id,))
        return [dict(r) | {"provenance": json.loads(r["provenance"])} for r in rows]

    async def counts(self) -> dict[str, int]:
        rows = await self.db.fetchall("SELECT status, COUNT(*) FROM skills GROUP BY status")
        return {r[0]: r[1] for r in rows}

    async def find_by_hash(self, namespace: str, digest: str) -> SkillRecord | None:
        row = await self.db.fetchone(
            SELECT_SKILL + " WHERE s.namespace = ? AND EXISTS (SELECT 1 FROM skill_versions x "
            "WHERE x.skill_id = s.id AND x.content_hash = ?)", (namespace, digest))
        return _record(row) if row else None

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
        return [_record(r, score=-float(r["rank"])) for r in rows]

    # ---- writes (each public one is one transaction) ----

    async def add(self, doc: SkillDoc, namespace: str = "default", status: str = "active", source: str = "user",
                  provenance: Iterable[str] = ()) -> SkillRecord:
        doc = validate_doc(doc, self.max_body_chars, where=f"skill {doc.name!r}")
        async with self.db.transaction() as db:
            skill_id = await self.insert(db, doc, namespace, status, source, list(provenance))
        return await self.get(namespace, skill_id)

    async def insert(self, db: aiosqlite.Connection, doc: SkillDoc, namespace: str, status: str, source: str,
                     provenance: list[str], metadata: dict[str, Any] | None = None) -> int:
        """Inside a transaction: a new skill at version 1. Conflict when the slug is taken."""
        now = utcnow()
        try:
            cur = await db.execute(
                "INSERT INTO skills(namespace, slug, status, current_version, created_at, updated_at) "
                "VALUES (?, ?, ?, 1, ?, ?)", (namespace, doc.name, status, now, now))
        except sqlite3.IntegrityError:
            raise Conflict(f"a skill named {doc.name!r} already exists in namespace {namespace!r}") from None
        skill_id = int(cur.lastrowid)
        await self._insert_version(db, skill_id, 1, doc, source, provenance, None, metadata or doc.metadata, now)
        await db.execute("INSERT INTO skills_fts(rowid, name, description, body) VALUES (?, ?, ?, ?)",
                         (skill_id, doc.name, doc.description, doc.body))
        return skill_id

    async def _insert_version(self, db: aiosqlite.Connection, skill_id: int, version: int, doc: SkillDoc,
                              source: str, provenance: list[str], parent: int | None,
                              metadata: dict[str, Any], now: str) -> None:
        await db.execute(
            "INSERT INTO skill_versions(skill_id, version, name, description, body, category, source, provenance, "
            "parent_version, content_hash, metadata, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (skill_id, version, doc.name, doc.description, doc.body, doc.category, source, dumps(provenance),
             parent, content_hash(doc.description, doc.body), dumps(metadata), now))

    async def _point_at(self, db: aiosqlite.Connection, skill_id: int, version: int) -> None:
        row = await (await db.execute(
            "SELECT name, description, body FROM skill_versions WHERE skill_id = ? AND version = ?",
            (skill_id, version))).fetchone()
        await db.execute("UPDATE skills SET current_version = ?, updated_at = ? WHERE id = ?",
                         (version, utcnow(), skill_id))
        await db.execute("DELETE FROM skills_fts WHERE rowid = ?", (skill_id,))
        await db.execute("INSERT INTO skills_fts(rowid, name, description, body) VALUES (?, ?, ?, ?)",
                         (skill_id, row["name"], row["description"], row["body"]))

    async def revise(self, namespace: str, ref: str | int, doc: SkillDoc, source: str = "user",
                     provenance: Iterable[str] = ()) -> SkillRecord:
        """Add a new version of an existing skill and make it current."""
        current = await self.get(namespace, ref)
        doc.name = current.slug
        doc = validate_doc(doc, self.max_body_chars, where=f"skill {current.slug!r}")
        async with self.db.transaction() as db:
            latest = (await (await db.execute("SELECT MAX(version) FROM skill_versions WHERE skill_id = ?",
                                              (current.id,))).fetchone())[0]
            await self._insert_version(db, current.id, latest + 1, doc, source, list(provenance), current.version,
                                       doc.metadata, utcnow())
            await self._point_at(db, current.id, latest + 1)
        return await self.get(namespace, current.id)

    async def rollback(self, namespace: str, ref: str | int, version: int | None = None) -> SkillRecord:
        """Point the skill at an older version (default: the one before the current)."""
        current = await self.get(namespace, ref)
        target = version if version is not None else current.version - 1
        exists = await self.db.scalar("SELECT 1 FROM skill_versions WHERE skill_id = ? AND version = ?",
                                      (current.id, target))
        if not exists:
            raise NotFound(f"skill {current.slug!r} has no version {target}; "
                           f"`metaclaw-mcp skills show {current.slug}` lists its versions")
        if target == current.version:
            raise Conflict(f"skill {current.slug!r} is already at version {target}")
        async with self.db.transaction() as db:
            await self._point_at(db, current.id, target)
        return await self.get(namespace, current.id)

    async def set_status(self, namespace: str, ref: str | int, status: str, reason: str | None = None) -> SkillRecord:
        if status not in ("candidate", "active", "retired"):
            raise InvalidInput(f"status {status!r} is not one of candidate, active, retired")
        current = await self.get(namespace, ref)
        async with self.db.transaction() as db:
            await db.execute("UPDATE skills SET status = ?, status_reason = ?, updated_at = ? WHERE id = ?",
                             (status, reason, utcnow(), current.id))
        return await self.get(namespace, current.id)

    # ---- SKILL.md folders ----

    async def import_folder(self, path: Path, namespace: str = "default", status: str = "active",
                            source: str = "import") -> ImportReport:
        """Import every SKILL.md under `path` in one transaction; bad files are reported and skipped.

        A skill whose name already exists gets a new version when its text differs.
        """
        path = Path(path)
        if not path.exists():
            raise NotFound(f"nothing to import at {path}")
        files = [path] if path.is_file() else sorted(path.rglob("SKILL.md"))
        docs: list[SkillDoc] = []
        skipped: list[tuple[str, str]] = []
        seen: set[str] = set()
        for f in files:
            try:
                doc = validate_doc(read_skill_folder(f), self.max_body_chars, where=str(f))
            except InvalidInput as exc:
                skipped.append((str(f), str(exc)))
                continue
            if doc.name in seen:
                skipped.append((str(f), f"{f}: a second skill named {doc.name!r} in this import"))
                continue
            seen.add(doc.name)
            docs.append(doc)
        imported: list[str] = []
        async with self.db.transaction() as db:
            for doc in docs:
                row = await (await db.execute(
                    "SELECT s.id, s.current_version, v.content_hash FROM skills s JOIN skill_versions v "
                    "ON v.skill_id = s.id AND v.version = s.current_version WHERE s.namespace = ? AND s.slug = ?",
                    (namespace, doc.name))).fetchone()
                if row is None:
                    await self.insert(db, doc, namespace, status, source, [])
                elif row["content_hash"] != content_hash(doc.description, doc.body):
                    latest = (await (await db.execute("SELECT MAX(version) FROM skill_versions WHERE skill_id = ?",
                                                      (row["id"],))).fetchone())[0]
                    await self._insert_version(db, row["id"], latest + 1, doc, source, [], row["current_version"],
                                               doc.metadata, utcnow())
                    await self._point_at(db, row["id"], latest + 1)
                else:
                    skipped.append((doc.name, f"{doc.name}: unchanged"))
                    continue
                imported.append(doc.name)
        return ImportReport(imported=imported, skipped=skipped)

    async def export_folder(self, path: Path, namespace: str = "default", status: str | None = None) -> list[Path]:
        """Write each skill's current version to `<path>/<slug>/SKILL.md`."""
        path = Path(path)
        written = []
        for skill in await self.list(namespace, status=status):
            folder = path / skill.slug
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "SKILL.md").write_text(render_skill_md(skill.doc()), encoding="utf-8")
            written.append(folder / "SKILL.md")
        return written

    async def seed_starter(self, namespace: str = "default") -> int:
        """Load the bundled starter skills into `namespace` once; return how many were added."""
        key = f"starter_loaded:{namespace}"
        if await self.db.get_kv(key):
            return 0
        report = await self.import_folder(starter_dir(), namespace, status="active", source="starter")
        async with self.db.transaction() as db:
            await set_kv(db, key, {"at": utcnow(), "count": len(report.imported)})
        return len(report.imported)
