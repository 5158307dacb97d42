"""A write that is cancelled, or that meets another process's write lock, on a real SQLite file.

The other process is stood in for by a second sqlite3 connection holding BEGIN IMMEDIATE: to
SQLite it is the same thing (a CLI import holding the write lock).
"""
from __future__ import annotations

import random
import sqlite3
import time

import anyio
import pytest

from metaclaw_mcp.errors import Busy, MetaClawError
from metaclaw_mcp.store import Database, set_kv

pytestmark = pytest.mark.anyio


@pytest.fixture
async def db(tmp_path):
    database = Database(tmp_path / "store.db", busy_timeout=5)
    await database.open()
    try:
        yield database
    finally:
        await database.close()


def holder(path) -> sqlite3.Connection:
    """Another connection that takes the write lock now (as `skills import` in another process would)."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=0)
    conn.execute("BEGIN IMMEDIATE")
    return conn


def lock_is_free(path) -> bool:
    conn = sqlite3.connect(path, isolation_level=None, timeout=1)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        conn.close()


def kv_keys(path, prefix: str) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return [r[0] for r in conn.execute("SELECT key FROM kv WHERE key LIKE ? ORDER BY key", (prefix + "%",))]
    finally:
        conn.close()


async def test_write_cancelled_while_another_process_holds_the_lock_leaves_the_writer_clean(db):
    other = holder(db.path)
    start = time.perf_counter()
    with anyio.move_on_after(0.3) as scope:
        async with db.transaction() as conn:
            await set_kv(conn, "abandoned", 1)
    assert scope.cancelled_caught
    assert time.perf_counter() - start < 1.0  # the cancelled caller is not kept waiting for the lock
    other.execute("ROLLBACK")
    other.close()
    await anyio.sleep(0.1)  # time for a BEGIN left running on the writer's thread to get the lock
    # the abandoned write holds no lock and left no transaction open: other writers and the next write go on
    assert lock_is_free(db.path)
    async with db.transaction() as conn:
        await set_kv(conn, "next", 2)
    assert kv_keys(db.path, "") == ["next"]


async def test_cancellation_at_any_point_of_a_write_leaves_all_or_nothing(db):
    """Cancel writes of three rows after random delays (landing in BEGIN, an INSERT or COMMIT):
    each lands whole or not at all, and the writer keeps working."""
    rng = random.Random(7)
    cancelled = committed = 0
    for i in range(150):
        with anyio.move_on_after(rng.uniform(0, 0.004)) as scope:
            async with db.transaction() as conn:
                for j in range(3):
                    await conn.execute("INSERT INTO kv(key, value) VALUES (?, '1')", (f"w{i:03d}-{j}",))
        cancelled += scope.cancelled_caught
        committed += not scope.cancelled_caught
    assert cancelled and committed
    keys = kv_keys(db.path, "w")
    per_write = {k.split("-")[0]: 0 for k in keys}
    for k in keys:
        per_write[k.split("-")[0]] += 1
    assert set(per_write.values()) <= {3}, per_write
    assert len(per_write) >= committed  # a write whose COMMIT ran before the cancellation arrived counts too
    assert lock_is_free(db.path)
    async with db.transaction() as conn:
        await set_kv(conn, "after", 1)
    assert kv_keys(db.path, "after") == ["after"]


async def test_busy_database_is_a_clear_retryable_error(tmp_path):
    async with Database(tmp_path / "busy.db", busy_timeout=0.3) as db:
        other = holder(db.path)
        start = time.perf_counter()
        with pytest.raises(Busy) as exc:
            async with db.transaction() as conn:
                await set_kv(conn, "first-try", 1)
        assert 0.3 <= time.perf_counter() - start < 2.0
        assert isinstance(exc.value, MetaClawError)  # tool handlers answer it as a tool error, with this text
        assert str(exc.value) == "the database is busy (another process holds the write lock); retry in a moment"

        async def release_soon() -> None:
            await anyio.sleep(0.1)
            other.execute("ROLLBACK")

        async with anyio.create_task_group() as tg:  # a retry meeting a lock let go of within the timeout waits
            tg.start_soon(release_soon)
            async with db.transaction() as conn:
                await set_kv(conn, "first-try", 1)
        other.close()
        assert kv_keys(db.path, "") == ["first-try"]


async def test_through_a_client_a_report_timed_out_or_busy_is_clear_and_the_server_keeps_writing(app):
    """What a client sees while `skills import` in another process holds the write lock."""
    from mcp import Client

    from mcp_servers import call
    from metaclaw_mcp.server import build_server

    turn = {"session_id": "s1", "messages": [{"role": "user", "content": "What is 2 + 2?"}], "response": "4"}
    app.db.busy_timeout = 0.5
    async with Client(build_server(app)) as client:
        other = holder(app.db.path)
        with pytest.raises(Exception):  # the client gives up first: its request is cancelled on the server
            await client.call_tool("report_turn", turn, read_timeout_seconds=0.2)
        err, text = await call(client, "report_turn", turn)  # one that waits out the busy timeout
        assert err and "the database is busy (another process holds the write lock); retry in a moment" in text
        other.execute("ROLLBACK")
        other.close()
        await anyio.sleep(0.1)
        err, rep = await call(client, "report_turn", turn)
        assert not err, rep
        assert lock_is_free(app.db.path)
        err, rep = await call(client, "rate_turn", {"turn_id": rep["turn_id"], "score": 1.0})
        assert not err, rep
