"""`metaclaw-mcp`: serve, inspect and manage the library and the turn log.

Each command is a thin layer over the same App methods the MCP tools use.
"""
from __future__ import annotations

import difflib
import json
import os
import sys
import typing
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Optional, TypeVar

import anyio
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer.core import TyperGroup
from typer.exceptions import TyperException

from .config import MetaClawConfig, load_config
from .dashboard.cli import dashboard as dashboard_command
from .errors import ConfigError, InvalidInput, MetaClawError
from .models import SkillStatus

T = TypeVar("T")
out = Console()
err = Console(stderr=True, soft_wrap=True)  # never fold paths and commands in messages



def untyped_flags(params: Iterable[Any]) -> list[Any]:
    """The same parameters, each flag given an empty metavar, so that help lists `--json` and `--help`
    alone instead of `--json <bool>` (what typer's help shows for a flag with no metavar)."""
    params = list(params)
    for param in params:
        if getattr(param, "is_flag", False) and getattr(param, "metavar", "") is None:
            param.metavar = ""
    return params


class Commands(TyperGroup):
    """The command groups' class: flags in help without a value type (`untyped_flags`), for the group's
    own options and for those of each command it hands out."""

    def get_params(self, ctx: Any) -> list[Any]:
        """The group's parameters (its --help included), flags untyped."""
        return untyped_flags(super().get_params(ctx))

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        """The command `cmd_name`, its flags untyped (None when there is none)."""
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            untyped_flags(command.get_params(ctx))
        return command


cli = typer.Typer(cls=Commands, help="metaclaw-mcp: continuous learning for any MCP agent.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)
skills_cli = typer.Typer(cls=Commands, help="Browse and manage learned skills.", no_args_is_help=True)
turns_cli = typer.Typer(cls=Commands, help="Browse and export the turn log.", no_args_is_help=True)
config_cli = typer.Typer(cls=Commands, help="Show the effective configuration, or every setting.",
                         no_args_is_help=True)
tokens_cli = typer.Typer(cls=Commands, help="Bearer tokens for HTTP and SSE clients, each bound to namespaces and "
                         "a role.", no_args_is_help=True)
train_cli = typer.Typer(cls=Commands, help="The background trainer: status, pause, resume, one step now.",
                        no_args_is_help=True)
cli.add_typer(skills_cli, name="skills")
cli.add_typer(turns_cli, name="turns")
cli.add_typer(config_cli, name="config")
cli.add_typer(train_cli, name="train")
cli.add_typer(tokens_cli, name="tokens")
cli.command("dashboard")(dashboard_command)

_globals: dict[str, Any] = {}


@cli.callback()
def main_options(
    config: Optional[Path] = typer.Option(None, "--config", help="TOML config file (default $METACLAW_HOME/config.toml)."),
    home: Optional[Path] = typer.Option(None, "--home", help="Data folder (default $METACLAW_HOME or ~/.metaclaw)."),
) -> None:
    """Options every command takes: --config and --home, kept for the command's `load_config`."""
    _globals.update(config=config, home=home)


def _config(**overrides: Any) -> MetaClawConfig:
    return load_config(_globals.get("config"), home=_globals.get("home"), **overrides)


def _fail(message: str, code: int = 1) -> None:
    err.print(f"[red]error:[/red] {escape(message)}", highlight=False, markup=True)  # the message is not markup
    raise typer.Exit(code)


def one_of(option: str, value: str | None, allowed: Sequence[str]) -> None:
    """Exit 2 with one line naming the allowed values (and the closest, when one is close) unless `value`
    is None or one of `allowed`."""
    if value is None or value in allowed:
        return
    close = difflib.get_close_matches(value, allowed, n=1)
    _fail(f"{option} must be one of {', '.join(allowed)} (got {value!r})"
          + (f": did you mean {close[0]}?" if close else ""), code=2)


def existing(path: Path) -> Path:
    """`path`, or exit 1 with one line saying that it does not exist."""
    if not path.exists() and not path.is_symlink():
        _fail(f"{path} does not exist")
    return path


def _run(fn: Callable[[Any], Awaitable[T]], **overrides: Any) -> T:
    """Open the app (no background tasks), run `fn(app)`, close; errors become one clear line."""
    from .app import open_app

    try:
        config = _config(**overrides)

        async def go() -> T:
            async with open_app(config) as app:
                return await fn(app)
        return anyio.run(go)
    except ConfigError as exc:  # a bad setting: exit 2, as `serve` and `config show` do
        _fail(str(exc), code=2)
        raise  # unreachable
    except MetaClawError as exc:
        _fail(str(exc))
        raise  # unreachable


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


# ---- ids that can be typed: a unique prefix names a turn or a skill ----

MATCHES_SHOWN = 5  # an ambiguous prefix lists this many of its matches


def _one_match(ref: str, matches: list[str], what: str) -> str:
    """The one match of prefix `ref`; `ref` itself when nothing matches (the lookup then says it is not
    found); InvalidInput listing a few matches when several do."""
    if len(matches) == 1:
        return matches[0]
    if not matches:
        return ref
    shown = ", ".join(matches[:MATCHES_SHOWN]) + (", ..." if len(matches) > MATCHES_SHOWN else "")
    raise InvalidInput(f"{ref!r} is the start of more than one {what} ({shown}); give more of it")


async def full_turn_id(app: Any, ref: str) -> str:
    """The turn id `ref` names: itself when a turn has it, else the one turn id it begins."""
    return _one_match(ref, await app.turns.ids_starting(ref, MATCHES_SHOWN + 1), "turn id") if ref else ref


async def full_skill_ref(app: Any, namespace: str, ref: str) -> str:
    """The skill `ref` names in `namespace`: an id (digits) or a slug as given, else the one slug it begins."""
    if not ref or (ref.isascii() and ref.isdigit()):
        return ref
    return _one_match(ref, await app.library.slugs_starting(namespace, ref, MATCHES_SHOWN + 1),
                      f"skill slug in namespace {namespace!r}")


# ---- serve ----

TRANSPORTS = typing.get_args(MetaClawConfig.model_fields["transport"].annotation)

@cli.command()
def serve(
    transport: str = typer.Option("stdio", "--transport", "-t", help="stdio, http (streamable HTTP at /mcp) or sse."),
    host: Optional[str] = typer.Option(None, "--host", help="Bind address for http/sse (default 127.0.0.1)."),
    port: Optional[int] = typer.Option(None, "--port", "-p", help="Port for http/sse (default 8765)."),
    auth_token: Optional[str] = typer.Option(None, "--auth-token", envvar="METACLAW_AUTH_TOKEN",
                                             help="Bearer token HTTP/SSE clients must send. Required off loopback."),
    tokens_file: Optional[Path] = typer.Option(None, "--tokens-file", help="Token file: each token bound to "
                                               "namespaces and a role (see `tokens add`); replaces --auth-token."),
) -> None:
    """Run the MCP server (stdio by default)."""
    from .transport import run

    one_of("--transport", transport, TRANSPORTS)
    try:
        config = _config(transport=transport if transport != "stdio" else None, host=host, port=port,
                         auth_token=auth_token, tokens_file=tokens_file)
        run(config)
    except MetaClawError as exc:
        _fail(str(exc), code=2)
    except KeyboardInterrupt:
        pass


# ---- status ----

@cli.command()
def status(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Counts of skills and turns, recent reward, trainer state."""
    data = _run(lambda app: app.status())
    if as_json:
        _print_json(data)
        return
    t = Table(title=f"metaclaw-mcp {data['version']}", show_header=False)
    t.add_row("home", data["home"])
    s = data["skills"]
    t.add_row("skills", f"{s['total']} ({s['active']} active, {s['candidate']} candidate, {s['retired']} retired)")
    tr = data["turns"]
    states = ", ".join(f"{n} {k}" for k, n in sorted(tr["by_state"].items())) or "none"
    t.add_row("turns", f"{tr['total']} ({states}); {tr['ratings']} ratings")
    rr = tr["recent_reward"]
    t.add_row("recent reward", "n/a" if rr["mean"] is None else f"{rr['mean']:+.3f} over the last {rr['n']} rated turns")
    ev = data["evolutions"]
    t.add_row("evolution runs", f"{ev['runs']}" + (f" (last {ev['last']})" if ev["last"] else ""))
    tn = data["training"]
    t.add_row("training", f"backend {tn['backend']}, model {tn['model_name']}; {tn['backlog']} rated turns waiting, "
                          f"{tn['steps']}/{tn['max_steps']} steps")
    if tn["last_step"]:
        ls = tn["last_step"]
        loss = "n/a" if ls["loss"] is None else f"{ls['loss']:.4g}"
        reward = "n/a" if ls["mean_reward"] is None else f"{ls['mean_reward']:+.3f}"
        t.add_row("last step", f"#{ls['step']}: loss {loss}, mean reward of its turns {reward} ({ls['created_at'][:19]})")
    ck = tn["last_checkpoint"]
    t.add_row("last checkpoint", ck["path"] if ck else "none")
    t.add_row("next", tn["next"])
    out.print(t)


# ---- skills ----

SKILL_REF = "Slug, id, or the start of a slug."
SKILL_STATUSES = typing.get_args(SkillStatus)

@skills_cli.command("list")
def skills_list(
    namespace: str = typer.Option("default", "--namespace", "-n"),
    status_: Optional[str] = typer.Option(None, "--status", help="candidate, active or retired."),
    category: Optional[str] = typer.Option(None, "--category"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """List skills (current versions)."""
    one_of("--status", status_, SKILL_STATUSES)
    skills = _run(lambda app: app.library.list(namespace, status=status_, category=category))
    if as_json:
        _print_json([s.as_dict() for s in skills])
        return
    t = Table()
    t.add_column("id", no_wrap=True)
    # slugs are typed back (`skills show`): whole, on one line; the description wraps instead
    t.add_column("slug", no_wrap=True, min_width=max((len(s.slug) for s in skills), default=4))
    for name in ("v", "status", "category"):
        t.add_column(name, overflow="fold")
    t.add_column("description", ratio=1, overflow="fold")
    for s in skills:
        t.add_row(str(s.id), s.slug, str(s.version), s.status, s.category,
                  s.description[:80] + ("…" if len(s.description) > 80 else ""))
    out.print(t)


@skills_cli.command("show")
def skills_show(ref: str = typer.Argument(..., help="Slug, id, or the start of a slug."),
                namespace: str = typer.Option("default", "--namespace", "-n"),
                as_json: bool = typer.Option(False, "--json")) -> None:
    """Show a skill and its versions."""
    async def get(app: Any) -> dict[str, Any]:
        skill = await app.library.get(namespace, await full_skill_ref(app, namespace, ref))
        return skill.as_dict() | {"versions": [v.as_dict() for v in await app.library.versions(skill.id)]}
    data = _run(get)
    if as_json:
        _print_json(data)
        return
    out.print(f"[bold]{data['slug']}[/bold] (id {data['id']}, version {data['version']}, {data['status']}, "
              f"{data['category']}, source {data['source']})", highlight=False)
    if data["status_reason"]:
        out.print(f"reason: {data['status_reason']}", highlight=False, markup=False)
    out.print(data["description"] + "\n", highlight=False, markup=False)
    out.print(data["body"] + "\n", highlight=False, markup=False)
    for v in data["versions"]:
        mark = "*" if v["version"] == data["version"] else " "
        out.print(f"{mark} v{v['version']}  {v['created_at']}  {v['source']}  provenance={v['provenance']}",
                  highlight=False, markup=False)


@skills_cli.command("import")
def skills_import(path: Path = typer.Argument(..., help="A SKILL.md file, a folder of skill folders, or a .jsonl file."),
                  namespace: str = typer.Option("default", "--namespace", "-n"),
                  status_: str = typer.Option("active", "--status", help="Status of new skills: candidate, "
                                              "active or retired.")) -> None:
    """Import SKILL.md folders (agentskills.io format) or JSONL. Bad files are reported and skipped;
    the rest lands in one transaction, or nothing does; then their vectors are computed (with the
    [embeddings] extra), so a server starts ready. Exits 1 when nothing was imported and something
    was skipped for a reason other than being unchanged."""
    from rich.progress import Progress

    one_of("--status", status_, SKILL_STATUSES)
    existing(path)
    with Progress(console=err, transient=True) as bar:
        task = bar.add_task(f"importing {path.name}", total=None)
        vectors = bar.add_task("computing vectors", total=None, visible=False)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        def embed_progress(done: int, total: int) -> None:
            bar.update(vectors, completed=done, total=total, visible=True)
        report = _run(lambda app: app.import_skills(path, namespace, status_, progress, embed_progress))
    out.print(f"imported {len(report.imported)} skill(s)", highlight=False)
    failed = False
    for where, why in report.skipped:
        why = why.removeprefix(f"{where}: ")  # the path once, not twice
        failed = failed or why != "unchanged"
        err.print(f"skipped {where}: {why}", highlight=False, markup=False)
    if failed and not report.imported:
        raise typer.Exit(1)


@skills_cli.command("export")
def skills_export(path: Path = typer.Argument(..., help="Folder to write <slug>/SKILL.md into, or a .jsonl file."),
                  namespace: str = typer.Option("default", "--namespace", "-n"),
                  status_: Optional[str] = typer.Option(None, "--status", help="Only skills with this status: "
                                                        "candidate, active or retired."),
                  force: bool = typer.Option(False, "--force", help="Write into a non-empty folder, or replace "
                                             "an existing .jsonl file (links are never followed).")) -> None:
    """Export skills as SKILL.md folders, or as one JSONL file when PATH ends in .jsonl. Each file is
    written whole (a temporary file, then renamed)."""
    one_of("--status", status_, SKILL_STATUSES)
    if path.suffix == ".jsonl":
        count = _run(lambda app: app.library.export_jsonl(path, namespace, status=status_, force=force))
        out.print(f"wrote {count} skill(s) to {path}", highlight=False, markup=False)
        return
    written = _run(lambda app: app.library.export_folder(path, namespace, status=status_, force=force))
    out.print(f"wrote {len(written)} skill(s) to {path}", highlight=False, markup=False)


@skills_cli.command("retire")
def skills_retire(ref: str = typer.Argument(..., help=SKILL_REF), reason: str = typer.Option("retired by hand", "--reason"),
                  namespace: str = typer.Option("default", "--namespace", "-n")) -> None:
    """Stop showing a skill (its versions stay, for rollback)."""
    async def retire(app: Any) -> Any:
        return await app.library.set_status(namespace, await full_skill_ref(app, namespace, ref), "retired", reason)
    s = _run(retire)
    out.print(f"{s.slug} is retired", highlight=False)


@skills_cli.command("activate")
def skills_activate(ref: str = typer.Argument(..., help=SKILL_REF), namespace: str = typer.Option("default", "--namespace", "-n")) -> None:
    """Make a candidate or retired skill active."""
    async def activate(app: Any) -> Any:
        return await app.library.set_status(namespace, await full_skill_ref(app, namespace, ref), "active",
                                            "activated by hand")
    s = _run(activate)
    out.print(f"{s.slug} is active", highlight=False)


@skills_cli.command("rollback")
def skills_rollback(ref: str = typer.Argument(..., help=SKILL_REF), version: Optional[int] = typer.Option(None, "--version", help="Default: the previous one."),
                    namespace: str = typer.Option("default", "--namespace", "-n")) -> None:
    """Point a skill at an older version."""
    async def rollback(app: Any) -> Any:
        return await app.library.rollback(namespace, await full_skill_ref(app, namespace, ref), version)
    s = _run(rollback)
    out.print(f"{s.slug} is now at version {s.version}", highlight=False)


@skills_cli.command("merge")
def skills_merge(keep: str = typer.Argument(..., help="The skill that stays (id, slug or the start of one)."),
                 other: str = typer.Argument(..., help="The skill folded into it, then retired (id, slug or "
                                                        "the start of one)."),
                 namespace: str = typer.Option("default", "--namespace", "-n")) -> None:
    """Fold one skill into another that teaches the same rule: KEEP gets a new version with both
    descriptions' situations and both provenances, OTHER is retired with the reason. Nothing is
    deleted (`rollback` and `activate` undo it).

    Example: metaclaw-mcp skills merge iso-8601-dates dates-year-month-day"""
    async def merge(app: Any) -> Any:
        return await app.library.merge(namespace, await full_skill_ref(app, namespace, keep),
                                       await full_skill_ref(app, namespace, other))
    s = _run(merge)
    out.print(f"merged {other} into {s.slug} (now version {s.version})", highlight=False)


# ---- turns ----

@turns_cli.command("list")
def turns_list(namespace: Optional[str] = typer.Option("default", "--namespace", "-n"),
               session: Optional[str] = typer.Option(None, "--session"),
               state: Optional[str] = typer.Option(None, "--state", help="pending, rated, claimed, trained, skipped."),
               limit: int = typer.Option(20, "--limit"),
               as_json: bool = typer.Option(False, "--json")) -> None:
    """List recent turns, newest first."""
    from .metrics import TRAIN_STATES

    one_of("--state", state, TRAIN_STATES)
    rows = _run(lambda app: app.turns.list(namespace, session, state, limit))
    if as_json:
        _print_json(rows)
        return
    t = Table()
    # turn ids are typed back (`turns show`): whole, on one line; the other columns wrap instead
    t.add_column("turn", no_wrap=True, min_width=max((len(r["id"]) for r in rows), default=4))
    for name in ("session", "reward", "state", "created"):
        t.add_column(name, overflow="fold")
    t.add_column("response", ratio=1, overflow="fold")
    for r in rows:
        t.add_row(r["id"], r["session_id"], "" if r["reward"] is None else f"{r['reward']:+.2f}", r["train_state"],
                  r["created_at"][:16].replace("T", " "), (r["response"] or "").replace("\n", " ")[:60])
    out.print(t)


@turns_cli.command("show")
def turns_show(turn_id: str = typer.Argument(..., help="A turn id, or its start (unique).")) -> None:
    """Show one turn with its ratings and the skills injected into it (JSON)."""
    async def show(app: Any) -> dict[str, Any]:
        return await app.turns.get(await full_turn_id(app, turn_id))
    _print_json(_run(show))


@turns_cli.command("export")
def turns_export(output: Optional[Path] = typer.Option(None, "--out", "-o", help="File (default stdout)."),
                 namespace: Optional[str] = typer.Option(None, "--namespace", "-n", help="Default: all."),
                 rated_only: bool = typer.Option(False, "--rated-only")) -> None:
    """Export turns as JSONL, one turn per line, oldest first."""
    async def export(app: Any) -> int:
        n = 0
        stream = open(output, "w", encoding="utf-8") if output else sys.stdout
        try:
            async for turn in app.turns.iter_export(namespace, rated_only):
                stream.write(json.dumps(turn, ensure_ascii=False) + "\n")
                n += 1
        finally:
            if output:
                stream.close()
        return n
    n = _run(export)
    if output:
        err.print(f"wrote {n} turn(s) to {output}", highlight=False, markup=False)


# ---- train ----

def _trainer(app: Any) -> Any:
    if app.trainer is None:
        raise MetaClawError(f"training backend {app.config.effective_backend!r} is not available in this version; "
                            "rated turns stay queued (set METACLAW_BACKEND=export to export them)")
    return app.trainer


@train_cli.command("status")
def train_status() -> None:
    """Steps, backlog, last checkpoint and whether training is paused (JSON)."""
    async def get(app: Any) -> dict[str, Any]:
        data = (await app.status())["training"]
        if app.trainer is not None:
            data |= await app.trainer.status()
        return data
    _print_json(_run(get))


@train_cli.command("pause")
def train_pause() -> None:
    """Stop claiming new batches (a running server picks this up at its next poll)."""
    _run(lambda app: _trainer(app).set_paused(True))
    out.print("training paused", highlight=False)


@train_cli.command("resume")
def train_resume() -> None:
    """Resume claiming batches."""
    _run(lambda app: _trainer(app).set_paused(False))
    out.print("training resumed", highlight=False)


@train_cli.command("once")
def train_once() -> None:
    """Train one batch now, even if it is smaller than batch_size (a claimed batch is replayed first)."""
    worked = _run(lambda app: _trainer(app).once(force=True))
    out.print("trained one batch" if worked else "nothing to train", highlight=False)


# ---- config ----

# ---- tokens ----

@tokens_cli.command("add")
def tokens_add(name: str = typer.Argument(..., help="A name for logs (who or what holds the token)."),
               namespace: list[str] = typer.Option(..., "--namespace", "-n", help="A namespace it may use "
                                                   "(repeatable); '*' for all."),
               role: str = typer.Option("agent", "--role", help="agent (the four tools) or admin."),
               file: Optional[Path] = typer.Option(None, "--file", help="Token file (default: tokens_file, else "
                                                   "$METACLAW_HOME/tokens.toml).")) -> None:
    """Make a new token, store its SHA-256 in the token file, and print the token once.

    Serve with the file: METACLAW_TOKENS_FILE=~/.metaclaw/tokens.toml metaclaw-mcp serve --transport http.
    A client then sends `Authorization: Bearer <token>`."""
    from .access import ROLES, TokenTable, new_token, token_entry

    one_of("--role", role, ROLES)
    try:
        config = _config()
        path = (file or config.tokens_file or config.home / "tokens.toml").expanduser()
        existing = path.read_text(encoding="utf-8") if path.exists() else ""
        if existing.strip():
            names = {p.name for p in TokenTable.load(path).principals()}
            if name in names:
                _fail(f"{path} already has a token named {name!r}")
        token = new_token()
        entry = token_entry(name, token, namespace, role)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", encoding="utf-8") as f:
            f.write(existing + ("\n" if existing and not existing.endswith("\n\n") else "") + entry)
        TokenTable.load(tmp)   # what was written reads back
        os.replace(tmp, path)
    except MetaClawError as exc:
        _fail(str(exc), code=2)
        return
    err.print(f"added {name!r} ({role}, namespaces: {', '.join(namespace)}) to {path}; the token is shown once:",
              highlight=False, markup=False)
    sys.stdout.write(token + "\n")


@config_cli.command("show")
def config_show(as_json: bool = typer.Option(False, "--json")) -> None:
    """Print the effective configuration (secrets masked)."""
    try:
        shown = _config().shown()
    except MetaClawError as exc:
        _fail(str(exc), code=2)
        return
    if as_json:
        _print_json(shown)
        return
    t = Table("setting", "value")
    for k, v in shown.items():
        t.add_row(k, "" if v is None else str(v))
    out.print(t)


@config_cli.command("table")
def config_table(readme: Optional[Path] = typer.Option(None, "--readme", help="Rewrite the table in this file "
                                                       "(between its markers) instead of printing it.")) -> None:
    """Every setting with its default and meaning, as a markdown table (from MetaClawConfig itself).

    Example: metaclaw-mcp config table --readme README.md"""
    from .config import settings_table, with_settings_table

    if readme is None:
        sys.stdout.write(settings_table())
        return
    try:
        text = existing(readme).read_text(encoding="utf-8")
        updated = with_settings_table(text)
    except (OSError, ValueError) as exc:
        _fail(f"cannot update {readme}: {exc}")
        return
    if updated != text:
        readme.write_text(updated, encoding="utf-8")
    err.print(f"{readme}: settings table {'updated' if updated != text else 'already up to date'}",
              highlight=False, markup=False)


def utf8_output() -> None:
    """Write stdout and stderr as UTF-8 whatever the locale (a Windows pipe defaults to cp1252, which
    cannot encode most of what turns and skills hold). Characters UTF-8 cannot encode (lone surrogates)
    are written as backslash escapes, which is also their JSON spelling."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)  # absent when replaced by something not a TextIOWrapper
        if reconfigure is not None:
            reconfigure(encoding="utf-8", errors="backslashreplace")


def main(argv: Sequence[str] | None = None) -> None:
    """The `metaclaw-mcp` entry point: UTF-8 output, then the command line parsed and run. A mistake
    on the command line (an unknown command or option, a value of the wrong type) is one line,
    `error: <what was wrong> (see '<command> --help')`, and exit code 2, as every other error here."""
    utf8_output()
    try:
        code = cli(list(argv) if argv is not None else None, prog_name="metaclaw-mcp", standalone_mode=False)
    except typer.Abort:
        err.print("aborted", highlight=False)
        sys.exit(130)
    except TyperException as exc:   # click's usage errors (typer's public base of them)
        format_message = getattr(exc, "format_message", None)
        if format_message is None:
            raise
        ctx = getattr(exc, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        err.print(f"[red]error:[/red] {escape(format_message())}{escape(hint)}", highlight=False, markup=True)
        sys.exit(int(getattr(exc, "exit_code", 2)))
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
