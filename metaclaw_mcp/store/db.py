"""The SQLite store: one writer, one reader connection, numbered migrations.

The writer is two connections that never write at once (one lock): `transaction()`'s, whose
statements are awaited one by one, and `write()`'s, which runs a whole transaction in one trip to
its thread (the hot writes: a reported turn, a rating), so the lock is not held across trips round
a busy event loop. WAL lets the reader work while the writer commits. `synchronous=FULL` makes
every commit durable before the tool that made it answers, so an acknowledged write survives a
crash (process or power).

A write waits for another process's write lock (a CLI import, a second server) in short polls
here, not in SQLite's busy handler on the writer's thread, so a caller that gives up (a client's
timeout cancels the tool) leaves at once and the connection is never left inside a transaction.
Past the busy timeout the write fails with `errors.Busy`, which is safe to retry.
"""
from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
import anyio

from ..errors import Busy
from .migrations import MIGRATIONS

PRAGMAS = ("PRAGMA journal_mode=WAL", "PRAGMA foreign_keys=ON", "PRAGMA synchronous=FULL",
           "PRAGMA temp_store=MEMORY")
BUSY_TIMEOUT_S = 10.0
# The writer's own busy handler waits this long per attempt (ms): a cancelled write waits at most
# this for the attempt in flight. Between attempts `Database._begin` sleeps at most POLL_MAX_S, so
# a lock another process lets go of for a few tens of milliseconds is taken.
WRITER_ATTEMPT_MS = 5
POLL_MAX_S = 0.004
BUSY_MESSAGE = "the database is busy (another process holds the write lock); retry in a moment"

T = TypeVar("T")
_LOCKED = object()   # what a `write()` attempt returns when another process holds the write lock


def is_busy(exc: BaseException) -> bool:
    """True for SQLite's SQLITE_BUSY and SQLITE_LOCKED (any extended code)."""
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    return "database is locked" in str(exc) or "is busy" in str(exc)


def utcnow() -> str:
    """A sortable UTC timestamp with microseconds, e.g. 2026-11-25T15:04:05.123456+00:00."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def dumps(value: Any) -> str:
    """Compact JSON as stored (UTF-8 text, no NaN or infinity: ValueError for those)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def apply_migrations(path: Path, busy_timeout: float = BUSY_TIMEOUT_S) -> list[str]:
    """Bring the database at `path` to the newest schema; return the names applied now.

    `errors.Busy` when another process holds the write lock past `busy_timeout` seconds."""
    try:
        return _apply_migrations(Path(path), busy_timeout)
    except sqlite3.OperationalError as exc:
        if is_busy(exc):
            raise Busy(BUSY_MESSAGE) from exc
        raise


def _apply_migrations(path: Path, busy_timeout: float) -> list[str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, isolation_level=None, timeout=busy_timeout)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA foreign_keys=OFF")  # schema changes may rebuild tables
        db.execute("CREATE TABLE IF NOT EXISTS schema_migrations "
                   "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)")
        done = {row[0] for row in db.execute("SELECT version FROM schema_migrations")}
        applied = []
        for number, name, fn in sorted(MIGRATIONS):
            if number in done:
                continue
            db.execute("BEGIN IMMEDIATE")
            try:
                fn(db)
                db.execute("INSERT INTO schema_migrations VALUES (?, ?, ?)", (number, name, utcnow()))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            applied.append(name)
        return applied
    finally:
        db.close()


class Database:
    """Async access to the store. Writes go through `transaction()`, one at a time.

    `busy_timeout` (seconds) is how long a read or a write waits for another process's lock
    before it fails with `errors.Busy`."""

    def __init__(self, path: Path, busy_timeout: float = BUSY_TIMEOUT_S):
        self.path = Path(path)
        self.busy_timeout = float(busy_timeout)
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._direct: sqlite3.Connection | None = None   # write()'s connection, used on one thread at a time
        self._write_lock = anyio.Lock()
        self._direct_thread = anyio.CapacityLimiter(1)
        # Free: taken without a trip round the event loop (each read waits for its thread anyway);
        # measured 0.2 ms less per fetch_skills at 10k skills, which makes several reads.
        self._read_lock = anyio.Lock(fast_acquire=True)

    async def open(self) -> Database:
        """Apply pending migrations and open the writer and reader connections; Busy when another process
        holds the lock past the timeout."""
        await anyio.to_thread.run_sync(apply_migrations, self.path, self.busy_timeout)
        self._writer = await self._connect(WRITER_ATTEMPT_MS)
        self._direct = await anyio.to_thread.run_sync(self._connect_direct, limiter=self._direct_thread)
        self._reader = await self._connect(round(self.busy_timeout * 1000))
        await self._reader.execute("PRAGMA query_only=ON")
        return self

    async def _connect(self, busy_ms: int) -> aiosqlite.Connection:
        conn = await aiosqlite.connect(self.path, isolation_level=None)
        conn.row_factory = aiosqlite.Row
        for pragma in (*PRAGMAS, f"PRAGMA busy_timeout={int(busy_ms)}"):
            await conn.execute(pragma)
        return conn

    def _connect_direct(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        for pragma in (*PRAGMAS, f"PRAGMA busy_timeout={WRITER_ATTEMPT_MS}"):
            conn.execute(pragma)
        return conn

    @property
    def is_open(self) -> bool:
        """True between `open` and `close`."""
        return self._writer is not None

    async def close(self) -> None:
        """Close every connection (after a write under way)."""
        for conn in (self._reader, self._writer):
            if conn is not None:
                await conn.close()
        self._reader = self._writer = None
        if self._direct is not None:
            async with self._write_lock:   # after a write() under way
                direct, self._direct = self._direct, None
                await anyio.to_thread.run_sync(direct.close, limiter=self._direct_thread)

    async def __aenter__(self) -> Database:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """One write transaction: commits on normal exit, rolls back on any exception.

        Cancellation anywhere (waiting for the lock, during BEGIN, a statement or COMMIT) leaves
        the writer clean: what was begun is rolled back, a COMMIT under way finishes. Raises
        `errors.Busy` when another process keeps the write lock past `busy_timeout`, or SQLite
        reports the database busy or locked inside the transaction; nothing is written then."""
        if self._writer is None:
            raise RuntimeError("database is not open")
        async with self._write_lock:
            await self._begin()
            try:
                yield self._writer
                with anyio.CancelScope(shield=True):
                    await self._writer.execute("COMMIT")
            except BaseException as exc:   # the body or COMMIT failed, or the caller was cancelled
                with anyio.CancelScope(shield=True):
                    await self._abort()
                if is_busy(exc):
                    raise Busy(BUSY_MESSAGE) from exc
                raise

    async def _begin(self) -> None:
        """BEGIN IMMEDIATE, polling for another process's write lock until `busy_timeout`."""
        assert self._writer is not None
        deadline = anyio.current_time() + self.busy_timeout
        delay = 0.0005
        try:
            while True:
                try:
                    await self._writer.execute("BEGIN IMMEDIATE")
                    return
                except sqlite3.OperationalError as exc:
                    if not is_busy(exc):
                        raise
                if anyio.current_time() >= deadline:
                    raise Busy(BUSY_MESSAGE)
                await anyio.sleep(delay)
                delay = min(delay * 2, POLL_MAX_S)
        except BaseException:
            # Cancelled while BEGIN runs on the writer's thread, it may still succeed there:
            # roll back after it (the thread runs calls in order).
            with anyio.CancelScope(shield=True):
                await self._abort()
            raise

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """One write transaction run whole on the writer's thread: BEGIN IMMEDIATE, `fn(connection)`,
        COMMIT, in one trip; returns what `fn` returned.

        `fn` is plain sqlite3 code (no awaits; rows are `sqlite3.Row`) and raises to roll back: its
        exception comes out here. The write lock is held for the SQL and the commit alone, which is
        what makes this the path for frequent small writes (`transaction()` makes one trip round the
        event loop per statement). Same guarantees as `transaction()`: committed (synchronous=FULL)
        before this returns; `errors.Busy` when another process keeps the write lock past
        `busy_timeout`, or SQLite reports the database busy or locked inside; a cancelled caller
        leaves the writer clean (nothing is begun while it waits, and the attempt under way runs to
        its end, committed or rolled back, before the cancellation is delivered)."""
        async with self._write_lock:
            if self._direct is None:
                raise RuntimeError("database is not open")
            deadline = anyio.current_time() + self.busy_timeout
            delay = 0.0005
            while True:
                try:   # not abandoned on cancellation: the thread's attempt always finishes first
                    result = await anyio.to_thread.run_sync(self._attempt, fn, limiter=self._direct_thread)
                except sqlite3.OperationalError as exc:
                    if is_busy(exc):
                        raise Busy(BUSY_MESSAGE) from exc
                    raise
                if result is not _LOCKED:
                    return result  # type: ignore[return-value]
                if anyio.current_time() >= deadline:
                    raise Busy(BUSY_MESSAGE)
                await anyio.sleep(delay)
                delay = min(delay * 2, POLL_MAX_S)

    def _attempt(self, fn: Callable[[sqlite3.Connection], T]) -> T | object:
        """On the writer's thread: the whole transaction, or `_LOCKED` when BEGIN finds the lock taken."""
        conn = self._direct
        assert conn is not None
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if is_busy(exc):
                return _LOCKED
            raise
        try:
            result = fn(conn)
            conn.execute("COMMIT")
            return result
        except BaseException:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                if conn.in_transaction:   # ROLLBACK itself failed: a fresh connection is the only clean writer
                    conn.close()
                    self._direct = self._connect_direct()
            raise

    async def _abort(self) -> None:
        """Roll back the writer's open transaction, if any; runs after every call already queued."""
        assert self._writer is not None
        try:
            await self._writer.execute("ROLLBACK")
        except sqlite3.OperationalError as exc:
            if "no transaction is active" not in str(exc) and self._writer.in_transaction:
                # ROLLBACK itself failed: a fresh connection is the only clean writer left.
                await self._writer.close()
                self._writer = await self._connect(WRITER_ATTEMPT_MS)

    async def fetchall(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[sqlite3.Row]:
        """Rows of one read on the read-only connection; `errors.Busy` past `busy_timeout`."""
        if self._reader is None:
            raise RuntimeError("database is not open")
        async with self._read_lock:
            try:
                return list(await self._reader.execute_fetchall(sql, params))
            except sqlite3.OperationalError as exc:
                if is_busy(exc):
                    raise Busy(BUSY_MESSAGE) from exc
                raise

    async def fetchone(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> sqlite3.Row | None:
        """The first row of a read, or None."""
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    async def scalar(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> Any:
        """The first column of the first row of a read, or None."""
        row = await self.fetchone(sql, params)
        return None if row is None else row[0]

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """One statement over `rows`, in one transaction (all or nothing)."""
        async with self.transaction() as db:
            await db.executemany(sql, rows)

    async def get_kv(self, key: str, default: Any = None) -> Any:
        """A JSON value of the `kv` table, or `default`."""
        raw = await self.scalar("SELECT value FROM kv WHERE key = ?", (key,))
        return default if raw is None else json.loads(raw)

    async def schema_version(self) -> int:
        """The newest migration applied (0 for an empty file)."""
        return int(await self.scalar("SELECT COALESCE(MAX(version), 0) FROM schema_migrations") or 0)


async def set_kv(db: aiosqlite.Connection, key: str, value: Any) -> None:
    """Inside a transaction: store a small JSON value under `key`."""
    await db.execute("INSERT INTO kv(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                     (key, dumps(value)))
