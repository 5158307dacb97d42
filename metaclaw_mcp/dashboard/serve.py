"""The dashboard served alone, for stdio users: `serve_dashboard` opens the App on the configured
database (the one a stdio server writes) and serves only `/dashboard`, on a loopback address.

It honours the configured tokens as the HTTP server does (`http_security.token_table`: a token file
or the shared token, a login is then needed; none: the single user), and the same Host and Origin
checks (`http_security.transport_security` for the bound loopback address).
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from ..http_security import token_table, transport_security

if TYPE_CHECKING:
    from ..config import MetaClawConfig

log = logging.getLogger("metaclaw_mcp.dashboard")

DEFAULT_PORT = 8766   # beside the MCP server's 8765


async def run_dashboard(config: MetaClawConfig, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
                        started: Callable[[Any], None] | None = None) -> None:
    """Serve the dashboard until uvicorn stops (SIGINT or SIGTERM). `started(server)` is called with
    the uvicorn server before it serves (tests stop it with `server.should_exit = True`).
    ConfigError for an address that is not loopback or a bad token file."""
    import uvicorn

    from ..app import App
    from .routes import dashboard_app

    config = config.model_copy(update={"host": host, "port": port})
    if not config.is_loopback:
        raise ConfigError(f"the dashboard serves only on a loopback address, not {host}; to reach it from elsewhere, "
                          "serve it with the HTTP server (`serve --transport http` with a token) at /dashboard")
    tokens = token_table(config)
    # This process retrieves nothing: credit and the pages need no encoder, so none is loaded.
    app = App(config.model_copy(update={"retrieval_mode": "lexical"}))
    await app.open()
    try:
        asgi = dashboard_app(app, transport_security(config), tokens)
        server = uvicorn.Server(uvicorn.Config(asgi, host=host, port=port, log_config=None, access_log=False,
                                               lifespan="off", log_level=config.log_level.lower()))
        if started is not None:
            started(server)
        log.info("metaclaw-mcp dashboard on http://%s:%d/dashboard (database %s)", host, port, config.database)
        await server.serve()
    finally:
        await app.close()


def serve_dashboard(config: MetaClawConfig, host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> None:
    """Serve only the dashboard on loopback `host`:`port` over the configured database, until stopped
    (`run_dashboard`)."""
    import anyio

    anyio.run(run_dashboard, config, host, port)


__all__ = ["DEFAULT_PORT", "run_dashboard", "serve_dashboard"]
