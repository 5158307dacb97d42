"""Credit review, run in the background: refit the skill versions' joint effects from recent
rated turns, apply the promotions and retirements the evidence calls for (`credit.decide`), and
keep each namespace within `max_active_skills`. Each change is its own small transaction, with
its reason in `skills.status_reason`.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import anyio

from ..store import Database, set_kv
from .credit import (Credit, CreditPolicy, Decision, RewardStats, credit, credit_from_effect, decide, ebh, fit_effects,
                     retirement_evalue)
from .library import SkillLibrary
from .mirror import RETRIEVABLE, Mirror, NamespaceState

if TYPE_CHECKING:
    from ..config import MetaClawConfig

log = logging.getLogger("metaclaw_mcp.retrieval")

FIT_TURNS = 20_000        # recent rated turns a review fits skill effects on


def credit_policy(config: MetaClawConfig) -> CreditPolicy:
    """The CreditPolicy the config's `credit_*` and `explore_*` settings give (the rest: its defaults)."""
    return CreditPolicy(
        usefulness_weight=config.credit_usefulness_weight, prior_sd=config.credit_prior_sd, alpha=config.credit_alpha,
        min_baseline=config.credit_min_baseline, promote_min_uses=config.credit_promote_min_uses,
        promote_min_uplift=config.credit_promote_min_uplift, retire_min_uses=config.credit_retire_min_uses,
        retire_max_uplift=config.credit_retire_max_uplift, candidate_max_uses=config.credit_candidate_max_uses,
        explore_slots=config.explore_slots, explore_min_relevance=config.explore_min_relevance,
        explore_max_uses=config.explore_max_uses)



def credit_of(state: NamespaceState, skill_id: int, version: int, policy: CreditPolicy) -> Credit:
    """What the evidence says of one skill version. A taught lesson's usefulness starts at
    `prior_sd` (one plausible effect) instead of 0: the user or the environment said a turn
    without it went wrong; evidence then moves it as for any skill."""
    uses, rewards, residuals = state.stats.get((skill_id, version), (0, RewardStats(), RewardStats()))
    meta = state.metas.get(skill_id)
    prior_mean = policy.prior_sd if meta is not None and meta.taught else 0.0
    effect = state.effects.get((skill_id, version))
    if effect is not None and effect.rated >= residuals.n:
        return credit_from_effect(effect, uses, rewards.mean, policy, prior_mean)
    # not in the last fit yet: the trigger-kept residual sums (reward minus the running mean)
    return credit(rewards, residuals, uses, policy, prior_mean)


class CreditReview:
    """Promotions, retirements and the library budget for the namespaces of one database."""

    def __init__(self, db: Database, library: SkillLibrary, mirror: Mirror, policy: CreditPolicy,
                 config: MetaClawConfig):
        self.db = db
        self.library = library
        self.mirror = mirror
        self.policy = policy
        self.config = config
        # namespace -> (rated turns, reward sum) at its last review; the skills change counter then
        self._evidence: dict[str, tuple[int, float]] = {}
        self._skills_gen: int | None = None

    async def due(self) -> list[str]:
        """The namespaces whose evidence (ratings) or library (skills added, revised, moved) changed
        since their last review: every namespace with skills the first time, then only those, so
        idle namespaces cost one row of `reward_totals` a review, not a refit."""
        gen = int(await self.db.scalar("SELECT value FROM change_counters WHERE name = 'skills'") or 0)
        if self._skills_gen is None:
            touched = {r[0] for r in await self.db.fetchall(
                "SELECT DISTINCT namespace FROM skills WHERE status IN ('active', 'candidate')")}
        elif gen != self._skills_gen:
            touched = {r[0] for r in await self.db.fetchall("SELECT DISTINCT namespace FROM skills WHERE gen > ?",
                                                            (self._skills_gen,))}
        else:
            touched = set()
        self._skills_gen = gen
        evidence = {r[0]: (int(r[1]), float(r[2])) for r in await self.db.fetchall(
            "SELECT namespace, rated, reward_sum FROM reward_totals")}
        touched |= {ns for ns, mark in evidence.items() if self._evidence.get(ns) != mark}
        self._evidence.update(evidence)
        return sorted(touched)

    async def review(self, namespace: str | None = None, changed_only: bool = False) -> list[tuple[str, str, Decision]]:
        """Apply the promotions and retirements the evidence calls for; return (namespace, slug, decision).

        `namespace`: that one; else every namespace with skills, or with `changed_only` those whose
        ratings or skills changed since their last review (`due`; what the background loop does).
        Each change is its own small transaction; the reason is recorded in `skills.status_reason`.
        """
        if namespace:
            namespaces = [namespace]
        elif changed_only:
            namespaces = await self.due()
        else:
            namespaces = [r[0] for r in await self.db.fetchall(
                "SELECT DISTINCT namespace FROM skills WHERE status IN ('active', 'candidate')")]
        applied = []
        for ns in namespaces:
            state = await self.mirror.state(ns)
            await self.fit(ns, state)
            judged = {m.id: (m, credit_of(state, m.id, m.version, self.policy))
                      for m in state.metas.values() if m.status in RETRIEVABLE}
            # every retrievable skill is judged at each review: retirement is chosen over all of them at once
            evalues = {sid: retirement_evalue(c, self.policy) for sid, (_, c) in judged.items()}
            harmful = ebh(evalues, self.policy.alpha)
            independent, raters, shared = await self.evidence_counts(ns)
            for sid, (meta, c) in judged.items():
                baseline_n = state.totals.n - c.rated
                if shared and raters.get((sid, meta.version), 0) < self.config.credit_min_raters:
                    continue   # tokens share this namespace: no one of them decides for the others alone
                decision = decide(meta.status, c, self.policy, baseline_n, taught=meta.taught,
                                  harmful=evalues[sid] if sid in harmful else None,
                                  independent=independent.get((sid, meta.version), 0))
                if decision is None:
                    continue
                reason = f"{decision.reason} (v{meta.version})"
                await self.library.set_status(ns, meta.id, decision.status, reason)
                meta.status = decision.status
                if decision.status == "retired" and state.dense is not None:
                    state.dense.put(meta.id, None)
                applied.append((ns, meta.slug, Decision(decision.status, reason)))
                log.info("skill %s/%s is now %s: %s", ns, meta.slug, decision.status, reason)
            applied += await self.enforce_budget(ns, state)
        if applied:
            async with self.db.transaction() as db:
                await set_kv(db, "credit_last_review", {"changes": len(applied)})
        return applied

    async def evidence_counts(self, namespace: str) -> tuple[dict[tuple[int, int], int], dict[tuple[int, int], int],
                                                              bool]:
        """Who the evidence came from, per (skill id, version), in one pass over its credited rated uses:
        how many of those uses got their reward from someone other than the agent grading itself
        (user, environment, judge: the uses a decision may count); how many tokens gave such ratings;
        and whether the namespace's ratings come from more than one token. The single-user default
        (no token) counts as one."""
        rows = await self.db.fetchall(
            "SELECT u.skill_id, u.version, COUNT(DISTINCT CASE WHEN t.reward_source != 'agent' THEN t.id END), "
            "COUNT(DISTINCT CASE WHEN g.source != 'agent' THEN COALESCE(g.principal, '') END) "
            "FROM skill_uses u JOIN turns t ON t.id = u.turn_id JOIN ratings g ON g.turn_id = t.id "
            "WHERE t.namespace = ? AND t.reward IS NOT NULL AND u.credited = 1 GROUP BY u.skill_id, u.version",
            (namespace,))
        everyone = int(await self.db.scalar(
            "SELECT COUNT(DISTINCT COALESCE(g.principal, '')) FROM ratings g JOIN turns t ON t.id = g.turn_id "
            "WHERE t.namespace = ? AND g.source != 'agent'", (namespace,)) or 0)
        return ({(r[0], r[1]): int(r[2]) for r in rows}, {(r[0], r[1]): int(r[3]) for r in rows}, everyone > 1)

    async def enforce_budget(self, namespace: str, state: NamespaceState | None = None) -> list[tuple[str, str, Decision]]:
        """Past `max_active_skills`, retire the least useful active skills (fewest uses first among equals).

        Nothing is deleted: a retired skill keeps every version and can be activated or rolled back.
        """
        cap = self.config.max_active_skills
        state = state or await self.mirror.state(namespace)
        active = [m for m in state.metas.values() if m.status == "active"]
        if cap is None or len(active) <= cap:
            return []
        scored = sorted(active, key=lambda m: (credit_of(state, m.id, m.version, self.policy).usefulness,
                                               credit_of(state, m.id, m.version, self.policy).uses, -m.id))
        log.warning("namespace %r has %d active skills, over max_active_skills=%d: retiring the %d least useful "
                    "(nothing is deleted; raise max_active_skills to keep more)", namespace, len(active), cap,
                    len(active) - cap)
        applied = []
        for meta in scored[:len(active) - cap]:
            c = credit_of(state, meta.id, meta.version, self.policy)
            reason = (f"library budget: over max_active_skills={cap}; among the least useful "
                      f"(usefulness {c.usefulness:+.3f} over {c.uses} uses, v{meta.version})")
            await self.library.set_status(namespace, meta.id, "retired", reason)
            meta.status = "retired"
            if state.dense is not None:
                state.dense.put(meta.id, None)
            applied.append((namespace, meta.slug, Decision("retired", reason)))
            log.info("skill %s/%s retired: %s", namespace, meta.slug, reason)
        return applied

    async def fit(self, namespace: str, state: NamespaceState | None = None) -> None:
        """Refit the joint effects of the namespace's skill versions from its recent rated turns."""
        state = state or await self.mirror.state(namespace)
        rows = await self.db.fetchall(
            "SELECT t.reward, group_concat(u.skill_id || ':' || u.version) AS used FROM "
            "(SELECT id, reward FROM turns WHERE namespace = ? AND reward IS NOT NULL "
            " ORDER BY rated_at DESC LIMIT ?) t LEFT JOIN skill_uses u ON u.turn_id = t.id AND u.credited = 1 "
            "GROUP BY t.id",
            (namespace, FIT_TURNS))
        keyed: dict[str, int] = {}
        turns = []
        for r in rows:
            keys = []
            for ref in (r["used"] or "").split(","):
                if ref:
                    keys.append(keyed.setdefault(ref, len(keyed)))
            turns.append((float(r["reward"]), keys))
        _, effects = await anyio.to_thread.run_sync(fit_effects, turns, self.policy.prior_sd)
        refs = {i: tuple(int(x) for x in ref.split(":")) for ref, i in keyed.items()}
        state.effects = {refs[i]: e for i, e in effects.items()}  # type: ignore[misc]

    async def credit_report(self, namespace: str = "default") -> list[dict[str, Any]]:
        """Per skill: status and the credit of its current version, most used first."""
        state = await self.mirror.state(namespace)
        out = []
        for meta in state.metas.values():
            c = credit_of(state, meta.id, meta.version, self.policy)
            out.append({"id": meta.id, "slug": meta.slug, "status": meta.status, "version": meta.version,
                        "uses": c.uses, "rated": c.rated, "mean_reward": c.mean, "uplift": round(c.uplift, 4),
                        "se": None if c.se == float("inf") else round(c.se, 4),
                        "usefulness": round(c.usefulness, 4)})
        return sorted(out, key=lambda d: (-d["uses"], d["slug"]))


