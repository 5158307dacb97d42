"""Run the server on one transport, with the app's background tasks owned by the process."""
from __future__ import annotations

import hmac
import logging
import sys
from typing import Any

import anyio
from mcp.server.transport_security import TransportSecuritySettings

from .app import App
from .config import MetaClawConfig
from .errors import ConfigError
from .server import build_server

log = logging.getLogger("metaclaw_mcp")


class BearerAuth:
    """ASGI middleware: every HTTP request must carry `Authorization: Bearer <token>`."""

    def __init__(self, app: Any, token: str):
        self.app = app
        self._token = token.encode()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            header = dict(scope.get("headers") or []).get(b"authorization", b"")
            scheme, _, supplied = header.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(supplied.strip(), self._token):
                body = b'{"error": "unauthorized", "detail": "send Authorization: Bearer <token>"}'
                await send({"type": "http.response.start", "status": 401, "headers": [
                    (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", b'Bearer realm="metaclaw-mcp"')]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def check_bind(config: MetaClawConfig) -> None:
    if config.transport != "stdio" and not config.is_loopback and not config.auth_token:
        raise ConfigError(f"refusing to listen on {config.host}, which is not a loopback address, without a token: "
                          "pass --auth-token (or set METACLAW_AUTH_TOKEN), or bind 127.0.0.1")


def setup_logging(level: str) -> None:
    logging.basicConfig(level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


async def serve(config: MetaClawConfig) -> None:
    """Serve until the transport ends (stdin closes, or SIGINT/SIGTERM for HTTP and SSE)."""
    check_bind(config)
    async with App(config).running() as app:
        server = build_server(app)
        if config.transport == "stdio":
            await server.run_stdio_async()
            return
        import uvicorn

        security = None if config.is_loopback else TransportSecuritySettings(enable_dns_rebinding_protection=False)
        if config.transport == "http":
            asgi = server.streamable_http_app(streamable_http_path="/mcp", transport_security=security, host=config.host)
        else:
            asgi = server.sse_app(sse_path="/sse", message_path="/messages/", transport_security=security, host=config.host)
        if config.auth_token:
            asgi = BearerAuth(asgi, config.auth_token.get_secret_value())
        uv = uvicorn.Server(uvicorn.Config(asgi, host=config.host, port=config.port, log_config=None,
                                           access_log=False, lifespan="on", log_level=config.log_level.lower()))
        log.info("metaclaw-mcp serving %s on http://%s:%d%s", config.transport, config.host, config.port,
                 "/mcp" if config.transport == "http" else "/sse")
        await uv.serve()


def run(config: MetaClawConfig) -> None:
    setup_logging(config.log_level)
    anyio.run(serve, config)
