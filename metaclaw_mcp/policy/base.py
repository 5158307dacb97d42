"""What every policy sampler shares: the request, the sampled sequences, how text is cut at stop
sequences, and which sampler a config asks for.

A policy samples `n` completions of one prompt (token ids rendered with the base model's chat
template) from the newest sampler checkpoint, and returns each completion's token ids, one
logprob per token, the decoded text and why it ended. The checkpoint that produced them comes
with them: a swap to a newer checkpoint never relabels an answer already being sampled.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from ..config import MetaClawConfig
    from ..store import Database

log = logging.getLogger("metaclaw_mcp.policy")

FinishReason = Literal["stop", "length"]
# Called from the sampling thread with (choice index, new text) as text becomes final: streaming.
OnText = Callable[[int, str], None]


@dataclass(frozen=True)
class SamplingRequest:
    """One request's sampling parameters: `n` completions of at most `max_tokens` tokens each, at
    `temperature` (0: greedy) with nucleus `top_p`, cut at the first of `stop`; `seed` makes the
    draws repeatable (same prompt, checkpoint and seed: same completions)."""
    n: int = 1
    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass
class SampledSequence:
    """One completion: its token ids (through the end-of-turn token, or through the token that
    completed a stop sequence), one logprob per token, the text (decoded without special tokens,
    cut before a stop sequence) and the finish reason: "stop" (end of turn or a stop sequence)
    or "length" (`max_tokens` reached)."""
    tokens: list[int]
    logprobs: list[float]
    text: str
    finish_reason: FinishReason


@dataclass
class Sampled:
    """The `n` completions of one request and the checkpoint that produced them: the sampler
    checkpoint's path, or "base:<model>" before the first."""
    checkpoint: str
    sequences: list[SampledSequence] = field(default_factory=list)


class Policy(Protocol):
    """A sampler over the newest checkpoint of one backend, swapped in place as training saves new ones."""

    backend: str        # "local" or "tinker": the checkpoints.backend rows it follows
    base_model: str     # what it fine-tunes, for /v1/models

    @property
    def checkpoint(self) -> str:
        """The checkpoint new requests are sampled from."""
        ...

    async def tokenizer(self) -> Any:
        """The base model's tokenizer (chat template included), loaded on first use."""
        ...

    async def warm_up(self) -> None:
        """Load the tokenizer and the newest checkpoint now rather than on the first request."""
        ...

    async def sample(self, prompt_ids: list[int], request: SamplingRequest, on_text: OnText | None = None) -> Sampled:
        """`request.n` completions of `prompt_ids` from the current checkpoint; `on_text` gets text as it is final."""
        ...

    async def swap(self, path: str) -> None:
        """Load the sampler checkpoint at `path`, then serve it to new requests (those in flight finish on theirs)."""
        ...


class BaseTokenizer:
    """The base model's tokenizer (`render.tokenizer_source`; the Hub only with `allow_downloads`) and its
    end-of-turn ids (`eos_ids`), loaded once, in a daemon thread, on first use; concurrent callers wait
    for the one load."""

    def __init__(self, config: MetaClawConfig):
        import anyio

        self.config = config
        self.stop_ids: set[int] = set()
        self._tokenizer: Any = None
        self._lock = anyio.Lock()

    async def get(self) -> Any:
        """The tokenizer (loading it the first time). Whatever `render.load_tokenizer` raises passes through."""
        if self._tokenizer is None:
            async with self._lock:
                if self._tokenizer is None:
                    from ..threads import run_daemon
                    from ..training.render import load_tokenizer, tokenizer_source
                    tok = await run_daemon(load_tokenizer, tokenizer_source(self.config), self.config.allow_downloads)
                    self.stop_ids = eos_ids(tok)
                    self._tokenizer = tok
        return self._tokenizer


def cut_at_stop(text: str, stop: tuple[str, ...]) -> tuple[str, bool]:
    """(text before the earliest stop sequence, True) when one occurs in `text`, else (text, False)."""
    hits = [i for s in stop if s and (i := text.find(s)) >= 0]
    return (text[:min(hits)], True) if hits else (text, False)


def settled_text(text: str, stop: tuple[str, ...]) -> str:
    """The part of a growing text that can be shown already: without a trailing partial character
    (U+FFFD from an incomplete UTF-8 sequence) and without a tail that may still become a stop sequence."""
    text = text.rstrip("\ufffd")
    hold = max((len(s) for s in stop), default=1) - 1
    return text[:len(text) - hold] if hold > 0 else text


def int_ids(value: Any) -> set[int]:
    """The integers in `value`: an int, or a list or tuple of them (as generation configs give
    `eos_token_id`); anything else gives none."""
    return {e for e in (value if isinstance(value, (list, tuple)) else [value])
            if isinstance(e, int) and not isinstance(e, bool)}


def eos_ids(tokenizer: Any, extra: Any = None) -> set[int]:
    """Token ids that end a turn: the tokenizer's end-of-sequence token, `extra` (a generation config's
    eos_token_id: an int or a list), and the chat-template end markers the vocabulary has."""
    ids = int_ids(extra)
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(int(tokenizer.eos_token_id))
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    for marker in ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>"):
        if marker in vocab:
            ids.add(int(vocab[marker]))
    return ids


def policy_kind(config: MetaClawConfig) -> str | None:
    """The sampler `config` asks for: `policy`, or for "auto" the training backend when it is local or
    tinker; None when nothing is served ("off", or an export backend under "auto")."""
    if config.policy == "off":
        return None
    if config.policy != "auto":
        return config.policy
    backend = config.effective_backend
    return backend if backend in ("local", "tinker") else None


def make_policy(config: MetaClawConfig, db: Database) -> Policy | None:
    """The configured policy sampler (see `policy_kind`), starting from the newest sampler checkpoint its
    backend has recorded; None when none is served. ImportError for the local one without the [local] extra."""
    kind = policy_kind(config)
    if kind == "local":
        from .local import LocalPolicy
        return LocalPolicy(config, db)
    if kind == "tinker":
        from .tinker_policy import TinkerPolicy
        return TinkerPolicy(config, db)
    return None


def follow_checkpoints(trainer: Any, policy: Policy) -> None:
    """Have `policy` serve each sampler checkpoint `trainer` commits, when both use the same backend
    (a Tinker checkpoint means nothing to the local sampler, and the other way round)."""
    if trainer.backend.name != policy.backend:
        return

    async def on_step(step: dict[str, Any]) -> None:
        for kind, path in step.get("checkpoints") or []:
            if kind == "sampler":
                await policy.swap(path)
    trainer.on_step.append(on_step)


async def newest_sampler_checkpoint(db: Database, backend: str) -> str | None:
    """The path of the newest sampler checkpoint `backend` recorded, or None before the first."""
    return await db.scalar("SELECT path FROM checkpoints WHERE kind = 'sampler' AND backend = ? "
                           "ORDER BY step DESC, id DESC LIMIT 1", (backend,))
