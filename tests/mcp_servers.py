"""Start the real `metaclaw-mcp` console script and connect real MCP clients to it."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
from mcp import Client, StdioServerParameters
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client

CLI = str(Path(sys.executable).parent / "metaclaw-mcp")


def server_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("METACLAW_", "TINKER_"))}
    env["METACLAW_HOME"] = str(home)
    env.update(extra)
    return env


def stdio_params(home: Path, **extra: str) -> StdioServerParameters:
    return StdioServerParameters(command=CLI, args=["serve"], env=server_env(home, **extra))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"server did not listen on {port} within {timeout}s")


@contextlib.contextmanager
def served(home: Path, transport: str, *args: str, **extra: str) -> Iterator[tuple[int, subprocess.Popen]]:
    """`metaclaw-mcp serve --transport T --port P` in the background; yields (port, process)."""
    port = free_port()
    log = open(home.parent / f"serve-{transport}-{port}.log", "wb")
    proc = subprocess.Popen([CLI, "serve", "--transport", transport, "--port", str(port), *args],
                            env=server_env(home, **extra), stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_port(port, proc)
        yield port, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        log.close()


def connect(transport: str, home: Path, port: int | None, mode: str, token: str | None = None, **kwargs: Any) -> Client:
    """An mcp.Client over the named transport, in the given protocol era."""
    if transport == "stdio":
        return Client(stdio_params(home), mode=mode, read_timeout_seconds=60, **kwargs)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if transport == "http":
        http = httpx2.AsyncClient(headers=headers, timeout=60)
        return Client(streamable_http_client(f"http://127.0.0.1:{port}/mcp", http_client=http), mode=mode,
                      read_timeout_seconds=60, **kwargs)
    return Client(sse_client(f"http://127.0.0.1:{port}/sse", headers=headers), mode=mode, read_timeout_seconds=60,
                  **kwargs)


async def call(client: Client, tool: str, args: dict[str, Any]) -> tuple[bool, Any]:
    """(is_error, structured content, or the error text)."""
    r = await client.call_tool(tool, args)
    if r.is_error:
        return True, "".join(getattr(c, "text", "") for c in r.content)
    return False, r.structured_content


def table_counts(db: Path) -> dict[str, int]:
    """Rows in every table that holds acknowledged data, read straight from the SQLite file."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return {t: con.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                for t in ("turns", "ratings", "skills", "skill_versions", "skill_uses", "evolutions")}
    finally:
        con.close()


def turn_row(home: Path, turn_id: str) -> dict:
    """One stored turn, every column, read straight from the SQLite file (read-only)."""
    con = sqlite3.connect(f"file:{home / 'metaclaw.db'}?mode=ro", uri=True)
    con.row_factory = sqlite3.Row
    try:
        return dict(con.execute("SELECT * FROM turns WHERE id = ?", (turn_id,)).fetchone())
    finally:
        con.close()


def cli_json(home: Path, *args: str) -> Any:
    out = subprocess.run([CLI, *args], env=server_env(home), capture_output=True, text=True, timeout=60, check=True)
    return json.loads(out.stdout)
