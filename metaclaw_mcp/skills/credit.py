"""Credit: which skill versions help, measured from the rewards of the turns they were injected into.

Pure arithmetic, no I/O. The store keeps, per skill version, the sufficient statistics of the
rewards of its rated turns and of their residuals (`skill_stats`, maintained by triggers): a
turn's residual is its reward minus the namespace's running mean reward when it was rated, the
reward of comparable turns of the same period. Comparing with the same period, not all time,
matters: as learning removes bad skills every turn gets better, and an all-time baseline would
make the skills used early look bad and those used late look good. From the sums:

- **uplift**: the mean residual of the version's turns: how much better they went than the
  comparable turns without it; at each review it is replaced by the version's effect fitted
  jointly with the others' (`fit_effects`), which shares out the credit of turns that injected
  several skills. With k skills in every turn only differences between skills are identified,
  so an effect is relative to the skills a version competes with: a skill that never hurts
  but is reliably worse than its alternatives also ends up below zero, and is retired;
- **se**: its standard error, the variance smoothed towards a prior so that three lucky turns
  do not look certain;
- **usefulness**: the posterior mean of the uplift under a normal prior centred on 0
  (`prior_sd`), so a skill with little evidence sits near 0 and evidence moves it;
- **decisions**: retire a version whose uplift is reliably negative (upper bound < threshold),
  promote a candidate whose uplift is reliably positive (lower bound > threshold), retire a
  candidate that showed nothing after `candidate_max_uses`. Retirement survives multiple
  testing: the review looks at every skill of a library after every few ratings, so a fixed
  1.96 bound retires some skills on pure noise (measured: 5-8 of 35 under random ratings).
  Each skill's evidence against "no harm" is an e-value that stays valid however often it is
  looked at (`retirement_evalue`: a normal-mixture likelihood ratio, Robbins 1970; Howard et
  al. 2021), and the skills retired are those the e-BH procedure selects over the whole
  library (`ebh`; Wang and Ramdas 2022): under ratings unrelated to the skills, the chance that
  a review ever retires any skill of the library is at most `alpha`, and when several skills
  do harm, their evidence lowers the bar for each other as in Benjamini-Hochberg;
- **ranking**: relevance scaled by usefulness, `relevance * (1 + usefulness_weight * usefulness)`:
  usefulness says how much a skill helps where it applies, so it lifts or sinks a skill among
  those that fit the request and never pulls an irrelevant one in (added instead, a lesson that
  helped with dates was pushed into every request's results); at most `explore_slots` places
  go to candidates or under-tested skills picked by Thompson sampling from their posterior.
"""
from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class RewardStats:
    """Sufficient statistics of a set of rewards: count, sum, sum of squares."""
    n: int = 0
    total: float = 0.0
    total_sq: float = 0.0

    def add(self, reward: float) -> RewardStats:
        """These statistics with one more reward (a new object; this one is frozen)."""
        return RewardStats(self.n + 1, self.total + reward, self.total_sq + reward * reward)

    def __sub__(self, other: RewardStats) -> RewardStats:
        return RewardStats(self.n - other.n, self.total - other.total, self.total_sq - other.total_sq)

    @property
    def mean(self) -> float | None:
        """The mean reward, or None for no rewards."""
        return self.total / self.n if self.n > 0 else None

    def variance(self, prior_sd: float, prior_weight: float = 2.0) -> float:
        """Sample variance smoothed towards `prior_sd**2` with `prior_weight` pseudo-observations."""
        if self.n <= 0:
            return prior_sd ** 2
        ss = max(self.total_sq - self.total * self.total / self.n, 0.0)  # sum of squared deviations
        return (ss + prior_weight * prior_sd ** 2) / (self.n - 1 + prior_weight)


@dataclass(frozen=True)
class CreditPolicy:
    """Thresholds and weights of credit; `MetaClawConfig.credit_policy()` builds it from the config."""
    usefulness_weight: float = 2.0     # relevance is in [0, 1]; uplift is in reward units
    prior_sd: float = 0.25             # prior sd of a skill's uplift: how big an effect is plausible
    reward_sd: float = 0.5             # prior sd of one turn's reward, smooths small-sample variances
    z: float = 1.96                    # width of the bounds promotion uses and reasons report
    alpha: float = 0.05                # chance that noise alone ever retires any skill of a library (ebh)
    min_baseline: int = 5              # rated turns without the skill before any decision
    promote_min_uses: int = 8          # rated uses before a candidate can become active
    promote_min_uplift: float = 0.0    # its lower bound must be above this
    retire_min_uses: int = 5           # rated uses before a skill can be retired
    retire_max_uplift: float = 0.0     # its upper bound must be below this
    candidate_max_uses: int = 40       # a candidate not promoted by then is retired
    taught_promote_min_uses: int = 3   # rated uses, none rated down on the whole, that confirm a taught lesson
    explore_slots: int = 1             # places per result that exploration may take
    explore_min_relevance: float = 0.3  # exploration only among skills this relevant (top = 1)
    explore_max_uses: int = 20         # an active skill with fewer rated uses is still "under-tested"


@dataclass(frozen=True)
class Credit:
    """What the evidence says about one skill version."""
    uses: int               # turns it was injected into
    rated: int              # of those, rated
    mean: float | None      # their mean reward
    uplift: float           # mean with minus mean without (0 without evidence)
    se: float               # standard error of the uplift (inf without evidence)
    usefulness: float       # posterior mean of the uplift
    posterior_sd: float     # posterior sd of the uplift

    def lower(self, z: float) -> float:
        """Lower bound of the uplift, `z` standard errors below it (-inf without evidence)."""
        return self.uplift - z * self.se

    def upper(self, z: float) -> float:
        """Upper bound of the uplift, `z` standard errors above it (inf without evidence)."""
        return self.uplift + z * self.se


NO_EVIDENCE_SE = math.inf


def credit(rewards: RewardStats, residuals: RewardStats, uses: int, policy: CreditPolicy,
           prior_mean: float = 0.0) -> Credit:
    """Credit of one version from its rated turns' rewards and residuals (reward minus baseline).

    `prior_mean`: where the usefulness starts without evidence (0; a taught lesson starts above
    it, see `lessons.py`). It moves usefulness only, never the uplift and bounds that decisions use."""
    if residuals.n <= 0:
        return Credit(uses, max(rewards.n, 0), rewards.mean, 0.0, NO_EVIDENCE_SE, prior_mean, policy.prior_sd)
    uplift = residuals.total / residuals.n
    se = math.sqrt(residuals.variance(policy.reward_sd) / residuals.n)
    # Normal prior N(prior_mean, prior_sd^2) on the uplift, normal likelihood N(uplift, se^2).
    shrink = policy.prior_sd ** 2 / (policy.prior_sd ** 2 + se ** 2)
    return Credit(uses, rewards.n, rewards.mean, uplift, se, uplift * shrink + prior_mean * (1.0 - shrink),
                  math.sqrt(shrink) * se)


# The e-value's mixing scale, in uses: its evidence grows fastest for effects of about the size
# that becomes distinguishable from 0 after this many rated uses.
EVALUE_SCALE_USES = 20.0


def retirement_evalue(c: Credit, policy: CreditPolicy, scale: float = EVALUE_SCALE_USES) -> float:
    """Evidence that a version's uplift is below `retire_max_uplift`, as an e-value (>= 0; its
    expectation is at most 1 while the uplift is not below it, however often it is computed).

    The normal-mixture likelihood ratio for a mean of n terms (Robbins 1970; Howard et al. 2021,
    sec. 3.2) with mixing variance `scale`·s²: E = sqrt(t / (n + t)) · exp(½ (d / se)² · n / (n + t)),
    d = uplift - retire_max_uplift, t = `scale`; 0 when d >= 0 or fewer than `retire_min_uses`
    rated uses (only reduces it, so it stays an e-value)."""
    d = c.uplift - policy.retire_max_uplift
    if c.rated < policy.retire_min_uses or d >= 0.0 or not math.isfinite(c.se) or c.se <= 0.0:
        return 0.0
    n, t = float(c.rated), float(scale)
    return math.sqrt(t / (n + t)) * math.exp(min(0.5 * (d / c.se) ** 2 * n / (n + t), 700.0))


def ebh(evalues: dict[int, float], alpha: float) -> set[int]:
    """The keys the e-BH procedure selects (Wang and Ramdas 2022): with m keys and their e-values
    sorted high to low, the first k* where k* is the largest k whose k-th e-value is at least
    m / (alpha·k). False selections are at most `alpha` in expectation, for any dependence
    between the e-values; when all are null, the chance of selecting any is at most `alpha`."""
    m = len(evalues)
    order = sorted(evalues, key=evalues.__getitem__, reverse=True)
    chosen = 0
    for k, key in enumerate(order, start=1):
        if evalues[key] >= m / (alpha * k):
            chosen = k
    return set(order[:chosen])


@dataclass(frozen=True)
class Decision:
    """A status change for one skill version and the reason recorded with it."""
    status: str   # the new status
    reason: str   # recorded in skills.status_reason


def decide(status: str, c: Credit, policy: CreditPolicy, baseline_n: int, taught: bool = False,
           harmful: float | None = None, independent: int | None = None) -> Decision | None:
    """The status change the evidence calls for, or None.

    `baseline_n` is the number of rated turns without the skill: no decision before there are
    `min_baseline` of them to compare against. `harmful`: the skill's retirement e-value when the
    review's `ebh` over the library selected it for retirement (None: not selected). A `taught`
    candidate (see lessons.py) is promoted once `taught_promote_min_uses` later turns that got it
    were rated, with a mean reward above 0: the lesson was not rated down where it was used.
    `independent`: of the rated uses, those whose reward did not come from the agent grading
    itself (None: all). Every rule's minimum number of uses counts these only, so an agent's own
    ratings never promote or retire a skill alone.
    """
    if status == "retired" or baseline_n < policy.min_baseline:
        return None
    if independent is not None and independent < c.rated:
        c = replace(c, rated=independent)   # the counts the rules need; the arithmetic stays the evidence's
    summary = f"uplift {c.uplift:+.3f} ± {policy.z * c.se:.3f} over {c.rated} rated uses"
    if harmful is not None and c.rated >= policy.retire_min_uses:
        return Decision("retired", f"reliably negative uplift: {summary} (below {policy.retire_max_uplift:+.2f} "
                                   f"with e-value {harmful:.3g}, selected over the library at error rate "
                                   f"{policy.alpha:g})")
    if status == "candidate" and taught and c.rated >= policy.taught_promote_min_uses and (c.mean or 0.0) > 0:
        return Decision("active", f"taught lesson confirmed: {c.rated} later rated uses, mean reward "
                                  f"{c.mean:+.2f} ({summary})")
    if status == "candidate":
        if c.rated >= policy.promote_min_uses and c.lower(policy.z) > policy.promote_min_uplift:
            return Decision("active", f"promoted: {summary} (lower bound above {policy.promote_min_uplift:+.2f})")
        if c.rated >= policy.candidate_max_uses:
            return Decision("retired", f"no measurable uplift after {c.rated} rated uses: {summary}")
    return None


# ---- ranking: relevance, usefulness, bounded exploration ----

@dataclass(frozen=True)
class Candidate:
    """One retrievable skill version for a query."""
    key: int                # caller's handle (skill id)
    relevance: float        # in [0, 1], the best match of the query scores 1
    status: str             # active | candidate
    credit: Credit


@dataclass(frozen=True)
class Ranked:
    """One place of a ranking: the candidate's key, its score and why it got the place."""
    key: int
    score: float            # what it was ranked by
    relevance: float
    usefulness: float
    why: str                # relevance | usefulness | exploration


def scaled(relevance: float, usefulness: float, policy: CreditPolicy) -> float:
    """A ranking score: `relevance * (1 + usefulness_weight * usefulness)`."""
    return relevance * (1.0 + policy.usefulness_weight * usefulness)


def exploit_score(c: Candidate, policy: CreditPolicy) -> float:
    """The score an active candidate ranks by: `scaled` of its relevance and usefulness."""
    return scaled(c.relevance, c.credit.usefulness, policy)


def explorable(c: Candidate, policy: CreditPolicy) -> bool:
    """A candidate, or an active skill still short of evidence, that is relevant enough to try."""
    if c.relevance < policy.explore_min_relevance:
        return False
    return c.status == "candidate" or c.credit.rated < policy.explore_max_uses


def rank(candidates: Sequence[Candidate], n: int, policy: CreditPolicy, rng: random.Random | None = None,
         explore: bool = True) -> list[Ranked]:
    """The best `n` of `candidates`, in order (a list of at most len(candidates) items).

    Active skills rank by relevance scaled by weighted usefulness (`scaled`). With `explore`, the last
    `min(explore_slots, n - 1)` places go to explorable skills (candidates only ever enter this
    way, until promoted), each chosen by a Thompson draw from its uplift posterior; a place no
    explorable skill claims goes back to the best remaining active skill.
    """
    rng = rng or random.Random()
    active = sorted((c for c in candidates if c.status == "active"), key=lambda c: exploit_score(c, policy),
                    reverse=True)
    slots = min(policy.explore_slots, max(n - 1, 0)) if explore else 0
    chosen: list[Ranked] = []
    for c in active[:n - slots]:
        u = c.credit.usefulness
        why = "usefulness" if policy.usefulness_weight * abs(u) >= 0.05 and u > 0 else "relevance"
        chosen.append(Ranked(c.key, exploit_score(c, policy), c.relevance, u, why))
    taken = {r.key for r in chosen}
    for _ in range(slots):
        pool = [c for c in candidates if c.key not in taken and explorable(c, policy)]
        best, best_score = None, -math.inf
        for c in pool:
            draw = rng.gauss(c.credit.usefulness, c.credit.posterior_sd)
            score = scaled(c.relevance, draw, policy)
            if score > best_score:
                best, best_score = c, score
        # exploration only spends a place where the draw beats the best active skill left out
        rest = [c for c in active if c.key not in taken]
        if best is not None and (not rest or best_score >= exploit_score(rest[0], policy) or best.status == "candidate"):
            chosen.append(Ranked(best.key, best_score, best.relevance, best.credit.usefulness, "exploration"))
            taken.add(best.key)
        elif rest:
            c = rest[0]
            chosen.append(Ranked(c.key, exploit_score(c, policy), c.relevance, c.credit.usefulness, "relevance"))
            taken.add(c.key)
    return chosen


# ---- effects fitted jointly: who gets the credit when several skills share a turn ----

@dataclass(frozen=True)
class Effect:
    """A skill version's fitted additive effect on reward, and its standard error."""
    effect: float
    se: float
    rated: int


def fit_effects(turns: Sequence[tuple[float, Sequence[int]]], prior_sd: float, sweeps: int = 25,
                ) -> tuple[float, dict[int, Effect]]:
    """Ridge fit of reward_t ~ b0 + sum of the effects of the skill versions injected into turn t.

    `turns`: (reward, keys of the versions injected) per rated turn, turns without skills
    included (they pin the intercept). Returns (b0, key -> Effect). The ridge penalty is the
    normal prior N(0, prior_sd^2) on each effect, so an effect is its posterior mean: a version
    seen with a bad skill in bad turns is not blamed for them once the bad skill's own effect is
    known, which a with-versus-without comparison cannot tell apart. Coordinate descent, O(sweeps
    x total uses); a few thousand turns take milliseconds.
    """
    if not turns:
        return 0.0, {}
    rewards = [r for r, _ in turns]
    members: dict[int, list[int]] = {}
    for t, (_, keys) in enumerate(turns):
        for key in keys:
            members.setdefault(key, []).append(t)
    b0 = sum(rewards) / len(rewards)
    effects = dict.fromkeys(members, 0.0)
    pred = [b0] * len(turns)  # b0 + sum of effects, per turn
    lam = 1.0
    for _ in range(sweeps):
        resid_var = max(sum((r - p) ** 2 for r, p in zip(rewards, pred)) / len(turns), 1e-4)
        lam = resid_var / prior_sd ** 2
        for key, ts in members.items():
            old = effects[key]
            partial = sum(rewards[t] - pred[t] + old for t in ts)
            new = partial / (len(ts) + lam)
            if new != old:
                effects[key] = new
                for t in ts:
                    pred[t] += new - old
        shift = sum(r - p for r, p in zip(rewards, pred)) / len(turns)
        b0 += shift
        pred = [p + shift for p in pred]
    resid_var = max(sum((r - p) ** 2 for r, p in zip(rewards, pred)) / len(turns), 1e-4)
    return b0, {key: Effect(effects[key], math.sqrt(resid_var / (len(ts) + lam)), len(ts))
                for key, ts in members.items()}


def credit_from_effect(e: Effect, uses: int, mean: float | None, policy: CreditPolicy,
                       prior_mean: float = 0.0) -> Credit:
    """Credit from a fitted effect: the effect is already the posterior mean (ridge = normal prior
    centred on 0); with `prior_mean` the prior's share of it, `se^2 / prior_sd^2`, goes there instead."""
    prior_share = min(1.0, (e.se / policy.prior_sd) ** 2) if policy.prior_sd > 0 else 1.0
    return Credit(uses, e.rated, mean, e.effect, e.se, e.effect + prior_share * prior_mean, e.se)
