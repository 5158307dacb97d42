"""The dashboard: server-rendered pages that show whether an agent is getting better.

Mounted at `/dashboard` beside `/mcp` on the HTTP and SSE transports (`dashboard_app`), or served
alone on loopback for stdio users (`serve_dashboard`, the `metaclaw-mcp dashboard` command).
Modules: `queries` (reads returning dataclasses), `plots` (inline SVG), `session` (login cookie
and CSRF tokens), `routes` (the Starlette app), `serve` (the stand-alone server), `cli` (the
command). The names below are imported on first use, so the command line starts without them.
"""
from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {"PATH": "routes", "Dashboard": "routes", "dashboard_app": "routes", "serve_dashboard": "serve"}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = list(_EXPORTS)
