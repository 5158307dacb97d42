"""Token accounting and per-namespace spend caps around any `ChatModel`."""
from __future__ import annotations

from typing import Any

from ..privacy import redact
from ..store import Database, utcnow
from .base import ChatMessage, ChatModel, Completion, LLMBudgetExceeded


class MeteredModel:
    """A `ChatModel` that records every successful call in `llm_usage` and enforces a token cap.

    Contract:
    - before a call, if `spend_cap_tokens_per_namespace` is not None and the namespace's total
      recorded tokens (prompt + completion, all time, every purpose) are >= the cap, raise
      `LLMBudgetExceeded` without calling the inner model;
    - after a successful call, insert one `llm_usage` row (namespace, provider, purpose, tokens);
      failed calls record nothing (the provider reports no usage for them);
    - the cap is checked before each call, so calls already in flight when it is reached may
      overshoot it by at most their own size (concurrency is bounded by the provider).
    A cap of None means unlimited. To grant more, raise the cap (the total is never reset).
    Every message's text is redacted (`privacy.redact`) before the inner model sees it.
    """

    def __init__(self, inner: ChatModel, db: Database, spend_cap_tokens_per_namespace: int | None = None):
        self.inner = inner
        self.db = db
        self.cap = spend_cap_tokens_per_namespace
        self.provider = inner.provider

    def __repr__(self) -> str:
        return f"MeteredModel({self.inner!r}, cap={self.cap})"

    async def used(self, namespace: str) -> int:
        """Total tokens recorded for `namespace`."""
        return int(await self.db.scalar(
            "SELECT COALESCE(SUM(prompt_tokens + completion_tokens), 0) FROM llm_usage WHERE namespace = ?",
            (namespace,)) or 0)

    async def complete(self, messages: list[ChatMessage], *, max_tokens: int, temperature: float = 0.0,
                       purpose: str = "judge", namespace: str = "default") -> Completion:
        """The inner model's completion of the redacted messages, recorded in `llm_usage` (class docstring).
        LLMBudgetExceeded when `namespace` has reached the cap; the inner model's LLMError as raised."""
        if self.cap is not None:
            used = await self.used(namespace)
            if used >= self.cap:
                raise LLMBudgetExceeded(
                    f"namespace {namespace!r} has used {used} LLM tokens, reaching its cap of {self.cap}; "
                    f"no {purpose} call was made. Raise llm_token_cap (METACLAW_LLM_TOKEN_CAP), or unset it for "
                    "no cap, to continue")
        # Whatever the caller built the prompt from, no secret leaves for a provider.
        messages = [ChatMessage(m.role, redact(m.content)) for m in messages]
        out = await self.inner.complete(messages, max_tokens=max_tokens, temperature=temperature,
                                        purpose=purpose, namespace=namespace)
        await record_usage(self.db, namespace, self.provider, purpose, out.prompt_tokens, out.completion_tokens)
        return out

    async def aclose(self) -> None:
        """Close the inner model's resources, if it has any."""
        close = getattr(self.inner, "aclose", None)
        if close is not None:
            await close()


async def record_usage(db: Database, namespace: str, provider: str, purpose: str, prompt_tokens: int,
                       completion_tokens: int) -> None:
    """One row of `llm_usage`: what a call to `provider` cost, for whom and why."""
    async with db.transaction() as conn:
        await conn.execute(
            "INSERT INTO llm_usage(namespace, provider, purpose, prompt_tokens, completion_tokens, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?)", (namespace, provider, purpose, prompt_tokens, completion_tokens, utcnow()))


async def usage_summary(db: Database) -> dict[str, Any]:
    """Tokens and calls recorded in `llm_usage`, per namespace and purpose (for status)."""
    rows = await db.fetchall(
        "SELECT namespace, purpose, COUNT(*) AS calls, SUM(prompt_tokens) AS prompt, "
        "SUM(completion_tokens) AS completion FROM llm_usage GROUP BY namespace, purpose ORDER BY namespace, purpose")
    out: dict[str, Any] = {}
    for r in rows:
        ns = out.setdefault(r["namespace"], {"tokens": 0, "calls": 0, "by_purpose": {}})
        ns["tokens"] += r["prompt"] + r["completion"]
        ns["calls"] += r["calls"]
        ns["by_purpose"][r["purpose"]] = {"calls": r["calls"], "prompt_tokens": r["prompt"],
                                          "completion_tokens": r["completion"]}
    return out
