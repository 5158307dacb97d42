"""The floor for bench/load.py: an MCP server with one `echo` tool, served over streamable HTTP as
`metaclaw-mcp serve --transport http` serves (same SDK, same ASGI app options, same middleware,
same uvicorn settings), but with no database, no retrieval and no background tasks.

    python bench/load_echo.py --port 8123

`echo(text)` ignores `text` and returns a `ReportResult` (the model report_turn returns, so the
same outputSchema, structured content and text block, about the same size): what the transport
and the SDK cost per call on this machine. SIGTERM or SIGINT stops it.
"""
from __future__ import annotations

import argparse
import secrets
import tempfile
from typing import Annotated

import anyio
from mcp.server import MCPServer
from pydantic import Field

from metaclaw_mcp import transport
from metaclaw_mcp.config import load_config
from metaclaw_mcp.models import ReportResult


def build_echo() -> MCPServer:
    mcp = MCPServer(name="echo", log_level="WARNING")
    turn_id = f"t-{0x19a0000000:x}-{secrets.token_hex(5)}"

    @mcp.tool()
    async def echo(text: Annotated[str, Field(description="Ignored.")]) -> ReportResult:
        """Return a report_turn-shaped result whatever the text."""
        return ReportResult(turn_id=turn_id, duplicate=False, skills_linked=3, redacted=[])

    return mcp


async def serve(port: int) -> None:
    import uvicorn

    with tempfile.TemporaryDirectory(prefix="echo-home-") as home:
        config = load_config(home=home, transport="http", port=port, log_level="WARNING")
        server = build_echo()
        # What transport._serve_http builds for `--transport http`, piece by piece.
        asgi = server.streamable_http_app(streamable_http_path="/mcp", transport_security=transport.transport_security(config),
                                          host=config.host, **getattr(transport, "HTTP_APP_OPTIONS", {}))
        asgi = transport.CompleteResponses(asgi)
        uv = uvicorn.Server(uvicorn.Config(
            asgi, host=config.host, port=config.port, log_config=None, access_log=False, lifespan="on",
            log_level="warning", timeout_graceful_shutdown=transport.SHUTDOWN_GRACE_SECONDS,
            http=transport.guarded_h11(config.http_request_timeout_seconds),
            limit_concurrency=config.http_max_connections))
        await uv.serve()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="one-tool MCP echo server over streamable HTTP")
    parser.add_argument("--port", type=int, required=True)
    anyio.run(serve, parser.parse_args().port)
