"""The SQLite store on a real file: migrations, pragmas, transactions, kv."""
from __future__ import annotations

import sqlite3

import pytest

from metaclaw_mcp.store import Database, apply_migrations, set_kv
from metaclaw_mcp.store.migrations import MIGRATIONS

pytestmark = pytest.mark.anyio


@pytest.fixture
async def db(tmp_path):
    database = Database(tmp_path / "store" / "test.db")
    await database.open()
    try:
        yield database
    finally:
        await database.close()


def recorded(path) -> list[tuple[int, str]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT version, name FROM schema_migrations ORDER BY version").fetchall()
    finally:
        conn.close()


async def test_migrations_are_recorded(db):
    expected = sorted((number, name) for number, name, _ in MIGRATIONS)
    assert expected[0] == (1, "m0001_initial_schema")
    assert recorded(db.path) == expected
    assert await db.schema_version() == expected[-1][0]
    tables = {r[0] for r in await db.fetchall("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"turns", "ratings", "skills", "skill_versions", "skills_fts", "skill_uses", "evolutions", "kv"} <= tables


async def test_reopen_applies_nothing_new(tmp_path):
    path = tmp_path / "again.db"
    assert apply_migrations(path) == [name for _, name, _ in sorted(MIGRATIONS)]
    first = recorded(path)
    assert apply_migrations(path) == []
    database = Database(path)
    await database.open()
    await database.close()
    assert recorded(path) == first  # same rows, same applied_at count


def test_turn_request_is_filled_in_for_turns_stored_before_it(tmp_path, monkeypatch):
    """Migration 5 adds turns.request (what experience compares new queries with) and fills it in
    for the turns already there: the last user message, text parts joined, cut to 2,000 chars."""
    import json

    from metaclaw_mcp.store import db as db_module
    path = tmp_path / "old.db"
    monkeypatch.setattr(db_module, "MIGRATIONS", [m for m in MIGRATIONS if m[0] <= 4])
    apply_migrations(path)
    conn = sqlite3.connect(path)
    turns = {"t1": [{"role": "user", "content": "refund order 7"}, {"role": "assistant", "content": "done"}],
             "t2": [{"role": "user", "content": "first"},
                    {"role": "user", "content": [{"type": "text", "text": "cancel"}, {"type": "text", "text": "it"}]}],
             "t3": [{"role": "system", "content": "be brief"}],
             "t4": [{"role": "user", "content": "x" * 5000}]}
    turns.update({f"b{i}": [{"role": "user", "content": f"question {i}"}] for i in range(2500)})  # several batches
    turns["odd"] = {"role": "user", "content": "not a list"}   # unreadable rows get "", never a failed upgrade
    with conn:
        conn.executemany("INSERT INTO turns(id, namespace, session_id, messages, response, request_hash, created_at) "
                         "VALUES (?, 'default', 's', ?, 'r', 'h', '2026-01-01')",
                         [(tid, json.dumps(msgs)) for tid, msgs in turns.items()])
        conn.execute("INSERT INTO turns(id, namespace, session_id, messages, response, request_hash, created_at) "
                     "VALUES ('broken', 'default', 's', '[{not json', 'r', 'h', '2026-01-01')")
    conn.close()
    monkeypatch.setattr(db_module, "MIGRATIONS", MIGRATIONS)
    assert apply_migrations(path) == [name for number, name, _ in sorted(MIGRATIONS) if number > 4]
    conn = sqlite3.connect(path)
    got = dict(conn.execute("SELECT id, request FROM turns"))
    conn.close()
    assert {k: got.pop(k) for k in ("t1", "t2", "t3", "t4", "odd", "broken")} == {
        "t1": "refund order 7", "t2": "cancel\nit", "t3": "", "t4": "x" * 2000, "odd": "", "broken": ""}
    assert got == {f"b{i}": f"question {i}" for i in range(2500)}


async def test_pragmas(db):
    assert (await db.scalar("PRAGMA journal_mode")).lower() == "wal"
    assert await db.scalar("PRAGMA foreign_keys") == 1
    async with db.transaction() as conn:
        assert (await (await conn.execute("PRAGMA foreign_keys")).fetchone())[0] == 1
        assert (await (await conn.execute("PRAGMA journal_mode")).fetchone())[0].lower() == "wal"


async def test_foreign_keys_are_enforced(db):
    with pytest.raises(sqlite3.IntegrityError):
        async with db.transaction() as conn:
            await conn.execute("INSERT INTO ratings(turn_id, source, score, created_at) "
                               "VALUES ('no-such-turn', 'user', 1.0, 'now')")
    assert await db.scalar("SELECT COUNT(*) FROM ratings") == 0


async def test_transaction_rolls_back_on_error(db):
    with pytest.raises(RuntimeError, match="boom"):
        async with db.transaction() as conn:
            await set_kv(conn, "doomed", {"x": 1})
            await conn.execute("INSERT INTO checkpoints(step, kind, path, backend, created_at) "
                               "VALUES (1, 'state', '/tmp/x', 'export', 'now')")
            raise RuntimeError("boom")
    assert await db.get_kv("doomed") is None
    assert await db.scalar("SELECT COUNT(*) FROM checkpoints") == 0
    # the writer is usable again after the rollback
    async with db.transaction() as conn:
        await set_kv(conn, "kept", 1)
    assert await db.get_kv("kept") == 1


async def test_transaction_commits(db, tmp_path):
    async with db.transaction() as conn:
        await set_kv(conn, "committed", "yes")
    # visible to a fresh, independent connection: it is on disk
    conn = sqlite3.connect(db.path)
    try:
        assert conn.execute("SELECT value FROM kv WHERE key = 'committed'").fetchone() == ('"yes"',)
    finally:
        conn.close()


async def test_kv_round_trip(db):
    assert await db.get_kv("missing") is None
    assert await db.get_kv("missing", default={"d": 1}) == {"d": 1}
    value = {"count": 3, "names": ["a", "b"], "nested": {"ok": True, "pi": 3.5}, "text": "héllo"}
    async with db.transaction() as conn:
        await set_kv(conn, "k", value)
    assert await db.get_kv("k") == value
    async with db.transaction() as conn:
        await set_kv(conn, "k", [1, 2])
    assert await db.get_kv("k") == [1, 2]
    assert await db.scalar("SELECT COUNT(*) FROM kv WHERE key = 'k'") == 1


async def test_kv_survives_reopen(tmp_path):
    path = tmp_path / "kv.db"
    async with Database(path) as database:
        async with database.transaction() as conn:
            await set_kv(conn, "persist", {"n": 42})
    async with Database(path) as database:
        assert await database.get_kv("persist") == {"n": 42}


async def test_reader_is_read_only(db):
    with pytest.raises(sqlite3.OperationalError):
        await db.fetchall("INSERT INTO kv(key, value) VALUES ('x', '1')")


async def test_closed_database_refuses_work(tmp_path):
    database = Database(tmp_path / "closed.db")
    with pytest.raises(RuntimeError, match="not open"):
        async with database.transaction():
            pass
    with pytest.raises(RuntimeError, match="not open"):
        await database.fetchall("SELECT 1")
