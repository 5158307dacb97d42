"""The transports as a process sees them: signals, Host/Origin checks, and stdin that is not clean JSON."""
from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from metaclaw_mcp.transport import repair_line
from mcp_servers import CLI, call, connect, free_port, served, server_env

QUERY = "write unit tests for a date parser"
INIT = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
    "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}}


def retrieval_logged(home: Path, retrieval_id: str) -> bool:
    con = sqlite3.connect(f"file:{home / 'metaclaw.db'}?mode=ro", uri=True, timeout=10)
    try:
        return con.execute("SELECT 1 FROM retrievals WHERE id = ?", (retrieval_id,)).fetchone() is not None
    finally:
        con.close()


def vectors_settled(status: dict[str, Any]) -> bool:
    """Whether retrieval's encoder is done loading (it loads in a thread of its own after start)."""
    r = status["retrieval"]
    return "encoder" not in r or r.get("vectors_ready") or "vectors_error" in r


class RawStdio:
    """`metaclaw-mcp serve` on pipes, spoken to one JSON-RPC line at a time."""

    def __init__(self, home: Path):
        home.mkdir(parents=True, exist_ok=True)
        self.log = open(home.parent / "serve-stdio.log", "wb")
        self.proc = subprocess.Popen([CLI, "serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
                                     env=server_env(home))
        self._buffer = b""

    def send(self, line: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + b"\n")
        self.proc.stdin.flush()

    def request(self, id_: int, method: str, params: dict[str, Any] | None = None) -> None:
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": id_, "method": method}
        if params is not None:
            message["params"] = params
        self.send(json.dumps(message).encode())

    def reply(self, id_: int, timeout: float) -> dict[str, Any] | None:
        """The reply to request `id_` within `timeout` seconds, or None."""
        assert self.proc.stdout is not None
        end = time.monotonic() + timeout
        while True:
            while b"\n" in self._buffer:
                line, self._buffer = self._buffer.split(b"\n", 1)
                message = json.loads(line)
                if message.get("id") == id_:
                    return message
            left = end - time.monotonic()
            if left <= 0 or not select.select([self.proc.stdout], [], [], left)[0]:
                return None
            chunk = os.read(self.proc.stdout.fileno(), 1 << 16)
            if not chunk:
                return None
            self._buffer += chunk

    def start(self) -> None:
        """Handshake, then wait for retrieval's encoder to finish loading."""
        self.request(0, "initialize", INIT["params"])
        assert self.reply(0, 60) is not None, "no reply to initialize"
        self.send(b'{"jsonrpc": "2.0", "method": "notifications/initialized"}')
        for n in range(1, 600):
            self.request(10_000 + n, "resources/read", {"uri": "metaclaw://status"})
            reply = self.reply(10_000 + n, 30)
            assert reply is not None and "result" in reply, reply
            if vectors_settled(json.loads(reply["result"]["contents"][0]["text"])):
                return
            time.sleep(0.1)
        raise AssertionError("retrieval's encoder never finished loading")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        for stream in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                stream.close()
        self.log.close()


@contextlib.contextmanager
def raw_stdio(home: Path) -> Iterator[RawStdio]:
    session = RawStdio(home)
    try:
        yield session
    finally:
        session.close()


def sigterm_and_wait(proc: subprocess.Popen, timeout: float = 15) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
        raise AssertionError(f"the server was still running {timeout}s after SIGTERM") from None


# ---- SIGTERM: the app closes (buffered rows written) and the process exits 0 ----

def test_sigterm_on_stdio_closes_the_app_and_exits_0(tmp_path):
    home = tmp_path / "home"
    with raw_stdio(home) as session:
        session.start()
        for attempt in range(3):  # the log is written each second: SIGTERM must find the row still buffered
            session.request(attempt + 1, "tools/call", {"name": "fetch_skills",
                                                        "arguments": {"query": f"{QUERY} {attempt}"}})
            reply = session.reply(attempt + 1, 30)
            assert reply is not None and not reply["result"]["isError"], reply
            retrieval_id = reply["result"]["structuredContent"]["retrieval_id"]
            if not retrieval_logged(home, retrieval_id):
                break
        started = time.monotonic()
        code = sigterm_and_wait(session.proc)  # stdin stays open: the signal alone ends the session
        assert code == 0, f"exit {code}"
        assert time.monotonic() - started < 10
    assert retrieval_logged(home, retrieval_id)


@pytest.mark.anyio
@pytest.mark.parametrize("transport", ["http", "sse"])
async def test_sigterm_on_http_and_sse_closes_the_app_and_exits_0(tmp_path, transport):
    home = tmp_path / "home"
    with served(home, transport) as (port, proc):
        async with connect(transport, home, port, "legacy") as client:  # its event stream stays open
            with anyio.fail_after(60):
                while not vectors_settled(json.loads((await client.read_resource("metaclaw://status")).contents[0].text)):
                    await anyio.sleep(0.1)
            for attempt in range(3):
                err, out = await call(client, "fetch_skills", {"query": f"{QUERY} {attempt}"})
                assert not err, out
                if not retrieval_logged(home, out["retrieval_id"]):
                    break
            started = time.monotonic()
            code = await anyio.to_thread.run_sync(sigterm_and_wait, proc)
            assert code == 0, f"exit {code}"
            assert time.monotonic() - started < 10
            assert retrieval_logged(home, out["retrieval_id"])


# ---- Host and Origin on a loopback address other than 127.0.0.1 ----

@contextlib.contextmanager
def served_on(home: Path, transport: str, host: str) -> Iterator[int]:
    port = free_port()
    log = open(home.parent / f"serve-{transport}-{host}.log", "wb")
    proc = subprocess.Popen([CLI, "serve", "--transport", transport, "--host", host, "--port", str(port)],
                            env=server_env(home), stdout=log, stderr=subprocess.STDOUT)
    try:
        end = time.time() + 30
        while True:
            assert proc.poll() is None, f"server exited with {proc.returncode}"
            with socket.socket() as s:
                if s.connect_ex((host, port)) == 0:
                    break
            assert time.time() < end, "server did not listen"
            time.sleep(0.05)
        yield port
    finally:
        if proc.poll() is None:
            sigterm_and_wait(proc)
        log.close()


def initialize_status(url: str, **headers: str) -> int:
    r = httpx.post(url, json=INIT, timeout=30, headers={
        "Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-06-18", **headers})
    return r.status_code


def sse_status(url: str, **headers: str) -> int:
    with httpx.stream("GET", url, timeout=30, headers={"Accept": "text/event-stream", **headers}) as r:
        return r.status_code


@pytest.mark.anyio
@pytest.mark.parametrize("transport", ["http", "sse"])
async def test_dns_rebinding_is_refused_on_any_loopback_address(tmp_path, transport):
    """127.0.0.2 is loopback (no token needed), so a page from another site must not get through."""
    home = tmp_path / "home"
    home.mkdir()
    host = "127.0.0.2"
    with served_on(home, transport, host) as port:
        path = "/mcp" if transport == "http" else "/sse"
        url = f"http://{host}:{port}{path}"
        probe = initialize_status if transport == "http" else sse_status
        evil = "http://evil.example"
        statuses = await anyio.to_thread.run_sync(lambda: (
            probe(url, Host=f"evil.example:{port}"),
            probe(url, Host=f"evil.example:{port}", Origin=evil),
            probe(url, Origin=evil),
            probe(url, Origin=f"http://{host}:{port}"),
            probe(url)))
        assert statuses == (421, 421, 403, 200, 200)
        if transport == "http":
            async with connect_to(url) as client:  # the server's own name works through a real client
                err, out = await call(client, "fetch_skills", {"query": QUERY})
                assert not err and out["skills"], out


def connect_to(url: str) -> Client:
    return Client(streamable_http_client(url, http_client=httpx2.AsyncClient(timeout=60)), read_timeout_seconds=60)


# ---- stdin that strict JSON refuses ----

def test_lone_surrogate_in_a_stdio_request_is_answered_at_once(tmp_path):
    with raw_stdio(tmp_path / "home") as session:
        session.start()
        # the JSON escape of a lone high surrogate: strict parsers refuse the whole line
        session.send(b'{"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "fetch_skills", '
                     b'"arguments": {"query": "write unit tests \\ud800 for a date parser"}}}')
        reply = session.reply(7, 1.0)
        assert reply is not None, "no reply within a second"
        assert not reply["result"]["isError"] and reply["result"]["structuredContent"]["skills"], reply
        session.request(8, "ping")  # and the session goes on
        assert session.reply(8, 5) == {"jsonrpc": "2.0", "id": 8, "result": {}}


def test_repair_line_replaces_only_lone_surrogates():
    assert json.loads(repair_line(b'{"q": "a\\ud800b", "\\udfff": 1}\n')) == {"q": "a\ufffdb", "\ufffd": 1}
    assert repair_line(b'{"q": "a\\ud800b"}\n').endswith(b"\n")
    for unchanged in (b'{"q": "\\ud83d\\ude00"}',  # a whole pair: already valid
                      b'{"q": "\\\\ud800"}',  # an escaped backslash, then text
                      b'{"q": "\\ud800", bad',  # not JSON at all: left for the SDK to refuse
                      b'{"q": NaN, "r": "\\ud800"}',  # nor is NaN
                      b'{"jsonrpc": "2.0", "id": 1, "method": "ping"}'):
        assert repair_line(unchanged) == unchanged


# ---- connections that never finish a request ----

@pytest.mark.anyio
async def test_unfinished_requests_are_closed_and_others_still_served(tmp_path):
    home = tmp_path / "home"
    with served(home, "http", METACLAW_HTTP_REQUEST_TIMEOUT_SECONDS="1") as (port, _):
        stalled = []
        for n in range(40):  # some send nothing, some half their headers, some half a body
            s = socket.create_connection(("127.0.0.1", port))
            if n % 3 == 1:
                s.sendall(b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: appl" % port)
            elif n % 3 == 2:
                s.sendall(b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
                          b"Content-Length: 100\r\n\r\n{\"jsonrpc\"" % port)
            stalled.append(s)
        try:
            async with connect("http", home, port, "auto") as client:  # served meanwhile
                err, out = await call(client, "fetch_skills", {"query": QUERY})
                assert not err, out

            def closed_by_server(s: socket.socket) -> bool:
                s.settimeout(5)
                try:
                    return s.recv(1024) == b""
                except TimeoutError:
                    return False
            started = time.monotonic()
            assert all(await anyio.to_thread.run_sync(lambda: [closed_by_server(s) for s in stalled]))
            assert time.monotonic() - started < 5
        finally:
            for s in stalled:
                s.close()
