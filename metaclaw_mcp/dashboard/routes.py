"""The dashboard's HTTP face: pages (GET) and actions (POST forms), one Starlette app under `/dashboard`.

Pages: the overview, the skills table and each skill, evolution runs, training, and each turn; a
login form where tokens are configured. Every request passes the transport's Host and Origin
checks (`transport_security`), then the caller is found (`session.Sessions.caller`): without
tokens the single user (`LOCAL`); with tokens, a bearer header or the login cookie, else a
browser is sent to the login form. A caller sees only its namespaces (`ns`, default "default");
a skill or turn of another namespace is not found. Actions (retire, activate, rollback, merge,
pause and resume training) are POST forms that need the page's CSRF token (else 403) and an admin
caller (else 403); each calls the library method or trainer method the CLI command calls.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlencode

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from ..access import Principal, TokenTable
from ..errors import Busy, Conflict, Forbidden, InvalidInput, MetaClawError, NotFound
from . import plots, queries
from .session import COOKIE, SESSION_SECONDS, Sessions

if TYPE_CHECKING:
    from mcp.server.transport_security import TransportSecuritySettings
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response

    from ..app import App

log = logging.getLogger("metaclaw_mcp.dashboard")

PATH = "/dashboard"
MAX_FORM_BYTES = 64 * 1024
WINDOW_DAYS = (7, 30, 90, 365)   # the overview's choice of windows, in days
HEADERS = {
    # no script at all; styles are inline in the page; forms post only here; never in a frame
    "content-security-policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
    "x-frame-options": "DENY",
}
STATUS_OF = {NotFound: 404, Forbidden: 403, InvalidInput: 400, Conflict: 409, Busy: 503}
NAV = (("overview", ""), ("skills", "/skills"), ("evolution", "/evolution"), ("training", "/training"))
# template -> (the navigation entry it is under, the page the namespace selector opens)
SECTIONS = {"overview.html": ("overview", ""), "skills.html": ("skills", "/skills"), "skill.html": ("skills", "/skills"),
            "evolution.html": ("evolution", "/evolution"), "training.html": ("training", "/training")}


def environment() -> Environment:
    """The Jinja2 environment of the templates shipped in this package (HTML autoescaped, undefined
    names an error), with the filters the pages use."""
    env = Environment(loader=PackageLoader("metaclaw_mcp.dashboard", "templates"),
                      autoescape=select_autoescape(["html"]), undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True)
    env.filters.update(signed=fmt_signed, when=fmt_when, share=fmt_share, num=fmt_num)
    return env


def fmt_signed(value: float | None, digits: int = 3) -> str:
    """A reward-like number with its sign (+0.125), or an en dash for None/NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:+.{digits}f}"


def fmt_num(value: float | None, digits: int = 3) -> str:
    """A number with up to `digits` significant digits (4.12e-05, 0.25, 12), or an en dash for None."""
    return "–" if value is None else f"{value:.{digits}g}"


def fmt_when(iso: str | None) -> str:
    """A stored timestamp as `YYYY-MM-DD HH:MM` (UTC), or "" for None."""
    return "" if not iso else iso[:16].replace("T", " ")


def fmt_share(value: float | None) -> str:
    """A share in [0, 1] as a percentage (87%), or an en dash for None."""
    return "–" if value is None else f"{100 * value:.0f}%"


@dataclass
class Visit:
    """One request as a page sees it: the caller, its session cookie and the forms' CSRF token, the
    namespace shown and those the caller may choose from, and whether it may act (admin)."""
    request: Request
    principal: Principal
    cookie: str | None
    csrf: str
    namespace: str
    namespaces: list[str]

    @property
    def admin(self) -> bool:
        """Whether the caller may use the actions."""
        return self.principal.role == "admin"

    def url(self, path: str = "", **params: Any) -> str:
        """A dashboard URL (`PATH` + `path`) keeping the namespace, with `params` (None ones left out)."""
        query = {"ns": self.namespace} | {k: v for k, v in params.items() if v is not None}
        return f"{PATH}{path}?{urlencode(query)}"


def safe_next(target: str | None) -> str:
    """Where a login may send the browser on: a dashboard path of this server, else the overview."""
    if (target and target.startswith(PATH) and not target.startswith("//") and "\\" not in target
            and "://" not in target and all(c.isprintable() for c in target)):
        return target
    return PATH


class Dashboard:
    """The dashboard of one App: `asgi()` is the Starlette app to mount at `PATH`.

    `security`: the Host and Origin checks (`transport_security`; None: none). `tokens`: the bearer
    tokens (None: single user, no login). `principal_key`: where the transport's bearer check
    leaves the caller in the request's scope state (`server.PRINCIPAL_KEY`)."""

    def __init__(self, app: App, security: TransportSecuritySettings | None, tokens: TokenTable | None,
                 principal_key: str | None = None):
        from mcp.server.transport_security import TransportSecurityMiddleware

        self.app = app
        self.checks = TransportSecurityMiddleware(security)
        self.sessions = Sessions(tokens)
        self.principal_key = principal_key
        self.env = environment()

    # ---- plumbing ----

    def render(self, template: str, http_status: int = 200, visit: Visit | None = None, **context: Any) -> Response:
        """An HTML response of `template` with `context`, the visit (caller, namespace, CSRF token) and
        the navigation; the security headers set."""
        from starlette.responses import HTMLResponse

        section, here = SECTIONS.get(template, ("", ""))
        html = self.env.get_template(template).render(visit=visit, nav=NAV, path=PATH, section=section, here=here,
                                                      **context)
        return HTMLResponse(html, status_code=http_status, headers=HEADERS)

    def failure(self, status: int, message: str, visit: Visit | None = None) -> Response:
        """The error page with `message`, answering `status`."""
        return self.render("error.html", http_status=status, visit=visit, status_code=status, message=message)

    def checked_principal(self, request: Request) -> Principal | None:
        """The principal the transport's bearer check left in the scope, if any."""
        if self.principal_key is None:
            return None
        found = (request.scope.get("state") or {}).get(self.principal_key)
        return found if isinstance(found, Principal) else None

    def caller(self, request: Request) -> Principal | None:
        """Who makes `request` (`Sessions.caller`), or None."""
        header = request.headers.get("authorization", "")
        scheme, _, supplied = header.partition(" ")
        return self.sessions.caller(request.cookies.get(COOKIE), supplied.strip() if scheme.lower() == "bearer" else None,
                                    self.checked_principal(request))

    async def visit(self, request: Request, principal: Principal, namespace: str | None = None) -> Visit:
        """The Visit of `request`: the namespace is `namespace`, else the `ns` parameter, else "default"
        (or the caller's first namespace when it may not use "default"). Forbidden when the caller may
        not use it; InvalidInput for a name over 200 characters."""
        wanted = namespace or request.query_params.get("ns") or None
        if principal.every_namespace:
            choices = await queries.namespaces(self.app)
        else:
            choices = sorted(principal.namespaces)
        if wanted is None:
            wanted = "default" if principal.may_use("default") else choices[0]
        if len(wanted) > 200:
            raise InvalidInput("ns is over 200 characters")
        principal.check(wanted)
        if wanted not in choices:
            choices = sorted([*choices, wanted])
        cookie = request.cookies.get(COOKIE)
        return Visit(request, principal, cookie, self.sessions.csrf(cookie), wanted, choices)

    async def form(self, request: Request) -> dict[str, str]:
        """The urlencoded form of a POST (first value of each field); InvalidInput past MAX_FORM_BYTES."""
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_FORM_BYTES:
                raise InvalidInput(f"the form is over {MAX_FORM_BYTES} bytes")
        fields = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
        return {k: v[0] for k, v in fields.items()}

    def page(self, handler: Callable[[Request, Principal], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        """A GET endpoint: the security checks, the caller (a browser without one is sent to the login
        form; another client gets 401), then `handler`; a MetaClawError becomes its error page."""
        async def endpoint(request: Request) -> Response:
            from starlette.responses import RedirectResponse

            refused = await self.checks.validate_request(request)
            if refused is not None:
                return refused
            principal = self.caller(request)
            if principal is None:
                if "text/html" in request.headers.get("accept", ""):
                    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                    return RedirectResponse(f"{PATH}/login?{urlencode({'next': target})}", status_code=303,
                                            headers=HEADERS)
                return self.failure(401, "log in at /dashboard/login, or send Authorization: Bearer <token>")
            try:
                return await handler(request, principal)
            except MetaClawError as exc:
                return self.failure(STATUS_OF.get(type(exc), 400), str(exc))
        return endpoint

    def action(self, handler: Callable[[Request, Visit, dict[str, str]], Awaitable[Response]],
               admin: bool = True) -> Callable[[Request], Awaitable[Response]]:
        """A POST endpoint: the security checks, a caller (else 401), the form's CSRF token (else 403),
        an admin caller when `admin` (else 403), then `handler(request, visit, form)`."""
        async def endpoint(request: Request) -> Response:
            refused = await self.checks.validate_request(request)
            if refused is not None:
                return refused
            principal = self.caller(request)
            if principal is None:
                return self.failure(401, "log in at /dashboard/login first")
            try:
                form = await self.form(request)
                if not self.sessions.csrf_ok(request.cookies.get(COOKIE), form.get("csrf")):
                    return self.failure(403, "the form's CSRF token is missing or stale: reload the page and try again")
                visit = await self.visit(request, principal, form.get("ns") or None)
                if admin:
                    principal.check_admin("this action")
                return await handler(request, visit, form)
            except MetaClawError as exc:
                return self.failure(STATUS_OF.get(type(exc), 400), str(exc))
        return endpoint

    def done(self, visit: Visit, path: str, message: str) -> Response:
        """After an action: back to `path` (303), with `message` shown there."""
        from starlette.responses import RedirectResponse

        return RedirectResponse(visit.url(path, msg=message), status_code=303, headers=HEADERS)

    # ---- pages ----

    async def overview(self, request: Request, principal: Principal) -> Response:
        """GET /dashboard: activity, reward by source, the judge's agreement and the library."""
        visit = await self.visit(request, principal)
        days = _int(request.query_params.get("days"), 90)
        days = days if days in WINDOW_DAYS else 90
        ov = await queries.overview(self.app, visit.namespace, days)
        names = [d.day for d in ov.days]
        ticks = plots.day_ticks(names)
        activity = plots.line_chart([
            plots.Series("turns", [(i, float(d.turns)) for i, d in enumerate(ov.days)], kind="columns",
                         tips=[f"{d.day}: {d.turns} turns" for d in ov.days]),
            plots.Series("ratings", [(i, float(d.ratings_total)) for i, d in enumerate(ov.days)],
                         tips=[f"{d.day}: {d.ratings_total} ratings" for d in ov.days])],
            ticks, y_label="per day", label="turns and ratings per day")
        series = [plots.Series("reward", [(i, d.reward) for i, d in enumerate(ov.days)],
                               tips=[f"{d.day}: fused reward {fmt_signed(d.reward)} over {d.rated} rated turns"
                                     for d in ov.days])]
        for source in queries.SOURCES:
            if any(source in d.scores for d in ov.days):
                series.append(plots.Series(source, [(i, d.scores.get(source)) for i, d in enumerate(ov.days)],
                                           tips=[f"{d.day}: {source} mean {fmt_signed(d.scores.get(source))} "
                                                 f"over {d.ratings.get(source, 0)}" for d in ov.days]))
        reward = plots.line_chart(series, ticks, y_range=(-1.0, 1.0), y_label="mean score",
                                  label="reward per day by rating source")
        scatter = plots.scatter_chart(ov.agreement.pairs, "judge", "user/env", label="judge against explicit ratings")
        library = plots.bar_chart(list(ov.library.items()), label="skills by status")
        growth_days = [d for d, _ in ov.library_growth]
        growth = plots.line_chart([plots.Series("skills", [(i, float(n)) for i, (_, n) in enumerate(ov.library_growth)],
                                                colour="#16a34a")], plots.day_ticks(growth_days), width=640,
                                  y_range=(0.0, max([n for _, n in ov.library_growth] + [1]) * 1.1),
                                  y_label="skills", label="library size over time")
        return self.render("overview.html", visit=visit, ov=ov, windows=WINDOW_DAYS,
                           charts={"activity": activity, "reward": reward, "scatter": scatter, "library": library,
                                   "growth": growth})

    async def skills(self, request: Request, principal: Principal) -> Response:
        """GET /dashboard/skills: the sortable table and the uplift of the page's skills with intervals."""
        visit = await self.visit(request, principal)
        q = request.query_params
        table = await queries.skill_table(self.app, visit.namespace, q.get("sort", "uses"), q.get("dir", "desc") != "asc",
                                          _int(q.get("page"), 1), q.get("status") or None, q.get("q") or None)
        rows = [r for r in table.rows if r.se is not None][:40]
        forest = plots.interval_chart([plots.Interval(r.slug, r.uplift, r.low, r.high, visit.url(f"/skills/{r.id}"))
                                       for r in rows], x_label="uplift (95% interval)", clip=2.0,
                                      label="uplift per skill") if rows else None
        return self.render("skills.html", visit=visit, table=table, forest=forest, status=q.get("status") or "",
                           query=q.get("q") or "", sort_keys=queries.SORT_KEYS, statuses=queries.STATUSES)

    async def skill(self, request: Request, principal: Principal) -> Response:
        """GET /dashboard/skills/{id}: versions, a diff, provenance, uses and the actions."""
        skill_id = request.path_params["skill_id"]
        namespace = await self.owned(principal, queries.skill_namespace(self.app, skill_id), f"no skill with id {skill_id}")
        visit = await self.visit(request, principal, namespace)
        q = request.query_params
        detail = await queries.skill_detail(self.app, namespace, skill_id, _int(q.get("a"), None), _int(q.get("b"), None))
        trend = None
        if detail.reward_by_day:
            days = queries.day_range(detail.reward_by_day[0][0], detail.reward_by_day[-1][0])
            mean = {d: (m, n) for d, m, n in detail.reward_by_day}
            trend = plots.line_chart([plots.Series("reward", [(i, mean[d][0] if d in mean else None)
                                                              for i, d in enumerate(days)],
                                                   tips=[f"{d}: {fmt_signed(mean[d][0])} over {mean[d][1]} turns"
                                                         if d in mean else d for d in days])],
                                     plots.day_ticks(days), y_range=(-1.0, 1.0), height=180, y_label="mean reward",
                                     label="reward of the turns it was used in")
        return self.render("skill.html", visit=visit, d=detail, trend=trend, message=q.get("msg"))

    async def evolution(self, request: Request, principal: Principal) -> Response:
        """GET /dashboard/evolution: each run with its failures, proposals, accepted and rejected."""
        visit = await self.visit(request, principal)
        runs = await queries.evolutions(self.app, visit.namespace, _int(request.query_params.get("page"), 1))
        return self.render("evolution.html", visit=visit, runs=runs)

    async def training(self, request: Request, principal: Principal) -> Response:
        """GET /dashboard/training: steps, the loss curve, reward of trained turns, checkpoints, backlog."""
        visit = await self.visit(request, principal)
        t = await queries.training(self.app, visit.namespace)
        loss = reward = None
        ticks = [(float(s.step), str(s.step)) for s in t.steps[::max(1, math.ceil(len(t.steps) / 8))]]
        if any(s.loss is not None for s in t.steps):
            loss = plots.line_chart([plots.Series("loss", [(s.step, s.loss) for s in t.steps],
                                                  tips=[f"step {s.step}: loss {fmt_num(s.loss, 4)}" for s in t.steps])],
                                    ticks, y_label="loss", label="loss per step")
        if t.steps:
            reward = plots.line_chart([plots.Series("reward", [(s.step, s.mean_reward) for s in t.steps],
                                                    tips=[f"step {s.step}: mean reward {fmt_signed(s.mean_reward)}"
                                                          for s in t.steps])],
                                      ticks, y_range=(-1.0, 1.0), y_label="mean reward",
                                      label="mean reward of the turns each step trained on")
        return self.render("training.html", visit=visit, t=t, loss=loss, reward=reward,
                           recent=list(reversed(t.steps[-50:])), message=request.query_params.get("msg"))

    async def turn(self, request: Request, principal: Principal) -> Response:
        """GET /dashboard/turns/{id}: messages, response, ratings and the skills used."""
        turn_id = request.path_params["turn_id"]
        namespace = await self.owned(principal, queries.turn_namespace(self.app, turn_id), f"no turn {turn_id[:80]!r}")
        visit = await self.visit(request, principal, namespace)
        return self.render("turn.html", visit=visit, v=await queries.turn_view(self.app, turn_id))

    @staticmethod
    async def owned(principal: Principal, namespace: Awaitable[str], missing: str) -> str:
        """The namespace `namespace` resolves to, when `principal` may use it; NotFound otherwise (what
        another namespace holds is not told)."""
        found = await namespace
        if not principal.may_use(found):
            raise NotFound(missing)
        return found

    # ---- login ----

    async def login_form(self, request: Request) -> Response:
        """GET /dashboard/login: the token form (straight to the overview when no token is configured)."""
        from starlette.responses import RedirectResponse

        refused = await self.checks.validate_request(request)
        if refused is not None:
            return refused
        target = safe_next(request.query_params.get("next"))
        if self.sessions.open:
            return RedirectResponse(target, status_code=303, headers=HEADERS)
        return self.render("login.html", csrf=self.sessions.csrf(request.cookies.get(COOKIE)), next=target, error=None)

    async def login(self, request: Request) -> Response:
        """POST /dashboard/login: check the token (401 for a wrong one) and set the session cookie."""
        from starlette.responses import RedirectResponse

        refused = await self.checks.validate_request(request)
        if refused is not None:
            return refused
        try:
            form = await self.form(request)
        except InvalidInput as exc:
            return self.failure(400, str(exc))
        cookie = request.cookies.get(COOKIE)
        if not self.sessions.csrf_ok(cookie, form.get("csrf")):
            return self.failure(403, "the form's CSRF token is missing or stale: reload the login page")
        target = safe_next(form.get("next"))
        if self.sessions.open:
            return RedirectResponse(target, status_code=303, headers=HEADERS)
        session = self.sessions.login(form.get("token", ""))
        if session is None:
            log.warning("dashboard login refused from %s: unknown token", request.client.host if request.client else "?")
            return self.render("login.html", http_status=401, csrf=self.sessions.csrf(cookie), next=target,
                               error="That token is not one this server knows.")
        response = RedirectResponse(target, status_code=303, headers=HEADERS)
        response.set_cookie(COOKIE, session, max_age=int(SESSION_SECONDS), path=PATH, httponly=True,
                            samesite="strict", secure=request.url.scheme == "https")
        return response

    async def logout(self, request: Request, visit: Visit, form: dict[str, str]) -> Response:
        """POST /dashboard/logout: forget the session cookie."""
        from starlette.responses import RedirectResponse

        response = RedirectResponse(f"{PATH}/login", status_code=303, headers=HEADERS)
        response.delete_cookie(COOKIE, path=PATH, httponly=True, samesite="strict")
        return response

    # ---- actions (the CLI's commands) ----

    async def skill_action(self, request: Request, visit: Visit, form: dict[str, str]) -> Response:
        """POST /dashboard/skills/{id}/{retire|activate|rollback|merge}: as `skills retire`, `skills
        activate`, `skills rollback` and `skills merge` (this skill is the one kept) do."""
        skill_id = request.path_params["skill_id"]
        namespace = await self.owned(visit.principal, queries.skill_namespace(self.app, skill_id),
                                     f"no skill with id {skill_id}")
        visit.principal.check(namespace)
        visit.namespace = namespace
        action, library = request.path_params["action"], self.app.library
        if action == "retire":
            s = await library.set_status(namespace, skill_id, "retired", form.get("reason") or "retired by hand")
            message = f"{s.slug} is retired"
        elif action == "activate":
            s = await library.set_status(namespace, skill_id, "active", "activated by hand")
            message = f"{s.slug} is active"
        elif action == "rollback":
            version = _int(form.get("version"), None)
            if form.get("version") and version is None:
                raise InvalidInput(f"version {form.get('version')!r} is not a number")
            s = await library.rollback(namespace, skill_id, version)
            message = f"{s.slug} is now at version {s.version}"
        elif action == "merge":
            other = (form.get("other") or "").strip()
            if not other:
                raise InvalidInput("name the skill to fold into this one (its id or slug)")
            s = await library.merge(namespace, skill_id, other)
            message = f"merged {other} into {s.slug} (now version {s.version})"
        else:
            raise NotFound(f"no action {action!r}; one of retire, activate, rollback, merge")
        log.info("dashboard: %s by %s on skill %s/%d: %s", action, visit.principal.name, namespace, skill_id, message)
        return self.done(visit, f"/skills/{skill_id}", message)

    async def training_action(self, request: Request, visit: Visit, form: dict[str, str]) -> Response:
        """POST /dashboard/training/{pause|resume}: as `train pause` and `train resume` do."""
        action = request.path_params["action"]
        if action not in ("pause", "resume"):
            raise NotFound(f"no action {action!r}; pause or resume")
        trainer = self.app.trainer
        if trainer is None:
            raise Conflict(f"training backend {self.app.config.effective_backend!r} is not available; "
                           "rated turns stay queued")
        await trainer.set_paused(action == "pause")
        log.info("dashboard: training %sd by %s", action, visit.principal.name)
        return self.done(visit, "/training", "training paused" if action == "pause" else "training resumed")

    # ---- the app ----

    def asgi(self) -> Starlette:
        """The Starlette app of every route above."""
        from starlette.applications import Starlette
        from starlette.routing import Route

        return Starlette(routes=[
            Route(PATH, self.page(self.overview), methods=["GET"]),
            Route(f"{PATH}/skills", self.page(self.skills), methods=["GET"]),
            Route(f"{PATH}/skills/{{skill_id:int}}", self.page(self.skill), methods=["GET"]),
            Route(f"{PATH}/skills/{{skill_id:int}}/{{action}}", self.action(self.skill_action), methods=["POST"]),
            Route(f"{PATH}/evolution", self.page(self.evolution), methods=["GET"]),
            Route(f"{PATH}/training", self.page(self.training), methods=["GET"]),
            Route(f"{PATH}/training/{{action}}", self.action(self.training_action), methods=["POST"]),
            Route(f"{PATH}/turns/{{turn_id}}", self.page(self.turn), methods=["GET"]),
            Route(f"{PATH}/login", self.login_form, methods=["GET"]),
            Route(f"{PATH}/login", self.login, methods=["POST"]),
            Route(f"{PATH}/logout", self.action(self.logout, admin=False), methods=["POST"]),
        ])


def _int(text: str | None, default: Any) -> Any:
    try:
        return int(text) if text not in (None, "") else default
    except ValueError:
        return default


def dashboard_app(app: App, security: TransportSecuritySettings | None, tokens: TokenTable | None,
                  principal_key: str | None = None) -> Starlette:
    """The ASGI app of the dashboard over `app`, to mount at `PATH` (see `Dashboard`)."""
    return Dashboard(app, security, tokens, principal_key).asgi()


__all__ = ["Dashboard", "PATH", "Visit", "dashboard_app", "environment", "safe_next"]
