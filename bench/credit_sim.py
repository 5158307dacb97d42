"""Seeded simulation of credit: does retrieval learn which skills help?

A library of skills on a dozen topics, each skill with a hidden usefulness: helpful (+0.35 on
the reward of a turn it is injected into), neutral (0) or harmful (-0.45). Half start active,
half as candidates (as evolution would add them), at random. Each simulated turn picks a topic,
asks `fetch_skills` with a few of the topic's words (k=3), reports the turn with the
retrieval_id, and rates it: reward = sum of the injected skills' effects + noise (sd 0.3),
clipped to [-1, 1]. Promotions and retirements are applied every 10 turns, as the server's
background loop does every `credit_review_seconds`.

The same turns are replayed with relevance-only retrieval (no credit, no exploration, no
retirements) as the baseline. Everything runs through the real App on a real SQLite file.

    python bench/credit_sim.py                  # 2,000 turns, seed 7; PNG in bench/out/
    python bench/credit_sim.py --turns 500 --seed 3
    python bench/credit_sim.py --null --seeds 10   # ratings unrelated to the skills: what noise alone retires

With `--null` no skill has an effect and every rating is drawn uniformly from [-1, 1]: every
retirement for "reliably negative uplift" is a false one (candidates retired for showing nothing
after `credit_candidate_max_uses` are not: that rule says nothing about harm). It prints, over
`--seeds` worlds, how many skills were falsely retired and in how many runs any was.
"""
from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from metaclaw_mcp.app import App, open_app
from metaclaw_mcp.config import load_config
from metaclaw_mcp.models import Message
from metaclaw_mcp.skills.retrieval import build_query, make_retrieval_id
from metaclaw_mcp.skills.skillmd import SkillDoc

EFFECT = {"helpful": 0.35, "neutral": 0.0, "harmful": -0.45}
MIX = ("helpful",) * 4 + ("neutral",) * 3 + ("harmful",) * 3   # per topic of 10 skills
SYLLABLES = "ka ri to mu se la po ni ve du ga lo fi ne ta zu bo ce mi ra".split()
NS = "sim"


def pseudo_word(rng: random.Random) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(3))


@dataclass
class World:
    topics: list[list[str]]                     # each topic's words
    skills: list[tuple[SkillDoc, str, str]]     # (doc, hidden kind, initial status)
    turns: list[tuple[int, list[str], float]]   # (topic, query words, noise)


def make_world(seed: int, n_topics: int, n_turns: int, null: bool = False) -> World:
    rng = random.Random(seed)
    topics = [[pseudo_word(rng) for _ in range(12)] for _ in range(n_topics)]
    skills = []
    for t, words in enumerate(topics):
        kinds = list(MIX)
        rng.shuffle(kinds)
        for j, kind in enumerate(kinds):
            picked = rng.sample(words, 6)
            doc = SkillDoc(name=f"topic{t}-skill{j}", description=f"Use when working on {' '.join(picked[:3])}.",
                           body=f"1. Check {' '.join(picked[3:])}.\n2. Then {' '.join(rng.sample(words, 3))}.",
                           category="general")
            skills.append((doc, kind, rng.choice(("active", "candidate"))))
    turns = [(t, rng.sample(topics[t], 4), rng.uniform(-1.0, 1.0) if null else rng.gauss(0.0, 0.3))
             for t in (rng.randrange(n_topics) for _ in range(n_turns))]
    return World(topics, skills, turns)


@dataclass
class Run:
    rewards: list[float] = field(default_factory=list)
    helpful_share: list[float] = field(default_factory=list)   # per turn: helpful among injected
    retired: dict[str, list[int]] = field(default_factory=dict)  # kind -> uses at retirement
    harm_retired: int = 0      # retirements for a reliably negative uplift (false ones under --null)
    promoted: dict[str, int] = field(default_factory=dict)
    final_status: dict[str, dict[str, int]] = field(default_factory=dict)
    report: list[dict] = field(default_factory=list)  # credit per skill at the end


async def simulate(world: World, use_credit: bool, seed: int, review_every: int = 10, mode: str = "lexical",
                   null: bool = False) -> Run:
    with tempfile.TemporaryDirectory() as tmp:
        config = load_config(home=Path(tmp), load_starter_skills=False, retrieval_mode=mode,
                             retrieval_seed=seed)
        async with open_app(config) as app:
            kind_of: dict[str, str] = {}
            for doc, kind, status in world.skills:
                await app.library.add(doc, namespace=NS, status=status, source="sim")
                kind_of[doc.name] = kind
            run = Run(retired={k: [] for k in EFFECT}, promoted={k: 0 for k in EFFECT})
            for i, (topic, words, noise) in enumerate(world.turns):
                query = f"How do I handle {' '.join(words)}?"
                if use_credit:
                    fetched = await app.fetch_skills(query, k=3, namespace=NS)
                    slugs, retrieval_id = [s.slug for s in fetched.skills], fetched.retrieval_id
                else:
                    hits = await app.retriever.search(build_query(query), NS, k=3, use_credit=False,
                                                      use_experience=False)
                    slugs = [h.record.slug for h in hits]
                    retrieval_id = make_retrieval_id([(h.record.id, h.record.version) for h in hits])
                effect = 0.0 if null else sum(EFFECT[kind_of[s]] for s in slugs)
                reward = max(-1.0, min(1.0, effect + noise))
                report = await app.report_turn(f"sim-{i}", [Message(role="user", content=query)], "ok",
                                               retrieval_id=retrieval_id, namespace=NS)
                await app.rate_turn(report.turn_id, reward, source="env")
                run.rewards.append(reward)
                run.helpful_share.append(sum(kind_of[s] == "helpful" for s in slugs) / len(slugs) if slugs else 0.0)
                if use_credit and (i + 1) % review_every == 0:
                    await record_review(app, run, kind_of)
            if use_credit:
                await record_review(app, run, kind_of)
            run.report = await app.retriever.credit_report(NS)
            for s in await app.library.list(NS):
                run.final_status.setdefault(kind_of[s.slug], {}).setdefault(s.status, 0)
                run.final_status[kind_of[s.slug]][s.status] += 1
            return run


async def record_review(app: App, run: Run, kind_of: dict[str, str]) -> None:
    changes = await app.review_skills(NS)
    if not changes:
        return
    uses = {r["slug"]: r["uses"] for r in await app.retriever.credit_report(NS)}
    for c in changes:
        kind = kind_of[c["slug"]]
        if c["status"] == "retired":
            run.retired[kind].append(uses[c["slug"]])
            run.harm_retired += c["reason"].startswith("reliably negative")
        elif c["status"] == "active":
            run.promoted[kind] += 1


def window_table(learned: Run, baseline: Run, window: int) -> list[tuple[int, float, float, float, float]]:
    rows = []
    for end in range(window, len(learned.rewards) + 1, window):
        sl = slice(end - window, end)
        rows.append((end, statistics.fmean(learned.helpful_share[sl]), statistics.fmean(baseline.helpful_share[sl]),
                     statistics.fmean(learned.rewards[sl]), statistics.fmean(baseline.rewards[sl])))
    return rows


def plot(rows: list[tuple[int, float, float, float, float]], learned: Run, baseline: Run, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    ends = [r[0] for r in rows]
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(15, 4.2))
    ax1.plot(ends, [100 * r[1] for r in rows], marker="o", label="credit (default)")
    ax1.plot(ends, [100 * r[2] for r in rows], marker="s", label="relevance only")
    ax1.axhline(90, color="grey", linestyle=":", label="90% target")
    ax1.set(xlabel="turn", ylabel="helpful share of injected skills (%)", title="What gets injected", ylim=(0, 100))
    ax2.plot(ends, [r[3] for r in rows], marker="o", label="credit (default)")
    ax2.plot(ends, [r[4] for r in rows], marker="s", label="relevance only")
    ax2.set(xlabel="turn", ylabel="mean reward per turn (window)", title="Reward")
    ax3.plot(np.cumsum(learned.rewards), label="credit (default)")
    ax3.plot(np.cumsum(baseline.rewards), label="relevance only")
    ax3.set(xlabel="turn", ylabel="cumulative reward", title="Cumulative reward")
    for ax in (ax1, ax2, ax3):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


async def null_runs(args: argparse.Namespace) -> None:
    """Ratings unrelated to the skills, over several seeds: the false-retirement rate."""
    falsely, runs_with_any, skills = [], 0, 0
    for seed in range(args.seed, args.seed + args.seeds):
        world = make_world(seed, args.topics, args.turns, null=True)
        run = await simulate(world, True, seed, mode=args.mode, null=True)
        skills = len(world.skills)
        falsely.append(run.harm_retired)
        runs_with_any += run.harm_retired > 0
        print(f"seed {seed}: {run.harm_retired} of {skills} skills retired as reliably negative "
              f"(all retirements by kind: { {k: len(v) for k, v in run.retired.items()} }; promoted: {run.promoted})")
    print(f"\nnull ratings, {args.seeds} runs of {args.turns} turns, {skills} skills each: "
          f"{sum(falsely)} false retirements in all ({sum(falsely) / (args.seeds * skills):.4f} per skill per run); "
          f"runs with any: {runs_with_any}/{args.seeds}")


async def main(args: argparse.Namespace) -> None:
    if args.null:
        await null_runs(args)
        return
    world = make_world(args.seed, args.topics, args.turns)
    kinds = [k for _, k, _ in world.skills]
    print(f"library: {len(world.skills)} skills on {args.topics} topics "
          f"({kinds.count('helpful')} helpful, {kinds.count('neutral')} neutral, {kinds.count('harmful')} harmful; "
          f"{sum(s == 'active' for _, _, s in world.skills)} start active, the rest candidates); "
          f"{args.turns} turns, k=3, seed {args.seed}")
    t0 = time.perf_counter()
    learned = await simulate(world, True, args.seed, mode=args.mode)
    baseline = await simulate(world, False, args.seed, mode=args.mode)
    rows = window_table(learned, baseline, args.window)
    print(f"\n{'turns':>6}  {'helpful% credit':>15} {'helpful% relevance':>18}  {'reward credit':>13} {'reward relevance':>16}")
    for end, h_l, h_b, r_l, r_b in rows:
        print(f"{end:>6}  {100 * h_l:>15.1f} {100 * h_b:>18.1f}  {r_l:>13.3f} {r_b:>16.3f}")
    harmful_uses = learned.retired["harmful"]
    n_harmful = kinds.count("harmful")
    print(f"\ncumulative reward: credit {sum(learned.rewards):.1f}, relevance only {sum(baseline.rewards):.1f} "
          f"(+{sum(learned.rewards) - sum(baseline.rewards):.1f})")
    print(f"last {args.window} turns: {100 * rows[-1][1]:.1f}% of injected skills helpful (relevance only "
          f"{100 * rows[-1][2]:.1f}%)")
    print(f"harmful skills retired: {len(harmful_uses)}/{n_harmful}, after "
          f"{statistics.fmean(harmful_uses) if harmful_uses else float('nan'):.1f} uses on average "
          f"(max {max(harmful_uses, default=0)})")
    kind_of = {d.name: k for d, k, _ in world.skills}
    left = [r["uses"] for r in learned.report if kind_of[r["slug"]] == "harmful" and r["status"] != "retired"]
    if left:
        print(f"harmful skills not retired: {len(left)}, ranked out of the results after {statistics.fmean(left):.1f} "
              f"uses on average (max {max(left)}), too few to retire; all harmful: "
              f"{statistics.fmean(harmful_uses + left):.1f} uses on average")
    print(f"retired by kind: { {k: len(v) for k, v in learned.retired.items()} }; "
          f"candidates promoted by kind: {learned.promoted}")
    print(f"final status by kind: {learned.final_status}")
    out = Path(__file__).parent / "out" / "credit_sim.png"
    plot(rows, learned, baseline, out)
    print(f"plot: {out}  ({time.perf_counter() - t0:.0f}s)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=2000)
    parser.add_argument("--topics", type=int, default=12)
    parser.add_argument("--window", type=int, default=200)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--null", action="store_true", help="ratings unrelated to the skills (false retirements)")
    parser.add_argument("--seeds", type=int, default=5, help="with --null: worlds to run, from --seed on")
    parser.add_argument("--mode", choices=("lexical", "hybrid"), default="lexical",
                        help="the learned run's retrieval: lexical (experience compares requests by their words) "
                             "or hybrid (needs the [embeddings] extra: dense vectors, experience by vectors); the "
                             "baseline stays relevance-only")
    anyio.run(main, parser.parse_args())
