"""One reading of a message's text and of a turn's request, wherever it is needed."""
from __future__ import annotations

from metaclaw_mcp.messages import content_text, last_user_text
from metaclaw_mcp.models import Message
from metaclaw_mcp.skills.retrieval import request_text
from metaclaw_mcp.text import jaccard
from metaclaw_mcp.training.render import plain_messages

PARTS = [{"type": "text", "text": "first"}, {"type": "text", "text": ""}, {"type": "image_url"},
         {"type": "text", "text": "second"}]


def test_every_reader_agrees_on_content_parts_with_empty_and_non_text_parts():
    messages = [{"role": "user", "content": "old"}, {"role": "assistant", "content": "reply"},
                {"role": "user", "content": PARTS}]
    assert content_text(PARTS) == "first\nsecond"
    assert Message.model_validate(messages[-1]).text() == "first\nsecond"
    assert last_user_text(messages) == request_text(messages) == "first\nsecond"
    assert last_user_text([Message.model_validate(m) for m in messages]) == "first\nsecond"
    assert plain_messages(messages)[-1] == {"role": "user", "content": "first\nsecond"}


def test_no_user_message_or_not_messages_read_as_empty():
    assert last_user_text([{"role": "assistant", "content": "x"}]) == ""
    assert last_user_text("not a list") == "" and last_user_text(None) == ""
    assert content_text(None) == "" and content_text(42) == ""


def test_one_jaccard():
    assert jaccard(set(), set()) == 1.0 and jaccard({"a"}, set()) == 0.0
    assert jaccard({"a", "b"}, {"b", "c"}) == 1 / 3
