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


# ---- tool and parameter descriptions ----

@pytest.mark.anyio
async def test_every_tool_and_parameter_is_described_without_docstring_indentation(app):
    async with Client(build_server(app)) as client:
        tools = (await client.list_tools()).tools
    assert len(tools) == 4
    for tool in tools:
        assert tool.description, tool.name
        texts = {f"{tool.name}": tool.description}
        for name, schema in tool.input_schema["properties"].items():
            assert schema.get("description"), f"{tool.name}.{name} has no description"
            texts[f"{tool.name}.{name}"] = schema["description"]
        for where, text in texts.items():
            for line in text.splitlines():
                assert line == line.lstrip(), f"{where}: a line starts with whitespace: {line!r}"
            assert text == text.strip(), where
