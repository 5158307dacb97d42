"""What the dashboard shows, read from the store: pure reads, each returning dataclasses.

Every read takes the `App` (its database, library, turn log and retriever) and a namespace the
caller was already allowed to see (routes.py checks that); nothing here writes. Days are UTC
calendar days (`YYYY-MM-DD`, the first ten characters of the stored ISO timestamps); rewards and
scores are in [-1, 1]; a mean over nothing is None.
"""
from __future__ import annotations

import difflib
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from ..errors import NotFound
from ..messages import content_text
from ..skills.library import SkillRecord, SkillVersion

if TYPE_CHECKING:
    from ..app import App

SOURCES = ("user", "env", "agent", "judge")
STATUSES = ("active", "candidate", "retired")
Z95 = 1.96                        # half-width of a 95% normal interval, in standard errors
PAGE_SIZE = 100                   # rows of the skills table per page
USES_SHOWN = 50                   # turns listed on a skill's page
PROVENANCE_SHOWN = 200            # provenance turns listed on a skill's page
EVOLUTIONS_SHOWN = 30             # evolution runs per page
SCATTER_POINTS = 400              # judge/explicit pairs drawn (the agreement figures use them all)


def cutoff(days: int, now: datetime | None = None) -> str:
    """The first day (`YYYY-MM-DD`, UTC) of a window of `days` whole days ending today."""
    now = now or datetime.now(timezone.utc)
    return (now - timedelta(days=days - 1)).date().isoformat()


def day_range(first: str, last: str) -> list[str]:
    """Every day from `first` to `last` inclusive (both `YYYY-MM-DD`), so that days without turns
    are drawn as zeros rather than skipped."""
    a, b = datetime.fromisoformat(first).date(), datetime.fromisoformat(last).date()
    return [(a + timedelta(days=i)).isoformat() for i in range((b - a).days + 1)]


# ---- namespaces ----

# The distinct namespaces of a table by seeks along an index that leads with the namespace (one seek per
# namespace rather than a scan of every row).
DISTINCT_NAMESPACES = ("WITH RECURSIVE ns(name) AS (SELECT MIN(namespace) FROM {table} UNION ALL "
                       "SELECT (SELECT MIN(namespace) FROM {table} WHERE namespace > ns.name) FROM ns "
                       "WHERE ns.name IS NOT NULL) SELECT name FROM ns WHERE name IS NOT NULL")


async def namespaces(app: App) -> list[str]:
    """Every namespace with skills or turns, sorted ("default" always among them)."""
    found = {"default"}
    for table in ("skills", "turns"):
        found |= {r[0] for r in await app.db.fetchall(DISTINCT_NAMESPACES.format(table=table))}
    return sorted(found)


# ---- overview ----

@dataclass
class Day:
    """One day of a namespace's activity: the turns reported that day, of those rated, their mean
    fused reward, and the ratings those turns got by source (count and mean score)."""
    day: str
    turns: int = 0
    rated: int = 0
    reward: float | None = None
    ratings: dict[str, int] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)

    @property
    def ratings_total(self) -> int:
        """Ratings of that day's turns, every source together."""
        return sum(self.ratings.values())


@dataclass
class Agreement:
    """How the LLM judge's scores compare with explicit ones (user, else environment) on the latest
    turns both rated (at most AGREEMENT_TURNS): `n` such turns; `sign` the share where both are good
    (>= 0) or both bad; `mean_abs` the mean absolute difference of the scores (0 to 2); `correlation`
    Pearson's r (None under 3 pairs or without spread); `pairs` up to SCATTER_POINTS (judge,
    explicit) points to draw."""
    n: int = 0
    sign: float | None = None
    mean_abs: float | None = None
    correlation: float | None = None
    pairs: list[tuple[float, float]] = field(default_factory=list)


@dataclass
class Overview:
    """The overview page: the window's days, the judge's agreement, the library by status (current
    counts) and its size at the end of each day the library grew, and the namespace's rated turns and
    their mean reward over all time."""
    namespace: str
    days: list[Day]
    agreement: Agreement
    library: dict[str, int]
    library_growth: list[tuple[str, int]]
    rated_total: int
    reward_mean: float | None
    window_days: int

    @property
    def turns(self) -> int:
        """Turns reported in the window."""
        return sum(d.turns for d in self.days)

    @property
    def rated(self) -> int:
        """Turns of the window that are rated."""
        return sum(d.rated for d in self.days)

    @property
    def reward(self) -> float | None:
        """The mean fused reward of the window's rated turns."""
        total = sum(d.reward * d.rated for d in self.days if d.reward is not None)
        return total / self.rated if self.rated else None


# Ratings of the window's turns per day and source, in one pass in day order (index turns_day, then
# ratings_turn_source for each turn: no sort, no table row read).
RATINGS_BY_DAY = ("SELECT substr(t.created_at, 1, 10) AS day, "
                  + ", ".join(f"SUM(g.source = '{s}'), AVG(CASE WHEN g.source = '{s}' THEN g.score END)" for s in SOURCES)
                  + " FROM turns t JOIN ratings g ON g.turn_id = t.id "
                    "WHERE t.namespace = ? AND substr(t.created_at, 1, 10) >= ? GROUP BY substr(t.created_at, 1, 10)")


async def overview(app: App, namespace: str, window_days: int = 90, now: datetime | None = None) -> Overview:
    """The overview of `namespace` over the last `window_days` days (ending today, UTC)."""
    since = cutoff(window_days, now)
    by_day: dict[str, Day] = {}
    for r in await app.db.fetchall(
            "SELECT substr(created_at, 1, 10) AS day, COUNT(*), COUNT(reward), AVG(reward) FROM turns "
            "WHERE namespace = ? AND substr(created_at, 1, 10) >= ? GROUP BY substr(created_at, 1, 10)",
            (namespace, since)):
        by_day[r[0]] = Day(r[0], int(r[1]), int(r[2]), r[3])
    for r in await app.db.fetchall(RATINGS_BY_DAY, (namespace, since)):
        d = by_day.setdefault(r[0], Day(r[0]))
        for i, source in enumerate(SOURCES):
            if r[1 + 2 * i]:
                d.ratings[source], d.scores[source] = int(r[1 + 2 * i]), float(r[2 + 2 * i])
    today = (now or datetime.now(timezone.utc)).date().isoformat()
    days = []
    if by_day:
        days = [by_day.get(d, Day(d)) for d in day_range(min(by_day), max(max(by_day), today))]
    library = {s: 0 for s in STATUSES}
    for r in await app.db.fetchall("SELECT status, COUNT(*) FROM skills WHERE namespace = ? AND current_version > 0 "
                                   "GROUP BY status", (namespace,)):
        library[r[0]] = int(r[1])
    growth, total = [], 0
    for r in await app.db.fetchall("SELECT substr(created_at, 1, 10) AS day, COUNT(*) FROM skills "
                                   "WHERE namespace = ? AND current_version > 0 GROUP BY day ORDER BY day",
                                   (namespace,)):
        total += int(r[1])
        growth.append((r[0], total))
    totals = await app.db.fetchone("SELECT rated, reward_sum FROM reward_totals WHERE namespace = ?", (namespace,))
    rated = int(totals[0]) if totals else 0
    return Overview(namespace=namespace, days=days, agreement=await agreement(app, namespace, since),
                    library=library, library_growth=growth, rated_total=rated,
                    reward_mean=float(totals[1]) / rated if rated else None, window_days=window_days)


AGREEMENT_TURNS = 1000   # the latest judge-rated turns compared (a share's standard error is then at most 1.6%)


async def agreement(app: App, namespace: str, since: str = "") -> Agreement:
    """The judge's agreement with explicit ratings on the latest AGREEMENT_TURNS turns of `namespace`
    reported since day `since` ("" for all) that a judge and a user or environment both rated. Each
    side is its latest rating; the explicit side is the user's when there is one (as fusion ranks them).
    The judge's ratings are read newest first (index ratings_source), so the cost is bounded."""
    rows = await app.db.fetchall(
        "SELECT j.turn_id, j.score, e.source, e.score, e.rowid FROM ratings j JOIN turns t ON t.id = j.turn_id "
        "JOIN ratings e ON e.turn_id = j.turn_id AND e.source IN ('user', 'env') "
        "WHERE j.source = 'judge' AND t.namespace = ? AND substr(t.created_at, 1, 10) >= ? "
        "ORDER BY j.rowid DESC LIMIT ?", (namespace, since, 2 * AGREEMENT_TURNS))
    judged: dict[str, float] = {}
    explicit: dict[tuple[str, str], tuple[int, float]] = {}
    for turn_id, judge, source, score, at in rows:   # the judge's newest first: its first score wins
        judged.setdefault(turn_id, float(judge))
        if at > explicit.get((turn_id, source), (-1, 0.0))[0]:
            explicit[(turn_id, source)] = (at, float(score))
    pairs = [(j, (explicit.get((t, "user")) or explicit[(t, "env")])[1]) for t, j in judged.items()]
    return agreement_of(pairs[:AGREEMENT_TURNS])


def agreement_of(pairs: Sequence[tuple[float, float]]) -> Agreement:
    """The Agreement figures of (judge score, explicit score) pairs (see `Agreement`)."""
    n = len(pairs)
    if not n:
        return Agreement()
    sign = sum((j >= 0) == (e >= 0) for j, e in pairs) / n
    mean_abs = sum(abs(j - e) for j, e in pairs) / n
    corr = None
    if n >= 3:
        mj, me = sum(j for j, _ in pairs) / n, sum(e for _, e in pairs) / n
        sj = sum((j - mj) ** 2 for j, _ in pairs)
        se = sum((e - me) ** 2 for _, e in pairs)
        if sj > 0 and se > 0:
            corr = sum((j - mj) * (e - me) for j, e in pairs) / math.sqrt(sj * se)
    step = max(1, n // SCATTER_POINTS)
    return Agreement(n, sign, mean_abs, corr, list(pairs[::step][:SCATTER_POINTS]))


# ---- skills ----

@dataclass
class SkillRow:
    """One skill in the skills table: its current version's status, reason and category; how many
    versions it has; and its credit (`Retriever.credit_report`): uses (turns it was credited in),
    rated uses, their mean reward, the uplift with its standard error (None without evidence) and
    the 95% interval, and the usefulness retrieval ranks by."""
    id: int
    slug: str
    status: str
    reason: str | None
    version: int
    versions: int
    category: str
    uses: int
    rated: int
    mean_reward: float | None
    uplift: float
    se: float | None
    usefulness: float

    @property
    def low(self) -> float | None:
        """The lower end of the uplift's 95% interval (None without evidence)."""
        return None if self.se is None else self.uplift - Z95 * self.se

    @property
    def high(self) -> float | None:
        """The upper end of the uplift's 95% interval (None without evidence)."""
        return None if self.se is None else self.uplift + Z95 * self.se


SORT_KEYS = ("slug", "status", "version", "versions", "uses", "rated", "mean_reward", "uplift", "low", "usefulness")


@dataclass
class SkillTable:
    """One page of the skills table: its rows, how many skills match the filters in all, the page
    (from 1) and how many pages, and the sort it is in."""
    rows: list[SkillRow]
    total: int
    page: int
    pages: int
    sort: str
    descending: bool


CHEAP_KEYS = ("slug", "status", "version", "versions", "uses")   # sorted by without computing every credit


def _row(app: App, state: Any, meta: Any, reason: str | None, versions: int) -> SkillRow:
    c = app.retriever.credit_of(state, meta.id, meta.version)
    return SkillRow(id=meta.id, slug=meta.slug, status=meta.status, reason=reason, version=meta.version,
                    versions=versions, category=meta.category, uses=c.uses, rated=c.rated, mean_reward=c.mean,
                    uplift=c.uplift, se=None if math.isinf(c.se) else c.se, usefulness=c.usefulness)


async def _extras(app: App, namespace: str, ids: Sequence[int] | None) -> dict[int, tuple[str | None, int]]:
    """skill id -> (status reason, number of versions), for `ids` (None: every skill of `namespace`);
    read from the skills table and the versions' primary key (no version's text)."""
    sql = ("SELECT s.id, s.status_reason, (SELECT COUNT(*) FROM skill_versions x WHERE x.skill_id = s.id) "
           "FROM skills s WHERE s.namespace = ? AND s.current_version > 0")
    if ids is None:
        rows = await app.db.fetchall(sql, (namespace,))
    else:
        rows = []
        for start in range(0, len(ids), 500):
            chunk = list(ids[start:start + 500])
            rows += await app.db.fetchall(sql + f" AND s.id IN ({','.join('?' * len(chunk))})", (namespace, *chunk))
    return {r[0]: (r[1], int(r[2])) for r in rows}


async def skill_rows(app: App, namespace: str) -> list[SkillRow]:
    """Every skill of `namespace` at its current version, with its credit (`Retriever.credit_of`, what
    `credit_report` gives) and status reason, in no particular order. Slug, status, version and
    category come from the retriever's in-memory state, as the credit does."""
    state = await app.retriever.state(namespace)
    extra = await _extras(app, namespace, None)
    return [_row(app, state, m, *extra.get(m.id, (None, 1))) for m in state.metas.values()]


def sort_rows(rows: Iterable[SkillRow], sort: str = "uses", descending: bool = True) -> list[SkillRow]:
    """`rows` ordered by `sort` (one of SORT_KEYS; another name sorts by uses); rows without a value
    (no mean reward, no interval) come last either way, ties by slug."""
    key = sort if sort in SORT_KEYS else "uses"
    present = [r for r in rows if getattr(r, key) is not None]
    missing = [r for r in rows if getattr(r, key) is None]
    present.sort(key=lambda r: r.slug)
    present.sort(key=lambda r: getattr(r, key), reverse=descending)
    return present + sorted(missing, key=lambda r: r.slug)


async def skill_table(app: App, namespace: str, sort: str = "uses", descending: bool = True, page: int = 1,
                      status: str | None = None, query: str | None = None) -> SkillTable:
    """One page (PAGE_SIZE rows, `page` from 1, clamped) of the skills of `namespace`, filtered by
    `status` and by `query` (a part of the slug, any case), in the order `sort_rows` gives. Sorted by
    slug, status, version, versions or uses, only the page's rows get their credit computed."""
    sort = sort if sort in SORT_KEYS else "uses"
    state = await app.retriever.state(namespace)
    metas = list(state.metas.values())
    if status in STATUSES:
        metas = [m for m in metas if m.status == status]
    if query:
        q = query.lower()
        metas = [m for m in metas if q in m.slug.lower()]
    pages = max(1, math.ceil(len(metas) / PAGE_SIZE))
    page = min(max(1, page), pages)
    window = slice((page - 1) * PAGE_SIZE, page * PAGE_SIZE)
    if sort in CHEAP_KEYS:
        extra = await _extras(app, namespace, None) if sort == "versions" else {}

        def key(m: Any) -> Any:
            if sort == "uses":
                return state.stats.get((m.id, m.version), (0,))[0]
            if sort == "versions":
                return extra.get(m.id, (None, 1))[1]
            return getattr(m, sort)
        metas.sort(key=lambda m: m.slug)
        metas.sort(key=key, reverse=descending)
        chosen = metas[window]
        if sort != "versions":
            extra = await _extras(app, namespace, [m.id for m in chosen])
        rows = [_row(app, state, m, *extra.get(m.id, (None, 1))) for m in chosen]
    else:
        extra = await _extras(app, namespace, None)
        rows = sort_rows([_row(app, state, m, *extra.get(m.id, (None, 1))) for m in metas], sort, descending)[window]
    return SkillTable(rows, len(metas), page, pages, sort, descending)


@dataclass
class TurnBrief:
    """A turn as a line in a list: id, when, its request (the last user message, cut), reward and
    the source that decided it, and its training state."""
    id: str
    created_at: str
    request: str
    reward: float | None
    reward_source: str | None
    train_state: str


@dataclass
class Use:
    """One turn a skill version was injected into: the turn, the version, whether the agent named the
    skill as used (`skill_ids`) and whether the turn's reward counts for it (credited)."""
    turn: TurnBrief
    version: int
    named: bool
    credited: bool


@dataclass
class VersionView(SkillVersion):
    """One version of a skill (`SkillVersion`) with its credit: uses, rated uses, mean reward,
    uplift and its standard error (None while unknown)."""
    uses: int = 0
    rated: int = 0
    mean_reward: float | None = None
    uplift: float = 0.0
    se: float | None = None


@dataclass
class DiffLine:
    """One line of a unified diff: `kind` is "add", "del", "hunk", "file" or "same"."""
    kind: str
    text: str


@dataclass
class SkillDetail:
    """A skill's page: its current record, every version (oldest first), the diff between versions
    `a` and `b`, the failed turns its versions came from (provenance), the latest turns it was
    injected into, how many uses there are in all, and its reward per day (mean reward of the rated
    turns it was credited in, by day of the turn: (day, mean, n))."""
    record: SkillRecord
    versions: list[VersionView]
    diff_from: int
    diff_to: int
    diff: list[DiffLine]
    provenance: list[TurnBrief]
    uses: list[Use]
    uses_total: int
    reward_by_day: list[tuple[str, float, int]]


async def skill_namespace(app: App, skill_id: int) -> str:
    """The namespace of skill `skill_id`; NotFound when there is no such (published) skill."""
    found = await app.db.scalar("SELECT namespace FROM skills WHERE id = ? AND current_version > 0", (skill_id,))
    if found is None:
        raise NotFound(f"no skill with id {skill_id}")
    return str(found)


def version_text(v: VersionView) -> list[str]:
    """A version as the lines a diff compares: name, category, description, then the body."""
    return [f"name: {v.name}", f"category: {v.category}", f"description: {v.description}", "",
            *v.body.splitlines()]


def diff_versions(a: VersionView, b: VersionView) -> list[DiffLine]:
    """The unified diff (difflib, 3 lines of context) from version `a` to version `b`."""
    out = []
    for line in difflib.unified_diff(version_text(a), version_text(b), f"v{a.version}", f"v{b.version}", lineterm=""):
        kind = ("file" if line.startswith(("---", "+++")) else "hunk" if line.startswith("@@")
                else "add" if line.startswith("+") else "del" if line.startswith("-") else "same")
        out.append(DiffLine(kind, line))
    return out


def _brief(r: Any) -> TurnBrief:
    return TurnBrief(r["id"], r["created_at"], r["request"] or "", r["reward"], r["reward_source"], r["train_state"])


TURN_BRIEF = ("t.id, t.created_at, substr(COALESCE(t.request, ''), 1, 200) AS request, t.reward, t.reward_source, "
              "t.train_state")


async def skill_detail(app: App, namespace: str, skill_id: int, diff_from: int | None = None,
                       diff_to: int | None = None, window_days: int = 90) -> SkillDetail:
    """Skill `skill_id` of `namespace` (NotFound otherwise), with the diff from version `diff_from`
    (default: the one before `diff_to`) to `diff_to` (default: the current one)."""
    record = await app.library.get(namespace, skill_id)
    state = await app.retriever.state(namespace)
    versions = []
    for v in await app.library.versions(skill_id):
        c = app.retriever.credit_of(state, skill_id, v.version)
        versions.append(VersionView(**v.as_dict(), uses=c.uses, rated=c.rated, mean_reward=c.mean, uplift=c.uplift,
                                    se=None if math.isinf(c.se) else c.se))
    by_number = {v.version: v for v in versions}
    to = diff_to if diff_to in by_number else record.version
    earlier = [n for n in by_number if n < to]
    frm = diff_from if diff_from in by_number else (max(earlier) if earlier else to)
    diff = diff_versions(by_number[frm], by_number[to]) if frm != to else []
    cited = list(dict.fromkeys(t for v in versions for t in v.provenance))[:PROVENANCE_SHOWN]
    provenance = []
    if cited:
        marks = ",".join("?" * len(cited))
        found = {r["id"]: _brief(r) for r in await app.db.fetchall(
            f"SELECT {TURN_BRIEF} FROM turns t WHERE t.id IN ({marks}) AND t.namespace = ?", (*cited, namespace))}
        provenance = [found[t] for t in cited if t in found]
    uses = [Use(_brief(r), r["version"], bool(r["named"]), bool(r["credited"])) for r in await app.db.fetchall(
        f"SELECT {TURN_BRIEF}, u.version, u.named, u.credited FROM skill_uses u JOIN turns t ON t.id = u.turn_id "
        "WHERE u.skill_id = ? ORDER BY u.version DESC, u.rowid DESC LIMIT ?", (skill_id, USES_SHOWN))]
    total = int(await app.db.scalar("SELECT COUNT(*) FROM skill_uses WHERE skill_id = ?", (skill_id,)) or 0)
    by_day = [(r[0], float(r[1]), int(r[2])) for r in await app.db.fetchall(
        "SELECT substr(t.created_at, 1, 10) AS day, AVG(t.reward), COUNT(t.reward) FROM skill_uses u "
        "JOIN turns t ON t.id = u.turn_id WHERE u.skill_id = ? AND u.credited = 1 AND t.reward IS NOT NULL "
        "AND t.created_at >= ? GROUP BY day ORDER BY day", (skill_id, cutoff(window_days)))]
    return SkillDetail(record, versions, frm, to, diff, provenance, uses, total, by_day)


# ---- evolution ----

@dataclass
class EvolutionRun:
    """One `evolve_skills` run: how it ran (`agent` proposals, `llm`, or a `digest` handed back), the
    failure turns it read, the proposals as received, what was accepted (the skill versions they
    became) and rejected (with reasons), the LLM that wrote them, and the prompt and answer kept."""
    id: int
    mode: str
    failures: list[str]
    proposals: list[dict[str, Any]]
    accepted: list[dict[str, Any]]
    rejected: list[dict[str, Any]]
    llm: str | None
    created_at: str
    prompt: str | None
    answer: str | None


@dataclass
class EvolutionPage:
    """A page of evolution runs, newest first, with the total and the page (from 1) of how many."""
    runs: list[EvolutionRun]
    total: int
    page: int
    pages: int


def _json_list(text: str | None) -> list[Any]:
    try:
        value = json.loads(text or "[]")
    except ValueError:
        return []
    return value if isinstance(value, list) else []


async def evolutions(app: App, namespace: str, page: int = 1) -> EvolutionPage:
    """The evolution runs of `namespace`, EVOLUTIONS_SHOWN a page, newest first."""
    total = int(await app.db.scalar("SELECT COUNT(*) FROM evolutions WHERE namespace = ?", (namespace,)) or 0)
    pages = max(1, math.ceil(total / EVOLUTIONS_SHOWN))
    page = min(max(1, page), pages)
    rows = await app.db.fetchall(
        "SELECT * FROM evolutions WHERE namespace = ? ORDER BY id DESC LIMIT ? OFFSET ?",
        (namespace, EVOLUTIONS_SHOWN, (page - 1) * EVOLUTIONS_SHOWN))
    runs = [EvolutionRun(id=r["id"], mode=r["mode"], failures=[str(f) for f in _json_list(r["failures"])],
                         proposals=[p for p in _json_list(r["proposals"]) if isinstance(p, dict)],
                         accepted=[a for a in _json_list(r["accepted"]) if isinstance(a, dict)],
                         rejected=[x for x in _json_list(r["rejected"]) if isinstance(x, dict)],
                         llm=r["llm"], created_at=r["created_at"], prompt=r["prompt"], answer=r["answer"])
            for r in rows]
    return EvolutionPage(runs, total, page, pages)


# ---- training ----

@dataclass
class Step:
    """One training step: its number, loss (None when the backend reported none), the mean reward of
    the turns it trained on, datums, when, and its batch (id, namespace, kind rl|distill, loss function)."""
    step: int
    loss: float | None
    mean_reward: float | None
    n_datums: int
    created_at: str
    batch_id: int
    namespace: str
    kind: str
    loss_fn: str


@dataclass
class Checkpoint:
    """A saved checkpoint: the step, `sampler` or `state`, its path (tinker://... or a folder), the backend."""
    step: int
    kind: str
    path: str
    backend: str
    created_at: str


@dataclass
class Training:
    """The training page: every step (oldest first), the newest checkpoints, the turns of
    `namespace` in each training state, and `App.status()`'s training section (backend, paused,
    backlog, next, window, the trainer's own status)."""
    steps: list[Step]
    checkpoints: list[Checkpoint]
    states: dict[str, int]
    status: dict[str, Any]


TRAIN_STATES = ("pending", "rated", "claimed", "trained", "skipped")


async def training(app: App, namespace: str, checkpoints_shown: int = 50) -> Training:
    """Training as the trainer sees it (one model for every namespace), with `namespace`'s backlog."""
    steps = [Step(step=r["step"], loss=r["loss"], mean_reward=r["mean_reward"], n_datums=r["n_datums"],
                  created_at=r["created_at"], batch_id=r["batch_id"], namespace=r["namespace"], kind=r["kind"],
                  loss_fn=r["loss_fn"]) for r in await app.db.fetchall(
        "SELECT s.step, s.loss, s.mean_reward, s.n_datums, s.created_at, s.batch_id, b.namespace, b.kind, b.loss_fn "
        "FROM train_steps s JOIN batches b ON b.id = s.batch_id ORDER BY s.step")]
    checkpoints = [Checkpoint(r["step"], r["kind"], r["path"], r["backend"], r["created_at"]) for r in
                   await app.db.fetchall("SELECT step, kind, path, backend, created_at FROM checkpoints "
                                         "ORDER BY id DESC LIMIT ?", (checkpoints_shown,))]
    states = {s: 0 for s in TRAIN_STATES}
    for state in TRAIN_STATES:   # one indexed count each (turns_train_state leads with the state)
        states[state] = int(await app.db.scalar(
            "SELECT COUNT(*) FROM turns WHERE train_state = ? AND namespace = ?", (state, namespace)) or 0)
    status = (await app.status())["training"]
    return Training(steps, checkpoints, states, status)


# ---- one turn ----

@dataclass
class MessageView:
    """One chat message as shown: its role, its text, and its tool calls as JSON text (or "")."""
    role: str
    text: str
    tool_calls: str = ""


@dataclass
class TurnView:
    """A turn's page: the stored turn (`TurnLog.get`: ids, session, model, reward, training state...),
    its messages as text, its ratings (oldest first), and the skill versions linked to it with
    whether the agent named each and whether it is credited."""
    turn: dict[str, Any]
    messages: list[MessageView]
    ratings: list[dict[str, Any]]
    skills: list[dict[str, Any]]


async def turn_namespace(app: App, turn_id: str) -> str:
    """The namespace of turn `turn_id`; NotFound when there is none."""
    found = await app.db.scalar("SELECT namespace FROM turns WHERE id = ?", (turn_id,))
    if found is None:
        raise NotFound(f"no turn {turn_id[:80]!r}")
    return str(found)


async def turn_view(app: App, turn_id: str) -> TurnView:
    """Turn `turn_id` as its page shows it; NotFound for an unknown id."""
    turn = await app.turns.get(turn_id)
    messages = []
    for m in turn.get("messages") or []:
        if not isinstance(m, dict):
            continue
        calls = m.get("tool_calls")
        messages.append(MessageView(str(m.get("role", "?")), content_text(m.get("content")),
                                    json.dumps(calls, indent=2, ensure_ascii=False) if calls else ""))
    skills = [dict(r) for r in await app.db.fetchall(
        "SELECT u.skill_id, s.slug, u.version, u.rank, u.named, u.credited FROM skill_uses u "
        "JOIN skills s ON s.id = u.skill_id WHERE u.turn_id = ? ORDER BY u.rank", (turn_id,))]
    return TurnView(turn, messages, turn["ratings"], skills)


__all__ = ["Agreement", "Checkpoint", "Day", "DiffLine", "EvolutionPage", "EvolutionRun", "MessageView", "Overview",
           "SkillDetail", "SkillRow", "SkillTable", "Step", "Training", "TurnBrief", "TurnView", "Use", "VersionView",
           "agreement", "agreement_of", "cutoff", "day_range", "diff_versions", "evolutions", "namespaces", "overview",
           "skill_detail", "skill_namespace", "skill_rows", "skill_table", "sort_rows", "training", "turn_namespace",
           "turn_view", "version_text"]
