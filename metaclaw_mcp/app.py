"""The application object: wires config, store and services; owns the background tasks.

The MCP server and the CLI are two thin faces of this object: every tool and every
command is one method here.
"""
from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta, timezone
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from functools import cached_property
from typing import TYPE_CHECKING, Any

import anyio

from . import __version__
from .access import LOCAL, Principal, author_of
from .config import MetaClawConfig
from .errors import InvalidInput
from .evolution.service import Evolution
from .models import (EvolveResult, FetchResult, Message, RateResult, ReportResult, SkillOut, SkillProposal,
                     TokenData)
from .skills.index import Retriever
from .skills.library import SkillLibrary
from .skills.injection import Entry, compose
from .skills.retrieval import build_query, make_retrieval_id
from .store import Database, dumps, utcnow
from .llm import ChatMessage, make_chat_model
from .llm.accounting import record_usage
from .rewards.judge import Judge
from .text import estimate_tokens
from .turns import TurnLog

if TYPE_CHECKING:
    from .policy import Policy
    from .training import Trainer

log = logging.getLogger("metaclaw_mcp")

RETRIEVAL_FLUSH_SECONDS = 1.0
RETENTION_SECONDS = 600.0     # how often old retrieval-log rows are pruned
ENCODER_EXIT_WAIT_SECONDS = 30.0   # how long closing waits for an encoder still loading in its thread


class App:
    """One server's state: the config, the database, the skill library, the turn log, evolution,
    retrieval, the judge and the trainer. Build it, then `open()` (or `running()` for the background
    tasks too) before calling the tools; nothing is read or written in the constructor."""

    def __init__(self, config: MetaClawConfig):
        self.config = config
        self.db = Database(config.database)
        self.library = SkillLibrary(self.db, max_body_chars=config.max_skill_body_chars)
        self.turns = TurnLog(self.db, max_turn_bytes=config.max_turn_bytes, redact=config.redact_secrets)
        self.evolution = Evolution(self.db, self.library, self.turns, config.failure_threshold,
                                   config.digest_max_failures,
                                   same_rule=lambda namespace, text, corrections:
                                       self.retriever.same_rule(namespace, text, corrections))
        self.started_at = utcnow()
        self.llm = make_chat_model(config, self.db)  # None unless a server-side LLM is configured
        self.judge = self._make_judge()
        # fetch_skills is read-only: what it showed is logged in the background, off the hot path.
        self._retrieval_log: list[tuple[str, str, str | None, str, str, str]] = []
        self._namespaces: set[str] | None = None   # namespaces with skills or turns (max_namespaces)
        self.last_request = time.monotonic()        # when a tool (or /v1) was last called: idle training

    @cached_property
    def trainer(self) -> Trainer | None:
        """The background trainer, built on first use (it imports tinker, which the CLI rarely needs)."""
        from .training import make_backend, Trainer

        backend = make_backend(self.config)
        if backend is None:
            return None
        trainer = Trainer(self.db, self.config, backend)
        trainer.idle_seconds = lambda: time.monotonic() - self.last_request   # train_when_idle_seconds
        return trainer

    @cached_property
    def policy(self) -> Policy | None:
        """The trained policy /v1 serves (`policy.make_policy`), or None: none configured, or the local
        one without the [local] extra (logged)."""
        from .policy import make_policy

        try:
            return make_policy(self.config, self.db)
        except ImportError as exc:
            log.error("the local policy needs the [local] extra (torch, transformers, peft): %s", exc)
            return None

    async def _warm_up_policy(self) -> None:
        """Background, once: load the policy's tokenizer and model before the first /v1 request."""
        if self.policy is None:
            return
        try:
            await self.policy.warm_up()
        except Exception:  # the first request will try again and say what went wrong
            log.exception("could not load the policy")

    def _make_judge(self) -> Judge | None:
        if not self.config.judge_enabled:
            return None
        if self.llm is None:
            log.warning("judge_enabled needs llm_provider='openai' with llm_base_url and llm_model; the judge is off")
            return None
        return Judge(self.db, self.turns, self.llm, self.config, on_rated=self._on_rated)

    def _on_rated(self, out: Any) -> None:
        if out.queued_for_training and self.trainer is not None:
            self.trainer.notify()

    # ---- lifecycle ----

    async def open(self) -> App:
        """Create `home`, open (and migrate) the database, clear what a killed import left, and seed the
        starter skills into "default" when `load_starter_skills`; returns self. No background tasks."""
        self.config.home.mkdir(parents=True, exist_ok=True)
        await self.db.open()
        discarded = await self.library.discard_abandoned_imports()   # a killed import's rows: its names free again
        if discarded:
            log.info("removed what %d import(s) that never finished had staged", discarded)
        if self.config.load_starter_skills:
            added = await self.library.seed_starter("default")
            if added:
                log.info("loaded %d starter skills into namespace 'default'", added)
        return self

    async def close(self) -> None:
        """Write the pending retrieval log, wait for an encoder still loading (at most
        `ENCODER_EXIT_WAIT_SECONDS`), close the LLM client and the database. Shielded from cancellation."""
        with anyio.CancelScope(shield=True):
            await self.flush_retrievals()
            if "retriever" in self.__dict__:   # an encoder still loading: let it finish (bounded) before exit
                for encoder in self.retriever.encoders():
                    await anyio.to_thread.run_sync(encoder.wait_loading, ENCODER_EXIT_WAIT_SECONDS)
            if self.llm is not None:
                await self.llm.aclose()
            await self.db.close()

    @asynccontextmanager
    async def running(self, serve_policy: bool = False) -> AsyncIterator[App]:
        """Open the app and run its background tasks until the block exits (once per process);
        `serve_policy`: the /v1 endpoint is up, so its policy loads now (`policy_warm_up`) and follows
        the checkpoints training saves."""
        await self.open()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._flush_loop)
                tg.start_soon(self._credit_loop)
                await tg.start(self._warm_up)   # serves once the indexes are loaded; the encoder follows
                if serve_policy and self.policy is not None:
                    if self.trainer is not None:
                        from .policy.base import follow_checkpoints
                        follow_checkpoints(self.trainer, self.policy)
                    if self.config.policy_warm_up:
                        tg.start_soon(self._warm_up_policy)
                if self.trainer is not None:
                    tg.start_soon(self.trainer.run)
                if self.judge is not None:
                    tg.start_soon(self.judge.run, self.config.judge_poll_seconds)
                if self.config.evolve_every_failures and self.llm is not None:
                    tg.start_soon(self._evolve_loop)
                try:
                    yield self
                finally:
                    tg.cancel_scope.cancel()
        finally:
            await self.close()

    async def _evolve_loop(self) -> None:
        """Background: evolve a namespace once it has `evolve_every_failures` failures no run has read."""
        assert self.config.evolve_every_failures is not None
        while True:
            await anyio.sleep(self.config.evolve_poll_seconds)
            for row in await self.db.fetchall("SELECT DISTINCT namespace FROM turns WHERE reward < ?",
                                              (self.config.failure_threshold,)):
                try:
                    if len(await self.evolution.new_failures(row[0])) >= self.config.evolve_every_failures:
                        result = await self.evolve_with_llm(row[0])
                        log.info("automatic evolution in %r: %d accepted, %d rejected", row[0],
                                 len(result.accepted), len(result.rejected))
                except Exception:  # an LLM outage must not take the server down; try again next tick
                    log.exception("automatic evolution failed in namespace %r", row[0])

    async def _flush_loop(self) -> None:
        last_prune = 0.0
        while True:
            await anyio.sleep(RETRIEVAL_FLUSH_SECONDS)
            try:
                await self.flush_retrievals()
                if anyio.current_time() - last_prune >= RETENTION_SECONDS:
                    last_prune = anyio.current_time()
                    await self.prune_retrievals()
            except Exception:  # a log row is not worth the process; retry next tick
                log.exception("could not write the retrieval log")

    async def prune_retrievals(self) -> int:
        """Drop retrieval-log rows older than `retrieval_log_days` and beyond the newest
        `retrieval_log_max_rows`; return how many went. Turns keep their retrieval ids (which name
        the versions shown), so credit does not need the log."""
        cutoff = (datetime.now(timezone.utc) - timedelta(days=self.config.retrieval_log_days)).isoformat()
        newest = await self.db.scalar("SELECT MAX(rowid) FROM retrievals")
        if newest is None:
            return 0
        async with self.db.transaction() as db:
            cur = await db.execute("DELETE FROM retrievals WHERE rowid <= ? OR created_at < ?",
                                   (int(newest) - self.config.retrieval_log_max_rows, cutoff))
            return cur.rowcount

    async def namespace_ok(self, namespace: str, caller: Principal = LOCAL) -> None:
        """Raise Forbidden when `caller` may not use `namespace`, and InvalidInput when it is new and the
        server already keeps `max_namespaces` (namespaces with skills or turns, and those fetched from
        since start): any client can name a namespace, and each costs memory and background work."""
        caller.check(namespace)
        self.last_request = time.monotonic()   # every tool call passes here
        if self._namespaces is None:
            self._namespaces = {r[0] for r in await self.db.fetchall(
                "SELECT DISTINCT namespace FROM skills UNION SELECT DISTINCT namespace FROM turns")}
        if namespace in self._namespaces:
            return
        cap = self.config.max_namespaces
        if cap is not None and len(self._namespaces) >= cap:
            raise InvalidInput(f"namespace {namespace[:80]!r} is new and this server already keeps {cap} namespaces "
                               "(max_namespaces); use an existing one, or raise METACLAW_MAX_NAMESPACES")
        self._namespaces.add(namespace)

    async def flush_retrievals(self) -> None:
        """Write the retrievals that fetch_skills logged in memory to `retrievals` (a no-op once closed)."""
        if not self._retrieval_log or not self.db.is_open:
            return
        rows, self._retrieval_log = self._retrieval_log, []
        await self.db.executemany(
            "INSERT OR IGNORE INTO retrievals(id, namespace, session_id, query, items, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?)", rows)

    # ---- the four tools ----

    async def fetch_skills(self, query: str, k: int | None = None, session_id: str | None = None,
                           namespace: str = "default", categories: Sequence[str] | None = None,
                           token_budget: int | None = None,
                           messages: Sequence[Message | dict[str, Any]] | None = None,
                           caller: Principal = LOCAL) -> FetchResult:
        """The tool fetch_skills: the best `k` skills (default `skill_top_k`) for `query`, plus the
        standing lessons, as an injection of at most `token_budget` tokens (default
        `injection_token_budget`); `skills` lists those the injection shows, ranked ones first. The last
        `query_messages` of `messages` join the query. Read-only: what was shown is logged in the
        background. InvalidInput for an empty query, one over `max_query_chars` characters, or a new
        namespace past `max_namespaces`."""
        if len(query) > self.config.max_query_chars:
            raise InvalidInput(f"query has {len(query)} chars; at most {self.config.max_query_chars}. "
                               "Send the task in a sentence or two, not the whole conversation")
        if not query.strip():
            raise InvalidInput("query is empty: describe the task the skills are for")
        await self.namespace_ok(namespace, caller)
        k = k or self.config.skill_top_k
        budget = token_budget if token_budget is not None else self.config.injection_token_budget
        search_query = build_query(query, messages, self.config.query_messages)
        viewer = author_of(caller)
        hits = await self.retriever.search(search_query, namespace, k=k, categories=categories, viewer=viewer)
        standing = await self.retriever.standing_lessons(namespace, categories, viewer=viewer)
        records = {h.record.id: h.record for h in hits} | {r.id: r for r in standing}
        by_id = {h.record.id: h for h in hits}

        def entry(r: Any) -> Entry:
            return Entry(r.id, f"skill://{r.namespace}/{r.slug}", r.slug, r.description, r.body)
        injection, shown = compose([entry(h.record) for h in hits], [entry(r) for r in standing], budget,
                                   self.config.injection_full_skills)
        retrieval_id = make_retrieval_id([(records[s.key].id, records[s.key].version) for s in shown])
        skills = []
        for s in shown:
            r, h = records[s.key], by_id.get(s.key)   # no hit: a standing lesson, ranked apart
            ranked = {} if h is None else {"score": round(h.score, 4), "why": h.why, "relevance": round(h.relevance, 4),
                                           "usefulness": round(h.usefulness, 4), "uses": h.credit.uses}
            skills.append(SkillOut(
                id=r.id, slug=r.slug, version=r.version, name=r.name, description=r.description, body=r.body,
                category=r.category, status=r.status, disclosure=s.disclosure,  # type: ignore[arg-type]
                **({"score": 0.0, "why": "standing"} | ranked)))
        self._retrieval_log.append((retrieval_id, namespace, session_id, query[:2000],
                                    dumps([[s.id, s.version, s.score, s.why] for s in skills]), utcnow()))
        return FetchResult(skills=skills, injection=injection, retrieval_id=retrieval_id)

    @cached_property
    def retriever(self) -> Retriever:
        """Hybrid retrieval with credit; holds the in-memory index (vectors, per-version reward sums)."""
        return Retriever(self.db, self.library, self.config)

    async def review_skills(self, namespace: str | None = None, changed_only: bool = False) -> list[dict[str, str]]:
        """Apply the promotions and retirements that measured credit calls for (thresholds in the config);
        with `changed_only`, only in namespaces whose ratings or skills changed since their last review."""
        applied = await self.retriever.review(namespace, changed_only)
        return [{"namespace": ns, "slug": slug, "status": d.status, "reason": d.reason} for ns, slug, d in applied]

    async def _warm_up(self, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        """Background, once: load retrieval's indexes (`Retriever.load_indexes`), report started (the
        server serves from here), then its model and experience (`Retriever.warm_up`) before the
        first fetches ask for them."""
        namespaces: list[str] | None = None
        try:
            namespaces = await self.retriever.load_indexes()
        except Exception:  # the first fetch will load what it needs (and say what went wrong)
            log.exception("could not load the retrieval indexes")
        task_status.started()
        try:
            await self.retriever.warm_up(namespaces)
        except Exception:
            log.exception("could not warm up retrieval")

    async def _credit_loop(self) -> None:
        """Background: apply credit decisions and embed new skill versions, off the fetch path. Work
        follows activity: namespaces whose ratings and skills did not change are not looked at."""
        while True:
            await anyio.sleep(self.config.credit_review_seconds)
            try:
                await self.review_skills(changed_only=True)
                for ns in self.retriever.embeddings_due():
                    await self.retriever.ensure_embeddings(ns, limit=2048)
            except Exception:  # credit is not worth the process; retry next tick
                log.exception("could not review skill credit")

    async def report_turn(self, session_id: str, messages: Sequence[Message], response: str,
                          retrieval_id: str | None = None, skill_ids: Sequence[int | str] | None = None,
                          model: str | None = None, tokens: TokenData | None = None,
                          metadata: dict[str, Any] | None = None, idempotency_key: str | None = None,
                          namespace: str = "default", caller: Principal = LOCAL) -> ReportResult:
        """The tool report_turn: store one turn and link it to its skill versions (`TurnLog.report`, whose
        InvalidInput cases apply), plus `namespace_ok`'s Forbidden and InvalidInput."""
        await self.namespace_ok(namespace, caller)
        out = await self.turns.report(session_id=session_id, messages=messages, response=response,
                                      retrieval_id=retrieval_id, skill_ids=skill_ids, model=model, tokens=tokens,
                                      metadata=metadata, idempotency_key=idempotency_key, namespace=namespace,
                                      principal=author_of(caller))
        return ReportResult(turn_id=out.turn_id, duplicate=out.duplicate, skills_linked=out.skills_linked,
                            redacted=out.redacted)

    async def rate_turn(self, turn_id: str, score: float, source: str = "user",
                        feedback: str | None = None, caller: Principal = LOCAL) -> RateResult:
        """The tool rate_turn: add a rating (score in [-1, 1]) and re-fuse the turn's reward
        (`TurnLog.rate`); wakes the trainer when the turn was queued. InvalidInput for a bad source,
        score or feedback; NotFound for an unknown turn or one in a namespace `caller` may not use."""
        out = await self.turns.rate(turn_id, score, source, feedback,
                                    may_use=None if caller.every_namespace else caller.may_use,
                                    principal=author_of(caller))
        self.last_request = time.monotonic()
        queued, training = self.training_fate(out)
        out.queued_for_training = queued
        self._on_rated(out)
        return RateResult(turn_id=out.turn_id, reward=out.reward, reward_source=out.reward_source,  # type: ignore[arg-type]
                          queued_for_training=queued, training=training)

    def training_fate(self, out: Any) -> tuple[bool, str]:
        """(queued, sentence): what training will do with a just-rated turn (`TurnLog.rate`'s outcome)."""
        cfg = self.config
        if not out.queued_for_training:
            state = {"claimed": "already in a training batch", "trained": "already trained on",
                     "skipped": "skipped by training earlier"}.get(out.train_state, out.train_state)
            return False, f"not trained again: {state}; the rating still counts for the skills it used"
        if cfg.effective_backend not in ("export", "tinker", "local"):
            return False, "not trained: no training backend"
        if out.has_tokens:
            what = "queued for RL (it carries the sampler's tokens)"
        elif out.reward >= cfg.distill_threshold:
            what = ("queued for distillation (a text-only turn rated at least distill_threshold="
                    f"{cfg.distill_threshold:g})")
        else:
            return False, (f"not trained: a text-only turn is imitated only when rated at least distill_threshold="
                           f"{cfg.distill_threshold:g}; it feeds skill evolution instead")
        if "trainer" in self.__dict__ and self.trainer is None:
            return False, f"not trained: the {cfg.effective_backend} backend could not be loaded (see the log)"
        return True, what + (f", into {cfg.exports_dir}" if cfg.effective_backend == "export" else "")

    def max_new(self, max_new: int | None) -> int:
        """`max_new`, or the config's `max_new_skills` when it is None."""
        return self.config.max_new_skills if max_new is None else max_new

    async def evolve_skills(self, namespace: str = "default", max_new: int | None = None,
                            proposals: Sequence[SkillProposal] | None = None, dry_run: bool = False,
                            caller: Principal = LOCAL) -> EvolveResult:
        """With proposals: screen and store them. Without: ask the configured LLM, else return the digest."""
        await self.namespace_ok(namespace, caller)
        if proposals is None and self.llm is not None:
            return await self.evolve_with_llm(namespace, max_new, dry_run)
        result = await self.evolution.evolve(namespace, self.max_new(max_new), proposals, dry_run,
                                             principal=author_of(caller))
        await self._embed_new(namespace, result)
        return result

    async def _embed_new(self, namespace: str, result: EvolveResult) -> None:
        """Vectors for what evolution just wrote, now rather than on a fetch's path."""
        if result.accepted and not result.dry_run and self.retriever.uses_dense and self.retriever.embedder.ready:
            await self.retriever.ensure_embeddings(namespace)

    async def import_skills(self, path: Any, namespace: str = "default", status: str = "active",
                            progress: Callable[[int, int], None] | None = None,
                            embed_progress: Callable[[int, int], None] | None = None) -> Any:
        """`skills import`: SKILL.md folders or a JSONL file (`SkillLibrary.import_folder` / `import_jsonl`),
        then the vectors of what was imported, in the same command, so a server starts ready. Returns
        the library's ImportReport."""
        from pathlib import Path
        path = Path(path)
        if path.suffix == ".jsonl":
            report = await self.library.import_jsonl(path, namespace, status=status, progress=progress)
        else:
            report = await self.library.import_folder(path, namespace, status=status, progress=progress)
        if report.imported and self.retriever.uses_dense:
            await self.retriever.ensure_embeddings(namespace, progress=embed_progress)
        return report

    async def evolve_from_sample(self, namespace: str, max_new: int | None, answer: str, model: str,
                                 dry_run: bool = False, caller: Principal = LOCAL) -> EvolveResult:
        """Screen and store the proposals in the answer the client's model gave (MCP sampling) to the
        prompt `evolution.llm_prompt` builds. The client's model reports no usage over MCP: an
        estimate of the prompt and answer tokens is recorded, so `status` shows what it cost."""
        await self.namespace_ok(namespace, caller)
        prompt = await self.evolution.llm_prompt(namespace, self.max_new(max_new))
        await record_usage(self.db, namespace, f"sampling:{model}", "evolve",
                           estimate_tokens("".join(prompt) if prompt else ""), estimate_tokens(answer))
        return await self.evolution.evolve_from_answer(namespace, self.max_new(max_new), answer, llm=f"sampling:{model}",
                                                       prompt=prompt[1] if prompt else None, dry_run=dry_run,
                                                       principal=author_of(caller))

    async def evolve_with_llm(self, namespace: str = "default", max_new: int | None = None,
                              dry_run: bool = False) -> EvolveResult:
        """Ask the server-side LLM for proposals from recent failures (the digest when there are none)."""
        assert self.llm is not None
        prompt = await self.evolution.llm_prompt(namespace, self.max_new(max_new))
        if prompt is None:
            return await self.evolution.evolve(namespace, self.max_new(max_new), None, dry_run)
        system, user = prompt
        answer = await self.llm.complete([ChatMessage("system", system), ChatMessage("user", user)],
                                         max_tokens=4000, temperature=0.3, purpose="evolve", namespace=namespace)
        result = await self.evolution.evolve_from_answer(namespace, self.max_new(max_new), answer.text,
                                                         llm=self.llm.provider, prompt=user, dry_run=dry_run)
        await self._embed_new(namespace, result)
        return result

    # ---- status ----

    async def status(self) -> dict[str, Any]:
        """Plain data for `metaclaw-mcp status` and the metaclaw://status resource: version, paths, schema version,
        skill and turn counts, evolutions, retrieval, LLM usage, the judge, and training (backlog,
        steps, last checkpoint, what comes next)."""
        skills = await self.library.counts()
        turns = await self.turns.counts()
        last_ckpt = await self.db.fetchone("SELECT step, path, backend, created_at FROM checkpoints ORDER BY id DESC LIMIT 1")
        last_step = await self.db.fetchone("SELECT step, loss, mean_reward, created_at FROM train_steps ORDER BY id DESC LIMIT 1")
        evolutions = await self.db.fetchone("SELECT COUNT(*) AS n, MAX(created_at) AS last FROM evolutions")
        from .llm import usage_summary
        steps = int(await self.db.scalar("SELECT COUNT(*) FROM train_steps") or 0)
        paused = bool(await self.db.get_kv("trainer_paused", False))
        return {
            "version": __version__,
            "home": str(self.config.home),
            "database": str(self.config.database),
            "schema_version": await self.db.schema_version(),
            "skills": {"total": sum(skills.values()), **{s: skills.get(s, 0) for s in ("active", "candidate", "retired")}},
            "turns": turns,
            "evolutions": {"runs": evolutions["n"], "last": evolutions["last"]},
            "retrieval": self.retriever.describe(),
            "llm": {"provider": self.config.llm_provider, "model": self.config.llm_model,
                    "token_cap": self.config.llm_token_cap, "usage": await usage_summary(self.db)},
            "judge": await self.judge.status() if self.judge is not None else {"enabled": False},
            "training": {
                "backend": self.config.effective_backend,
                "available": self.config.effective_backend in ("export", "tinker", "local"),
                "paused": paused,
                "model_name": self.config.model_name,
                "backlog": turns["by_state"].get("rated", 0),
                "trained": turns["by_state"].get("trained", 0),
                "steps": steps,
                "max_steps": self.config.max_steps,
                "last_step": dict(last_step) if last_step else None,
                "last_checkpoint": dict(last_ckpt) if last_ckpt else None,
                "recent_steps": [dict(r) for r in await self.db.fetchall(
                    "SELECT step, loss, mean_reward, n_datums, created_at FROM train_steps ORDER BY step DESC LIMIT 10")],
                "next": await self._training_next(steps, paused),
                "window": self.config.train_window,
                "when_idle_seconds": self.config.train_when_idle_seconds,
                "trainer": await self.trainer.status() if self.trainer is not None else None,
            },
        }

    async def _training_next(self, steps: int, paused: bool) -> str:
        """What the trainer will do next, in a sentence."""
        cfg = self.config
        halted = await self.db.get_kv("trainer_halted")
        if halted:
            return f"halted: {halted}"
        if paused:
            return "paused: `metaclaw-mcp train resume` to continue"
        if steps >= cfg.max_steps:
            return f"stopped: max_steps={cfg.max_steps} reached"
        waiting = self.trainer.waiting_for() if self.trainer is not None else None
        if await self.db.scalar("SELECT 1 FROM batches WHERE state = 'claimed' LIMIT 1"):
            return "training a claimed batch"
        rl = await self.db.scalar("SELECT COUNT(*) FROM turns WHERE train_state = 'rated' AND prompt_ids IS NOT NULL")
        text = await self.db.scalar("SELECT COUNT(*) FROM turns WHERE train_state = 'rated' AND prompt_ids IS NULL "
                                    "AND reward >= ?", (cfg.distill_threshold,))
        if not rl and not text:
            return f"waiting for rated turns (batch_size {cfg.batch_size})"
        queued = f"{rl} RL and {text} distillation turns queued"
        if waiting:
            return f"{queued}; {waiting}"
        return (f"{queued}; a batch starts at {cfg.batch_size} "
                f"(or {cfg.min_batch_size} after {cfg.batch_max_wait_seconds:.0f} s of waiting)")


@asynccontextmanager
async def open_app(config: MetaClawConfig) -> AsyncIterator[App]:
    """The app without background tasks: for the CLI and for tests."""
    app = App(config)
    await app.open()
    try:
        yield app
    finally:
        await app.close()
