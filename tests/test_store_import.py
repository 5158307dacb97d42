"""A long import in one process and a server's writes in another, on one real SQLite file."""
from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import os
import signal

import anyio
import pytest

from metaclaw_mcp.errors import Conflict
from metaclaw_mcp.skills.library import SkillLibrary
from metaclaw_mcp.skills.skillmd import SkillDoc
from metaclaw_mcp.store import Database, set_kv

pytestmark = pytest.mark.anyio

# Imports `n` small skills into namespace "bulk", `chunk` a transaction, printing each progress tick.
IMPORTER = """
import sys, anyio
from metaclaw_mcp.store import Database
from metaclaw_mcp.skills.library import SkillLibrary
from metaclaw_mcp.skills.skillmd import SkillDoc

path, n, chunk = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

async def main():
    async with Database(path) as db:
        docs = ((f"d{i}", SkillDoc(f"bulk-skill-{i}", f"Use when task {i} comes up.", f"1. Do item{i}."))
                for i in range(n))
        report = await SkillLibrary(db).import_docs(docs, n, "bulk", chunk_size=chunk,
                                                     progress=lambda done, total: print(done, total, flush=True))
        print("imported", len(report.imported), flush=True)

anyio.run(main)
"""


def start_import(db_path: Path, n: int, chunk: int) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", IMPORTER, str(db_path), str(n), str(chunk)],
                            stdout=subprocess.PIPE, text=True)


async def wait_for_tick(proc: subprocess.Popen[str], at_least: int) -> None:
    """Until the importer reports progress >= `at_least` (ticks past half the total are writes)."""
    with anyio.fail_after(60):
        while True:
            line = await anyio.to_thread.run_sync(proc.stdout.readline)
            assert line, f"the importer ended early (exit {proc.wait()})"
            if int(line.split()[0]) >= at_least:
                return


def visible(db_path: Path, namespace: str = "bulk") -> int:
    """Skills a read sees: those with a current version."""
    conn = sqlite3.connect(db_path)
    try:
        return conn.execute("SELECT COUNT(*) FROM skills s JOIN skill_versions v ON v.skill_id = s.id "
                            "AND v.version = s.current_version WHERE s.namespace = ?", (namespace,)).fetchone()[0]
    finally:
        conn.close()


async def test_a_write_gets_in_while_a_long_import_runs_and_the_import_lands_whole(tmp_path):
    n = 1000
    path = tmp_path / "metaclaw.db"
    async with Database(path) as server:  # the server's store: created first, as `serve` would
        proc = start_import(path, n, chunk=25)
        try:
            await wait_for_tick(proc, n // 2 + 1)  # the import has written its first chunks
            start = time.perf_counter()
            async with server.transaction() as conn:
                await set_kv(conn, "written-during-import", 1)
                seen = (await (await conn.execute(
                    "SELECT COUNT(*) FROM skills s JOIN skill_versions v ON v.skill_id = s.id "
                    "AND v.version = s.current_version WHERE s.namespace = 'bulk'")).fetchone())[0]
            waited = time.perf_counter() - start
            # in before the import finished (it is all or nothing: none of it is visible yet) and soon
            assert seen == 0
            assert waited < 2.0, waited
            assert visible(path) == 0
            with pytest.raises(Conflict, match="another import into namespace 'bulk' is under way"):
                await SkillLibrary(server).import_docs([("x", doc(0))], 1, "bulk")
            with pytest.raises(Conflict, match="'bulk-skill-1' is being imported into namespace 'bulk'"):
                await SkillLibrary(server).add(doc(1), namespace="bulk")
            out, _ = await anyio.to_thread.run_sync(proc.communicate)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0
        assert f"imported {n}" in out
        assert visible(path) == n
        assert await server.get_kv("written-during-import") == 1
        assert await server.scalar("SELECT COUNT(*) FROM skills WHERE namespace = 'bulk'") == n
        hits = await server.fetchall("SELECT rowid FROM skills_fts WHERE skills_fts MATCH 'item777'")
        assert len(hits) == 1


def doc(i: int) -> SkillDoc:
    return SkillDoc(f"bulk-skill-{i}", f"Use when task {i} comes up.", f"1. Do item{i}.")


def rows(db_path: Path, sql: str) -> int:
    conn = sqlite3.connect(db_path)
    try:
        return conn.execute(sql).fetchone()[0]
    finally:
        conn.close()


async def test_sigkill_during_an_import_leaves_nothing_and_a_rerun_lands_whole(tmp_path):
    n = 1000
    path = tmp_path / "metaclaw.db"
    async with Database(path):
        pass
    proc = start_import(path, n, chunk=25)
    try:
        await wait_for_tick(proc, n // 2 + 400)  # 800 of the 1,000 skills written: 32 chunks committed
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert rows(path, "SELECT COUNT(*) FROM skills WHERE namespace = 'bulk'") >= 700  # chunks were committed
    assert visible(path) == 0                                                          # and none of it shows
    async with Database(path) as db:
        library = SkillLibrary(db)
        assert await library.list("bulk") == [] and await library.counts() == {}
        # the killed import's names are free again: the rerun imports every skill once
        report = await library.import_docs(((f"d{i}", doc(i)) for i in range(n)), n, "bulk", chunk_size=100)
        assert len(report.imported) == n
        assert len(await library.list("bulk")) == n
        assert await db.scalar("SELECT COUNT(*) FROM skills WHERE namespace = 'bulk'") == n
        assert await db.scalar("SELECT COUNT(*) FROM skills_fts") == n
        assert [s.slug for s in await library.search("item777", namespace="bulk")] == ["bulk-skill-777"]


async def test_cancelled_import_leaves_nothing_and_frees_its_names(tmp_path):
    n = 600
    async with Database(tmp_path / "metaclaw.db") as db:
        library = SkillLibrary(db)
        await library.add(SkillDoc("bulk-skill-3", "Use when task 3 came up before.", "1. Old text."), namespace="bulk")
        with anyio.CancelScope() as scope:
            await library.import_docs(((f"d{i}", doc(i)) for i in range(n)), n, "bulk", chunk_size=10,
                                      progress=lambda done, total: done >= total // 2 + 150 and scope.cancel())
        assert scope.cancelled_caught
        assert [s.slug for s in await library.list("bulk")] == ["bulk-skill-3"]
        assert [v.version for v in await library.versions((await library.get("bulk", "bulk-skill-3")).id)] == [1]
        assert await db.scalar("SELECT COUNT(*) FROM skills") == 1
        assert await db.scalar("SELECT COUNT(*) FROM skills_fts") == 1
        report = await library.import_docs(((f"d{i}", doc(i)) for i in range(n)), n, "bulk", chunk_size=50)
        assert len(report.imported) == n
        changed = await library.get("bulk", "bulk-skill-3")
        assert changed.version == 2 and changed.body == "1. Do item3."
        assert [s.slug for s in await library.search("item3", namespace="bulk")] == ["bulk-skill-3"]
        assert await library.search("old text", namespace="bulk") == []
