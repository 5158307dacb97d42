"""Render a text-only turn with the base model's own chat template, for distillation.

The weights are 1 on the assistant's reply up to and including its end-of-turn token, 0 on
everything before (the prompt) and after (template padding such as a trailing newline).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ..messages import content_text

log = logging.getLogger("metaclaw_mcp.training")


def plain_messages(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    """OpenAI-style messages (content parts, tool calls) as role + text, which every chat template accepts."""
    out = []
    for m in messages:
        text = content_text(m.get("content"))
        if m.get("tool_calls"):
            calls = [{"name": c.get("function", {}).get("name"), "arguments": c.get("function", {}).get("arguments")}
                     for c in m["tool_calls"]]
            text = (text + "\n" if text else "") + json.dumps({"tool_calls": calls}, ensure_ascii=False)
        role = m.get("role", "user")
        out.append({"role": "system" if role == "developer" else role, "content": text})
    return out


def _ids(encoded: Any) -> list[int]:
    ids = encoded["input_ids"] if not isinstance(encoded, list) else encoded
    return [int(i) for i in ids]


def render_sft(tokenizer: Any, messages: list[dict[str, Any]], response: str) -> tuple[list[int], list[float]]:
    """(tokens, weights): the conversation plus the reply, weights 1 on the reply's tokens only."""
    msgs = plain_messages(messages)
    prompt = _ids(tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True))
    full = _ids(tokenizer.apply_chat_template(msgs + [{"role": "assistant", "content": response}], tokenize=True))
    if full[:len(prompt)] != prompt:  # a template that rewrites earlier turns: fall back to prompt + reply + eos
        full = prompt + _ids(tokenizer.encode(response, add_special_tokens=False)) + [int(tokenizer.eos_token_id)]
    weights = [0.0] * len(prompt) + [1.0] * (len(full) - len(prompt))
    eos = tokenizer.eos_token_id
    if eos is not None and eos in full[len(prompt):]:
        last = len(full) - 1 - full[::-1].index(eos)
        weights[last + 1:] = [0.0] * (len(full) - last - 1)
    return full, weights


def load_tokenizer(name_or_path: str) -> Any:
    """A Hugging Face tokenizer from a local folder or a hub id (the hub needs network access)."""
    import transformers

    local = Path(name_or_path).expanduser()
    return transformers.AutoTokenizer.from_pretrained(str(local) if local.exists() else name_or_path)
