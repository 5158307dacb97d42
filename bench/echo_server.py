"""The baseline for what stdio adds: an MCP server whose one tool returns a fixed fetch_skills result.

    python bench/echo_server.py RESULT.json     # stdio; RESULT.json: one FetchResult, as JSON

Same SDK and same result type as `metaclaw-mcp serve`'s `fetch_skills` (a `FetchResult`, so the
same outputSchema, structured content and text block), but no retrieval, no database, no
background tasks: what the transport and the SDK cost for a payload of that size and shape.
`bench/retrieval.py` starts it beside the real server and times both with the same client loop.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

from mcp.server import MCPServer
from pydantic import Field

from metaclaw_mcp.models import FetchResult


def build_echo(payload: str) -> MCPServer:
    """The echo server; `payload` is a FetchResult's JSON, parsed once and returned by every call."""
    result = FetchResult.model_validate_json(payload)
    mcp = MCPServer(name="echo", log_level="WARNING")

    @mcp.tool()
    async def fetch_skills(query: Annotated[str, Field(description="Ignored.")],
                           k: Annotated[int, Field(ge=1, le=50)] = 5) -> FetchResult:
        """Return the same result whatever the query."""
        return result

    mcp.echo_fn = fetch_skills  # type: ignore[attr-defined]  # for timing the function itself, in-process
    return mcp


if __name__ == "__main__":
    build_echo(Path(sys.argv[1]).read_text()).run()
