"""What a first-time user runs into: the server's capabilities, its tool descriptions and argument errors
(through real MCP clients), and the command line's ids, errors and help (through the real CLI, each on
its own SQLite home under tmp_path)."""
from __future__ import annotations

import pytest
from mcp import Client, MCPError

from metaclaw_mcp.server import build_server


# ---- capabilities: nothing advertised that is not served ----

@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_no_prompts_capability_and_no_prompt_methods(app, mode):
    async with Client(build_server(app), mode=mode) as client:
        caps = client.server_capabilities
        assert caps is not None and caps.prompts is None, caps
        assert caps.tools is not None and caps.resources is not None
        with pytest.raises(MCPError) as exc:
            await client.list_prompts()
        assert exc.value.error.code == -32601
        assert {t.name for t in (await client.list_tools()).tools} == {
            "fetch_skills", "report_turn", "rate_turn", "evolve_skills"}
