"""What a first-time user runs into: the server's capabilities, its tool descriptions and argument errors
(through real MCP clients), and the command line's ids, errors and help (through the real CLI, each on
its own SQLite home under tmp_path)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from mcp import Client, MCPError

from metaclaw_mcp.app import open_app
from metaclaw_mcp.config import load_config
from metaclaw_mcp.models import Message
from metaclaw_mcp.server import build_server

CLI = Path(sys.executable).parent / "metaclaw-mcp"


def cli(home: Path, *args: str, columns: int | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    """The installed console script on `home`, with no METACLAW_/TINKER_ variable of this process."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("METACLAW_", "TINKER_"))}
    environ |= {"METACLAW_HOME": str(home), **({"COLUMNS": str(columns)} if columns else {}), **env}
    return subprocess.run([str(CLI), *args], env=environ, capture_output=True, text=True, timeout=120)


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def report_turns(home: Path, n: int) -> list[str]:
    """`n` turns reported through the application on `home` (the CLI's database)."""
    async def go() -> list[str]:
        async with open_app(load_config(home=home)) as app:
            return [(await app.report_turn(f"session-{i}", [Message(role="user", content=f"question {i}")],
                                           f"answer {i}")).turn_id for i in range(n)]
    return anyio.run(go)


def shortest_unique_prefix(value: str, others: list[str]) -> str:
    for n in range(1, len(value) + 1):
        if not any(o != value and o.startswith(value[:n]) for o in others):
            return value[:n]
    return value


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


# ---- argument errors: one line naming the field, for every tool and every kind of mistake ----

USER = [{"role": "user", "content": "What is 2 + 2?"}]
TURN = {"session_id": "s1", "messages": USER, "response": "4"}
PROPOSAL = {"name": "check-the-offset", "description": "Use when writing a timestamp.", "body": "1. Add +00:00." * 3}
ARGUMENT_ERRORS = [
    # missing
    ("fetch_skills", {}, "query: required"),
    ("report_turn", {"messages": USER, "response": "4"}, "session_id: required"),
    ("rate_turn", {"score": 1}, "turn_id: required"),
    ("evolve_skills", {"proposals": [{"name": "x-y", "body": "b" * 40}]}, "proposals.0.description: required"),
    # wrong type
    ("fetch_skills", {"query": 3}, "query: must be a string (got integer)"),
    ("report_turn", {**TURN, "metadata": "x"}, "metadata: must be an object (got string)"),
    ("rate_turn", {"turn_id": "t", "score": "-1"}, "score: must be a number (got string)"),
    ("evolve_skills", {"proposals": {"name": "x"}}, "proposals: must be an array (got object)"),
    # a boolean where a number goes
    ("fetch_skills", {"query": "q", "k": True}, "k: must be an integer (got boolean)"),
    ("report_turn", {**TURN, "tokens": {"prompt_ids": [1, True], "completion_ids": [3]}},
     "tokens.prompt_ids.1: must be an integer (got boolean)"),
    ("rate_turn", {"turn_id": "t", "score": False}, "score: must be a number (got boolean)"),
    ("evolve_skills", {"max_new": True}, "max_new: must be an integer (got boolean)"),
    # out of range
    ("fetch_skills", {"query": "q", "k": 0}, "k: must be ≥ 1 (got 0)"),
    ("report_turn", {**TURN, "tokens": {"prompt_ids": [-1], "completion_ids": [3]}},
     "tokens.prompt_ids.0: must be ≥ 0 (got -1)"),
    ("rate_turn", {"turn_id": "t", "score": 2}, "score: must be ≤ 1 (got 2)"),
    ("rate_turn", {"turn_id": "t", "score": -1.5}, "score: must be ≥ -1 (got -1.5)"),
    ("evolve_skills", {"max_new": 21}, "max_new: must be ≤ 20 (got 21)"),
    # too long, too short
    ("fetch_skills", {"query": "q", "session_id": "s" * 300}, "session_id: must be at most 256 characters (got 300)"),
    ("report_turn", {**TURN, "messages": []}, "messages: must have at least 1 item (got 0)"),
    ("rate_turn", {"turn_id": "t" * 129, "score": 1}, "turn_id: must be at most 128 characters (got 129)"),
    ("evolve_skills", {"proposals": [{**PROPOSAL, "description": "d" * 1025}]},
     "proposals.0.description: must be at most 1024 characters (got 1025)"),
    # not one of the allowed values
    ("rate_turn", {"turn_id": "t", "score": 1, "source": "boss"},
     "source: must be one of 'user', 'env', 'agent' or 'judge' (got 'boss')"),
    ("report_turn", {**TURN, "messages": [{"role": "robot", "content": "x"}]},
     "messages.0.role: must be one of 'system', 'developer', 'user', 'assistant' or 'tool' (got 'robot')"),
    # an unknown argument or field
    ("fetch_skills", {"query": "q", "top_k": 3}, "top_k: unknown argument"),
    ("report_turn", {**TURN, "idempotencyKey": "k"}, "idempotencyKey: unknown argument"),
    ("rate_turn", {"turn_id": "t", "score": 1, "comment": "x"}, "comment: unknown argument"),
    ("evolve_skills", {"proposals": [{**PROPOSAL, "title": "x"}]}, "proposals.0.title: unknown field"),
]


@pytest.mark.anyio
async def test_every_argument_error_is_one_concise_line(app):
    async with Client(build_server(app)) as client:
        for tool, args, expected in ARGUMENT_ERRORS:
            result = await client.call_tool(tool, args)
            text = result.content[0].text
            assert result.is_error, f"{tool} {args} was accepted"
            assert text == f"Error executing tool {tool}: {expected}", text
        # several mistakes at once: each named, still one line
        result = await client.call_tool("fetch_skills", {"query": "q", "k": 0, "token_budget": 1, "x": 1, "y": 2})
        assert result.is_error and "\n" not in result.content[0].text
        assert result.content[0].text.endswith("k: must be ≥ 1 (got 0); token_budget: must be ≥ 50 (got 1); "
                                               "x: unknown argument; and 1 more")


# ---- ids that can be typed ----

@pytest.mark.parametrize("columns", [80, 100])
def test_turns_list_shows_whole_ids_and_every_command_takes_a_unique_prefix(tmp_path, columns):
    home = tmp_path / "home"
    ids = report_turns(home, 3)
    listed = cli(home, "turns", "list", columns=columns)
    assert listed.returncode == 0 and "…" not in listed.stdout, listed.stdout
    for turn_id in ids:
        assert turn_id in listed.stdout, f"{turn_id} is not whole in:\n{listed.stdout}"
    assert max(len(line) for line in listed.stdout.splitlines()) <= columns

    for turn_id in ids:
        prefix = shortest_unique_prefix(turn_id, ids)
        shown = cli(home, "turns", "show", prefix)
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout)["id"] == turn_id
    common = os.path.commonprefix(ids)
    ambiguous = one_line_error(cli(home, "turns", "show", common))
    assert f"'{common}' is the start of more than one turn id" in ambiguous
    assert all(turn_id in ambiguous for turn_id in ids)
    assert "no turn 't-nope'" in one_line_error(cli(home, "turns", "show", "t-nope"))


def test_skills_list_shows_whole_slugs_and_skill_commands_take_a_unique_prefix(tmp_path):
    home = tmp_path / "home"
    slugs = [s["slug"] for s in json.loads(cli(home, "skills", "list", "--json").stdout)]
    for columns in (80, 100):
        table = cli(home, "skills", "list", columns=columns).stdout
        cells = {cell.strip() for line in table.splitlines() for cell in line.split("│")}
        assert set(slugs) <= cells, f"cut slugs at {columns} columns: {set(slugs) - cells}"

    slug = "debug-failing-test"
    prefix = shortest_unique_prefix(slug, slugs)
    assert json.loads(cli(home, "skills", "show", prefix, "--json").stdout)["slug"] == slug
    assert f"{slug} is retired" in cli(home, "skills", "retire", prefix).stdout
    assert f"{slug} is active" in cli(home, "skills", "activate", prefix).stdout
    assert json.loads(cli(home, "skills", "show", "8", "--json").stdout)["id"] == 8  # an id stays an id

    shared = next(s[:3] for s in slugs if sum(o.startswith(s[:3]) for o in slugs) > 1)
    for command in (["show", shared], ["retire", shared], ["activate", shared], ["rollback", shared],
                    ["merge", prefix, shared]):
        line = one_line_error(cli(home, "skills", *command))
        assert f"'{shared}' is the start of more than one skill slug" in line, line
    assert "no skill 'zz-nothing'" in one_line_error(cli(home, "skills", "show", "zz-nothing"))


# ---- command-line argument errors: one line, what is allowed, the closest name ----

@pytest.mark.parametrize("args,expected", [
    (["skills", "list", "--status", "bogus"], "--status must be one of candidate, active, retired (got 'bogus')"),
    (["skills", "list", "--status", "activ"],
     "--status must be one of candidate, active, retired (got 'activ'): did you mean active?"),
    (["skills", "export", "TMP/out", "--status", "old"], "--status must be one of candidate, active, retired (got 'old')"),
    (["skills", "import", ".", "--status", "new"], "--status must be one of candidate, active, retired (got 'new')"),
    (["turns", "list", "--state", "rate"],
     "--state must be one of pending, rated, claimed, trained, skipped (got 'rate'): did you mean rated?"),
    (["tokens", "add", "ops", "-n", "*", "--role", "root"], "--role must be one of agent, admin (got 'root')"),
    (["serve", "--transport", "htp"], "--transport must be one of stdio, sse, http (got 'htp'): did you mean http?"),
])
def test_a_value_outside_an_options_choices_is_a_one_line_error(tmp_path, args, expected):
    proc = cli(tmp_path / "home", *(a.replace("TMP", str(tmp_path)) for a in args))
    assert proc.returncode == 2 and proc.stdout == ""
    assert one_line_error(proc) == f"error: {expected}"


def test_importing_a_path_that_does_not_exist_says_so(tmp_path):
    missing = tmp_path / "no-such-folder"
    proc = cli(tmp_path / "home", "skills", "import", str(missing))
    assert one_line_error(proc) == f"error: {missing} does not exist" and proc.returncode == 1


def test_a_typo_in_config_toml_names_the_closest_setting(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text("skill_top_kk = 3\n", encoding="utf-8")
    for command in (["config", "show"], ["status"], ["skills", "list"]):
        proc = cli(home, *command)
        assert proc.returncode == 2 and proc.stdout == ""
        assert one_line_error(proc) == "error: unknown setting 'skill_top_kk' in config.toml: did you mean skill_top_k?"
    (home / "config.toml").write_text("zzqq = 3\n", encoding="utf-8")
    assert one_line_error(cli(home, "config", "show")).startswith("error: unknown setting 'zzqq' in config.toml;")


def test_a_typo_in_an_environment_variable_is_pointed_out_and_ignored(tmp_path):
    proc = cli(tmp_path / "home", "config", "show", "--json", METACLAW_SKILL_TOP_KK="3", METACLAW_SKYRL_VENV="/x")
    assert proc.returncode == 0 and json.loads(proc.stdout)["skill_top_k"] == 5
    assert proc.stderr.strip() == ("METACLAW_SKILL_TOP_KK is not a setting and is ignored: "
                                   "did you mean METACLAW_SKILL_TOP_K?")


def test_any_command_line_mistake_is_one_line_with_exit_code_2(tmp_path):
    cases = {("turns", "list", "--limit", "abc"): "error: Invalid value for '--limit'",
             ("turns", "lst"): "error: No such command 'lst'. Did you mean 'list'?",
             ("--bogus",): "error: No such option: --bogus",
             ("skills", "show"): "error: Missing argument"}
    for args, start in cases.items():
        proc = cli(tmp_path / "home", *args)
        assert proc.returncode == 2 and proc.stdout == "", (args, proc.stdout)
        line = one_line_error(proc)
        assert line.startswith(start) and line.endswith("--help')"), line


def command_paths(command, path=()):
    """Every command and group under a click command, as argument paths."""
    yield path
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        yield from command_paths(sub, (*path, name))


def test_help_shows_flags_without_a_value_type():
    import typer
    from typer.testing import CliRunner

    from metaclaw_mcp.cli import cli as app

    paths = list(command_paths(typer.main.get_command(app)))
    assert ("skills", "list") in paths and ("turns", "show") in paths
    runner = CliRunner()
    for path in paths:
        result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "120"})
        assert result.exit_code == 0, (path, result.output)
        assert "--help" in result.output and "<bool>" not in result.output, (path, result.output)
    listed = runner.invoke(app, ["skills", "list", "--help"], env={"COLUMNS": "120"}).output
    assert "--json " in listed and "<str>" in listed  # options that take a value keep their type


# ---- the settings table ----

def test_config_table_prints_and_rewrites_the_readme_section(tmp_path):
    from metaclaw_mcp.config import TABLE_END, TABLE_START, settings_table

    home = tmp_path / "home"
    printed = cli(home, "config", "table")
    assert printed.returncode == 0 and printed.stdout == settings_table()
    assert "| `credit_retire_min_uses` | `5` |" in printed.stdout
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{TABLE_START}\n| old | table |\n{TABLE_END}\nafter\n", encoding="utf-8")
    assert cli(home, "config", "table", "--readme", str(readme)).returncode == 0
    assert readme.read_text(encoding="utf-8") == f"# x\n\n{TABLE_START}\n{settings_table()}{TABLE_END}\nafter\n"
    readme.write_text("no markers\n", encoding="utf-8")
    assert "no settings table markers" in one_line_error(cli(home, "config", "table", "--readme", str(readme)))


# ---- a port in use ----

@pytest.mark.parametrize("transport", ["http", "sse"])
def test_serving_on_a_port_in_use_is_one_line_and_claims_nothing(tmp_path, transport):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = cli(tmp_path / "home", "serve", "--transport", transport, "--port", str(port))
    assert proc.returncode != 0 and proc.stdout == ""
    assert proc.stderr == f"error: cannot listen on 127.0.0.1:{port}: address already in use\n"
    assert not (tmp_path / "home" / "metaclaw.db").exists()  # nothing was started


def test_a_free_port_is_still_served(tmp_path):
    from mcp_servers import served

    home = tmp_path / "home"
    with served(home, "http") as (port, proc):
        assert proc.poll() is None
    log = (tmp_path / f"serve-http-{port}.log").read_text()
    assert f"serving http on http://127.0.0.1:{port}/mcp" in log and "Traceback" not in log


# ---- HTTP clients with the bearer header ----

CLIENTS = Path(__file__).resolve().parent.parent / "examples" / "clients"


def server_entry(path: Path) -> dict:
    data = json.loads(path.read_text(encoding="utf-8"))
    servers = data.get("mcpServers") or data["servers"]
    assert list(servers) == ["metaclaw"], path.name
    return servers["metaclaw"]


@pytest.mark.parametrize("name,token", [("claude_code.mcp.json", "${METACLAW_TOKEN}"),
                                        ("cursor_mcp.json", "${env:METACLAW_TOKEN}"),
                                        ("vscode_mcp.json", "${input:metaclaw-token}")])
def test_http_client_configs_send_the_bearer_header(name, token):
    entry = server_entry(CLIENTS / name)
    assert entry["url"] == "http://127.0.0.1:8765/mcp"
    assert entry["headers"] == {"Authorization": f"Bearer {token}"}
    if name == "vscode_mcp.json":
        inputs = json.loads((CLIENTS / name).read_text(encoding="utf-8"))["inputs"]
        assert inputs[0]["id"] == "metaclaw-token" and inputs[0]["password"] is True


def test_claude_desktop_config_carries_the_header_through_mcp_remote():
    entry = server_entry(CLIENTS / "claude_desktop_config.json")
    args = entry["args"]
    assert entry["command"] == "npx" and "mcp-remote" in args and "http://127.0.0.1:8765/mcp" in args
    assert args[args.index("--header") + 1] == "Authorization:${METACLAW_AUTH_HEADER}"
    assert entry["env"]["METACLAW_AUTH_HEADER"].startswith("Bearer ")


def test_python_and_curl_examples_reach_a_server_that_wants_a_token(tmp_path):
    import shutil

    from mcp_servers import served

    token = "example-token-123"
    with served(tmp_path / "home", "http", "--auth-token", token) as (port, _):
        script = [sys.executable, str(CLIENTS / "python_client.py"), "--url", f"http://127.0.0.1:{port}/mcp"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("METACLAW_")}
        ok = subprocess.run(script, env={**env, "METACLAW_TOKEN": token}, capture_output=True, text=True, timeout=120)
        assert ok.returncode == 0, ok.stderr
        assert "tools fetch_skills, report_turn, rate_turn, evolve_skills" in ok.stdout
        assert "- debug-failing-test v1" in ok.stdout
        refused = subprocess.run(script, env={**env, "METACLAW_TOKEN": "wrong"}, capture_output=True, text=True,
                                 timeout=120)
        assert refused.returncode == 1
        assert refused.stderr.strip().startswith(f"error: cannot use http://127.0.0.1:{port}/mcp: the server refused "
                                                 "the token (401)")
        if shutil.which("curl") is None:
            pytest.skip("curl is not installed")
        curl = ["bash", str(CLIENTS / "curl_v1.sh"), "models"]
        env["METACLAW_URL"] = f"http://127.0.0.1:{port}"
        models = subprocess.run(curl, env={**env, "METACLAW_TOKEN": token}, capture_output=True, text=True, timeout=60)
        assert models.returncode == 0 and json.loads(models.stdout)["object"] == "list", models.stderr
        denied = subprocess.run(curl, env={**env, "METACLAW_TOKEN": "wrong"}, capture_output=True, text=True,
                                timeout=60)
        assert denied.returncode != 0 and "authentication_error" in denied.stdout


def test_a_token_server_publishes_no_oauth_metadata(tmp_path):
    import httpx2

    from mcp_servers import served

    with served(tmp_path / "home", "http", "--auth-token", "tok-abc") as (port, _):
        base = f"http://127.0.0.1:{port}"
        with httpx2.Client(timeout=30) as http:
            refused = http.post(f"{base}/mcp", json={})
            assert refused.status_code == 401
            assert refused.headers["www-authenticate"] == 'Bearer realm="metaclaw-mcp"'  # no resource_metadata
            for path in ("/.well-known/oauth-protected-resource", "/.well-known/oauth-protected-resource/mcp",
                         "/.well-known/oauth-authorization-server", "/.well-known/openid-configuration"):
                assert http.get(base + path).status_code == 404  # no metadata to start OAuth with, even without a token
                assert http.get(base + path, headers={"Authorization": "Bearer tok-abc"}).status_code == 404
