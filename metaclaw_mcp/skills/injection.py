"""The injection `fetch_skills` returns: markdown for a system prompt, within a token budget. Pure.

It follows the agentskills.io progressive-disclosure model: a skill's name and description say
when it applies, its body says how; an agent loads a body when the description fits. So:

- **standing lessons** (scope `always`: a preference that applies whatever the task) come first,
  each as one line with its rule, so every request gets them at little cost;
- the **top skills** come with their whole body, at most `full_skills` of them;
- the **next relevant skills** come as one-line entries (name, description, `skill://` URI to
  open as a resource); a skill whose body is short (at most `SHORT_BODY_CHARS`, a taught lesson
  usually) is shown whole wherever it ranks, as its body is about as long as an entry;
- everything within `budget` tokens (`estimate_tokens`): a body that does not fit becomes an
  entry, an entry that does not fit is left out, and what is left out is not returned.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from ..text import estimate_tokens

SHORT_BODY_CHARS = 480      # about 120 tokens: a rule in a few sentences
STANDING_CHARS = 480        # of a standing lesson's body, shown on every fetch

INJECTION_HEADER = ("## Learned skills\n"
                    "Skills learned from earlier work that may fit this task. Apply the ones that fit; "
                    "ignore the rest.\n\n")
STANDING_HEADER = "### Standing preferences (apply to every answer)\n"
BRIEF_HEADER = "### Also relevant (open a skill:// resource for its full text)\n"


@dataclass(frozen=True)
class Entry:
    """One skill to show: who it is and its text."""
    key: int
    uri: str
    slug: str
    description: str
    body: str


@dataclass(frozen=True)
class Shown:
    """A skill the injection shows, and how: `full` (its body), `brief` (a one-line entry) or
    `standing` (its rule on one line, on every fetch)."""
    key: int
    disclosure: str


def render_skill(name: str, description: str, body: str) -> str:
    """A skill with its whole body: heading, description in italics, body."""
    return f"### {name}\n_{description}_\n\n{body.strip()}\n"


def render_brief(entry: Entry) -> str:
    """A one-line entry: slug, description and the resource URI that holds the body."""
    return f"- `{entry.slug}`: {entry.description.strip()} ({entry.uri})\n"


def render_standing(entry: Entry) -> str:
    """A standing lesson on one line: slug and its rule (cut at `STANDING_CHARS`, with its URI)."""
    body = " ".join(entry.body.split())
    if len(body) > STANDING_CHARS:
        body = body[:STANDING_CHARS - 1].rstrip() + f"… ({entry.uri})"
    return f"- **{entry.slug}**: {body}\n"


def render_injection(blocks: Sequence[str]) -> str:
    """The header and `blocks`, or "" when there are none."""
    return INJECTION_HEADER + "\n".join(blocks) if blocks else ""


def compose(ranked: Sequence[Entry], standing: Sequence[Entry], budget: int | None,
            full_skills: int = 2) -> tuple[str, list[Shown]]:
    """The injection for `ranked` skills (best first) and `standing` lessons, and what it shows.

    Returns (markdown, shown): `shown` lists the skills in the injection, the ranked ones first in
    rank order, then the standing ones. `budget` is in tokens (None: no cap)."""
    cap = math.inf if budget is None else budget
    used = estimate_tokens(INJECTION_HEADER)
    standing_lines: list[str] = []
    full_blocks: list[str] = []
    brief_lines: list[str] = []
    shown_ranked: list[Shown] = []
    shown_standing: list[Shown] = []

    def fits(text: str, header: str | None, section: list[str]) -> bool:
        nonlocal used
        cost = estimate_tokens(text) + 1 + (estimate_tokens(header) if header and not section else 0)
        if used + cost > cap:
            return False
        used += cost
        return True

    standing_keys = {e.key for e in standing}
    for e in standing:
        line = render_standing(e)
        if fits(line, STANDING_HEADER, standing_lines):
            standing_lines.append(line)
            shown_standing.append(Shown(e.key, "standing"))
    for e in ranked:
        if e.key in standing_keys:
            continue
        whole = len(e.body.strip()) <= SHORT_BODY_CHARS or len(full_blocks) < full_skills
        if whole:
            block = render_skill(e.slug, e.description, e.body)
            if fits(block, None, full_blocks):
                full_blocks.append(block)
                shown_ranked.append(Shown(e.key, "full"))
                continue
        line = render_brief(e)
        if fits(line, BRIEF_HEADER, brief_lines):
            brief_lines.append(line)
            shown_ranked.append(Shown(e.key, "brief"))
    blocks: list[str] = []
    if standing_lines:
        blocks.append(STANDING_HEADER + "".join(standing_lines))
    blocks += full_blocks
    if brief_lines:
        blocks.append(BRIEF_HEADER + "".join(brief_lines))
    return render_injection(blocks), shown_ranked + shown_standing


__all__ = ["Entry", "INJECTION_HEADER", "SHORT_BODY_CHARS", "Shown", "compose", "estimate_tokens",
           "render_injection", "render_skill"]
