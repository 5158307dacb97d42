"""The application object: wires config, store and services; owns the background tasks.

The MCP server and the CLI are two thin faces of this object: every tool and every
command is one method here.
"""
from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from functools import cached_property
from typing import TYPE_CHECKING, Any

import anyio

from . import __version__
from .config import MetaClawConfig
from .errors import InvalidInput
from .evolution.service import Evolution
from .models import (EvolveResult, FetchResult, Message, RateResult, ReportResult, SkillOut, SkillProposal,
                     TokenData)
from .skills.library import SkillLibrary
from .skills.retrieval import fit_to_budget, make_retrieval_id, render_injection, render_skill
from .store import Database, dumps, utcnow
from .turns import TurnLog

if TYPE_CHECKING:
    from .training import Trainer

log = logging.getLogger("metaclaw_mcp")

RETRIEVAL_FLUSH_SECONDS = 1.0


class App:
    def __init__(self, config: MetaClawConfig):
        self.config = config
        self.db = Database(config.database)
        self.library = SkillLibrary(self.db, max_body_chars=config.max_skill_body_chars)
        self.turns = TurnLog(self.db, max_turn_bytes=config.max_turn_bytes)
        self.evolution = Evolution(self.db, self.library, self.turns, config.failure_threshold,
                                   config.digest_max_failures)
        self.started_at = utcnow()
        # fetch_skills is read-only: what it showed is logged in the background, off the hot path.
        self._retrieval_log: list[tuple[str, str, str | None, str, str, str]] = []

    @cached_property
    def trainer(self) -> Trainer | None:
        """The background trainer, built on first use (it imports tinker, which the CLI rarely needs)."""
        from .training import make_backend, Trainer

        backend = make_backend(self.config)
        return None if backend is None else Trainer(self.db, self.config, backend)

    # ---- lifecycle ----

    async def open(self) -> App:
        self.config.home.mkdir(parents=True, exist_ok=True)
        await self.db.open()
        if self.config.load_starter_skills:
            added = await self.library.seed_starter("default")
            if added:
                log.info("loaded %d starter skills into namespace 'default'", added)
        return self

    async def close(self) -> None:
        with anyio.CancelScope(shield=True):
            await self.flush_retrievals()
            await self.db.close()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[App]:
        """Open the app and run its background tasks until the block exits (once per process)."""
        await self.open()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._flush_loop)
                if self.trainer is not None:
                    tg.start_soon(self.trainer.run)
                try:
                    yield self
                finally:
                    tg.cancel_scope.cancel()
        finally:
            await self.close()

    async def _flush_loop(self) -> None:
        while True:
            await anyio.sleep(RETRIEVAL_FLUSH_SECONDS)
            try:
                await self.flush_retrievals()
            except Exception:  # a log row is not worth the process; retry next tick
                log.exception("could not write the retrieval log")

    async def flush_retrievals(self) -> None:
        if not self._retrieval_log or self.db._writer is None:
            return
        rows, self._retrieval_log = self._retrieval_log, []
        await self.db.executemany(
            "INSERT OR IGNORE INTO retrievals(id, namespace, session_id, query, items, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?)", rows)

    # ---- the four tools ----

    async def fetch_skills(self, query: str, k: int | None = None, session_id: str | None = None,
                           namespace: str = "default", categories: Sequence[str] | None = None,
                           token_budget: int | None = None) -> FetchResult:
        if len(query) > self.config.max_query_chars:
            raise InvalidInput(f"query has {len(query)} chars; at most {self.config.max_query_chars}. "
                               "Send the task in a sentence or two, not the whole conversation")
        if not query.strip():
            raise InvalidInput("query is empty: describe the task the skills are for")
        k = k or self.config.skill_top_k
        budget = token_budget if token_budget is not None else self.config.injection_token_budget
        found = await self.library.search(query, namespace, k=k, categories=categories)
        blocks = [render_skill(s.slug, s.description, s.body) for s in found]
        keep = fit_to_budget(blocks, budget)
        chosen = [found[i] for i in keep]
        retrieval_id = make_retrieval_id([(s.id, s.version) for s in chosen])
        self._retrieval_log.append((retrieval_id, namespace, session_id, query[:2000],
                                    dumps([[s.id, s.version, round(s.score, 4)] for s in chosen]), utcnow()))
        return FetchResult(
            skills=[SkillOut(id=s.id, slug=s.slug, version=s.version, name=s.name, description=s.description,
                             body=s.body, category=s.category, status=s.status, score=round(s.score, 4))
                    for s in chosen],
            injection=render_injection([blocks[i] for i in keep]), retrieval_id=retrieval_id)

    async def report_turn(self, session_id: str, messages: Sequence[Message], response: str,
                          retrieval_id: str | None = None, skill_ids: Sequence[int | str] | None = None,
                          model: str | None = None, tokens: TokenData | None = None,
                          metadata: dict[str, Any] | None = None, idempotency_key: str | None = None,
                          namespace: str = "default") -> ReportResult:
        out = await self.turns.report(session_id=session_id, messages=messages, response=response,
                                      retrieval_id=retrieval_id, skill_ids=skill_ids, model=model, tokens=tokens,
                                      metadata=metadata, idempotency_key=idempotency_key, namespace=namespace)
        return ReportResult(turn_id=out.turn_id, duplicate=out.duplicate, skills_linked=out.skills_linked)

    async def rate_turn(self, turn_id: str, score: float, source: str = "user",
                        feedback: str | None = None) -> RateResult:
        out = await self.turns.rate(turn_id, score, source, feedback)
        if out.queued_for_training and self.trainer is not None:
            self.trainer.notify()
        return RateResult(turn_id=out.turn_id, reward=out.reward, reward_source=out.reward_source,  # type: ignore[arg-type]
                          queued_for_training=out.queued_for_training)

    def max_new(self, max_new: int | None) -> int:
        return self.config.max_new_skills if max_new is None else max_new

    async def evolve_skills(self, namespace: str = "default", max_new: int | None = None,
                            proposals: Sequence[SkillProposal] | None = None, dry_run: bool = False) -> EvolveResult:
        return await self.evolution.evolve(namespace, self.max_new(max_new), proposals, dry_run)

    # ---- status ----

    async def status(self) -> dict[str, Any]:
        skills = await self.library.counts()
        turns = await self.turns.counts()
        last_ckpt = await self.db.fetchone("SELECT step, path, backend, created_at FROM checkpoints ORDER BY id DESC LIMIT 1")
        last_step = await self.db.fetchone("SELECT step, loss, mean_reward, created_at FROM train_steps ORDER BY id DESC LIMIT 1")
        evolutions = await self.db.fetchone("SELECT COUNT(*) AS n, MAX(created_at) AS last FROM evolutions")
        return {
            "version": __version__,
            "home": str(self.config.home),
            "database": str(self.config.database),
            "schema_version": await self.db.schema_version(),
            "skills": {"total": sum(skills.values()), **{s: skills.get(s, 0) for s in ("active", "candidate", "retired")}},
            "turns": turns,
            "evolutions": {"runs": evolutions["n"], "last": evolutions["last"]},
            "training": {
                "backend": self.config.effective_backend,
                "available": self.config.effective_backend in ("export", "tinker", "local"),
                "paused": bool(await self.db.get_kv("trainer_paused", False)),
                "model_name": self.config.model_name,
                "backlog": turns["by_state"].get("rated", 0),
                "trained": turns["by_state"].get("trained", 0),
                "steps": await self.db.scalar("SELECT COUNT(*) FROM train_steps"),
                "max_steps": self.config.max_steps,
                "last_step": dict(last_step) if last_step else None,
                "last_checkpoint": dict(last_ckpt) if last_ckpt else None,
            },
        }


@asynccontextmanager
async def open_app(config: MetaClawConfig) -> AsyncIterator[App]:
    """The app without background tasks: for the CLI and for tests."""
    app = App(config)
    await app.open()
    try:
        yield app
    finally:
        await app.close()
