#!/usr/bin/env bash
# Drive metaclaw-mcp through a third-party MCP client, the official Inspector CLI, over stdio:
# the strict tools/list schema check, then one call of each tool, then a bad call (exit 5 = isError).
# Usage: scripts/inspector_check.sh   (needs node + npx; uses a throwaway METACLAW_HOME)
set -euo pipefail
server=${METACLAW_MCP:-$(command -v metaclaw-mcp)}
home=$(mktemp -d)
trap 'rm -rf "$home"' EXIT
inspect() { npx -y @modelcontextprotocol/inspector@2.12.0 --cli -e "METACLAW_HOME=$home" "$server" serve "$@" 2>/dev/null; }

inspect --method tools/list --strict > "$home/tools.json"
echo "tools/list --strict: ok ($(grep -c '"name": "\(fetch_skills\|report_turn\|rate_turn\|evolve_skills\)"' "$home/tools.json") tools)"
inspect --method tools/call --tool-name fetch_skills --tool-arg 'query=debug a failing test' k=2 | grep -q '"isError": false'
echo "fetch_skills: ok"
turn=$(inspect --method tools/call --tool-name report_turn --tool-arg session_id=inspector \
  'messages=[{"role":"user","content":"Why does my test fail?"}]' 'response=It compares naive and aware datetimes.' \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["structuredContent"]["turn_id"])')
echo "report_turn: ok ($turn)"
inspect --method tools/call --tool-name rate_turn --tool-arg "turn_id=$turn" score=-1 'feedback=wrong cause' | grep -q '"reward": -1'
echo "rate_turn: ok"
inspect --method tools/call --tool-name evolve_skills | grep -q '"digest"'
echo "evolve_skills: ok (digest)"
inspect --method resources/read --uri metaclaw://status | grep -q 'schema_version'
echo "resources/read metaclaw://status: ok"
set +e
inspect --method tools/call --tool-name rate_turn --tool-arg "turn_id=$turn" score=3 > /dev/null
rc=$?
set -e
[ "$rc" -eq 5 ] || { echo "rate_turn with score=3 exited $rc, expected 5 (tool error)"; exit 1; }
echo "rate_turn score=3: tool error, as it should be"
echo "inspector check passed"
