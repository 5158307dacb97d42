"""Load over streamable HTTP: N concurrent MCP clients against `metaclaw-mcp serve --transport http`,
and the same clients against a one-tool echo server (bench/load_echo.py: same SDK, same transport
settings), in one run.

    python bench/load.py                          # 16 and 64 clients, 60 s each, per server
    python bench/load.py --clients 16 --seconds 15
    python bench/load.py --rounds 3               # medians over three rounds

Each metaclaw client loops fetch_skills -> report_turn (with the retrieval_id) -> rate_turn (a
user score in [-1, 1], feedback on failures) until `--seconds` have passed; each echo client
makes the same number of calls (three per loop) of its one tool. Every client is an `mcp.Client`
(`--mode`: the protocol era; auto picks 2026-07-28) with its own HTTP connection. Printed per
server: calls/s (all tools), p50 and p99 per tool in ms, errors (tool errors and exceptions);
then the ratios `report_turn` loop throughput / echo throughput (loops of three calls each,
i.e. calls/s over calls/s) and report_turn p99 / echo p99. The target is >= 0.8 and <= 1.5.

Afterwards the metaclaw server is stopped with SIGTERM (it must exit 0) and its database is read
with sqlite3, read-only: every turn_id report_turn acknowledged must be a row of `turns`, every
acknowledged rating a row of `ratings` (turn, source, score), and `PRAGMA integrity_check` must
say ok. "lost" counts what is missing.

The clients and the servers share this machine's cores (2 here): the figures are for the whole
machine, clients included; the server's own CPU per call is printed beside them (from
/proc/<pid>/stat), so is the clients'. Clients run in `--procs` worker processes (default 2),
each one asyncio loop: a single loop driving 64 clients spends about as much CPU as the server,
so one process would measure the client; more processes than cores only add switching.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CLI = str(Path(sys.executable).parent / "metaclaw-mcp")
WORDS = ("test parse date time zone offset python sql query index join cache retry timeout http api json csv "
         "schema migrate deploy docker log error trace debug profile memory leak thread async lock queue batch "
         "stream file path encode unicode regex split merge sort search rank token model prompt review refactor "
         "rename type check lint format commit branch rebase release version package install build").split()
TOOLS = {"metaclaw": ("fetch_skills", "report_turn", "rate_turn"), "echo": ("echo",)}
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---- one worker process: C clients on one asyncio loop ----

def turn_args(rng: random.Random, client: int, i: int) -> tuple[str, list[dict[str, str]], str]:
    query = " ".join(rng.choices(WORDS, k=10))
    messages = [{"role": "user", "content": f"Please help: {query}. " + " ".join(rng.choices(WORDS, k=40))}]
    return query, messages, "Here is what I did: " + " ".join(rng.choices(WORDS, k=120))


async def run_client(target: str, url: str, client: int, seed: int, mode: str, go: asyncio.Event,
                     deadline: list[float], out: dict[str, Any]) -> None:
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    rng = random.Random(seed * 100_003 + client)
    lat: dict[str, list[float]] = out["lat"]
    errors: dict[str, int] = out["errors"]

    async def call(c: Client, tool: str, args: dict[str, Any], timed: bool) -> Any:
        t0 = time.perf_counter()
        try:
            r = await c.call_tool(tool, args)
        except Exception as exc:  # a transport failure or timeout: an error, the loop goes on
            errors[tool] = errors.get(tool, 0) + 1
            if len(out["samples"]) < 5:
                out["samples"].append(f"{tool}: {type(exc).__name__}: {exc}"[:300])
            return None
        if timed:
            lat[tool].append((time.perf_counter() - t0) * 1000)
        if r.is_error:
            errors[tool] = errors.get(tool, 0) + 1
            if len(out["samples"]) < 5:
                out["samples"].append(f"{tool}: " + "".join(getattr(x, "text", "") for x in r.content)[:300])
            return None
        return r.structured_content

    async def loop_once(c: Client, i: int, timed: bool) -> None:
        query, messages, response = turn_args(rng, client, i)
        if target == "echo":
            text = json.dumps(messages) + response
            for _ in range(3):
                await call(c, "echo", {"text": text}, timed)
            return
        fetched = await call(c, "fetch_skills", {"query": query, "session_id": f"load-{client}"}, timed)
        report: dict[str, Any] = {"session_id": f"load-{client}", "messages": messages, "response": response}
        if fetched is not None:
            report["retrieval_id"] = fetched["retrieval_id"]
        reported = await call(c, "report_turn", report, timed)
        if reported is None:
            return
        out["turns"].append(reported["turn_id"])
        score = round(rng.uniform(-1, 1), 2) if timed else 0.9  # warm-up: a turn the trainer may distil
        rate: dict[str, Any] = {"turn_id": reported["turn_id"], "score": score, "source": "user"}
        if score < -0.5:
            rate["feedback"] = "missed the point: " + " ".join(rng.choices(WORDS, k=8))
        if await call(c, "rate_turn", rate, timed) is not None:
            out["ratings"].append([reported["turn_id"], score])

    async with httpx2.AsyncClient(timeout=60) as http:
        async with Client(streamable_http_client(url, http_client=http), mode=mode, read_timeout_seconds=60) as c:
            await loop_once(c, -1, timed=False)  # warm-up: connection, schemas cached by the client
            out["ready"] += 1
            await go.wait()
            i = 0
            while time.perf_counter() < deadline[0]:
                await loop_once(c, i, timed=True)
                i += 1
            out["loops"] += i


async def worker(target: str, url: str, first: int, count: int, seconds: float, seed: int, mode: str,
                 out_path: str) -> None:
    """`count` clients (ids from `first`): connect, print `ready`, wait for `go` on stdin, run, write JSON."""
    out: dict[str, Any] = {"lat": {t: [] for t in TOOLS[target]}, "errors": {}, "samples": [], "turns": [],
                           "ratings": [], "ready": 0, "loops": 0}
    go = asyncio.Event()
    deadline = [float("inf")]
    tasks = [asyncio.create_task(run_client(target, url, first + k, seed, mode, go, deadline, out))
             for k in range(count)]
    while out["ready"] < count:
        await asyncio.sleep(0.02)
        for t in tasks:
            if t.done() and t.exception() is not None:
                raise t.exception()  # type: ignore[misc]
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    out["t_start"] = time.perf_counter()
    deadline[0] = out["t_start"] + seconds
    go.set()
    await asyncio.gather(*tasks)
    out["t_end"] = time.perf_counter()
    usage1 = resource.getrusage(resource.RUSAGE_SELF)
    out["cpu_s"] = (usage1.ru_utime + usage1.ru_stime) - (usage0.ru_utime + usage0.ru_stime)
    Path(out_path).write_text(json.dumps(out))


# ---- the coordinator ----

sys.path.insert(0, str(HERE.parent / "tests"))
from mcp_servers import free_port, wait_port  # noqa: E402 - the tests' helpers for starting servers


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, all cores, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields) - idle) / CLK_TCK, sum(fields) / CLK_TCK


def settle(pid: int, timeout: float = 90.0) -> None:
    """Wait until the server is idle (below a fifth of a core over half a second): its one-time work
    after the first turns (the trainer's first look at the backlog, which loads a tokenizer) is then
    done before the clock starts."""
    end = time.time() + timeout
    while time.time() < end:
        before = cpu_seconds(pid)
        time.sleep(0.5)
        if cpu_seconds(pid) - before < 0.1:
            return
    print(f"the server was still busy after {timeout:.0f} s of waiting; measuring anyway", file=sys.stderr)


def pct(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


class Served:
    """A server process on a free port; `stop()` sends SIGTERM and returns its exit status."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path):
        self.name, self.port = name, free_port()
        self.log = open(log, "wb")
        self.proc = subprocess.Popen([*argv, "--port", str(self.port)], env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        wait_port(self.port, self.proc, timeout=60.0)
        self.pid = self.proc.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()
        return self.proc.returncode


def drive(target: str, server: Served, clients: int, seconds: float, procs: int, seed: int, mode: str,
          tmp: Path, profile: str | None = None) -> dict[str, Any]:
    """Run `clients` clients in `procs` worker processes against `server`; the merged outcome. With
    `profile`, py-spy samples the server's CPU (every thread) while the load runs, into that file."""
    procs = max(1, min(procs, clients))
    shares = [clients // procs + (1 if k < clients % procs else 0) for k in range(procs)]
    workers, paths, first = [], [], 0
    for k, n in enumerate(shares):
        path = tmp / f"{target}-{clients}-{seed}-{k}.json"
        paths.append(path)
        workers.append(subprocess.Popen(
            [sys.executable, __file__, "--worker", target, server.url, str(first), str(n), str(seconds), str(seed),
             mode, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
        first += n
    for w in workers:
        line = w.stdout.readline()  # type: ignore[union-attr]
        if line.strip() != "ready":
            for other in workers:
                other.kill()
            raise RuntimeError(f"a {target} worker did not get ready (exit {w.wait()})")
    settle(server.pid)
    spy = None
    if profile:
        fmt = "flamegraph" if profile.endswith(".svg") else "raw"
        spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(server.pid),
                                "--rate", "250", "--duration", str(round(seconds)), "--format", fmt, "--output",
                                profile], stdout=subprocess.DEVNULL)
        time.sleep(0.5)  # attached
    cpu0, load0, busy0 = cpu_seconds(server.pid), os.getloadavg()[0], machine_busy()[0]
    for w in workers:
        w.stdin.write("go\n")  # type: ignore[union-attr]
        w.stdin.flush()  # type: ignore[union-attr]
    for w in workers:
        if w.wait() != 0:
            raise RuntimeError(f"a {target} worker failed (exit {w.returncode})")
    server_cpu = cpu_seconds(server.pid) - cpu0
    machine_cpu = machine_busy()[0] - busy0
    if spy is not None:
        spy.wait(60)
    parts = [json.loads(p.read_text()) for p in paths]
    merged: dict[str, Any] = {"lat": {t: [] for t in TOOLS[target]}, "errors": {}, "samples": [], "turns": [],
                              "ratings": [], "loops": 0, "client_cpu_s": 0.0}
    for part in parts:
        for tool, ms in part["lat"].items():
            merged["lat"][tool] += ms
        for tool, n in part["errors"].items():
            merged["errors"][tool] = merged["errors"].get(tool, 0) + n
        merged["samples"] += part["samples"]
        merged["turns"] += part["turns"]
        merged["ratings"] += part["ratings"]
        merged["loops"] += part["loops"]
        merged["client_cpu_s"] += part["cpu_s"]
    merged["elapsed"] = max(p["t_end"] for p in parts) - min(p["t_start"] for p in parts)
    merged["calls"] = sum(len(v) for v in merged["lat"].values())
    merged["server_cpu_s"] = server_cpu
    merged["load1_before"] = load0
    merged["machine_cpu_s"] = machine_cpu
    return merged


def check_database(db: Path, turns: list[str], ratings: list[list[Any]]) -> dict[str, Any]:
    """Acknowledged turns and ratings missing from the database, and its integrity check."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        stored_turns = {r[0] for r in con.execute("SELECT id FROM turns")}
        stored_ratings = {(r[0], round(r[1], 6)) for r in con.execute(
            "SELECT turn_id, score FROM ratings WHERE source = 'user'")}
        integrity = [r[0] for r in con.execute("PRAGMA integrity_check")]
    finally:
        con.close()
    return {"turns_acked": len(turns), "turns_lost": sum(1 for t in turns if t not in stored_turns),
            "ratings_acked": len(ratings),
            "ratings_lost": sum(1 for t, s in ratings if (t, round(s, 6)) not in stored_ratings),
            "integrity": "ok" if integrity == ["ok"] else "; ".join(integrity[:5])}


def server_env(home: Path, retrieval: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("METACLAW_", "TINKER_"))}
    # HF_HUB_OFFLINE: this machine has no network; the trainer's tokenizer look-up fails at once instead of retrying.
    return env | {"METACLAW_HOME": str(home), "METACLAW_LOG_LEVEL": "WARNING", "METACLAW_RETRIEVAL_MODE": retrieval,
                  "HF_HUB_OFFLINE": "1"}


def summary(name: str, run: dict[str, Any]) -> dict[str, Any]:
    calls_s = run["calls"] / run["elapsed"]
    row = {"server": name, "calls_s": calls_s, "loops_s": run["loops"] / run["elapsed"],
           "errors": sum(run["errors"].values()),
           "server_cpu_ms": 1000 * run["server_cpu_s"] / max(run["calls"], 1),
           "client_cpu_ms": 1000 * run["client_cpu_s"] / max(run["calls"], 1),
           "cpu_busy": (run["server_cpu_s"] + run["client_cpu_s"]) / run["elapsed"],
           "machine_busy": run["machine_cpu_s"] / run["elapsed"], "load1": run["load1_before"], "tools": {}}
    for tool, ms in run["lat"].items():
        row["tools"][tool] = {"n": len(ms), "p50": pct(ms, 50), "p99": pct(ms, 99),
                              "errors": run["errors"].get(tool, 0)}
    return row


def print_round(clients: int, meta: dict[str, Any], echo: dict[str, Any], db: dict[str, Any]) -> None:
    print(f"\n{clients} clients, {meta['elapsed']:.1f} s (metaclaw) / {echo['elapsed']:.1f} s (echo)")
    for name, run in (("metaclaw", meta), ("echo", echo)):
        s = summary(name, run)
        print(f"  {name:8} {s['calls_s']:7.1f} calls/s  errors {s['errors']}  server CPU {s['server_cpu_ms']:.2f} ms/call"
              f"  clients' CPU {s['client_cpu_ms']:.2f} ms/call  cores busy {s['cpu_busy']:.2f}"
              f" (machine {s['machine_busy']:.2f})  load1 {s['load1']:.2f}")
        if s["machine_busy"] - s["cpu_busy"] > 0.15:
            print(f"    DISTURBED: other processes used {s['machine_busy'] - s['cpu_busy']:.2f} cores meanwhile")
        for tool, t in s["tools"].items():
            print(f"    {tool:13} n {t['n']:6}  p50 {t['p50']:7.1f} ms  p99 {t['p99']:7.1f} ms  errors {t['errors']}")
        for sample in run["samples"][:3]:
            print(f"    e.g. {sample}")
    r = ratios(meta, echo)
    print(f"  report_turn throughput / echo: {r['throughput']:.2f} (target >= 0.8)   "
          f"report_turn p99 / echo p99: {r['p99']:.2f} (target <= 1.5)")
    print(f"  database: {db['turns_acked']} turns acknowledged, {db['turns_lost']} lost; {db['ratings_acked']} ratings "
          f"acknowledged, {db['ratings_lost']} lost; integrity_check {db['integrity']}; exit {db['exit']}")


def ratios(meta: dict[str, Any], echo: dict[str, Any]) -> dict[str, float]:
    # Each metaclaw loop is one report_turn (plus its fetch and rate); each echo loop the same three calls.
    return {"throughput": (meta["loops"] / meta["elapsed"]) / (echo["loops"] / echo["elapsed"]),
            "p99": pct(meta["lat"]["report_turn"], 99) / pct(echo["lat"]["echo"], 99)}


def main() -> None:
    parser = argparse.ArgumentParser(description="streamable-HTTP load: metaclaw-mcp against a one-tool echo server")
    parser.add_argument("--clients", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--seconds", type=float, default=60.0, help="how long each load runs (default 60)")
    parser.add_argument("--procs", type=int, default=2, help="client worker processes (default 2)")
    parser.add_argument("--rounds", type=int, default=1, help="repeat each measurement; medians are printed")
    parser.add_argument("--mode", default="auto", help="mcp.Client mode: auto (2026-07-28) or legacy (initialize)")
    parser.add_argument("--retrieval", default="lexical", choices=["auto", "lexical", "hybrid"],
                        help="the server's retrieval_mode (lexical: the core install)")
    parser.add_argument("--only", choices=["metaclaw", "echo"], help="load one server only")
    parser.add_argument("--profile", metavar="FILE",
                        help="sample each server with `py-spy record` (pip install py-spy) during each load; "
                             "FILE.svg: flame graphs, else collapsed stacks (FILE-<server>-<clients>-<round>.ext); "
                             "the figures are then a little below the server's best")
    parser.add_argument("--json", metavar="FILE", help="also write every round's figures here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (server logs, databases)")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="mcload-"))
    rows: list[dict[str, Any]] = []
    echo = None
    try:
        if args.only != "metaclaw":
            echo = Served("echo", [sys.executable, str(HERE / "load_echo.py")], server_env(tmp / "echo-home", "lexical"),
                          tmp / "echo.log")
        for clients in args.clients:
            for rnd in range(args.rounds):
                seed = 1000 * clients + rnd
                e = drive("echo", echo, clients, args.seconds, args.procs, seed, args.mode, tmp,
                          profile=args.profile and args.profile.replace(".", f"-echo-{clients}-{rnd}.", 1)) if echo else None
                m = db = None
                if args.only != "echo":
                    home = tmp / f"home-{clients}-{rnd}"
                    meta = Served("metaclaw", [CLI, "serve", "--transport", "http"], server_env(home, args.retrieval),
                                  tmp / f"serve-{clients}-{rnd}.log")
                    try:
                        m = drive("metaclaw", meta, clients, args.seconds, args.procs, seed, args.mode, tmp,
                                  profile=args.profile and args.profile.replace(".", f"-metaclaw-{clients}-{rnd}.", 1))
                    finally:
                        code = meta.stop()
                    db = check_database(home / "metaclaw.db", m["turns"], m["ratings"]) | {"exit": code}
                    if code != 0:
                        print((tmp / f"serve-{clients}-{rnd}.log").read_text()[-3000:], file=sys.stderr)
                if m and e:
                    print_round(clients, m, e, db)  # type: ignore[arg-type]
                else:
                    for name, run in (("metaclaw", m), ("echo", e)):
                        if run:
                            s = summary(name, run)
                            print(f"\n{clients} clients {name}: {s['calls_s']:.1f} calls/s, errors {s['errors']}, "
                                  f"server CPU {s['server_cpu_ms']:.2f} ms/call, cores busy {s['cpu_busy']:.2f} (machine {s['machine_busy']:.2f}), " +
                                  ", ".join(f"{t} p50 {v['p50']:.1f} p99 {v['p99']:.1f}" for t, v in s["tools"].items()))
                    if db:
                        print(f"  database: {db}")
                rows.append({"clients": clients, "round": rnd, "metaclaw": m and summary("metaclaw", m),
                             "echo": e and summary("echo", e), "ratios": ratios(m, e) if m and e else None,
                             "database": db})
                sys.stdout.flush()
        if args.rounds > 1:
            print_medians(rows, args.clients)
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1))
    finally:
        if echo:
            echo.stop()
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def print_medians(rows: list[dict[str, Any]], counts: list[int]) -> None:
    print("\nmedians over rounds")
    for clients in counts:
        mine = [r for r in rows if r["clients"] == clients]
        for name in ("metaclaw", "echo"):
            runs = [r[name] for r in mine if r[name]]
            if not runs:
                continue
            tools = " ".join(f"{t} p50 {statistics.median(x['tools'][t]['p50'] for x in runs):.1f} "
                             f"p99 {statistics.median(x['tools'][t]['p99'] for x in runs):.1f}" for t in runs[0]["tools"])
            print(f"  {clients:3} clients {name:8} {statistics.median(x['calls_s'] for x in runs):7.1f} calls/s  "
                  f"errors {sum(x['errors'] for x in runs)}  {tools}")
        rs = [r["ratios"] for r in mine if r["ratios"]]
        if rs:
            print(f"  {clients:3} clients ratios: throughput {statistics.median(x['throughput'] for x in rs):.2f}, "
                  f"p99 {statistics.median(x['p99'] for x in rs):.2f}")
        dbs = [r["database"] for r in mine if r["database"]]
        if dbs:
            print(f"  {clients:3} clients lost: {sum(d['turns_lost'] for d in dbs)} turns, "
                  f"{sum(d['ratings_lost'] for d in dbs)} ratings; integrity "
                  f"{', '.join(sorted({d['integrity'] for d in dbs}))}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        target, url, first, count, seconds, seed, mode, out_path = sys.argv[2:10]
        asyncio.run(worker(target, url, int(first), int(count), float(seconds), int(seed), mode, out_path))
    else:
        main()
