"""Chat messages as text: the one place that says what a message, or a turn's request, reads as.

Messages are OpenAI-style (`role`, `content` as a string or a list of parts with `text`), as dicts
(stored turns) or as `models.Message`. Pure functions, no I/O.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def content_text(content: Any) -> str:
    """A message content's text: the string itself, or its parts' non-empty texts one per line
    (parts as dicts or objects with `text`; images and other parts have none). "" otherwise."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            text = part.get("text") if isinstance(part, dict) else getattr(part, "text", None)
            if isinstance(text, str) and text:
                texts.append(text)
        return "\n".join(texts)
    return ""


def role_of(message: Any) -> Any:
    """A message's role, whether it is a dict or a model."""
    return message.get("role") if isinstance(message, dict) else getattr(message, "role", None)


def last_user_text(messages: Any) -> str:
    """What a turn was asked: the text of its last user message ("" when there is none, or when
    `messages` is not a list of messages)."""
    if not isinstance(messages, Sequence) or isinstance(messages, (str, bytes)):
        return ""
    for message in reversed(messages):
        if role_of(message) == "user":
            return content_text(message.get("content") if isinstance(message, dict)
                                else getattr(message, "content", None))
    return ""


__all__ = ["content_text", "last_user_text", "role_of"]
