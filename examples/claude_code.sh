#!/usr/bin/env bash
# Add metaclaw-mcp to Claude Code (user scope: every project), over stdio.
claude mcp add metaclaw --scope user --env METACLAW_HOME="$HOME/.metaclaw" -- \
  /absolute/path/to/metaclaw-mcp/.venv/bin/metaclaw-mcp serve

# Or, with one shared server over streamable HTTP (start it first:
#   metaclaw-mcp serve --transport http --port 8765):
# claude mcp add --transport http metaclaw http://127.0.0.1:8765/mcp
