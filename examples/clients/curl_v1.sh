#!/usr/bin/env bash
# The /v1 endpoint (OpenAI- and Anthropic-compatible, served beside /mcp) with the bearer header.
# Usage: METACLAW_TOKEN=... examples/clients/curl_v1.sh models | chat "question" | feedback TURN_ID SCORE
# METACLAW_URL defaults to http://127.0.0.1:8765. /v1/chat/completions needs a served policy
# (backend "local" or "tinker"); models and feedback answer on any backend.
set -euo pipefail
url="${METACLAW_URL:-http://127.0.0.1:8765}"
auth="Authorization: Bearer ${METACLAW_TOKEN:?set METACLAW_TOKEN to the bearer token of the server}"

case "${1:-models}" in
  models)
    curl -sS --fail-with-body -H "$auth" "$url/v1/models" ;;
  chat)
    curl -sS --fail-with-body -H "$auth" -H "Content-Type: application/json" "$url/v1/chat/completions" \
      -d "{\"model\": \"metaclaw\", \"messages\": [{\"role\": \"user\", \"content\": \"${2:-What is 2 + 2?}\"}]}" ;;
  feedback)
    curl -sS --fail-with-body -H "$auth" -H "Content-Type: application/json" "$url/v1/feedback" \
      -d "{\"turn_id\": \"${2:?a turn id}\", \"score\": ${3:?a score in [-1, 1]}, \"source\": \"env\"}" ;;
  *)
    echo "usage: $0 models | chat QUESTION | feedback TURN_ID SCORE" >&2; exit 2 ;;
esac
echo
