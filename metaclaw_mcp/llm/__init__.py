"""LLM access for the judge and evolution: one `ChatModel` interface, providers, accounting."""
from __future__ import annotations

from ..config import MetaClawConfig
from ..errors import ConfigError
from ..store import Database
from .accounting import MeteredModel, usage_summary
from .base import (ChatMessage, ChatModel, Completion, LLMAuthError, LLMBadResponse, LLMBudgetExceeded, LLMError,
                   LLMRateLimited, LLMRequestRejected, LLMTimeout, LLMUnavailable)
from .openai import OpenAIChatModel

__all__ = ["ChatMessage", "ChatModel", "Completion", "LLMAuthError", "LLMBadResponse", "LLMBudgetExceeded",
           "LLMError", "LLMRateLimited", "LLMRequestRejected", "LLMTimeout", "LLMUnavailable", "MeteredModel",
           "OpenAIChatModel", "make_chat_model", "usage_summary"]


def make_chat_model(config: MetaClawConfig, db: Database) -> ChatModel | None:
    """The server-side model configured, metered against `db` with `llm_token_cap`; or None.

    None for llm_provider "none" and "sampling" (sampling borrows the connected client's model
    inside a tool call, so there is no model the server can call on its own). For "openai",
    llm_base_url and llm_model are required: a missing one raises ConfigError rather than
    silently leaving the judge off.
    """
    if config.llm_provider != "openai":
        return None
    missing = [name for name in ("llm_base_url", "llm_model") if not getattr(config, name)]
    if missing:
        raise ConfigError(f"llm_provider is 'openai' but {' and '.join(missing)} "
                          f"{'is' if len(missing) == 1 else 'are'} not set; set "
                          + " and ".join(f"METACLAW_{m.upper()}" for m in missing)
                          + " (or the same keys in config.toml), or choose llm_provider 'sampling' or 'none'")
    assert config.llm_base_url is not None and config.llm_model is not None
    inner = OpenAIChatModel(config.llm_base_url, config.llm_api_key, config.llm_model,
                            timeout_seconds=config.llm_timeout_seconds, max_retries=config.llm_max_retries,
                            max_concurrency=config.llm_max_concurrency)
    return MeteredModel(inner, db, config.llm_token_cap)
