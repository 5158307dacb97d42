"""The batcher: a durable state machine over turns, run as a background task of the server process.

turns:   pending -> rated -> claimed(batch) -> trained | skipped(reason)
batches: claimed -> trained | failed

A batch is claimed in one transaction, trained, then its turns, the step row and any
checkpoints are committed in one more. A crash in between leaves the batch `claimed`: it is
replayed on the next start with the same turns and the same baseline, so no turn is trained
twice and none is lost.

A turn that cannot become a datum (token ids outside [0, TOKEN_ID_LIMIT), unreadable stored
JSON, a conversation the chat template refuses) is skipped on its own with the reason. Any
other failure to plan or to train a batch counts as one of its attempts, kept in the batch
row: after `max_batch_attempts` the batch is `failed`, its turns are skipped with the error,
and the batches after it go on. Only a service that is down (TransientTrainingError) or an
account that needs a person (TrainingHalted) leaves a batch claimed without counting.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import defaultdict
from datetime import datetime
from dataclasses import dataclass, field
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import numpy as np
import tinker

from ..config import MetaClawConfig
from ..errors import MetaClawError
from ..store import Database, dumps, set_kv, utcnow
from .backends import ExportBackend, StepResult, TrainingBackend, TrainingHalted, TransientTrainingError
from .datums import DatumError, RLSample, centred_advantages, check_keys, check_rl_inputs, rl_datum, sft_datum
from .render import plain_messages, render_sft, tokenizer_source
from ..threads import run_daemon
from .teacher import Teacher, kl_advantages, make_teacher
from ..privacy import find_secret, redact, redact_json
from ..schedule import in_window, next_opening, parse_window

log = logging.getLogger("metaclaw_mcp.training")

BASELINE_DECAY = 0.9  # running baseline for lone turns: b <- 0.9 b + 0.1 r


class BatchFailed(MetaClawError):
    """A claimed batch could not be planned or trained; the attempt is already recorded and logged.

    `retry_in`: seconds to wait before the batch is replayed, or None when that was its last
    attempt (the batch is `failed` and its turns are skipped with the error).
    """

    def __init__(self, message: str, retry_in: float | None):
        super().__init__(message)
        self.retry_in = retry_in


@dataclass
class BatchPlan:
    """What one batch trains: datums with their turn ids, turns skipped with reasons, baseline updates,
    and (distillation into an export) the conversations to write as chat-format lines."""
    datums: list[tinker.Datum]
    trained: list[str]
    skipped: dict[str, str]
    baselines: dict[str, float]
    mean_reward: float | None
    conversations: list[dict[str, Any]] = field(default_factory=list)


def conversation_row(turn_id: str, messages: list[dict[str, Any]], response: str, reward: float) -> dict[str, Any]:
    """One exported conversation: `{"messages": [...role + text..., {"role": "assistant", "content": response}],
    "reward", "turn_id"}` (the chat format of the Tinker cookbook's conversation datasets)."""
    return {"messages": plain_messages(messages) + [{"role": "assistant", "content": response}],
            "reward": reward, "turn_id": turn_id}


def prompt_key(prompt_ids: list[int]) -> str:
    """16 hex characters naming a prompt's token ids: turns with the same key form one group."""
    return hashlib.sha256(json.dumps(prompt_ids).encode()).hexdigest()[:16]


def plan_rl_batch(turns: list[dict[str, Any]], baselines: dict[str, float | None], max_seq_len: int,
                  teacher_C: dict[str, list[float]] | None = None, kl_coef: float = 1.0) -> BatchPlan:
    """Group turns by prompt, centre rewards within groups, use the running baseline for lone turns.

    Pure: `turns` are dicts with id, namespace, prompt_ids, completion_ids, logprobs, reward, as
    stored (any JSON). A turn that is not a valid RL sample is skipped with the reason before
    grouping; constant-reward groups carry no signal and are skipped with that reason. With
    `teacher_C` (turn id -> the teacher's logprob of each completion token), each token's advantage
    adds `kl_coef * (teacher - sampler)` (`teacher.kl_advantages`), and a turn with a teacher score
    is trained even when its reward alone carries no signal.
    """
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    skipped: dict[str, str] = {}
    for t in turns:
        try:
            check_rl_inputs(t["prompt_ids"], t["completion_ids"], t["logprobs"], t["reward"])
        except DatumError as exc:
            skipped[t["id"]] = str(exc)
            continue
        groups[(t["namespace"], prompt_key(t["prompt_ids"]))].append(t)
    datums: list[tinker.Datum] = []
    trained: list[str] = []
    new_baselines: dict[str, float] = {}
    teacher_C = teacher_C or {}
    for (ns, _), members in groups.items():
        rewards_G = [m["reward"] for m in members]
        distilled = all(m["id"] in teacher_C for m in members)   # the teacher's signal needs no reward contrast
        if len(members) > 1:
            advantages_G = centred_advantages(rewards_G)
            if not advantages_G.any() and not distilled:
                skipped.update({m["id"]: "constant reward within its prompt group: no learning signal"
                                for m in members})
                continue
        else:
            base = new_baselines.get(ns, baselines.get(ns))
            r = rewards_G[0]
            advantages_G = np.asarray([0.0 if base is None else r - base])
            new_baselines[ns] = r if base is None else BASELINE_DECAY * base + (1 - BASELINE_DECAY) * r
            if (base is None or advantages_G[0] == 0) and not distilled:
                skipped[members[0]["id"]] = "lone turn with no baseline to compare against yet"
                continue
        for m, adv in zip(members, advantages_G):
            sample = RLSample(m["id"], m["prompt_ids"], m["completion_ids"],
                              m["logprobs"] or [0.0] * len(m["completion_ids"]), m["reward"])
            try:
                advantage: float | list[float] = float(adv)
                if m["id"] in teacher_C:
                    advantage = [float(adv) + k for k in kl_advantages(teacher_C[m["id"]], sample.logprobs_C, kl_coef)]
                datums.append(rl_datum(sample, advantage, max_seq_len))
                trained.append(m["id"])
            except DatumError as exc:
                skipped[m["id"]] = str(exc)
    rewards = [t["reward"] for t in turns if t["id"] in set(trained)]
    return BatchPlan(datums, trained, skipped, new_baselines, sum(rewards) / len(rewards) if rewards else None)


def plan_distill_batch(turns: list[tuple[str, Any, str, float]], tokenizer: Any, max_seq_len: int) -> BatchPlan:
    """Text-only turns (id, messages, response, reward) as cross_entropy datums on the reply's tokens.

    A turn whose messages the chat template cannot render is skipped with the reason; the
    tokenizer itself was checked on a plain conversation when it was loaded.
    """
    datums, trained, skipped = [], [], {}
    for turn_id, messages, response, _ in turns:
        try:
            tokens, weights = render_sft(tokenizer, messages, response)
            datums.append(sft_datum(tokens, weights, max_seq_len))
            trained.append(turn_id)
        except DatumError as exc:
            skipped[turn_id] = str(exc)
        except Exception as exc:  # roles out of order, content that is not text: this turn, not the batch
            skipped[turn_id] = f"cannot be rendered with the chat template ({type(exc).__name__}: {exc})"[:500]
    rewards = [r for t, _, _, r in turns if t in set(trained)]
    return BatchPlan(datums, trained, skipped, {}, sum(rewards) / len(rewards) if rewards else None)


class Trainer:
    """The batcher of the module docstring over one database and one backend: claims rated turns in
    batches of `batch_size` (`min_batch_size` after `batch_max_wait_seconds`), trains each with the
    backend, and commits the step, its checkpoints and its turns' states together. Pause, halt and
    the step count live in the store, so the CLI and the server see the same state."""

    def __init__(self, db: Database, config: MetaClawConfig, backend: TrainingBackend):
        self.db = db
        self.config = config
        self.backend = backend
        self.wake = anyio.Event()
        self.last_error: str | None = None
        self._restored = False
        self._transient_failures = 0
        self._tokenizer: Any = None
        self._tokenizer_error: str | None = None
        # Called after each committed step with {"step", "loss", "checkpoints": [(kind, path)]}: announcements.
        self.on_step: list[Callable[[dict[str, Any]], Awaitable[None]]] = []
        # Seconds since the last request the server saw (train_when_idle_seconds); the app sets it.
        self.idle_seconds: Callable[[], float] = lambda: float("inf")
        self.clock: Callable[[], datetime] = datetime.now   # local time, for train_window
        self._window = parse_window(config.train_window) if config.train_window else None
        self.teacher: Teacher | None = make_teacher(config)   # on-policy distillation (teacher_model)

    def waiting_for(self) -> str | None:
        """Why steps may not run now (outside `train_window`, or not `train_when_idle_seconds` idle), or None."""
        if self._window is not None and not in_window(self.clock(), self._window):
            opens = next_opening(self.clock(), self._window)
            return f"outside the training window {self.config.train_window} (opens at {opens:%Y-%m-%d %H:%M})"
        idle, need = self.idle_seconds(), self.config.train_when_idle_seconds
        if need is not None and idle < need:
            return f"waiting for {need:g} s without requests (last one {idle:.0f} s ago)"
        return None

    def notify(self) -> None:
        """A turn became eligible: look now rather than at the next poll."""
        self.wake.set()

    async def paused(self) -> bool:
        """Whether a person paused training (`set_paused`)."""
        return bool(await self.db.get_kv("trainer_paused", False))

    async def steps_done(self) -> int:
        """Training steps committed so far (rows of `train_steps`)."""
        return int(await self.db.scalar("SELECT COUNT(*) FROM train_steps") or 0)

    async def halted(self) -> str | None:
        """Why training stopped until a person acts (a TrainingHalted message), or None."""
        return await self.db.get_kv("trainer_halted")

    async def set_paused(self, paused: bool) -> None:
        """Pause or resume training; resuming also clears a halt."""
        async with self.db.transaction() as db:
            await set_kv(db, "trainer_paused", paused)
            if not paused:
                await db.execute("DELETE FROM kv WHERE key = 'trainer_halted'")

    async def run(self) -> None:
        """Forever: replay claimed batches, claim new ones, train; sleep until woken or the poll interval."""
        while True:
            try:
                worked = await self.once()
                self._transient_failures = 0
            except TrainingHalted as exc:  # needs a person: pause, say why, keep every turn queued
                self.last_error = str(exc)
                async with self.db.transaction() as db:
                    await set_kv(db, "trainer_halted", str(exc))
                    await set_kv(db, "trainer_paused", True)
                log.error("training halted: %s", exc)
                worked = False
            except TransientTrainingError as exc:  # wait it out; the claimed batch is replayed
                self._transient_failures += 1
                self.last_error = str(exc)
                delay = min(300.0, 2.0 ** self._transient_failures)
                log.warning("training will retry in %.0f s: %s", delay, exc)
                await anyio.sleep(delay)
                continue
            except BatchFailed as exc:  # recorded and logged: replay after the back-off, or go on to the next
                if exc.retry_in:
                    await anyio.sleep(exc.retry_in)
                continue
            except Exception as exc:  # not a batch's fault (the store, a restore): keep the server up, retry
                error = f"{type(exc).__name__}: {exc}"
                if error != self.last_error:  # the traceback once; a repeat is one line a poll
                    log.exception("training failed: %s", error)
                else:
                    log.warning("training failed again: %s", error)
                self.last_error = error
                worked = False
            if not worked:
                self.wake = anyio.Event()
                with anyio.move_on_after(self.config.train_poll_seconds):
                    await self.wake.wait()

    async def once(self, force: bool = False) -> bool:
        """Train at most one batch (a replayed one first). `force` ignores pause and a short backlog."""
        if not force and (await self.paused() or self.waiting_for() is not None):
            return False
        if await self.steps_done() >= self.config.max_steps:
            return False
        if not self._restored:
            await self.backend.restore(await self.db.scalar(
                "SELECT path FROM checkpoints WHERE kind = 'state' AND backend = ? ORDER BY step DESC, id DESC LIMIT 1",
                (self.backend.name,)))
            self._restored = True
        batch_id = await self.db.scalar("SELECT id FROM batches WHERE state = 'claimed' ORDER BY id LIMIT 1")
        if batch_id is None:
            batch_id = await self.claim(force)
        if batch_id is None:
            return False
        await self.train_batch(batch_id)
        return True

    async def claim(self, force: bool = False) -> int | None:
        """Claim a batch in one transaction: RL turns (with sampler tokens) first, then text-only turns
        to distil. None when no batch is ready yet."""
        return await self._claim("rl", force) or await self._claim("distill", force)

    async def _claim(self, kind: str, force: bool) -> int | None:
        cfg = self.config
        if kind == "rl":
            eligible = "train_state = 'rated' AND prompt_ids IS NOT NULL"
            params: tuple[Any, ...] = ()
        else:
            eligible = "train_state = 'rated' AND prompt_ids IS NULL AND reward >= ?"
            params = (cfg.distill_threshold,)
        if kind == "distill":
            low = "train_state = 'rated' AND prompt_ids IS NULL AND reward < ?"
            # low-rated text-only turns teach nothing by imitation (the write lock only when there are some)
            if await self.db.scalar(f"SELECT 1 FROM turns WHERE {low} LIMIT 1", (cfg.distill_threshold,)):
                async with self.db.transaction() as db:
                    await db.execute(f"UPDATE turns SET train_state = 'skipped', skip_reason = ? WHERE {low}",
                                     (f"text-only turn rated below distill_threshold={cfg.distill_threshold}: "
                                      "not imitated; it feeds skill evolution", cfg.distill_threshold))
            if not await self.db.scalar(f"SELECT 1 FROM turns WHERE {eligible} LIMIT 1", params):
                return None  # nothing to distil: don't load a tokenizer (that may mean a slow hub look-up)
            # loaded outside any transaction (it can take seconds); an export writes the text without one
            if await self.tokenizer() is None and not self.exports_text:
                return None
        # Read first: a wake-up with nothing ready (a batch still filling) takes no write lock.
        first = await self.db.fetchone(f"SELECT namespace, rated_at FROM turns WHERE {eligible} ORDER BY rated_at LIMIT 1",
                                       params)
        if first is None:
            return None
        if not force:
            count = await self.db.scalar(f"SELECT COUNT(*) FROM (SELECT 1 FROM turns WHERE {eligible} AND namespace = ? "
                                         "LIMIT ?)", (*params, first["namespace"], cfg.batch_size))
            waited = time.time() - _epoch(first["rated_at"])
            if not (count >= cfg.batch_size or (waited >= cfg.batch_max_wait_seconds and count >= cfg.min_batch_size)):
                return None
        async with self.db.transaction() as db:
            first = await (await db.execute(f"SELECT namespace, rated_at FROM turns WHERE {eligible} "
                                            "ORDER BY rated_at LIMIT 1", params)).fetchone()
            if first is None:
                return None
            rows = await (await db.execute(
                f"SELECT id FROM turns WHERE {eligible} AND namespace = ? ORDER BY rated_at, id LIMIT ?",
                (*params, first["namespace"], cfg.batch_size))).fetchall()
            waited = time.time() - _epoch(first["rated_at"])
            ready = len(rows) >= cfg.batch_size or (waited >= cfg.batch_max_wait_seconds and len(rows) >= cfg.min_batch_size)
            if not (ready or force):
                return None
            loss_fn = cfg.loss_fn if kind == "rl" else "cross_entropy"
            cur = await db.execute(
                "INSERT INTO batches(namespace, kind, loss_fn, state, backend, created_at) VALUES (?, ?, ?, 'claimed', ?, ?)",
                (first["namespace"], kind, loss_fn, self.backend.name, utcnow()))
            batch_id = int(cur.lastrowid)
            await db.executemany("UPDATE turns SET train_state = 'claimed', batch_id = ? WHERE id = ? AND train_state = 'rated'",
                                 [(batch_id, r["id"]) for r in rows])
        log.info("claimed %s batch %d with %d turns", kind, batch_id, len(rows))
        return batch_id

    @property
    def exports_text(self) -> bool:
        """Whether the backend writes text-only turns as conversations (the export), so distillation
        needs no tokenizer."""
        return isinstance(self.backend, ExportBackend)

    async def tokenizer(self) -> Any:
        """The base model's tokenizer for distillation (`render.tokenizer_source`: never the network unless
        `allow_downloads`), loaded once and tried on a plain conversation; None (with the reason in
        `last_error` and status) if it cannot be loaded or cannot render a chat."""
        if self._tokenizer is None and self._tokenizer_error is None:
            from .render import load_tokenizer
            source = tokenizer_source(self.config)
            try:
                tokenizer = await run_daemon(load_tokenizer, source, self.config.allow_downloads)
            except Exception as exc:  # offline, or an unknown model: text-only turns wait, nothing is lost
                self._tokenizer_error = (f"no tokenizer for distillation from {source!r} ({type(exc).__name__}: "
                                         f"{str(exc)[:200]}); set tokenizer_path to a local tokenizer folder"
                                         + ("" if self.config.allow_downloads else ", or allow_downloads = true"))
                self.last_error = self._tokenizer_error
                log.warning("%s", self._tokenizer_error)
                return None
            try:  # no chat template, or no jinja2: found here, before any batch is claimed
                await run_daemon(render_sft, tokenizer, [{"role": "user", "content": "Hello"}], "Hi")
            except Exception as exc:
                self._tokenizer_error = (f"no tokenizer for distillation: the one from {source!r} has no usable chat "
                                         f"template ({type(exc).__name__}: {str(exc)[:200]}); set tokenizer_path to "
                                         "a tokenizer folder with a chat template")
                self.last_error = self._tokenizer_error
                log.warning("%s", self._tokenizer_error)
                return None
            self._tokenizer = tokenizer
        return self._tokenizer

    async def _plan(self, batch_id: int, kind: str, namespace: str) -> BatchPlan:
        if kind == "rl":
            rows = await self.db.fetchall(
                "SELECT id, namespace, prompt_ids, completion_ids, logprobs, reward, messages, response FROM turns "
                "WHERE batch_id = ? AND train_state = 'claimed' ORDER BY rated_at, id", (batch_id,))
            # Token ids cannot be redacted: a turn whose text carries a secret is never trained on.
            leaks = {r["id"]: what for r in rows if (what := find_secret(r["messages"] + "\n" + r["response"]))}
            turns, unreadable = [], {}
            for r in rows:
                if r["id"] in leaks:
                    continue
                try:
                    turns.append({"id": r["id"], "namespace": r["namespace"],
                                  "prompt_ids": _stored_json(r, "prompt_ids"),
                                  "completion_ids": _stored_json(r, "completion_ids"),
                                  "logprobs": _stored_json(r, "logprobs") if r["logprobs"] else None,
                                  "reward": r["reward"]})
                except DatumError as exc:
                    unreadable[r["id"]] = str(exc)
            baselines = {namespace: await self.db.get_kv(f"baseline:{namespace}")}
            teacher_C = await self._teacher_scores(turns, unreadable)
            plan = plan_rl_batch(turns, baselines, self.config.max_seq_len, teacher_C, self.config.teacher_kl_coef)
            plan.skipped.update(unreadable)
            plan.skipped.update({t: f"contains what looks like {what}: never trained on" for t, what in leaks.items()})
            return plan
        tokenizer = await self.tokenizer()
        if tokenizer is None and not self.exports_text:  # claimed while a tokenizer was at hand: a failure to plan
            raise DatumError(self._tokenizer_error or "no tokenizer for distillation")
        rows = await self.db.fetchall("SELECT id, messages, response, reward FROM turns WHERE batch_id = ? "
                                      "AND train_state = 'claimed' ORDER BY rated_at, id", (batch_id,))
        # Secrets are redacted from the text before it is rendered: the weights never see them.
        readable, unreadable = [], {}
        for r in rows:
            try:
                readable.append((r["id"], redact_json(_stored_json(r, "messages")), redact(r["response"]),
                                 r["reward"]))
            except DatumError as exc:
                unreadable[r["id"]] = str(exc)
        if tokenizer is not None:
            plan = plan_distill_batch(readable, tokenizer, self.config.max_seq_len)
        else:
            plan = BatchPlan([], [], {}, {}, None)
        if self.exports_text:  # every readable turn as a conversation line, rendered or not
            plan.conversations, plan.trained, plan.skipped, rewards = [], [], {}, []
            for r in readable:
                try:
                    plan.conversations.append(conversation_row(*r))
                except Exception as exc:  # stored messages that are not a list of messages: this turn only
                    plan.skipped[r[0]] = f"cannot be rendered as chat messages ({type(exc).__name__}: {exc})"[:500]
                    continue
                plan.trained.append(r[0])
                rewards.append(r[3])
            plan.mean_reward = sum(rewards) / len(rewards) if rewards else None
        plan.skipped.update(unreadable)
        return plan

    async def _teacher_scores(self, turns: list[dict[str, Any]], skipped: dict[str, str]) -> dict[str, list[float]] | None:
        """The teacher's logprobs of each turn's completion tokens (None without a teacher); a turn the teacher
        cannot score is skipped with the reason. TransientTrainingError when the teacher's service is down."""
        if self.teacher is None:
            return None
        scores: dict[str, list[float]] = {}
        for t in turns:
            if t["logprobs"] is None:   # no sampler logprobs to compare with: trained on its reward alone
                continue
            try:
                check_rl_inputs(t["prompt_ids"], t["completion_ids"], t["logprobs"], t["reward"])
            except DatumError:
                continue   # plan_rl_batch skips it, with the reason
            try:
                scores[t["id"]] = await self.teacher.logprobs(t["prompt_ids"], t["completion_ids"])
            except DatumError as exc:
                skipped[t["id"]] = str(exc)
        turns[:] = [t for t in turns if t["id"] not in skipped]
        return scores

    async def train_batch(self, batch_id: int) -> None:
        """Plan and train one claimed batch, then commit its turns, step and checkpoints together.

        Raises BatchFailed, with the attempt recorded, when the batch cannot be planned or the
        backend rejects it; TrainingHalted and TransientTrainingError from the backend pass
        through with no attempt counted (the batch is not at fault).
        """
        batch = await self.db.fetchone("SELECT namespace, kind, loss_fn, attempts FROM batches WHERE id = ?", (batch_id,))
        loss_fn = batch["loss_fn"]
        try:
            plan = await self._plan(batch_id, batch["kind"], batch["namespace"])
            for d in plan.datums:
                check_keys(d, loss_fn)
        except (TrainingHalted, TransientTrainingError):
            raise  # a teacher's service that is down: not the batch's fault, no attempt counted
        except Exception as exc:  # a tokenizer that broke, a row no check foresaw: counted, so it cannot wedge
            raise await self._failed(batch_id, batch["attempts"] + 1, "cannot be planned", exc) from exc
        loss_cfg = ({"clip_low_threshold": self.config.clip_low_threshold,
                     "clip_high_threshold": self.config.clip_high_threshold} if loss_fn in ("ppo", "cispo") else None)
        step = await self.steps_done() + 1
        result = StepResult(loss=None)
        stepped = bool(plan.datums or plan.conversations)
        try:
            if plan.datums:
                result = await self.backend.train(batch_id, step, plan.datums, loss_fn, loss_cfg)
            if plan.conversations and isinstance(self.backend, ExportBackend):
                path = await self.backend.write_conversations(batch_id, plan.conversations)
                result.metrics["conversations"] = str(path)
        except (TrainingHalted, TransientTrainingError):
            raise  # not the batch's fault: it stays claimed, no attempt counted
        except Exception as exc:
            raise await self._failed(batch_id, batch["attempts"] + 1, "failed to train", exc) from exc
        async with self.db.transaction() as db:
            await db.executemany("UPDATE turns SET train_state = 'trained' WHERE id = ? AND train_state = 'claimed'",
                                 [(t,) for t in plan.trained])
            await db.executemany("UPDATE turns SET train_state = 'skipped', skip_reason = ? WHERE id = ? "
                                 "AND train_state = 'claimed'", [(why, t) for t, why in plan.skipped.items()])
            await db.execute("UPDATE batches SET state = 'trained', attempts = attempts + 1, finished_at = ? WHERE id = ?",
                             (utcnow(), batch_id))
            if stepped:
                await db.execute(
                    "INSERT INTO train_steps(batch_id, step, loss, mean_reward, n_datums, metrics, created_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (batch_id, step, result.loss, plan.mean_reward, len(plan.datums), dumps(result.metrics), utcnow()))
                for kind, path in result.checkpoints:
                    await db.execute("INSERT INTO checkpoints(step, kind, path, backend, created_at) VALUES (?, ?, ?, ?, ?)",
                                     (step, kind, path, self.backend.name, utcnow()))
            for ns, value in plan.baselines.items():
                await set_kv(db, f"baseline:{ns}", value)
        self.last_error = None
        log.info("batch %d: %d trained, %d skipped (step %s)", batch_id, len(plan.trained), len(plan.skipped),
                 step if stepped else "none")
        if stepped:
            for hook in self.on_step:
                try:
                    await hook({"step": step, "loss": result.loss, "checkpoints": result.checkpoints})
                except Exception:  # an announcement is never worth a training step
                    log.exception("could not announce step %d", step)

    async def _failed(self, batch_id: int, attempts: int, what: str, exc: Exception) -> BatchFailed:
        """Record one failed attempt (the last one fails the batch and skips its turns); log it in one line."""
        error = (str(exc) if isinstance(exc, DatumError) else f"{type(exc).__name__}: {exc}")[:1000]
        final = attempts >= self.config.max_batch_attempts
        skipped = 0
        async with self.db.transaction() as db:
            if final:
                await db.execute("UPDATE batches SET state = 'failed', attempts = ?, last_error = ?, finished_at = ? "
                                 "WHERE id = ?", (attempts, error, utcnow(), batch_id))
                cur = await db.execute("UPDATE turns SET train_state = 'skipped', skip_reason = ? WHERE batch_id = ? "
                                       "AND train_state = 'claimed'", (f"batch failed {attempts} times: {error}", batch_id))
                skipped = cur.rowcount
            else:
                await db.execute("UPDATE batches SET attempts = ?, last_error = ? WHERE id = ?", (attempts, error, batch_id))
        message = f"batch {batch_id} {what} (attempt {attempts} of {self.config.max_batch_attempts}): {error}"
        retry_in = None if final else min(60.0, self.config.batch_retry_base_seconds * 2.0 ** attempts)
        message += f"; its {skipped} turns are skipped" if final else f"; replayed in {retry_in:.3g} s"
        self.last_error = message
        log.warning("%s", message)
        log.debug("batch %d: traceback of the failure", batch_id, exc_info=exc)
        return BatchFailed(message, retry_in)

    async def status(self) -> dict[str, Any]:
        """Plain data: paused, halted, backend, last error, what steps wait for (the window, idleness), claimed
        and failed batch counts, the last failed batch, and whether distillation's tokenizer is ready."""
        return {"paused": await self.paused(), "halted": await self.halted(), "backend": self.backend.name,
                "last_error": self.last_error, "waiting_for": self.waiting_for(),
                "claimed_batches": await self.db.scalar("SELECT COUNT(*) FROM batches WHERE state = 'claimed'"),
                "failed_batches": await self.db.scalar("SELECT COUNT(*) FROM batches WHERE state = 'failed'"),
                "last_failed_batch": await self._last_failed_batch(),
                "distillation": self._tokenizer_error or ("ready" if self._tokenizer is not None else "not loaded yet")}

    async def _last_failed_batch(self) -> dict[str, Any] | None:
        row = await self.db.fetchone("SELECT id, kind, attempts, last_error, finished_at FROM batches "
                                     "WHERE state = 'failed' ORDER BY id DESC LIMIT 1")
        return None if row is None else {"batch_id": row["id"], "kind": row["kind"], "attempts": row["attempts"],
                                         "error": row["last_error"], "failed_at": row["finished_at"]}


def _stored_json(row: Any, column: str) -> Any:
    """A turn's stored JSON column, parsed; DatumError if the text is not JSON (so only that turn is skipped)."""
    text = row[column]
    try:
        return json.loads(text)
    except (TypeError, ValueError, RecursionError) as exc:
        raise DatumError(f"stored {column} is not valid JSON ({type(exc).__name__}: {str(exc)[:100]})") from None


def _epoch(iso: str) -> float:
    from datetime import datetime
    return datetime.fromisoformat(iso).timestamp()
