"""Dashboard page times at scale: 100k turns and 10k skills (by default), each page the median of
several requests through the dashboard's ASGI app (the app's time: the routes, the reads, the plots
and the templates; no network).

The database is filled fast with bulk SQL (seeded): skills with 1-3 versions (candidates citing
failed turns), turns over 90 days with their ratings (a judge on a third of them), three skill uses a
turn (a few skills used thousands of times, most rarely), evolution runs, training steps and
checkpoints. The credit sums the triggers keep are then rebuilt in one statement each, as migration 6
rebuilds them, and the FTS index by `SkillLibrary.reindex`.

    python bench/dashboard.py                          # 100k turns, 10k skills, 7 requests a page
    python bench/dashboard.py --turns 20000 --skills 2000 --repeat 5 --keep /tmp/dash-home
"""
from __future__ import annotations

import argparse
import json
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import anyio
import httpx

from metaclaw_mcp.app import open_app
from metaclaw_mcp.config import CATEGORIES, load_config
from metaclaw_mcp.dashboard.routes import PATH, Dashboard
from metaclaw_mcp.dashboard.serve import loopback_security

TARGET_MS = 300.0
SOURCES = ("user", "env", "agent", "judge")


def fill(db_path: Path, n_turns: int, n_skills: int, seed: int = 11) -> None:
    """Bulk-insert the synthetic history into the (migrated, empty) database at `db_path`."""
    rng = random.Random(seed)
    now = datetime.now(timezone.utc)
    con = sqlite3.connect(db_path, isolation_level=None)
    con.execute("PRAGMA synchronous=OFF")
    con.execute("BEGIN")
    turn_ids = [f"t-{i:08x}-{rng.getrandbits(40):010x}" for i in range(n_turns)]
    start = now - timedelta(days=90)
    stamps = sorted(start + timedelta(seconds=rng.uniform(0, 90 * 86400)) for _ in range(n_turns))
    turns, ratings, failures = [], [], []
    for i, (tid, at) in enumerate(zip(turn_ids, stamps)):
        ns = "default" if i % 10 else "other"
        rated = rng.random() < 0.85
        reward = max(-1.0, min(1.0, rng.gauss(0.1 + 0.3 * i / n_turns, 0.5))) if rated else None
        source = rng.choice(SOURCES) if rated else None
        state = ("pending" if not rated else rng.choice(("trained", "trained", "skipped", "rated")))
        created = at.isoformat(timespec="microseconds")
        rated_at = (at + timedelta(minutes=3)).isoformat(timespec="microseconds") if rated else None
        request = f"task {i}: fix the {rng.choice(CATEGORIES)} problem in module {rng.randrange(500)}"
        turns.append((tid, ns, f"s{i % 997}", json.dumps([{"role": "user", "content": request}]), request,
                      f"answer {i}", "model-x", "{}", f"h{i}", reward, source, state, created, rated_at))
        if rated:
            ratings.append((tid, source, reward, "wrong" if reward < -0.5 else None, rated_at))
            if source != "judge" and rng.random() < 0.33:
                ratings.append((tid, "judge", max(-1.0, min(1.0, reward + rng.gauss(0, 0.3))), None, rated_at))
            if reward < -0.5 and ns == "default":
                failures.append(tid)
    con.executemany("INSERT INTO turns(id, namespace, session_id, messages, request, response, model, metadata, "
                    "request_hash, reward, reward_source, train_state, created_at, rated_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", turns)
    con.executemany("INSERT INTO ratings(turn_id, source, score, feedback, created_at) VALUES (?, ?, ?, ?, ?)", ratings)
    skills, versions = [], []
    for k in range(1, n_skills + 1):
        status = rng.choices(("active", "candidate", "retired"), (7, 2, 1))[0]
        n_versions = rng.choice((1, 1, 1, 2, 3))
        created = (start + timedelta(seconds=rng.uniform(0, 90 * 86400))).isoformat(timespec="microseconds")
        skills.append((k, "default", f"skill-{k:05d}", status, n_versions, "retired by review" if status == "retired"
                       else None, created, created))
        for v in range(1, n_versions + 1):
            cites = rng.sample(failures, 3) if status == "candidate" and failures else []
            body = "\n".join(f"{s}. step {s} of skill {k}, version {v}: {rng.choice(CATEGORIES)}" for s in range(1, 6))
            versions.append((k, v, f"skill-{k:05d}", f"Use when task kind {k % 97} comes up (v{v}).", body,
                             rng.choice(CATEGORIES), "agent" if cites else "import", json.dumps(cites),
                             v - 1 or None, f"hash-{k}-{v}", created))
    con.executemany("INSERT INTO skills(id, namespace, slug, status, current_version, status_reason, created_at, "
                    "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", skills)
    con.executemany("INSERT INTO skill_versions(skill_id, version, name, description, body, category, source, "
                    "provenance, parent_version, content_hash, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    versions)
    current = {s[0]: s[4] for s in skills}
    weights = [1.0 / (k ** 1.1) for k in range(1, n_skills + 1)]   # a few skills used a lot, most rarely
    uses = []
    for i, tid in enumerate(turn_ids):
        if i % 10 == 0:
            continue   # "other" namespace turns use no "default" skill
        for rank, sid in enumerate(dict.fromkeys(rng.choices(range(1, n_skills + 1), weights, k=3))):
            uses.append((tid, sid, current[sid], rank, int(rank == 0), 0))
    # credited = 0 on insert (the credit trigger stays quiet); set below, then the sums rebuilt at once
    con.executemany("INSERT INTO skill_uses(turn_id, skill_id, version, rank, named, credited) "
                    "VALUES (?, ?, ?, ?, ?, ?)", uses)
    con.execute("UPDATE skill_uses SET credited = 1 WHERE named = 1")
    con.execute("DELETE FROM skill_stats")
    con.execute("INSERT INTO skill_stats(skill_id, version, uses, rated, reward_sum, reward_sq, gen) "
                "SELECT u.skill_id, u.version, COUNT(*), COUNT(t.reward), COALESCE(SUM(t.reward), 0), "
                "COALESCE(SUM(t.reward * t.reward), 0), 1 FROM skill_uses u JOIN turns t ON t.id = u.turn_id "
                "WHERE u.credited = 1 GROUP BY u.skill_id, u.version")
    con.execute("DELETE FROM reward_totals")
    con.execute("INSERT INTO reward_totals(namespace, rated, reward_sum, reward_sq, running_mean) "
                "SELECT namespace, COUNT(*), SUM(reward), SUM(reward * reward), AVG(reward) FROM turns "
                "WHERE reward IS NOT NULL GROUP BY namespace")
    con.execute("UPDATE change_counters SET value = value + 1")
    for e in range(500):
        read = rng.sample(failures, min(20, len(failures)))
        con.execute("INSERT INTO evolutions(namespace, mode, failures, proposals, accepted, rejected, llm, created_at) "
                    "VALUES ('default', 'agent', ?, ?, ?, ?, NULL, ?)",
                    (json.dumps(read), json.dumps([{"name": f"p-{e}-{j}", "description": "Use when ...", "body": "1. x"}
                                                   for j in range(3)]),
                     json.dumps([{"id": rng.randrange(1, n_skills), "slug": f"skill-{e:05d}", "version": 1,
                                  "status": "candidate", "proposed_name": f"p-{e}-0", "revised": False}]),
                     json.dumps([{"name": f"p-{e}-1", "reason": "exact duplicate of an existing skill"}]),
                     (start + timedelta(hours=4 * e)).isoformat()))
    for b in range(1, 1001):
        at = (start + timedelta(hours=2 * b)).isoformat()
        con.execute("INSERT INTO batches(id, namespace, kind, loss_fn, state, backend, created_at, finished_at) "
                    "VALUES (?, 'default', 'rl', 'importance_sampling', 'trained', 'tinker', ?, ?)", (b, at, at))
        con.execute("INSERT INTO train_steps(batch_id, step, loss, mean_reward, n_datums, created_at) "
                    "VALUES (?, ?, ?, ?, 32, ?)", (b, b, 2.0 / (1 + b / 100) + rng.uniform(0, 0.1),
                                                   rng.uniform(-0.2, 0.6), at))
        if b % 10 == 0:
            con.execute("INSERT INTO checkpoints(step, kind, path, backend, created_at) VALUES (?, 'sampler', ?, "
                        "'tinker', ?)", (b, f"tinker://run/sampler_weights/{b:06d}", at))
    con.execute("COMMIT")
    con.close()


async def measure(home: Path, repeat: int) -> list[tuple[str, float, float, int]]:
    """(page, first request ms, median ms of `repeat` more, response bytes) for each page."""
    config = load_config(home=home, load_starter_skills=False, retrieval_mode="lexical")
    async with open_app(config) as app:
        await app.library.reindex()
        con = sqlite3.connect(config.database)
        top = con.execute("SELECT skill_id FROM skill_stats ORDER BY uses DESC LIMIT 1").fetchone()[0]
        versions = con.execute("SELECT id FROM skills WHERE status = 'candidate' AND current_version = 3 "
                               "LIMIT 1").fetchone()[0]
        turn = con.execute("SELECT id FROM turns WHERE namespace = 'default' AND reward IS NOT NULL "
                           "ORDER BY rowid DESC LIMIT 1").fetchone()[0]
        con.close()
        pages = [("overview (90 days)", PATH), ("overview (365 days)", f"{PATH}?days=365"),
                 ("skills, by uses", f"{PATH}/skills"), ("skills, by interval, page 40", f"{PATH}/skills?sort=low&page=40"),
                 ("skills, filtered", f"{PATH}/skills?q=skill-01&status=active"),
                 ("skill, most used", f"{PATH}/skills/{top}"), ("skill, 3 versions + provenance", f"{PATH}/skills/{versions}"),
                 ("evolution", f"{PATH}/evolution"), ("training", f"{PATH}/training"), ("turn", f"{PATH}/turns/{turn}")]
        asgi = Dashboard(app, loopback_security("127.0.0.1", 8765), None).asgi()
        out = []
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=asgi), base_url="http://127.0.0.1:8765",
                                     timeout=120) as http:
            for name, url in pages:
                times = []
                for _ in range(repeat + 1):
                    t0 = time.perf_counter()
                    r = await http.get(url)
                    times.append((time.perf_counter() - t0) * 1000)
                    if r.status_code != 200:
                        raise SystemExit(f"{name}: {url} answered {r.status_code}: {r.text[:300]}")
                out.append((name, times[0], statistics.median(times[1:]), len(r.content)))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=100_000)
    parser.add_argument("--skills", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=7, help="requests per page after the first")
    parser.add_argument("--keep", type=Path, help="fill this home (kept) instead of a temporary one; reused if filled")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = args.keep or Path(tmp) / "home"
        config = load_config(home=home, load_starter_skills=False, retrieval_mode="lexical")
        fresh = not config.database.exists()

        async def migrate() -> None:
            async with open_app(config):
                pass
        anyio.run(migrate)
        if fresh:
            t0 = time.perf_counter()
            fill(config.database, args.turns, args.skills)
            print(f"filled {args.turns} turns and {args.skills} skills in {time.perf_counter() - t0:.1f} s "
                  f"({config.database.stat().st_size / 2**20:.0f} MiB)")
        rows = anyio.run(measure, home, args.repeat)
    print(f"\n{'page':34} {'first ms':>9} {'median ms':>10} {'KiB':>7}")
    for name, first, median, size in rows:
        flag = "" if median < TARGET_MS else "  over target"
        print(f"{name:34} {first:9.1f} {median:10.1f} {size / 1024:7.0f}{flag}")
    slowest = max(m for _, _, m, _ in rows)
    print(f"\nslowest median {slowest:.1f} ms (target: every page under {TARGET_MS:.0f} ms)")
    return 0 if slowest < TARGET_MS else 1


if __name__ == "__main__":
    sys.exit(main())
