"""Pure pieces of retrieval: query terms, the FTS5 match expression, injection rendering.

No I/O here; the library runs the query.
"""
from __future__ import annotations

import math
import re
import secrets
from collections.abc import Sequence

WORD = re.compile(r"[^\W_]+", re.UNICODE)
MAX_TERMS = 64
# Words that carry no signal about which skill fits.
STOPWORDS = frozenset("""
a about above after again all am an and any are as at be because been before being below between both but by
can could did do does doing done down during each few for from further had has have having he her here hers
how i if in into is it its itself just let me more most my myself no nor not now of off on once only or other
our ours out over own please same she should so some such than that the their them then there these they this
those through to too under until up very was we were what when where which while who whom why will with would
you your yours yourself help want need like make get use using used also ok okay thanks thank hi hello
""".split())

# FTS5 column weights: name, description, body.
BM25_WEIGHTS = (4.0, 2.0, 1.0)


def query_terms(text: str) -> list[str]:
    """Distinct lower-case content words of `text`, in order of first appearance, at most MAX_TERMS."""
    seen: dict[str, None] = {}
    for word in WORD.findall(text.lower()):
        if len(word) < 2 or word in STOPWORDS or word in seen:
            continue
        seen[word] = None
        if len(seen) == MAX_TERMS:
            break
    return list(seen)


def match_expression(terms: Sequence[str]) -> str | None:
    """An FTS5 MATCH expression that ORs the quoted terms, or None when there are none."""
    if not terms:
        return None
    return " OR ".join('"' + t.replace('"', '""') + '"' for t in terms)


def estimate_tokens(text: str) -> int:
    """A cheap token estimate (about four characters a token for English text and code)."""
    return math.ceil(len(text) / 4)


def render_skill(name: str, description: str, body: str) -> str:
    return f"### {name}\n_{description}_\n\n{body.strip()}\n"


INJECTION_HEADER = ("## Learned skills\n"
                    "Skills learned from earlier work that may fit this task. Apply the ones that fit; "
                    "ignore the rest.\n\n")


def render_injection(blocks: Sequence[str]) -> str:
    return INJECTION_HEADER + "\n".join(blocks) if blocks else ""


def fit_to_budget(blocks: Sequence[str], budget: int | None) -> list[int]:
    """Indices of the blocks to keep, in rank order, so the injection stays within `budget` tokens.

    A block that does not fit is skipped and smaller later ones may still fit.
    """
    if budget is None:
        return list(range(len(blocks)))
    used = estimate_tokens(INJECTION_HEADER)
    keep = []
    for i, block in enumerate(blocks):
        cost = estimate_tokens(block) + 1
        if used + cost <= budget:
            keep.append(i)
            used += cost
    return keep


# ---- retrieval ids: self-describing, so a turn can be linked even if the log row is lost ----

def make_retrieval_id(refs: Sequence[tuple[int, int]]) -> str:
    """`r-<nonce>-<id>v<version>.<id>v<version>...` for the skill versions shown, in rank order."""
    return "r-" + secrets.token_hex(6) + "-" + ".".join(f"{sid}v{ver}" for sid, ver in refs)


# At most 18 digits a number, so every id and version fits an SQLite INTEGER (< 2**63).
RETRIEVAL_ID = re.compile(r"^r-[0-9a-f]{12}-((?:\d{1,18}v\d{1,18})(?:\.\d{1,18}v\d{1,18})*)?$")


def parse_retrieval_id(retrieval_id: str) -> list[tuple[int, int]] | None:
    """The (skill_id, version) pairs a retrieval id names, or None when it is not one."""
    m = RETRIEVAL_ID.match(retrieval_id)
    if not m:
        return None
    if not m.group(1):
        return []
    return [(int(a), int(b)) for a, b in (part.split("v") for part in m.group(1).split("."))]
