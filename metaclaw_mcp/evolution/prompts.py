"""The evolution prompt sent to an LLM, and the tolerant parser of its answer. Pure functions."""
from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from typing import Any

from pydantic import ValidationError

from ..config import CATEGORIES
from ..models import Digest, FailureItem, RejectedProposal, SkillProposal
from ..text import jaccard

SYSTEM = ("You maintain a library of skills for an AI agent: short, reusable procedures that are added to the "
          "agent's system prompt when they fit a task. You turn the agent's failures into skills that would have "
          "prevented them. You answer with JSON only.")


GROUP_SIMILARITY = 0.3  # word-set overlap (Jaccard) of request + feedback that puts two failures in one group
WORD = re.compile(r"[a-z0-9]{3,}")


def content_words(text: str) -> set[str]:
    """The lowercased runs of 3 or more ASCII letters and digits in `text`, as a set (for Jaccard overlap)."""
    return set(WORD.findall(text.lower()))


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


MAX_JSON_STARTS = 1000  # "[" / "{" positions tried at most: each failed try may read to the end of the text


def _json_values(text: str) -> Iterator[Any]:
    """Every JSON value in the text, in order: at each "[" or "{" try to decode one; after a value, go on
    past its end (so its nested values are not found again). Fenced blocks are covered by the same scan."""
    decoder = json.JSONDecoder()
    i = 0
    for _ in range(MAX_JSON_STARTS):
        starts = [j for j in (text.find("[", i), text.find("{", i)) if j >= 0]
        if not starts:
            return
        i = min(starts)
        try:
            value, end = decoder.raw_decode(text, i)
        except (ValueError, RecursionError):  # not JSON here (or nested past the decoder's depth)
            i += 1
            continue
        yield value
        i = end


def _looks_like_proposal(value: Any) -> bool:
    return isinstance(value, dict) and "name" in value and ("body" in value or "description" in value)


def _proposal_items(value: Any) -> list[Any] | None:
    """The proposal-like items a JSON value holds: a list of objects, {"proposals"|"skills": [...]}, or one
    proposal object; None when it holds none."""
    if isinstance(value, dict):
        inner = value.get("proposals", value.get("skills"))
        if isinstance(inner, list):
            value = inner
        elif _looks_like_proposal(value):
            return [value]
        else:
            return None
    if isinstance(value, list) and value and any(isinstance(v, dict) for v in value):
        return value
    return None


def parse_proposals(text: str) -> tuple[list[SkillProposal], list[RejectedProposal]]:
    """Proposals from an LLM's answer (a JSON array, {"proposals": [...]} or one proposal object, fenced or
    not, after any prose): the first JSON value in the text that holds proposal-like items.

    Items that fail the schema are returned as rejections with the reason; an answer with no
    JSON at all is one rejection named "(answer)".
    """
    items: list[Any] | None = None
    empty = False  # an empty list of proposals: the model had nothing to add
    for value in _json_values(text):
        items = _proposal_items(value)
        if items is not None:
            break
        empty = empty or value == [] or (isinstance(value, dict) and value.get("proposals", value.get("skills")) == [])
    if items is None and empty:
        return [], []
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
