"""Connect to a metaclaw-mcp HTTP server that wants a bearer token, from Python.

The MCP SDK's streamable HTTP transport takes an `httpx2.AsyncClient`; the header goes on that
client, so every request (initialize, tool calls, the event stream) carries it.

    metaclaw-mcp serve --transport http --auth-token "$METACLAW_TOKEN" &
    METACLAW_TOKEN=... python examples/clients/python_client.py [--url http://127.0.0.1:8765/mcp]

Prints the server's tools and the skills it fetches for one task; exits 1 with one line when the
server refuses the token or cannot be reached.
"""
from __future__ import annotations

import argparse
import os
import sys

import anyio
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client


async def session(url: str, token: str, task: str, refused: list[int]) -> None:
    """List the tools and fetch skills for `task`; a 401 or 403 status is appended to `refused`."""
    async def note_refusal(response: httpx2.Response) -> None:
        if response.status_code in (401, 403):  # the SDK reports these as a generic error: keep the status
            refused.append(response.status_code)

    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60,
                              event_hooks={"response": [note_refusal]})
    async with http, Client(streamable_http_client(url, http_client=http)) as client:
        tools = (await client.list_tools()).tools
        print(f"connected to {url}: tools {', '.join(t.name for t in tools)}")
        fetched = await client.call_tool("fetch_skills", {"query": task, "k": 3})
        if fetched.is_error:
            raise SystemExit(f"fetch_skills failed: {fetched.content[0].text}")
        for skill in fetched.structured_content["skills"]:
            print(f"- {skill['slug']} v{skill['version']} ({skill['why']})")


def main() -> None:
    """Parse the command line and run one session, ending in one line on failure."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("METACLAW_URL", "http://127.0.0.1:8765/mcp"))
    parser.add_argument("--task", default="debug a failing pytest test")
    args = parser.parse_args()
    token = os.environ.get("METACLAW_TOKEN")
    if not token:
        raise SystemExit("set METACLAW_TOKEN to the server's bearer token")
    refused: list[int] = []
    try:
        anyio.run(session, args.url, token, args.task, refused)
    except Exception as exc:  # one line instead of the transport's exception groups
        reason = f"the server refused the token ({refused[0]})" if refused else "no server answered"
        print(f"error: cannot use {args.url}: {reason} ({type(exc).__name__})", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
