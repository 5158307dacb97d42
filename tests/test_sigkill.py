"""SIGKILL matrix: kill the server while clients report and rate turns, over stdio and HTTP; after a
restart every write the server acknowledged is there, whole, and the database is sound.

(Imports killed midway are in test_store_import.py, training killed midway in test_crash.py.)
"""
from __future__ import annotations

import json
import os
import random
import select
import signal
import sqlite3
import time
from pathlib import Path

import anyio
import pytest

from mcp_servers import call, connect, served
from test_transport import raw_stdio


def report_args(n: int) -> dict:
    return {"session_id": f"s{n % 7}", "messages": [{"role": "user", "content": f"question {n} ü✓"}],
            "response": f"answer {n}", "idempotency_key": f"k{n}", "metadata": {"n": n}}


class Replies:
    """Every JSON-RPC reply on the server's stdout, whatever order they come in (requests run concurrently)."""

    def __init__(self, proc) -> None:  # noqa: ANN001 - a subprocess.Popen
        self.proc, self.buffer, self.seen = proc, b"", {}

    def next(self, pending: set[int], timeout: float) -> tuple[int, dict]:
        """The reply to one of `pending` (id, message); AssertionError after `timeout` seconds."""
        end = time.monotonic() + timeout
        while True:
            for rid in pending & self.seen.keys():
                return rid, self.seen.pop(rid)
            while b"\n" in self.buffer:
                line, self.buffer = self.buffer.split(b"\n", 1)
                message = json.loads(line)
                if "id" in message:
                    self.seen[message["id"]] = message
            if pending & self.seen.keys():
                continue
            left = end - time.monotonic()
            assert left > 0 and select.select([self.proc.stdout], [], [], left)[0], "no reply in time"
            chunk = os.read(self.proc.stdout.fileno(), 1 << 16)
            assert chunk, "the server closed its output"
            self.buffer += chunk


def check_acknowledged(home: Path, turns: dict[str, int], ratings: dict[str, float]) -> None:
    """Every acknowledged turn has its content, every acknowledged rating its score; nothing half-written."""
    con = sqlite3.connect(f"file:{home / 'metaclaw.db'}?mode=ro", uri=True, timeout=10)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = {r[0]: r for r in con.execute("SELECT id, messages, response, metadata FROM turns")}
        for turn_id, n in turns.items():
            assert turn_id in rows, f"acknowledged turn {turn_id} is gone"
            _, messages, response, metadata = rows[turn_id]
            assert json.loads(messages)[0]["content"] == f"question {n} ü✓" and response == f"answer {n}"
            assert json.loads(metadata) == {"n": n}
        scored = {r[0]: r[1] for r in con.execute("SELECT turn_id, score FROM ratings")}
        for turn_id, score in ratings.items():
            assert scored.get(turn_id) == score, f"acknowledged rating of {turn_id} is gone"
        # no turn without its content, no rating without its turn
        assert con.execute("SELECT COUNT(*) FROM turns WHERE messages IS NULL OR response IS NULL").fetchone()[0] == 0
        assert con.execute("SELECT COUNT(*) FROM ratings r LEFT JOIN turns t ON t.id = r.turn_id "
                           "WHERE t.id IS NULL").fetchone()[0] == 0
    finally:
        con.close()


@pytest.mark.parametrize("seed", [1, 2])
def test_sigkill_on_stdio_while_reporting_and_rating_loses_nothing_acknowledged(tmp_path, seed):
    home = tmp_path / "home"
    rng = random.Random(seed)
    kill_after = rng.randrange(20, 60)        # acknowledged writes before the kill, with more in flight
    turns: dict[str, int] = {}
    ratings: dict[str, float] = {}
    with raw_stdio(home) as session:
        session.start()
        pending: dict[int, tuple[str, int | str]] = {}
        next_id, acked = 1, 0
        for n in range(10):                   # a pipeline: ten requests in flight at any time
            session.request(next_id, "tools/call", {"name": "report_turn", "arguments": report_args(n)})
            pending[next_id] = ("report", n)
            next_id += 1
        n = 10
        replies = Replies(session.proc)
        while acked < kill_after:
            rid, reply = replies.next(set(pending), 30)
            assert not reply["result"].get("isError"), reply
            kind, what = pending.pop(rid)
            out = reply["result"]["structuredContent"]
            if kind == "report":
                turns[out["turn_id"]] = what   # type: ignore[assignment]
                session.request(next_id, "tools/call", {"name": "rate_turn", "arguments": {
                    "turn_id": out["turn_id"], "score": 0.5 if what % 2 else -0.5}})
                pending[next_id] = ("rate", out["turn_id"])
            else:
                ratings[str(what)] = out["reward"]
                session.request(next_id, "tools/call", {"name": "report_turn", "arguments": report_args(n)})
                pending[next_id] = ("report", n)
                n += 1
            next_id += 1
            acked += 1
        os.kill(session.proc.pid, signal.SIGKILL)
        session.proc.wait(10)
    check_acknowledged(home, turns, ratings)
    assert len(turns) >= 10 and ratings


@pytest.mark.anyio
async def test_sigkill_on_http_while_clients_report_and_rate_loses_nothing_acknowledged(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    turns: dict[str, int] = {}
    ratings: dict[str, float] = {}
    with served(home, "http") as (port, proc):
        async def client_loop(c: int) -> None:
            async with connect("http", home, port, "auto") as client:
                for i in range(1000):
                    n = c * 10_000 + i
                    err, out = await call(client, "report_turn", report_args(n))
                    if err:
                        return
                    turns[out["turn_id"]] = n
                    err, rated = await call(client, "rate_turn", {"turn_id": out["turn_id"], "score": 1.0})
                    if err:
                        return
                    ratings[out["turn_id"]] = rated["reward"]

        async def killer() -> None:
            while len(ratings) < 40:
                await anyio.sleep(0.01)
            os.kill(proc.pid, signal.SIGKILL)

        with anyio.fail_after(120):
            async with anyio.create_task_group() as tg:
                tg.start_soon(killer)
                for c in range(4):
                    tg.start_soon(_quietly, client_loop, c)
        proc.wait(10)
    check_acknowledged(home, turns, ratings)
    assert len(turns) >= 40
    # and the server starts again on the same database, serving the turns it acknowledged
    with served(home, "http") as (port, _):
        async with connect("http", home, port, "auto") as client:
            err, out = await call(client, "rate_turn", {"turn_id": next(iter(turns)), "score": -1.0})
            assert not err and out["reward"] == -1.0


async def _quietly(fn, *args) -> None:  # noqa: ANN001 - a client cut off by the kill just stops
    try:
        await fn(*args)
    except Exception:  # noqa: BLE001 - the connection dies with the server; what was acknowledged is checked
        pass
