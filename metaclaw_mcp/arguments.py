"""Argument validation errors in a JSON client's words: one line per call, `where: what (got ...)`.

Pydantic's errors name Python types and repeat the caller's data; a client sent JSON. Used by the
MCP tools (`server.MetaClawServer.call_tool`) and the `/v1` policy endpoint alike.
"""
from __future__ import annotations

import re
from typing import Any

from pydantic import ValidationError

_JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object",
               type(None): "null"}
# what each pydantic type error expected, in a JSON client's words (it sends arrays and objects, not lists and dicts)
_EXPECTED = {"string_type": "a string", "int_type": "an integer", "int_from_float": "an integer",
             "int_parsing": "an integer", "float_type": "a number", "float_parsing": "a number",
             "bool_type": "a boolean", "bool_parsing": "a boolean", "list_type": "an array", "tuple_type": "an array",
             "set_type": "an array", "dict_type": "an object", "model_type": "an object",
             "model_attributes_type": "an object", "dataclass_type": "an object", "none_required": "null"}
_BOUNDS = {"greater_than_equal": ("ge", "≥"), "less_than_equal": ("le", "≤"), "greater_than": ("gt", ">"),
           "less_than": ("lt", "<")}
# error type -> (context key, bound, what is counted, verb)
_LENGTHS = {"string_too_short": ("min_length", "at least", "character", "be"),
            "string_too_long": ("max_length", "at most", "character", "be"),
            "too_short": ("min_length", "at least", "item", "have"), "too_long": ("max_length", "at most", "item", "have")}
_SHOWN_CHARS = 40  # a value longer than this is named by its JSON type, not repeated
_UNION_TAGS = {"str", "int", "float", "bool", "none", "list", "dict", "bytes"}


def _is_union_tag(part: int | str) -> bool:
    """A location part naming a union member pydantic tried (`str`, `list[ContentPart]`, `TokenData`), not a
    field: field names here are lowercase identifiers."""
    return isinstance(part, str) and (part in _UNION_TAGS or not part.isidentifier() or part[:1].isupper())


def _json_type(value: Any) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


def _shown(value: Any) -> str:
    """A short value as JSON (`2`, `1.5`, `'bob'`), anything else by its JSON type."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return _json_type(value)
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        value = int(value)
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= _SHOWN_CHARS else _json_type(value)


def _error_words(e: Any, loc: list[int | str]) -> tuple[str, str | None]:
    """One pydantic error (`ValidationError.errors()` item) as (what it must be, what it got or None)."""
    kind, ctx, value = e["type"], e.get("ctx") or {}, e.get("input")
    if kind == "missing":
        return "required", None
    if kind == "extra_forbidden":
        return ("unknown argument" if len(loc) == 1 else "unknown field"), None
    if kind in _EXPECTED:
        return f"must be {_EXPECTED[kind]}", _json_type(value)
    if kind in _BOUNDS and _BOUNDS[kind][0] in ctx:
        key, sign = _BOUNDS[kind]
        return f"must be {sign} {_shown(ctx[key])}", _shown(value)
    if kind in _LENGTHS and _LENGTHS[kind][0] in ctx:
        key, bound, unit, verb = _LENGTHS[kind]
        n = ctx[key]
        got = len(value) if isinstance(value, str) else ctx.get("actual_length")
        return f"must {verb} {bound} {n} {unit}{'' if n == 1 else 's'}", None if got is None else str(got)
    if kind == "literal_error" and "expected" in ctx:
        return f"must be one of {ctx['expected']}", _shown(value)
    if kind == "string_pattern_mismatch" and "pattern" in ctx:
        return f"must match {ctx['pattern']}", _shown(value)
    if kind == "finite_number":
        return "must be a finite number", None
    msg = e["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
    return re.sub(r"^(Input|String|List|Value|Object|Tuple|Set|Dictionary) should ", "must ", msg), None


def argument_errors(exc: ValidationError, limit: int = 3) -> str:
    """A validation error on one line: `where: what (got ...)` per wrong argument, `; `-separated, at most
    `limit` of them, e.g. `score: must be ≤ 1 (got 2)`, `k: must be an integer (got boolean)`,
    `turn_id: must be at most 128 characters (got 300)`, `turn_id: required`, `x: unknown argument`.
    Locations are dotted (`tokens.prompt_ids.1`); what was got is a short value itself, a length, or a
    JSON type (a long value is the caller's data and is not repeated). The types a union tried are
    joined: `tokens: must be an object or null (got string)`."""
    found: dict[str, list[str]] = {}
    got: dict[str, str] = {}
    for e in exc.errors(include_url=False):
        loc = [p for p in e["loc"] if not _is_union_tag(p)]
        where = ".".join(str(p) for p in loc) or "arguments"
        what, value = _error_words(e, loc)
        if value is not None:
            got.setdefault(where, value)
        msgs = found.setdefault(where, [])
        if what not in msgs:
            msgs.append(what)
    parts = []
    for where, msgs in found.items():
        rest = [m.removeprefix("must be ") if msgs[0].startswith("must be ") else m for m in msgs[1:]]
        parts.append(f"{where}: {' or '.join([msgs[0], *rest])}" + (f" (got {got[where]})" if where in got else ""))
    more = f"; and {len(parts) - limit} more" if len(parts) > limit else ""
    return "; ".join(parts[:limit]) + more


__all__ = ["argument_errors"]
