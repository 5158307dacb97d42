"""MCP wiring only: tools, resources and instructions over the application object."""
from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, ParamSpec, TypeVar

from mcp.server import MCPServer
from mcp.server.mcpserver import Context, Resolve, Sample
from mcp.server.mcpserver.exceptions import ResourceNotFoundError, ToolError
from mcp.shared.subscriptions import ResourceUpdated
from mcp_types import CreateMessageResult, SamplingMessage, TextContent, ToolAnnotations
from mcp_types import Resource as MCPResource
from pydantic import Field

from . import __version__
from .app import App
from .errors import MetaClawError, NotFound
from .models import (Category, EvolveResult, FetchResult, Message, Namespace, RateResult, RatingSource,
                     ReportResult, Score, SkillProposal, TokenData)
from .llm.accounting import record_usage
from .skills.injection import estimate_tokens
from .skills.skillmd import render_skill_md

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


class MetaClawServer(MCPServer):
    """MCPServer whose resource list includes every skill in the library."""

    def __init__(self, app: App, **kwargs: Any):
        super().__init__(**kwargs)
        self.app = app

    async def list_resources(self) -> list[MCPResource]:
        listed = await super().list_resources()
        for status in ("active", "candidate"):
            for s in await self.app.library.list(namespace=None, status=status):
                listed.append(MCPResource(uri=f"skill://{s.namespace}/{s.slug}", name=s.slug, title=s.name,
                                          description=f"[{s.status}, v{s.version}] {s.description}",
                                          mime_type="text/markdown"))
        return listed


async def ask_client_model(ctx: Context, namespace: str = "default", max_new: int | None = None,
                           proposals: Any = None) -> Sample | None:
    """Resolver: ask the connected client's model for proposals when it can sample and the caller brought none."""
    app: App = ctx.mcp_server.app  # type: ignore[attr-defined]
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
    mcp = MetaClawServer(app, name="metaclaw-mcp", title="MetaClaw skills", version=__version__,
                         instructions=INSTRUCTIONS, log_level=app.config.log_level)

    @mcp.tool(annotations=ToolAnnotations(title="Fetch learned skills", read_only_hint=True, idempotent_hint=True,
                                          open_world_hint=False))
    @tool_errors
    async def fetch_skills(
        query: Annotated[str, Field(description="The task in a sentence or two.")],
        k: Annotated[int, Field(ge=1, le=50, description="How many skills at most.")] = app.config.skill_top_k,
        session_id: Annotated[str | None, Field(max_length=256)] = None,
        namespace: Namespace = "default",
        categories: Annotated[list[Category] | None, Field(description="Only these categories.")] = None,
        token_budget: Annotated[int | None, Field(ge=50, le=200_000,
                                                  description="Cap on the injection's size, in tokens.")] = None,
        messages: Annotated[list[Message] | None, Field(
            max_length=200, description="Optional recent chat messages; the last few user and assistant ones "
                                        "sharpen the query (system prompts and tool outputs are ignored).")] = None,
    ) -> FetchResult:
        """Return the learned skills that fit a task, and a markdown block to add to your system prompt.

        Each skill says why it was chosen: relevance, measured usefulness, or exploration.
        Call before you answer. Pass the returned retrieval_id to report_turn afterwards."""
        return await app.fetch_skills(query, k, session_id, namespace, categories, token_budget, messages)

    @mcp.tool(annotations=ToolAnnotations(title="Report a turn", read_only_hint=False, destructive_hint=False,
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
        model: Annotated[str | None, Field(max_length=256)] = None,
        tokens: Annotated[TokenData | None, Field(description="Sampler tokens, for RL.")] = None,
        metadata: dict[str, Any] | None = None,
        idempotency_key: Annotated[str | None, Field(min_length=1, max_length=256,
                                                     description="Same key, same turn: safe to retry.")] = None,
        namespace: Namespace = "default",
    ) -> ReportResult:
        """Log what you were asked, which skills you used, and what you answered. Returns the turn_id."""
        return await app.report_turn(session_id, messages, response, retrieval_id, skill_ids, model, tokens,
                                     metadata, idempotency_key, namespace)

    @mcp.tool(annotations=ToolAnnotations(title="Rate a turn", read_only_hint=False, destructive_hint=False,
                                          idempotent_hint=False, open_world_hint=False))
    @tool_errors
    async def rate_turn(
        turn_id: Annotated[str, Field(min_length=1, max_length=128)],
        score: Score,
        source: RatingSource = "user",
        feedback: Annotated[str | None, Field(max_length=8000, description="Why, in a line.")] = None,
    ) -> RateResult:
        """Attach a reward in [-1, 1] to a reported turn. A user rating outranks env, agent and judge ones."""
        return await app.rate_turn(turn_id, score, source, feedback)

    @mcp.tool(annotations=ToolAnnotations(title="Evolve skills", read_only_hint=False, destructive_hint=False,
                                          idempotent_hint=False, open_world_hint=False))
    @tool_errors
    async def evolve_skills(
        namespace: Namespace = "default",
        max_new: Annotated[int | None, Field(ge=0, le=20, description="Most skills to add.")] = None,
        proposals: Annotated[list[SkillProposal] | None, Field(max_length=50)] = None,
        dry_run: bool = False,
        sampled: Annotated[CreateMessageResult | None, Resolve(ask_client_model)] = None,
        ctx: Context | None = None,
    ) -> EvolveResult:
        """Turn failures into skills. With proposals: screen them and store the good ones as candidate skills.
        Without: ask your model (MCP sampling) to write them from recent failures; a client that cannot
        sample gets a digest of the failures and the proposal schema, to write proposals and call again."""
        async def progress(done: float, message: str) -> None:
            if ctx is not None:
                await ctx.report_progress(done, 3, message)

        if sampled is not None and proposals is None:
            await progress(1, f"your model answered ({sampled.model}); parsing and screening its proposals")
            answer = sampled.content.text if isinstance(sampled.content, TextContent) else ""
            prompt = await app.evolution.llm_prompt(namespace, app.max_new(max_new))
            # The client's model reports no usage over MCP: record an estimate, so status shows what it cost.
            await record_usage(app.db, namespace, f"sampling:{sampled.model}", "evolve",
                               estimate_tokens("".join(prompt) if prompt else ""), estimate_tokens(answer))
            result = await app.evolution.evolve_from_answer(namespace, app.max_new(max_new), answer,
                                                            llm=f"sampling:{sampled.model}",
                                                            prompt=prompt[1] if prompt else None, dry_run=dry_run)
        else:
            await progress(1, "reading recent failures" if proposals is None else "screening proposals")
            result = await app.evolve_skills(namespace, max_new, proposals, dry_run)
        await progress(3, f"{len(result.accepted)} accepted, {len(result.rejected)} rejected")
        return result

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
        await mcp._subscriptions.publish(ResourceUpdated(uri="metaclaw://status"))
        if step["checkpoints"]:
            await mcp._subscriptions.publish(ResourceUpdated(uri="metaclaw://checkpoints"))

    if app.trainer is not None:
        app.trainer.on_step.append(announce)

    @mcp.resource("skill://{namespace}/{slug}", name="skill", title="A learned skill", mime_type="text/markdown")
    async def skill(namespace: str, slug: str) -> str:
        """One skill's current version as SKILL.md."""
        try:
            record = await app.library.get(namespace, slug)
        except NotFound as exc:
            raise ResourceNotFoundError(str(exc)) from None
        return render_skill_md(record.doc())

    return mcp
