"""MCP wiring only: tools, resources and instructions over the application object."""
from __future__ import annotations

import functools
import inspect
import json
import types
import typing
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal, ParamSpec, TypeVar

from mcp import MCPError
from mcp.server import MCPServer
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.mcpserver import Context, Resolve, Sample
from mcp.server.mcpserver.exceptions import ResourceNotFoundError, ToolError, UnexpectedToolError
from mcp.server.mcpserver.tools import Tool
from mcp.server.mcpserver.utilities.func_metadata import FuncMetadata
from mcp.server.subscriptions import InMemorySubscriptionBus
from mcp.shared.subscriptions import ResourceUpdated
from mcp_types import METHOD_NOT_FOUND, CallToolResult, CreateMessageResult, InputRequiredResult, SamplingMessage, TextContent
from mcp_types import Resource as MCPResource
from mcp_types import ToolAnnotations
from pydantic import ConfigDict, Field, PrivateAttr, ValidationError

from . import __version__
from .access import LOCAL, Principal, principal_of
from .app import App
from .arguments import argument_errors
from .errors import MetaClawError, NotFound
from .metrics import metrics_for
from .models import (Category, EvolveResult, FetchResult, Message, Namespace, RateResult, RatingSource,
                     ReportResult, Score, SkillProposal, TokenData)
from .skills.skillmd import render_skill_md
from .skills_extension import SkillsExtension

INSTRUCTIONS = """\
metaclaw-mcp lets you learn from your own work across conversations. Around each reply:
1. Before answering a task, call `fetch_skills` with a one-line description of the task. Add the
   returned `injection` to your instructions and apply the skills that fit. Keep the `retrieval_id`.
2. After answering, call `report_turn` with the session id, the messages you answered, your
   response, the `retrieval_id`, and as `skill_ids` the skills (slugs) you actually used. Keep the
   returned `turn_id`. Similar requests later get the skills that went well on this one.
3. When the outcome is known (the user's reaction, a test result, a tool's verdict), call
   `rate_turn` with that `turn_id` and a score in [-1, 1] (source "user", "env" or "agent") and a
   one-line reason as `feedback`. Rate failures too: they are what new skills are learned from.
4. Now and then (for example after a few failures), call `evolve_skills`. Without `proposals` it
   returns a digest of recent failures and a schema; write skills that would have prevented them
   and call it again with `proposals`. New skills start as candidates.
Never put secrets in reports or proposals."""

P = ParamSpec("P")
R = TypeVar("R")


def tool_errors(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Turn the project's own errors into tool errors (isError) carrying their message."""
    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except MetaClawError as exc:
            raise ToolError(str(exc)) from None
    return wrapper


# ---- the tools' argument contract ----
#
# The SDK validates arguments in pydantic's lax mode (False is a number, "3" an integer), first turning any
# string that parses as JSON into that value for every argument not typed exactly `str` (so "null" becomes
# no value and "[]" a list), reports a mistake as pydantic's multi-line dump, and publishes schemas whose
# definitions sit in `$defs` behind `$ref`, which some clients refuse. Each tool is registered through
# `contract_tool` instead, which changes all four through the SDK's public classes.

_DEFS = "#/$defs/"


def _admits_text(annotation: Any) -> bool:
    """Whether a value of this type may be a string (then a string argument is never read as JSON)."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _admits_text(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return any(_admits_text(a) for a in typing.get_args(annotation))
    if origin is Literal:
        return any(isinstance(v, str) for v in typing.get_args(annotation))
    return annotation is Any or (isinstance(annotation, type) and issubclass(annotation, str))


class StrictArguments(FuncMetadata):
    """A tool's argument handling with strict types: a boolean is not a number, a string is not a number or a
    boolean, an integer-valued float is not an integer, an unknown argument is refused, and a string stays the
    string it is. The one leniency kept from the SDK: an array or object argument sent as the JSON text of
    one (some clients do that) is parsed, where the argument cannot be a string."""

    _json_args: frozenset[str] | None = PrivateAttr(default=None)

    def pre_parse_json(self, data: dict[str, Any]) -> dict[str, Any]:
        """A copy of the arguments where each string that is the JSON text of an array or object becomes that
        value, for arguments that cannot be strings only; every other value is kept as sent."""
        if self._json_args is None:  # the arguments that cannot be strings, worked out once
            self._json_args = frozenset(f.alias or name for name, f in self.arg_model.model_fields.items()
                                        if not _admits_text(f.annotation))
        out = dict(data)
        for key, value in data.items():
            if key not in self._json_args or not isinstance(value, str):
                continue
            try:
                parsed = json.loads(value)
            except (ValueError, RecursionError):
                continue
            if isinstance(parsed, (list, dict)):
                out[key] = parsed
        return out

    def validate_arguments(self, arguments_to_validate: dict[str, Any]) -> dict[str, Any]:
        """The arguments validated strictly against the tool's argument model, as keyword arguments (nested
        models stay models). pydantic's ValidationError for anything wrong, which `call_tool` turns into
        one line."""
        # strict at run time reaches every nested model (messages, tokens, proposals), not only the top level
        parsed = self.arg_model.model_validate(self.pre_parse_json(arguments_to_validate), strict=True)
        return parsed.model_dump_one_level()


def inline_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """The same JSON schema with every `$ref` into `$defs` replaced by the definition (siblings of the `$ref`,
    such as a description, win) and no `$defs` left. ValueError for a recursive definition or a reference
    outside `$defs`, which cannot be inlined."""
    defs: dict[str, Any] = schema.get("$defs", {})

    def inline(node: Any, seen: frozenset[str]) -> Any:
        if isinstance(node, list):
            return [inline(v, seen) for v in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if ref is None:
            return {k: inline(v, seen) for k, v in node.items()}
        if not isinstance(ref, str) or not ref.startswith(_DEFS) or ref[len(_DEFS):] not in defs:
            raise ValueError(f"schema reference {ref!r} is not a local definition")
        name = ref[len(_DEFS):]
        if name in seen:
            raise ValueError(f"schema definition {name!r} is recursive and cannot be inlined")
        siblings = {k: inline(v, seen) for k, v in node.items() if k != "$ref"}
        return {**inline(defs[name], seen | {name}), **siblings}

    return inline({k: v for k, v in schema.items() if k != "$defs"}, frozenset())



def contract_tool(fn: Callable[..., Any], **kwargs: Any) -> Tool:
    """`Tool.from_function(fn, **kwargs)` with StrictArguments, self-contained input and output schemas, and
    the docstring dedented as the description (unless `kwargs` gives one)."""
    # a docstring's indentation is not part of the description a client shows
    tool = Tool.from_function(fn, **{"description": inspect.cleandoc(fn.__doc__ or ""), **kwargs})
    meta = tool.fn_metadata
    # the SDK's argument model, refusing arguments it does not name (a misspelt idempotency key is not ignored)
    args = type(meta.arg_model.__name__, (meta.arg_model,),
                {"__module__": __name__, "model_config": ConfigDict(extra="forbid", strict=True)})
    strict = StrictArguments(arg_model=args, output_model=meta.output_model, wrap_output=meta.wrap_output,
                             output_schema=None if meta.output_schema is None else inline_schema(meta.output_schema))
    return tool.model_copy(update={"fn_metadata": strict,
                                   "parameters": inline_schema(args.model_json_schema(by_alias=True))})


class MetaClawServer(MCPServer):
    """MCPServer whose resource list includes every skill in the library, and whose argument errors are one
    line naming each wrong argument."""

    def __init__(self, app: App, **kwargs: Any):
        super().__init__(**kwargs)
        self.app = app
        self.metrics = metrics_for(app)
        self.metrics.declare_tools(t.name for t in kwargs.get("tools") or ())

    async def call_tool(self, name: str, arguments: dict[str, Any],
                        context: Context | None = None) -> CallToolResult | InputRequiredResult:
        """The SDK's `call_tool`, with an argument validation error reworded by `argument_errors` (ToolError);
        any other error passes through unchanged. Every call is counted and timed (`metrics.Metrics.tool_call`)."""
        with self.metrics.tool_call(name) as counted:
            try:
                result = await super().call_tool(name, arguments, context)
            except ToolError as exc:
                # only argument validation yields a ToolError caused by a ValidationError; a crash stays generic
                if isinstance(exc, UnexpectedToolError) or not isinstance(exc.__cause__, ValidationError):
                    raise
                raise ToolError(f"Error executing tool {name}: {argument_errors(exc.__cause__)}") from exc.__cause__
            counted.result(result)
            return result

    async def list_resources(self) -> list[MCPResource]:
        """The static resources, plus one `skill://<namespace>/<slug>` resource per active or candidate skill
        of every namespace (`listed_for_caller` then keeps those of the namespaces the caller may use)."""
        listed = await super().list_resources()
        for status in ("active", "candidate"):
            for s in await self.app.library.list(namespace=None, status=status):
                listed.append(MCPResource(uri=f"skill://{s.namespace}/{s.slug}", name=s.slug, title=s.name,
                                          description=f"[{s.status}, v{s.version}] {s.description}",
                                          mime_type="text/markdown"))
        return listed


# MCPServer hands the low-level server a prompts/list handler whatever it holds, and the low-level server
# advertises a capability for every method it has a handler for: an empty `prompts` capability, which
# invites clients to list prompts there are none of. The SDK's middleware (public `MCPServer.middleware`)
# is where the answers to `initialize` and `server/discover` can be rewritten.
PROMPT_METHODS = frozenset({"prompts/list", "prompts/get"})
CAPABILITY_METHODS = frozenset({"initialize", "server/discover"})


async def without_prompts(ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
    """Server middleware: no `prompts` capability in `initialize` and `server/discover` answers, and the
    prompt methods answered METHOD_NOT_FOUND (-32601), as for any method a server does not serve."""
    if ctx.method in PROMPT_METHODS:
        raise MCPError(code=METHOD_NOT_FOUND, message="Method not found", data=ctx.method)
    result = await call_next(ctx)
    if ctx.method in CAPABILITY_METHODS and isinstance(result, dict) and isinstance(result.get("capabilities"), dict):
        result = {**result, "capabilities": {k: v for k, v in result["capabilities"].items() if k != "prompts"}}
    return result


# Where the HTTP transport's bearer check leaves the caller (transport.BearerAuth), in the request's scope.
PRINCIPAL_KEY = "metaclaw_principal"


def _skill_namespace(uri: str) -> str | None:
    """`ns` of a `skill://ns/slug` URI, else None."""
    return uri[len("skill://"):].split("/", 1)[0] if uri.startswith("skill://") else None


async def listed_for_caller(ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
    """Server middleware: a `resources/list` answer keeps the `skill://` resources of the namespaces
    the caller may use (`Principal.may_use`; everything for the single-user default)."""
    result = await call_next(ctx)
    if ctx.method != "resources/list":
        return result
    if not isinstance(result, dict) or not isinstance(result.get("resources"), list):
        return result   # the SDK answers handlers' results as JSON-shaped dicts
    principal = principal_of(ctx.request, PRINCIPAL_KEY)

    def keep(entry: Any) -> bool:
        ns = _skill_namespace(str(entry.get("uri") or "")) if isinstance(entry, dict) else None
        return ns is None or principal.may_use(ns)
    return {**result, "resources": [r for r in result["resources"] if keep(r)]}


def caller(ctx: Context | None) -> Principal:
    """Who is calling: the principal the bearer check put on the HTTP request, else `LOCAL` (stdio,
    in-process, or loopback HTTP without a token: the single-user default)."""
    if ctx is None:
        return LOCAL
    try:
        request = ctx.request_context.request
    except (AttributeError, LookupError, ValueError):   # no request context: not over a transport
        return LOCAL
    return principal_of(request, PRINCIPAL_KEY)


async def ask_client_model(ctx: Context, namespace: str = "default", max_new: int | None = None,
                           proposals: Any = None) -> Sample | None:
    """Resolver: ask the connected client's model for proposals when it can sample and the caller brought none."""
    app: App = ctx.mcp_server.app  # type: ignore[attr-defined]
    if not caller(ctx).may_use(namespace):   # the tool itself says why; no failure leaves for a model
        return None
    caps = ctx.client_capabilities
    # A configured server-side LLM comes first; llm_provider "none" means never ask anyone.
    if proposals is not None or app.config.llm_provider != "sampling" or caps is None or caps.sampling is None:
        return None
    prompt = await app.evolution.llm_prompt(namespace, app.max_new(max_new))
    if prompt is None:
        return None
    system, user = prompt
    return Sample([SamplingMessage(role="user", content=TextContent(type="text", text=user))],
                  system_prompt=system, max_tokens=4000, temperature=0.3,
                  metadata={"purpose": "metaclaw-mcp evolve_skills"})


def build_server(app: App) -> MetaClawServer:
    """The MCP server over `app`: the four tools (the tools' docstrings are their descriptions), the
    `skill://` resources and their subscriptions, and the status and checkpoint resources when no
    `tokens_file` binds tokens to namespaces. Nothing is opened: run `app` before serving."""
    tools: list[Tool] = []

    def tool(annotations: ToolAnnotations) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
        def register(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
            tools.append(contract_tool(fn, annotations=annotations))
            return fn
        return register

    @tool(ToolAnnotations(title="Fetch learned skills", read_only_hint=True, idempotent_hint=True,
                          open_world_hint=False))
    @tool_errors
    async def fetch_skills(
        query: Annotated[str, Field(description="The task in a sentence or two.")],
        k: Annotated[int, Field(ge=1, le=50, description="How many skills at most.")] = app.config.skill_top_k,
        session_id: Annotated[str | None, Field(max_length=256, description="The conversation's id, the same you "
                                                "will pass to report_turn; recorded with what was fetched.")] = None,
        namespace: Namespace = "default",
        categories: Annotated[list[Category] | None, Field(description="Only these categories.")] = None,
        token_budget: Annotated[int | None, Field(ge=50, le=200_000,
                                                  description="Cap on the injection's size, in tokens.")] = None,
        messages: Annotated[list[Message] | None, Field(
            max_length=200, description="Optional recent chat messages; the last few user and assistant ones "
                                        "sharpen the query (system prompts and tool outputs are ignored).")] = None,
        ctx: Context | None = None,
    ) -> FetchResult:
        """Return the learned skills that fit a task, and a markdown block to add to your system prompt.

        Each skill says why it was chosen: relevance, measured usefulness, or exploration.
        Call before you answer. Pass the returned retrieval_id to report_turn afterwards."""
        return await app.fetch_skills(query, k, session_id, namespace, categories, token_budget, messages,
                                      caller=caller(ctx))

    @tool(ToolAnnotations(title="Report a turn", read_only_hint=False, destructive_hint=False,
                          idempotent_hint=True, open_world_hint=False))
    @tool_errors
    async def report_turn(
        session_id: Annotated[str, Field(min_length=1, max_length=256, description="The conversation's id.")],
        messages: Annotated[list[Message], Field(min_length=1, description="The chat messages the response answers.")],
        response: Annotated[str, Field(description="Your reply.")],
        retrieval_id: Annotated[str | None, Field(max_length=4096, description="From fetch_skills.")] = None,
        skill_ids: Annotated[list[int | str] | None, Field(max_length=100,
                                                           description="The skills (ids or slugs) you actually used, "
                                                           "fetched or not. Without it every fetched skill "
                                                           "counts as possibly used.")] = None,
        model: Annotated[str | None, Field(max_length=256, description="The model that wrote the response, "
                                                                   "e.g. claude-sonnet-4.")] = None,
        tokens: Annotated[TokenData | None, Field(description="Sampler tokens, for RL.")] = None,
        metadata: Annotated[dict[str, Any] | None, Field(description="Anything else worth keeping with the turn "
                                                         "(task id, tool versions), as a JSON object; secrets are "
                                                         "redacted before it is stored.")] = None,
        idempotency_key: Annotated[str | None, Field(min_length=1, max_length=256,
                                                     description="Same key, same turn: safe to retry.")] = None,
        namespace: Namespace = "default",
        ctx: Context | None = None,
    ) -> ReportResult:
        """Log what you were asked, which skills you used, and what you answered. Returns the turn_id."""
        return await app.report_turn(session_id, messages, response, retrieval_id, skill_ids, model, tokens,
                                     metadata, idempotency_key, namespace, caller=caller(ctx))

    @tool(ToolAnnotations(title="Rate a turn", read_only_hint=False, destructive_hint=False,
                          idempotent_hint=False, open_world_hint=False))
    @tool_errors
    async def rate_turn(
        turn_id: Annotated[str, Field(min_length=1, max_length=128, description="From report_turn.")],
        score: Score,
        source: Annotated[RatingSource, Field(description="Who judged: user (the person), env (a test, a tool, "
                                                          "a checker), agent (you) or judge (an LLM judge). A user "
                                                          "rating outranks env, which outranks agent, then judge.")] = "user",
        feedback: Annotated[str | None, Field(max_length=8000, description="Why, in a line.")] = None,
        ctx: Context | None = None,
    ) -> RateResult:
        """Attach a reward in [-1, 1] to a reported turn. A user rating outranks env, agent and judge ones."""
        return await app.rate_turn(turn_id, score, source, feedback, caller=caller(ctx))

    @tool(ToolAnnotations(title="Evolve skills", read_only_hint=False, destructive_hint=False,
                          idempotent_hint=False, open_world_hint=False))
    @tool_errors
    async def evolve_skills(
        namespace: Namespace = "default",
        max_new: Annotated[int | None, Field(ge=0, le=20, description="Most skills to add.")] = None,
        proposals: Annotated[list[SkillProposal] | None, Field(
            max_length=50, description="Skills you wrote from the digest a call without proposals returns; each is "
                                       "screened and stored as a candidate.")] = None,
        dry_run: Annotated[bool, Field(description="Answer what would be accepted and rejected, writing nothing "
                                                   "(no skill, no record of the run).")] = False,
        sampled: Annotated[CreateMessageResult | None, Resolve(ask_client_model)] = None,
        ctx: Context | None = None,
    ) -> EvolveResult:
        """Turn failures into skills. With proposals: screen them and store the good ones as candidate skills.
        Without: ask your model (MCP sampling) to write them from recent failures; a client that cannot
        sample gets a digest of the failures and the proposal schema, to write proposals and call again."""
        who = caller(ctx)

        async def progress(done: float, message: str) -> None:
            if ctx is not None:
                await ctx.report_progress(done, 3, message)

        if sampled is not None and proposals is None:
            await progress(1, f"your model answered ({sampled.model}); parsing and screening its proposals")
            answer = sampled.content.text if isinstance(sampled.content, TextContent) else ""
            result = await app.evolve_from_sample(namespace, max_new, answer, sampled.model, dry_run, caller=who)
        else:
            await progress(1, "reading recent failures" if proposals is None else "screening proposals")
            result = await app.evolve_skills(namespace, max_new, proposals, dry_run, caller=who)
        await progress(3, f"{len(result.accepted)} accepted, {len(result.rejected)} rejected")
        return result

    bus = InMemorySubscriptionBus()   # resource updates for clients listening (`subscriptions/listen`)
    skills_extension = SkillsExtension(app, PRINCIPAL_KEY)   # the MCP Skills extension (skills/list, skills/get)
    mcp = MetaClawServer(app, name="metaclaw-mcp", title="MetaClaw skills", version=__version__,
                         instructions=INSTRUCTIONS, log_level=app.config.log_level, tools=tools, subscriptions=bus,
                         middleware=[without_prompts, listed_for_caller], extensions=[skills_extension])
    skills_extension.attach(mcp)

    # Status and checkpoints span every namespace, and the SDK tells a static resource nothing of its
    # caller: with tokens bound to namespaces they are not served over MCP (the CLI and an admin's
    # dashboard show them).
    if app.config.tokens_file is None:
        @mcp.resource("metaclaw://status", name="status", title="metaclaw-mcp status", mime_type="application/json")
        async def status() -> str:
            """Counts of skills and turns, recent reward, trainer state."""
            return json.dumps(await app.status(), indent=2)

        @mcp.resource("metaclaw://checkpoints", name="checkpoints", title="Training checkpoints",
                      mime_type="application/json")
        async def checkpoints() -> str:
            """Every checkpoint the trainer saved (newest first): step, kind (sampler/state), path, backend."""
            rows = await app.db.fetchall("SELECT step, kind, path, backend, created_at FROM checkpoints "
                                         "ORDER BY id DESC LIMIT 200")
            return json.dumps([dict(r) for r in rows], indent=2)

        async def announce(step: dict[str, Any]) -> None:
            """Tell listening clients (2026-07-28 `subscriptions/listen`) that status and checkpoints changed."""
            await bus.publish(ResourceUpdated(uri="metaclaw://status"))
            if step["checkpoints"]:
                await bus.publish(ResourceUpdated(uri="metaclaw://checkpoints"))

        if app.trainer is not None:
            app.trainer.on_step.append(announce)

    @mcp.resource("skill://{namespace}/{slug}", name="skill", title="A learned skill", mime_type="text/markdown")
    async def skill(namespace: str, slug: str, ctx: Context) -> str:
        """One skill's current version as SKILL.md (in a namespace the caller may use)."""
        if not caller(ctx).may_use(namespace):
            raise ResourceNotFoundError(f"no skill {slug[:80]!r} in namespace {namespace[:80]!r}")
        try:
            record = await app.library.get(namespace, slug)
        except NotFound as exc:
            raise ResourceNotFoundError(str(exc)) from None
        return render_skill_md(record.doc())

    return mcp
