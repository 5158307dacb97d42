"""`GET /metrics`: the server's counters in the Prometheus text exposition format (prometheus-client).

Two kinds of figures, each app with its own `CollectorRegistry` (`metrics_for`):

- **This process's**, counted where the MCP server dispatches a tool (`MetaClawServer.call_tool`):
  `metaclaw_tool_calls_total{tool, outcome}` (outcome `ok`, `error`, or `input_required` for a call
  that asked the client for more before it could answer) and `metaclaw_tool_duration_seconds{tool}`.
  They start from zero with the process, as Prometheus counters do.
- **The database's**, read when `/metrics` is scraped, in one SQL statement (one consistent snapshot),
  so they equal what the SQLite file holds whichever process wrote it: turns (total, and now in each
  training state), ratings by source, the mean fused reward of rated turns, skills by status, training
  steps, the last step's loss, the training backlog, and LLM calls and tokens by purpose.

The route answers only GET (and HEAD); the transport's bearer rule applies (`transport.BearerAuth`),
and with a token file only an admin token may read it (others get 403). The Host and Origin checks
of the MCP endpoint apply too (DNS rebinding).
"""
from __future__ import annotations

import logging
import math
import time
import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from .access import principal_of
from .errors import Forbidden

if TYPE_CHECKING:
    from mcp.server.transport_security import TransportSecuritySettings
    from starlette.applications import Starlette
    from starlette.requests import Request

    from .app import App
    from .store import Database

log = logging.getLogger("metaclaw_mcp")

PATH = "/metrics"
TRAIN_STATES = ("pending", "rated", "claimed", "trained", "skipped")
RATING_SOURCES = ("user", "env", "agent", "judge")
SKILL_STATUSES = ("active", "candidate", "retired")
OUTCOMES = ("ok", "error", "input_required")
UNKNOWN_TOOL = "unknown"   # the label of a call naming no registered tool (names are the client's to choose)
# Seconds; a fetch is milliseconds, an evolution asking an LLM may take a minute or more.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, math.inf)

# Every figure the database holds, in one statement: (kind, label, a, b, c) rows.
SNAPSHOT_SQL = """
SELECT 'turns', train_state, COUNT(*), SUM(reward), COUNT(reward) FROM turns GROUP BY train_state
UNION ALL SELECT 'ratings', source, COUNT(*), NULL, NULL FROM ratings GROUP BY source
UNION ALL SELECT 'skills', status, COUNT(*), NULL, NULL FROM skills WHERE current_version > 0 GROUP BY status
UNION ALL SELECT 'steps', NULL, COUNT(*), (SELECT loss FROM train_steps ORDER BY id DESC LIMIT 1), NULL
    FROM train_steps
UNION ALL SELECT 'llm', purpose, COUNT(*), SUM(prompt_tokens), SUM(completion_tokens) FROM llm_usage GROUP BY purpose
"""


@dataclass
class Snapshot:
    """What the database holds, as the metrics show it (`read_snapshot`)."""
    turns_by_state: dict[str, int] = field(default_factory=dict)
    reward_sum: float = 0.0
    rated_turns: int = 0
    ratings_by_source: dict[str, int] = field(default_factory=dict)
    skills_by_status: dict[str, int] = field(default_factory=dict)
    train_steps: int = 0
    last_loss: float | None = None
    llm_calls: dict[str, int] = field(default_factory=dict)
    llm_tokens: dict[tuple[str, str], int] = field(default_factory=dict)   # (purpose, prompt|completion)

    @property
    def reward_mean(self) -> float | None:
        """The mean fused reward over rated turns, or None when none is rated."""
        return self.reward_sum / self.rated_turns if self.rated_turns else None


async def read_snapshot(db: Database) -> Snapshot:
    """The database's figures in one read (`SNAPSHOT_SQL`), so they agree with one another."""
    out = Snapshot()
    for kind, label, a, b, c in await db.fetchall(SNAPSHOT_SQL):
        if kind == "turns":
            out.turns_by_state[label] = int(a)
            out.reward_sum += float(b or 0.0)
            out.rated_turns += int(c or 0)
        elif kind == "ratings":
            out.ratings_by_source[label] = int(a)
        elif kind == "skills":
            out.skills_by_status[label] = int(a)
        elif kind == "steps":
            out.train_steps, out.last_loss = int(a), None if b is None else float(b)
        elif kind == "llm":
            out.llm_calls[label] = int(a)
            out.llm_tokens[(label, "prompt")] = int(b or 0)
            out.llm_tokens[(label, "completion")] = int(c or 0)
    return out


def _with_known(found: dict[str, int], known: Iterable[str]) -> dict[str, int]:
    """`found` with every `known` label present (0 when absent), known ones first."""
    return {k: found.get(k, 0) for k in known} | found


class DatabaseCollector:
    """A prometheus-client collector of the last `Snapshot` read (`Metrics.refresh` sets it before
    each rendering; rendering itself reads nothing)."""

    def __init__(self) -> None:
        self.snapshot = Snapshot()

    def describe(self) -> list[Metric]:
        """The families this collector yields, without samples (for the registry's name checks)."""
        return list(self.families(Snapshot(), samples=False))

    def collect(self) -> Iterator[Metric]:
        """The families of the current snapshot."""
        return self.families(self.snapshot)

    @staticmethod
    def families(s: Snapshot, samples: bool = True) -> Iterator[Metric]:
        """The metric families of snapshot `s` (no samples when not `samples`)."""
        turns = CounterMetricFamily("metaclaw_turns", "Turns reported (every namespace).")
        by_state = GaugeMetricFamily("metaclaw_turns_in_state", "Turns now in each training state.",
                                     labels=["state"])
        ratings = CounterMetricFamily("metaclaw_ratings", "Ratings given, by source.", labels=["source"])
        reward = GaugeMetricFamily("metaclaw_reward_mean", "Mean fused reward of the rated turns.")
        skills = GaugeMetricFamily("metaclaw_skills", "Skills in the library, by status.", labels=["status"])
        steps = CounterMetricFamily("metaclaw_train_steps", "Training steps taken.")
        loss = GaugeMetricFamily("metaclaw_train_last_loss", "The loss of the last training step.")
        backlog = GaugeMetricFamily("metaclaw_train_backlog_turns", "Rated turns waiting for training.")
        calls = CounterMetricFamily("metaclaw_llm_calls", "Calls to the server-side LLM (or the client's, "
                                    "by sampling), by purpose.", labels=["purpose"])
        tokens = CounterMetricFamily("metaclaw_llm_tokens", "LLM tokens used, by purpose and kind "
                                     "(prompt, completion).", labels=["purpose", "kind"])
        if samples:
            states = _with_known(s.turns_by_state, TRAIN_STATES)
            turns.add_metric([], sum(states.values()))
            for state, n in states.items():
                by_state.add_metric([state], n)
            for source, n in _with_known(s.ratings_by_source, RATING_SOURCES).items():
                ratings.add_metric([source], n)
            if s.reward_mean is not None:
                reward.add_metric([], s.reward_mean)
            for status, n in _with_known(s.skills_by_status, SKILL_STATUSES).items():
                skills.add_metric([status], n)
            steps.add_metric([], s.train_steps)
            if s.last_loss is not None:
                loss.add_metric([], s.last_loss)
            backlog.add_metric([], states.get("rated", 0))
            for purpose, n in s.llm_calls.items():
                calls.add_metric([purpose], n)
            for (purpose, kind), n in s.llm_tokens.items():
                tokens.add_metric([purpose, kind], n)
        yield from (turns, by_state, ratings, reward, skills, steps, loss, backlog, calls, tokens)


class ToolCall:
    """One tool call being timed (`Metrics.tool_call`): its outcome is `ok` unless `result` or an
    exception says otherwise."""

    def __init__(self) -> None:
        self.outcome = "ok"

    def result(self, result: Any) -> None:
        """Take the outcome from what the tool returned: `error` for a result flagged `is_error`,
        `input_required` for a request for more input (not a CallToolResult), else `ok`."""
        if getattr(result, "is_error", False):
            self.outcome = "error"
        elif not hasattr(result, "is_error"):
            self.outcome = "input_required"


class Metrics:
    """One app's metrics: its own registry, the tool counters and the database collector."""

    def __init__(self, db: Database):
        self.db = db
        self.registry = CollectorRegistry()
        self.tool_calls = Counter("metaclaw_tool_calls", "MCP tool calls by tool and outcome (ok, error, "
                                  "input_required), since this process started.", ["tool", "outcome"],
                                  registry=self.registry)
        self.tool_seconds = Histogram("metaclaw_tool_duration_seconds", "MCP tool call latency, by tool.",
                                      ["tool"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.tools: set[str] = set()
        self.database = DatabaseCollector()
        self.registry.register(self.database)

    def declare_tools(self, names: Iterable[str]) -> None:
        """The tools the server registered: their series exist (at 0) before their first call, and a
        call naming any other tool counts as `UNKNOWN_TOOL`."""
        for name in names:
            self.tools.add(name)
            for outcome in ("ok", "error"):
                self.tool_calls.labels(name, outcome)
            self.tool_seconds.labels(name)

    @contextmanager
    def tool_call(self, name: str) -> Iterator[ToolCall]:
        """Count and time one call of tool `name`: an exception out of the block is an `error` (and
        passes on); otherwise the outcome `ToolCall.result` set."""
        tool = name if name in self.tools else UNKNOWN_TOOL
        call = ToolCall()
        start = time.perf_counter()
        try:
            yield call
        except BaseException:
            call.outcome = "error"
            raise
        finally:
            self.tool_seconds.labels(tool).observe(time.perf_counter() - start)
            self.tool_calls.labels(tool, call.outcome).inc()

    async def refresh(self) -> None:
        """Read the database's figures now (one statement)."""
        self.database.snapshot = await read_snapshot(self.db)

    async def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """(body, content type): every metric, the database's read now, in the format the `accept` header
        asks for (prometheus-client's choice: the Prometheus text format 0.0.4 unless OpenMetrics or text
        1.0.0 is asked for)."""
        encode, content_type = choose_encoder(accept or "")
        await self.refresh()
        # nothing awaited between the read and the rendering: no other scrape's snapshot interleaves
        return encode(self.registry), content_type


_BY_APP: weakref.WeakKeyDictionary[Any, Metrics] = weakref.WeakKeyDictionary()


def metrics_for(app: App) -> Metrics:
    """The metrics of `app`, made on first use (one registry per app, none global)."""
    found = _BY_APP.get(app)
    if found is None:
        found = _BY_APP[app] = Metrics(app.db)
    return found


def metrics_app(app: App, security: TransportSecuritySettings | None, principal_key: str) -> Starlette:
    """The ASGI app of `GET /metrics` over `app`'s metrics (mounted by the transport). `principal_key`:
    where the bearer check leaves the caller (`server.PRINCIPAL_KEY`); only an admin may read."""
    from mcp.server.transport_security import TransportSecurityMiddleware
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    metrics = metrics_for(app)
    checks = TransportSecurityMiddleware(security)

    async def scrape(request: Request) -> Response:
        refused = await checks.validate_request(request)
        if refused is not None:
            return refused
        try:
            principal_of(request, principal_key).check_admin("reading /metrics")
        except Forbidden as exc:
            return JSONResponse({"error": "forbidden", "detail": str(exc)}, status_code=403)
        try:
            body, content_type = await metrics.render(request.headers.get("accept"))
        except Exception as exc:   # the database closed or busy: a failed scrape, not a crash
            log.warning("could not read the metrics: %s", exc)
            return JSONResponse({"error": "unavailable", "detail": f"could not read the database: {exc}"},
                                status_code=503)
        return Response(body, headers={"content-type": content_type})

    return Starlette(routes=[Route(PATH, scrape, methods=["GET"])])


__all__ = ["Metrics", "Snapshot", "metrics_app", "metrics_for", "read_snapshot"]
