"""Skill evolution, the agent-authored path: a digest of failures out, validated proposals in.

Accepted proposals become `candidate` skills whose provenance is the failure turns they
address. Every run is recorded in `evolutions` with what was accepted and rejected, and why.
"""
from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from ..config import CATEGORIES
from ..errors import Conflict, InvalidInput, NotFound
from ..messages import last_user_text
from ..models import (AcceptedSkill, Digest, EvolveResult, FailureItem, RejectedProposal,
                      SkillProposal)
from ..privacy import redact
from ..screening import screen
from ..skills.lessons import merge_descriptions, merge_provenance
from ..skills.library import SkillLibrary, SkillRecord, content_hash
from ..skills.skillmd import SkillDoc, validate_doc
from ..store import Database, dumps, utcnow
from ..text import clip, jaccard
from ..turns import TurnLog
from .prompts import SYSTEM, build_prompt, content_words, parse_proposals

DIGEST_TEXT_CHARS = 600
NEAR_DUPLICATE = 0.5  # word-set overlap (Jaccard) above which a proposal revises a skill instead of joining it

# (namespace, text, corrections) -> [(skill id, similarity)] of the namespace's lessons that teach
# what `text` teaches (same rule, other words) or that the corrections name, best first: the
# retriever's judgement by meaning (`Retriever.same_rule`); [] where it cannot judge (no vectors).
MeaningMatch = Callable[[str, str, Sequence[str]], Awaitable[list[tuple[int, float]]]]

PROPOSAL_INSTRUCTIONS = f"""\
These turns failed (low reward or negative feedback). Write at most {{max_new}} skills that would
have prevented them, then call evolve_skills again with `proposals`. Each skill is reusable
guidance for a whole class of tasks, not a fix for one turn:
- name: a slug (lowercase letters, digits, single hyphens; at most 64 chars), e.g. `iso8601-with-offset`;
- description: starts "Use when ..." and names the situations and words that call for it (at most 1024 chars);
- body: 3-8 numbered, concrete steps, then one line "Anti-pattern: ..." showing the mistake;
- category: one of {", ".join(CATEGORIES)};
- addresses: the turn_ids of the failures it covers (a lesson that cites the failure it was taught
  by is used from the next fetch on; one that cites none is only tried now and then);
- scope: "always" for a standing preference that applies whatever the request (a format, a
  convention the user wants everywhere), else leave it out.
Never include secrets, personal data copied from the turns, or instructions to ignore other instructions."""


class Evolution:
    """Skill evolution for every namespace: digests of failures (turns rated below `failure_threshold`,
    at most `digest_max_failures` a digest), prompts for an LLM, and the screening and storing of
    proposals. `same_rule` finds lessons that teach the same as a text (the retriever's, by meaning)."""

    def __init__(self, db: Database, library: SkillLibrary, turns: TurnLog, failure_threshold: float = 0.0,
                 digest_max_failures: int = 20, same_rule: MeaningMatch | None = None):
        self.db = db
        self.library = library
        self.turns = turns
        self.failure_threshold = failure_threshold
        self.digest_max_failures = digest_max_failures
        self.same_rule = same_rule

    async def digest(self, namespace: str, max_new: int) -> tuple[Digest, list[str]]:
        """(the digest, its failures' turn ids): the most recently rated failures no skill cites yet, each
        text clipped to `DIGEST_TEXT_CHARS` characters and redacted, with instructions asking for at most
        `max_new` proposals and the proposal's JSON schema."""
        failures = await self.turns.failures(namespace, self.failure_threshold, self.digest_max_failures)
        # Secrets are redacted whatever the store kept: the digest goes to a client and to an LLM.
        items = [FailureItem(turn_id=f["turn_id"], session_id=f["session_id"], reward=f["reward"],
                             request=clip(redact(last_user_text(f["messages"])), DIGEST_TEXT_CHARS),
                             response=clip(redact(f["response"]), DIGEST_TEXT_CHARS),
                             feedback=[clip(redact(x), DIGEST_TEXT_CHARS) for x in f["feedback"]]) for f in failures]
        schema = SkillProposal.model_json_schema()
        return (Digest(failures=items, instructions=PROPOSAL_INSTRUCTIONS.format(max_new=max_new),
                       proposal_schema=schema), [f["turn_id"] for f in failures])

    async def new_failures(self, namespace: str) -> list[str]:
        """Failures no skill cites yet and no LLM evolution run has read: what automatic evolution counts."""
        failures = await self.turns.failures(namespace, self.failure_threshold, 1000)
        seen: set[str] = set()
        for row in await self.db.fetchall("SELECT failures FROM evolutions WHERE namespace = ? AND mode = 'llm'",
                                          (namespace,)):
            seen.update(json.loads(row["failures"]))
        return [f["turn_id"] for f in failures if f["turn_id"] not in seen]

    async def llm_prompt(self, namespace: str, max_new: int) -> tuple[str, str] | None:
        """(system, user) messages asking an LLM for proposals, or None when there are no failures."""
        digest, _ = await self.digest(namespace, max_new)
        if not digest.failures:
            return None
        text = " ".join(f"{f.request} {' '.join(f.feedback)}" for f in digest.failures)
        nearby = await self.library.search(text, namespace, k=8, statuses=("active", "candidate"))
        return SYSTEM, build_prompt(digest, [(s.slug, s.description[:200]) for s in nearby], max_new)

    async def evolve_from_answer(self, namespace: str, max_new: int, answer: str, llm: str | None,
                                 prompt: str | None = None, dry_run: bool = False,
                                 principal: str | None = None) -> EvolveResult:
        """Screen and store the proposals in an LLM's answer; unparseable items are rejected with reasons."""
        proposals, unparsed = parse_proposals(answer)
        return await self.evolve(namespace, max_new, proposals, dry_run, source="llm", llm=llm,
                                 pre_rejected=unparsed, audit=(prompt, answer), principal=principal)

    async def evolve(self, namespace: str = "default", max_new: int = 3,
                     proposals: Sequence[SkillProposal] | None = None, dry_run: bool = False,
                     source: str = "agent", llm: str | None = None,
                     pre_rejected: Sequence[RejectedProposal] = (),
                     audit: tuple[str | None, str | None] = (None, None),
                     principal: str | None = None) -> EvolveResult:
        """With `proposals`: screen and store them. Without: return the digest for the caller to write them.
        `principal`: the token that proposes (None: the single-user default), recorded on each version."""
        digest, failure_ids = await self.digest(namespace, max_new)
        if proposals is None:
            evo_id = None if dry_run else await self._record(namespace, "digest", failure_ids, [], [], [], llm)
            return EvolveResult(failures_analyzed=len(failure_ids), accepted=[], rejected=[], digest=digest,
                                evolution_id=evo_id, dry_run=dry_run)
        if source == "agent":  # the caller can fix its own call: a malformed proposal fails the whole call
            for i, p in enumerate(proposals):
                validate_doc(SkillDoc(p.name, p.description, p.body, p.category), self.library.max_body_chars,
                             where=f"proposals.{i} ({p.name!r})")
        accepted_docs: list[tuple[SkillDoc, list[str], SkillRecord | None]] = []
        rejected: list[RejectedProposal] = list(pre_rejected)
        hashes: set[str] = set()
        for p in proposals:
            reason = await self._check(namespace, p, hashes)
            target = await self.near_duplicate(namespace, p) if reason is None else None
            if target is not None and target.status == "retired":
                reason = (f"too close to skill {target.slug!r}, which was retired"
                          + (f" ({target.status_reason})" if target.status_reason else ""))
            if reason is None and len(accepted_docs) >= max_new:
                reason = f"over max_new={max_new}: only the first {max_new} acceptable proposals are kept"
            if reason is not None:
                rejected.append(RejectedProposal(name=p.name, reason=reason))
                continue
            hashes.add(content_hash(p.description, p.body))
            accepted_docs.append((SkillDoc(p.name, p.description, p.body, p.category,
                                           {"scope": p.scope} if p.scope else {}), list(dict.fromkeys(p.addresses)),
                                  target))
        accepted: list[AcceptedSkill] = []
        evo_id = None
        if not dry_run:
            async with self.db.transaction() as db:
                for doc, provenance, target in accepted_docs:
                    if target is not None:  # a refinement: a new version of that skill, not a near-copy beside it
                        version = await self._add_version(db, target, doc, source, provenance, principal)
                        accepted.append(AcceptedSkill(id=target.id, slug=target.slug, version=version,
                                                      status=target.status, proposed_name=doc.name, revised=True))
                        continue
                    try:
                        sid = await self.library.insert(db, doc, namespace, "candidate", source, provenance,
                                                        principal=principal)
                    except Conflict as exc:  # a concurrent call took the name between check and insert
                        rejected.append(RejectedProposal(name=doc.name, reason=str(exc)))
                        continue
                    accepted.append(AcceptedSkill(id=sid, slug=doc.name, version=1, status="candidate",
                                                  proposed_name=doc.name))
                evo_id = await self._insert_run(db, namespace, "llm" if source == "llm" else "agent", failure_ids,
                                                [p.model_dump() for p in proposals], accepted, rejected, llm, audit)
        else:
            accepted = [AcceptedSkill(id=t.id if t else 0, slug=t.slug if t else d.name, version=0,
                                      status=t.status if t else "candidate", proposed_name=d.name, revised=t is not None)
                        for d, _, t in accepted_docs]
        return EvolveResult(failures_analyzed=len(failure_ids), accepted=accepted, rejected=rejected,
                            evolution_id=evo_id, dry_run=dry_run)

    async def _check(self, namespace: str, p: SkillProposal, batch_hashes: set[str]) -> str | None:
        """Why this proposal must not be stored, or None."""
        try:
            validate_doc(SkillDoc(p.name, p.description, p.body, p.category), self.library.max_body_chars,
                         where=f"proposal {p.name!r}")
        except InvalidInput as exc:
            return str(exc)
        problem = screen(p.name, p.description, p.body)
        if problem:
            return f"screening: {problem}"
        digest = content_hash(p.description, p.body)
        if digest in batch_hashes:
            return "exact duplicate of another proposal in this call"
        dup = await self.library.find_by_hash(namespace, digest)
        if dup is not None:
            return f"exact duplicate of skill {dup.slug!r} (id {dup.id}); nothing new to add"
        if p.addresses:
            marks = ",".join("?" * len(p.addresses))
            known = {r[0] for r in await self.db.fetchall(
                f"SELECT id FROM turns WHERE namespace = ? AND id IN ({marks})", [namespace, *p.addresses])}
            unknown = [a for a in p.addresses if a not in known]
            if unknown:
                return f"addresses names turns not in namespace {namespace!r}: {', '.join(unknown[:5])}"
        return None

    async def near_duplicate(self, namespace: str, p: SkillProposal) -> SkillRecord | None:
        """The existing skill a proposal refines (consolidation): the one with its name, else one sharing
        most of its words, else the lesson that teaches the same rule in other words (`same_rule`)."""
        try:
            return await self.library.get(namespace, p.name)
        except NotFound:
            pass
        words = content_words(f"{p.description} {p.body}")
        for cand in await self.library.search(f"{p.name} {p.description}", namespace, k=3,
                                              statuses=("active", "candidate", "retired")):
            if jaccard(words, content_words(f"{cand.description} {cand.body}")) >= NEAR_DUPLICATE:
                return cand
        if self.same_rule is not None:
            corrections = await self.corrections(namespace, p.addresses) if p.addresses else []
            for skill_id, _ in await self.same_rule(namespace, f"{p.description}\n{p.body}", corrections):
                try:
                    return await self.library.get(namespace, skill_id)
                except NotFound:  # deleted since
                    continue
        return None

    async def corrections(self, namespace: str, turn_ids: Sequence[str]) -> list[str]:
        """The feedback of the user's and the environment's negative ratings of `turn_ids` (what the
        corrections that taught a proposal said), oldest first."""
        marks = ",".join("?" * len(turn_ids))
        rows = await self.db.fetchall(
            "SELECT r.feedback FROM ratings r JOIN turns t ON t.id = r.turn_id WHERE t.namespace = ? "
            f"AND r.turn_id IN ({marks}) AND r.source IN ('user', 'env') AND r.score < 0 "
            "AND r.feedback IS NOT NULL AND r.feedback != '' ORDER BY r.id", [namespace, *turn_ids])
        return [r[0] for r in rows]

    async def _add_version(self, db: Any, target: SkillRecord, doc: SkillDoc, source: str,
                           provenance: list[str], principal: str | None = None) -> int:
        """Inside a transaction: the proposal as the newest version of `target`, keeping its slug, with
        the situations of both descriptions and both provenances (each rule lives in one place)."""
        doc = SkillDoc(target.slug, merge_descriptions(target.description, doc.description), doc.body,
                       doc.category, {**target.metadata, **doc.metadata})
        return await self.library.add_version(db, target.id, doc, source,
                                              merge_provenance(target.provenance, provenance), target.version,
                                              principal)

    async def _record(self, namespace: str, mode: str, failure_ids: list[str], proposals: list[dict[str, Any]],
                      accepted: list[AcceptedSkill], rejected: list[RejectedProposal], llm: str | None) -> int:
        async with self.db.transaction() as db:
            return await self._insert_run(db, namespace, mode, failure_ids, proposals, accepted, rejected, llm)

    @staticmethod
    async def _insert_run(db: Any, namespace: str, mode: str, failure_ids: list[str], proposals: list[dict[str, Any]],
                          accepted: list[AcceptedSkill], rejected: list[RejectedProposal], llm: str | None,
                          audit: tuple[str | None, str | None] = (None, None)) -> int:
        cur = await db.execute(
            "INSERT INTO evolutions(namespace, mode, failures, proposals, accepted, rejected, llm, prompt, answer,"
            " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (namespace, mode, dumps(failure_ids), dumps(proposals), dumps([a.model_dump() for a in accepted]),
             dumps([r.model_dump() for r in rejected]), llm, audit[0], audit[1], utcnow()))
        return int(cur.lastrowid)

    async def recent(self, limit: int = 10) -> list[dict[str, Any]]:
        """The last `limit` evolution runs of every namespace, newest first, as plain data (JSON columns parsed)."""
        rows = await self.db.fetchall("SELECT * FROM evolutions ORDER BY id DESC LIMIT ?", (limit,))
        return [{k: (json.loads(r[k]) if k in ("failures", "proposals", "accepted", "rejected") else r[k])
                 for k in r.keys()} for r in rows]
