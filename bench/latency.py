"""Latency of fetch_skills and report_turn through real MCP clients, at 1k and 10k skills.

For each library size it fills a fresh METACLAW_HOME with synthetic skills (seeded), starts
`metaclaw-mcp serve` over stdio and over streamable HTTP, and times N calls of each tool end
to end (client call to structured answer). Prints p50 and p99 in milliseconds.

    python bench/latency.py                 # 1k and 10k skills, 300 calls per tool
    python bench/latency.py --sizes 1000 --calls 100
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio
from mcp import Client, StdioServerParameters

from metaclaw_mcp.app import open_app
from metaclaw_mcp.config import CATEGORIES, load_config
from metaclaw_mcp.skills.skillmd import SkillDoc

CLI = str(Path(sys.executable).parent / "metaclaw-mcp")
WORDS = ("test parse date time zone offset python sql query index join cache retry timeout http api json csv "
         "schema migrate deploy docker kubernetes log error trace debug profile memory leak thread async lock "
         "queue batch stream file path encode unicode regex split merge sort search rank token model prompt "
         "review refactor rename type check lint format commit branch rebase release version pin package "
         "install build compile link bundle cache invalidate secret key auth oauth session cookie header "
         "report chart plot axis label unit summary table column null duplicate outlier mean median").split()


def synthetic_skill(rng: random.Random, i: int) -> SkillDoc:
    topic = rng.sample(WORDS, 3)
    steps = "\n".join(f"{n}. {' '.join(rng.choices(WORDS, k=12))}." for n in range(1, 6))
    return SkillDoc(name=f"{'-'.join(topic)}-{i}", description=f"Use when {' '.join(rng.choices(WORDS, k=18))}.",
                    body=f"# {' '.join(topic).title()}\n\n{steps}\n\nAnti-pattern: {' '.join(rng.choices(WORDS, k=10))}.",
                    category=rng.choice(CATEGORIES))


async def build_library(home: Path, n: int, seed: int = 7) -> None:
    """The skills, and (when the servers under test use vectors) their vectors: the steady state."""
    rng = random.Random(seed)
    config = load_config(home=home, load_starter_skills=False, retrieval_mode=MODE["value"])
    async with open_app(config) as app:
        async with app.db.transaction() as db:
            for i in range(n):
                await app.library.insert(db, synthetic_skill(rng, i), "default", "active", "import", [])
        await app.retriever.ensure_embeddings("default")


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]


async def time_calls(client: Client, calls: int, seed: int = 11) -> dict[str, list[float]]:
    rng = random.Random(seed)
    queries = [" ".join(rng.choices(WORDS, k=8)) for _ in range(calls)]
    out: dict[str, list[float]] = {"fetch_skills": [], "report_turn": []}
    for _ in range(20):  # warm-up: imports, caches, connection
        await client.call_tool("fetch_skills", {"query": queries[0]})
    for i, q in enumerate(queries):
        t0 = time.perf_counter()
        r = await client.call_tool("fetch_skills", {"query": q, "k": 5})
        out["fetch_skills"].append((time.perf_counter() - t0) * 1000)
        assert not r.is_error, r.content
        rid = r.structured_content["retrieval_id"]
        t0 = time.perf_counter()
        r = await client.call_tool("report_turn", {
            "session_id": f"bench-{i % 10}", "messages": [{"role": "user", "content": q}],
            "response": "answer " * 50, "retrieval_id": rid})
        out["report_turn"].append((time.perf_counter() - t0) * 1000)
        assert not r.is_error, r.content
    return out


MODE = {"value": "auto"}  # retrieval_mode of the servers under test


def env_for(home: Path, mode: str | None = None, **extra: str) -> dict[str, str]:
    """The environment of a server under test: this home, quiet logs, no starter skills, the given
    retrieval mode (default: --mode), the whole library kept; `extra` adds METACLAW_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("METACLAW_", "TINKER_"))}
    return env | {"METACLAW_HOME": str(home), "METACLAW_LOG_LEVEL": "WARNING", "METACLAW_LOAD_STARTER_SKILLS": "false",
                  "METACLAW_RETRIEVAL_MODE": mode or MODE["value"],
                  "METACLAW_MAX_ACTIVE_SKILLS": "1000000"} | extra   # a benchmark library, not one to trim


async def over_stdio(home: Path, calls: int) -> dict[str, list[float]]:
    params = StdioServerParameters(command=CLI, args=["serve"], env=env_for(home))
    async with Client(params, read_timeout_seconds=60) as client:
        return await time_calls(client, calls)


async def over_http(home: Path, calls: int) -> dict[str, list[float]]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([CLI, "serve", "--transport", "http", "--port", str(port)], env=env_for(home),
                            stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            await anyio.sleep(0.05)
        async with Client(f"http://127.0.0.1:{port}/mcp", read_timeout_seconds=60) as client:
            return await time_calls(client, calls)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)


async def main() -> None:
    parser = argparse.ArgumentParser(description="fetch_skills / report_turn latency over stdio and HTTP")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--mode", default="lexical", choices=["auto", "lexical", "hybrid"],
                        help="retrieval_mode (lexical: the core install; hybrid needs the [embeddings] extra)")
    args = parser.parse_args()
    MODE["value"] = args.mode
    rows = []
    for n in args.sizes:
        home = Path(tempfile.mkdtemp(prefix=f"mcbench-{n}-"))
        try:
            t0 = time.perf_counter()
            await build_library(home, n)
            print(f"built {n} skills in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
            for transport, run in (("stdio", over_stdio), ("http", over_http)):
                timings = await run(home, args.calls)
                for tool, ms in timings.items():
                    rows.append((n, transport, tool, statistics.median(ms), pct(ms, 99), len(ms)))
        finally:
            shutil.rmtree(home, ignore_errors=True)
    print(f"\nretrieval_mode={args.mode}")
    print(f"{'skills':>7} {'transport':>9} {'tool':>13} {'p50 ms':>8} {'p99 ms':>8} {'calls':>6}")
    for n, transport, tool, p50, p99, count in rows:
        print(f"{n:>7} {transport:>9} {tool:>13} {p50:>8.2f} {p99:>8.2f} {count:>6}")


if __name__ == "__main__":
    anyio.run(main)
