"""The project's exceptions. Messages say what was wrong and what to do next."""
from __future__ import annotations


class MetaClawError(Exception):
    """Base of every error metaclaw-mcp raises on purpose."""


class ConfigError(MetaClawError):
    """The configuration is invalid; the message names the field and what it allows."""


class InvalidInput(MetaClawError):
    """A caller sent something the store must not accept. Nothing was written."""


class NotFound(MetaClawError):
    """A turn, skill or version that does not exist (in that namespace)."""


class Conflict(MetaClawError):
    """The request is well-formed but clashes with what is stored (a taken name, a trained turn)."""


class Busy(MetaClawError):
    """Another connection (a CLI import, a second server) held the database's write lock past the
    busy timeout. Nothing was written; the same call can be retried in a moment."""


class Forbidden(MetaClawError):
    """The caller's token may not do this (another namespace, or an admin's action). Nothing was done."""
