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
    if config.llm_provider == "tinker":
        return MeteredModel(_tinker_sampler(config, db), db, config.llm_token_cap)
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


def _tinker_sampler(config: MetaClawConfig, db: Database) -> ChatModel:
    """The sampling client of the newest sampler checkpoint the trainer recorded (the base model before any)."""
    import tinker

    from ..training.render import load_tokenizer, tokenizer_source
    from .tinker_sampler import TinkerSamplerModel

    if not config.tinker_api_key:
        raise ConfigError("llm_provider is 'tinker' but TINKER_API_KEY is not set")

    async def latest_path() -> str | None:
        return await db.scalar("SELECT path FROM checkpoints WHERE kind = 'sampler' AND backend = 'tinker' "
                               "ORDER BY step DESC, id DESC LIMIT 1")

    service = tinker.ServiceClient(api_key=config.tinker_api_key.get_secret_value(), base_url=config.tinker_base_url)
    return TinkerSamplerModel(service, config.model_name,
                              lambda: load_tokenizer(tokenizer_source(config), config.allow_downloads), latest_path)
