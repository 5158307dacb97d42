"""Small text measures used across the package, one copy each. Pure functions, no I/O."""
from __future__ import annotations

import math
from collections.abc import Set


def estimate_tokens(text: str) -> int:
    """A cheap token estimate: about four characters a token for English text and code (0 for "")."""
    return math.ceil(len(text) / 4)


def jaccard(a: Set, b: Set) -> float:
    """|a ∩ b| / |a ∪ b| in [0, 1]; two empty sets are the same set (1.0)."""
    if not a and not b:
        return 1.0
    inter = len(a & b)
    return inter / (len(a) + len(b) - inter)


def clip(text: str, n: int) -> str:
    """At most `n` characters: a longer text keeps its head and ends in "…"."""
    return text if len(text) <= n else text[: n - 1] + "…"


def clip_middle(text: str, n: int) -> str:
    """At most about `n` characters: a longer text keeps its first two thirds and its end (where
    answers often conclude), with a line saying how much was left out."""
    if len(text) <= n:
        return text
    head = n * 2 // 3
    tail = n - head
    return f"{text[:head]}\n…[{len(text) - n} characters omitted]…\n{text[-tail:]}"


__all__ = ["clip", "clip_middle", "estimate_tokens", "jaccard"]
