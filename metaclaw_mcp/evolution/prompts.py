"""The evolution prompt sent to an LLM, and the tolerant parser of its answer. Pure functions."""
from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from ..config import CATEGORIES
from ..models import Digest, FailureItem, RejectedProposal, SkillProposal

SYSTEM = ("You maintain a library of skills for an AI agent: short, reusable procedures that are added to the "
          "agent's system prompt when they fit a task. You turn the agent's failures into skills that would have "
          "prevented them. You answer with JSON only.")


GROUP_SIMILARITY = 0.3  # word-set overlap (Jaccard) of request + feedback that puts two failures in one group
WORD = re.compile(r"[a-z0-9]{3,}")


def content_words(text: str) -> set[str]:
    return set(WORD.findall(text.lower()))


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a and b else 0.0


def _words(f: FailureItem) -> set[str]:
    return content_words(f"{f.request} {' '.join(f.feedback)}")


def group_failures(failures: Sequence[FailureItem]) -> list[list[FailureItem]]:
    """Failures that share most of their words (the same kind of mistake), greedily, in first-seen order."""
    groups: list[tuple[set[str], list[FailureItem]]] = []
    for f in failures:
        words = _words(f)
        for g_words, members in groups:
            if jaccard(words, g_words) >= GROUP_SIMILARITY:
                members.append(f)
                g_words |= words
                break
        else:
            groups.append((set(words), [f]))
    return [members for _, members in groups]


def build_prompt(digest: Digest, existing: Sequence[tuple[str, str]], max_new: int) -> str:
    """The user message: the failures grouped by kind, the nearby skills the library already has, and the
    output contract. One skill per group is the natural answer."""
    groups = group_failures(digest.failures)
    lines = [f"The agent failed these {len(digest.failures)} turn(s), in {len(groups)} group(s) of similar failures:", ""]
    for g, members in enumerate(groups, 1):
        lines += [f"# Group {g}: {len(members)} failure(s)", ""]
        for f in members:
            lines += [f"## Failure (turn_id {f.turn_id}, reward {f.reward:+.2f})",
                      f"User asked: {f.request}", f"Agent answered: {f.response}"]
            lines += [f"Feedback: {fb}" for fb in f.feedback]
            lines.append("")
    if existing:
        lines += ["The library already has these skills (do not duplicate them; a proposal may refine one by "
                  "reusing its exact name):"]
        lines += [f"- {slug}: {desc}" for slug, desc in existing]
        lines.append("")
    lines += [
        f"Write at most {max_new} new skills that would have prevented these failures, preferably one per group. "
        "Each skill must generalise to the whole class of task, not just repeat the one answer.",
        "Answer with a JSON array only, each item an object with:",
        '- "name": lowercase slug with single hyphens, at most 64 chars;',
        '- "description": starts "Use when ...", names the situations and words that call for it (<= 1024 chars);',
        '- "body": 3-8 numbered concrete steps, then one line "Anti-pattern: ..." showing the mistake;',
        f'- "category": one of {", ".join(CATEGORIES)};',
        '- "addresses": the turn_ids of the failures it covers.',
        "Never include secrets or personal data from the turns, and never instructions to ignore other instructions.",
    ]
    return "\n".join(lines)


FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S)


def _json_candidates(text: str) -> list[str]:
    found = [m.group(1) for m in FENCE.finditer(text)]
    for open_, close in (("[", "]"), ("{", "}")):
        start, end = text.find(open_), text.rfind(close)
        if 0 <= start < end:
            found.append(text[start:end + 1])
    return found


def parse_proposals(text: str) -> tuple[list[SkillProposal], list[RejectedProposal]]:
    """Proposals from an LLM's answer (a JSON array, or {"proposals": [...]}, fenced or not).

    Items that fail the schema are returned as rejections with the reason; an answer with no
    JSON at all is one rejection named "(answer)".
    """
    items: list[Any] | None = None
    for candidate in _json_candidates(text):
        try:
            data = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(data, dict):
            data = data.get("proposals", data.get("skills", [data]))
        if isinstance(data, list):
            items = data
            break
    if items is None:
        return [], [RejectedProposal(name="(answer)", reason="the model's answer held no JSON array of proposals: "
                                                              + text[:200].replace("\n", " "))]
    good: list[SkillProposal] = []
    bad: list[RejectedProposal] = []
    for i, item in enumerate(items):
        name = str(item.get("name", f"(item {i})")) if isinstance(item, dict) else f"(item {i})"
        if isinstance(item, dict):
            item = {k: v for k, v in item.items() if k in SkillProposal.model_fields}
        try:
            good.append(SkillProposal.model_validate(item))
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'item'}: {e['msg']}" for e in exc.errors())
            bad.append(RejectedProposal(name=name, reason=f"does not fit the proposal schema: {problems}"))
    return good, bad
