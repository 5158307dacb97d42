"""A first session with metaclaw-mcp, played by a real MCP client over stdio.

It starts `metaclaw-mcp serve` as a subprocess (SQLite under a fresh folder, no cloud account),
then does what an agent does around its replies: fetch skills, report the turn, rate it,
and turn the failure into a new skill with `evolve_skills`. It prints each step.

    python examples/client_session.py                # a throwaway data folder
    python examples/client_session.py --home ~/.metaclaw   # your real library
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import anyio
from mcp import Client, StdioServerParameters


def server_command() -> str:
    here = Path(sys.executable).parent / "metaclaw-mcp"
    return str(here) if here.exists() else (shutil.which("metaclaw-mcp") or "metaclaw-mcp")


async def tool(client: Client, name: str, args: dict) -> dict:
    result = await client.call_tool(name, args)
    if result.is_error:
        raise SystemExit(f"{name} failed: {result.content[0].text}")
    return result.structured_content


async def session(home: str) -> None:
    params = StdioServerParameters(command=server_command(), args=["serve"], env={"METACLAW_HOME": home})
    async with Client(params) as client:
        print(f"connected to {client.server_info.name if client.server_info else 'metaclaw-mcp'} "
              f"(protocol {client.protocol_version}); data in {home}\n")

        task = "Save today's standup at 9:30 in Singapore time to standup.json"
        fetched = await tool(client, "fetch_skills", {"query": task, "k": 3})
        print(f"1. fetch_skills({task!r})")
        for s in fetched["skills"]:
            print(f"   - {s['slug']} v{s['version']} (score {s['score']:.2f})")
        print(f"   injection: {len(fetched['injection'])} chars of markdown for the system prompt\n")

        answer = '{"meeting_time": "2026-03-16 09:30"}'
        turn = await tool(client, "report_turn", {
            "session_id": "demo-1", "messages": [{"role": "user", "content": task}], "response": answer,
            "retrieval_id": fetched["retrieval_id"], "idempotency_key": "demo-1-turn-1"})
        print(f"2. report_turn -> turn {turn['turn_id']} ({turn['skills_linked']} skills linked)\n")

        rated = await tool(client, "rate_turn", {
            "turn_id": turn["turn_id"], "score": -1.0, "source": "user",
            "feedback": "Wrong format: needs ISO 8601 with the +08:00 offset"})
        print(f"3. rate_turn(-1.0) -> reward {rated['reward']}, queued for training: {rated['queued_for_training']}\n")

        digest = await tool(client, "evolve_skills", {})
        print(f"4. evolve_skills() -> digest of {digest['failures_analyzed']} failure(s):")
        for f in digest["digest"]["failures"][:3]:
            print(f"   - {f['turn_id']}: {f['request'][:60]!r} / feedback {f['feedback']}")
        proposal = {
            "name": "timestamps-with-utc-offset", "category": "data_analysis", "addresses": [turn["turn_id"]],
            "description": "Use when writing a date or time into a file, report or API payload: write ISO 8601 "
                           "with an explicit UTC offset.",
            "body": "1. Find the user's time zone (ask if unknown).\n2. Write 2026-03-16T09:30:00+08:00: date, 'T', "
                    "time with seconds, offset.\n3. Keep the offset even for UTC (+00:00).\n\n"
                    "Anti-pattern: '2026-03-16 09:30' (no 'T', no offset)."}
        evolved = await tool(client, "evolve_skills", {"proposals": [proposal]})
        for a in evolved["accepted"]:
            print(f"   accepted {a['slug']} as a {a['status']} (id {a['id']})")
        for r in evolved["rejected"]:
            print(f"   rejected {r['name']}: {r['reason']}")

        status = json.loads((await client.read_resource("metaclaw://status")).contents[0].text)
        print(f"\n5. status: {status['skills']['total']} skills ({status['skills']['candidate']} candidate), "
              f"{status['turns']['total']} turn(s), training backend '{status['training']['backend']}'")
    print(f"\ninspect it: metaclaw-mcp --home {home} status")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", help="data folder (default: a new temporary one)")
    args = parser.parse_args()
    anyio.run(session, args.home or tempfile.mkdtemp(prefix="metaclaw-demo-"))


if __name__ == "__main__":
    main()
