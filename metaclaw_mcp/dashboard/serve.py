"""The dashboard served alone, for stdio users: `serve_dashboard` opens the App on the configured
database (the one a stdio server writes) and serves only `/dashboard`, on a loopback address.

It honours the configured tokens as the HTTP server does (a token file or the shared token: a
login is then needed; none: the single user), and the same Host and Origin checks.
"""
from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..access import TokenTable
from ..errors import ConfigError

if TYPE_CHECKING:
    from mcp.server.transport_security import TransportSecuritySettings

    from ..config import MetaClawConfig

log = logging.getLogger("metaclaw_mcp.dashboard")

DEFAULT_PORT = 8766   # beside the MCP server's 8765


def is_loopback(host: str) -> bool:
    """Whether `host` is `localhost` or a loopback IP address."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def loopback_security(host: str, port: int) -> TransportSecuritySettings:
    """The Host and Origin checks of a server on loopback `host`:`port`, the rule the MCP server's
    `transport_security` applies on loopback: `Host` must name this port on the bound address or on
    localhost, 127.0.0.1 or [::1] (else 421), and an `Origin`, when sent, one of those as http://
    (else 403), so a page of another site that resolves its name to 127.0.0.1 is refused."""
    from mcp.server.transport_security import TransportSecuritySettings

    bound = f"[{host}]" if ":" in host else host
    names = dict.fromkeys([bound, "localhost", "127.0.0.1", "[::1]"])
    hosts = [f"{name}:{port}" for name in names]
    if port == 80:
        hosts += list(names)
    return TransportSecuritySettings(enable_dns_rebinding_protection=True, allowed_hosts=hosts,
                                     allowed_origins=[f"http://{h}" for h in hosts])


def configured_tokens(config: MetaClawConfig) -> TokenTable | None:
    """The tokens a login is checked against, as the HTTP server reads them: the token file, else the
    shared token, else None (single user). ConfigError for a bad token file."""
    if config.tokens_file is not None:
        return TokenTable.load(config.tokens_file)
    if config.auth_token is not None:
        return TokenTable.single(config.auth_token.get_secret_value())
    return None


async def run_dashboard(config: MetaClawConfig, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
                        started: Callable[[Any], None] | None = None) -> None:
    """Serve the dashboard until uvicorn stops (SIGINT or SIGTERM). `started(server)` is called with
    the uvicorn server before it serves (tests stop it with `server.should_exit = True`).
    ConfigError for an address that is not loopback or a bad token file."""
    import uvicorn

    from ..app import App
    from .routes import dashboard_app

    if not is_loopback(host):
        raise ConfigError(f"the dashboard serves only on a loopback address, not {host}; to reach it from elsewhere, "
                          "serve it with the HTTP server (`serve --transport http` with a token) at /dashboard")
    tokens = configured_tokens(config)
    # This process retrieves nothing: credit and the pages need no encoder, so none is loaded.
    app = App(config.model_copy(update={"retrieval_mode": "lexical"}))
    await app.open()
    try:
        asgi = dashboard_app(app, loopback_security(host, port), tokens)
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


__all__ = ["DEFAULT_PORT", "configured_tokens", "is_loopback", "loopback_security", "run_dashboard", "serve_dashboard"]
