"""The MCP Skills extension as real clients see it: the capability, `skills/list` pages, `skills/get`,
`resources/directory/read`, digests that match what `resources/read` returns, the spec's errors, and
tokens that see only their own namespaces."""
from __future__ import annotations

import hashlib
from typing import Any

import pytest
import yaml
from mcp import Client, MCPError
from mcp_types import Request, RequestParams
from pydantic import ConfigDict, TypeAdapter

from mcp_servers import connect, served, stdio_params
from metaclaw_mcp.access import new_token, token_entry
from metaclaw_mcp.app import open_app
from metaclaw_mcp.config import load_config
from metaclaw_mcp.server import build_server
from metaclaw_mcp.skills.skillmd import SkillDoc
from metaclaw_mcp.skills_extension import EXTENSION_ID, PAGE_SIZE

pytestmark = pytest.mark.anyio

MODES = ["legacy", "auto"]
STARTER = 35      # the starter skills seeded into `default`
INVALID_PARAMS = -32602
ANY = TypeAdapter(dict[str, Any])


class Params(RequestParams):
    """Whatever parameters a test sends."""
    model_config = ConfigDict(extra="allow")


class Raw(Request[Params | None, str]):
    """A request for a method the SDK's client has no call for."""
    params: Params | None = None


async def ask(client: Client, method: str, **params: Any) -> dict[str, Any]:
    return await client.session.send_request(Raw(method=method, params=Params(**params)), ANY)


async def refused(client: Client, method: str, **params: Any) -> MCPError:
    with pytest.raises(MCPError) as info:
        await ask(client, method, **params)
    return info.value


async def every_page(client: Client) -> list[dict[str, Any]]:
    """All of `skills/list`, page by page, checking each page's envelope."""
    skills, cursor, pages = [], None, 0
    while True:
        page = await ask(client, "skills/list", **({} if cursor is None else {"cursor": cursor}))
        assert page["resultType"] == "complete" and page["cacheScope"] == "private" and page["ttlMs"] > 0
        assert len(page["skills"]) <= PAGE_SIZE
        skills += page["skills"]
        pages += 1
        cursor = page.get("nextCursor")
        if cursor is None:
            return skills
        assert pages < 100


def doc(name: str, **metadata: Any) -> SkillDoc:
    return SkillDoc(name=name, description=f"Use when checking {name.replace('-', ' ')}.",
                    body=f"# {name}\n\n1. Do the {name} step.\n", category="testing", metadata=metadata)


def sha256(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


@pytest.fixture
async def library(app):
    """The starter skills, 60 candidates in `proj-b` (past one page in all), a retired one, and one with metadata."""
    for i in range(60):
        await app.library.add(doc(f"check-{i:02d}"), namespace="proj-b", status="candidate")
    await app.library.add(doc("old-habit"), namespace="default", status="retired")
    await app.library.add(doc("cite-with-links", source_url="https://example.org/guide", tags=["docs", "links"]))
    return app


@pytest.mark.parametrize("mode", MODES)
async def test_the_capability_is_declared_with_resources(app, mode):
    async with Client(build_server(app), mode=mode) as c:
        caps = c.server_capabilities
        assert caps.extensions[EXTENSION_ID] == {"directoryRead": True}
        assert caps.resources is not None           # the extension serves its files as resources


@pytest.mark.parametrize("mode", MODES)
async def test_list_pages_through_every_active_and_candidate_skill_once(library, mode):
    async with Client(build_server(library), mode=mode) as c:
        skills = await every_page(c)
    uris = [s["uri"] for s in skills]
    assert len(uris) == len(set(uris)) == STARTER + 1 + 60
    assert uris == sorted(uris, key=lambda u: tuple(u.split("/")[2:4]))     # namespace, then slug
    assert "skill://default/old-habit/SKILL.md" not in uris                    # retired: not served
    assert {u.split("/")[2] for u in uris} == {"default", "proj-b"}
    for s in skills:
        namespace, name, file = s["uri"].removeprefix("skill://").split("/")
        assert file == "SKILL.md" and s["frontmatter"]["name"] == name
        assert s["frontmatter"]["description"]
        assert [r["uri"] for r in s["resources"]] == [s["uri"]]


@pytest.mark.parametrize("mode", MODES)
async def test_digests_and_front_matter_are_those_of_what_resources_read_returns(library, mode):
    async with Client(build_server(library), mode=mode) as c:
        for s in await every_page(c):
            text = (await c.read_resource(s["uri"])).contents[0].text
            (entry,) = s["resources"]
            assert entry["digest"] == sha256(text) and entry["size"] == len(text.encode("utf-8"))
            assert s["frontmatter"] == yaml.safe_load(text.split("---\n")[1])    # verbatim
            legacy = s["uri"].removesuffix("/SKILL.md")                             # the older URI reads the same
            assert (await c.read_resource(legacy)).contents[0].text == text
            got = await ask(c, "skills/get", uri=s["uri"])
            assert got["skill"] == s and got["resultType"] == "complete" and "nextCursor" not in got


async def test_metadata_passes_through_the_front_matter(library):
    async with Client(build_server(library)) as c:
        got = await ask(c, "skills/get", uri="skill://default/cite-with-links/SKILL.md")
    assert got["skill"]["frontmatter"]["metadata"] == {"category": "testing", "source_url": "https://example.org/guide",
                                                        "tags": ["docs", "links"]}


async def test_an_edit_changes_the_digest_at_once(library):
    uri = "skill://default/cite-with-links/SKILL.md"
    async with Client(build_server(library)) as c:
        before = (await ask(c, "skills/get", uri=uri))["skill"]["resources"][0]["digest"]
        await library.library.revise("default", "cite-with-links", doc("cite-with-links", edition=2))
        after = (await ask(c, "skills/get", uri=uri))["skill"]["resources"][0]["digest"]
        text = (await c.read_resource(uri)).contents[0].text
    assert before != after == sha256(text) and "edition: 2" in text


@pytest.mark.parametrize("mode", MODES)
async def test_what_is_not_served_is_invalid_params(library, mode):
    async with Client(build_server(library), mode=mode) as c:
        for uri in ("skill://default/no-such-skill/SKILL.md", "skill://default/old-habit/SKILL.md",
                    "skill://default/write-unit-tests", "skill://nowhere/write-unit-tests/SKILL.md",
                    "file:///etc/passwd", "skill://default/write-unit-tests/other.md"):
            err = await refused(c, "skills/get", uri=uri)
            assert err.error.code == INVALID_PARAMS, uri
        err = await refused(c, "skills/get", uri="skill://default/no-such-skill/SKILL.md")
        assert err.error.message == "no skill is served at skill://default/no-such-skill/SKILL.md"
        assert (await refused(c, "skills/get")).error.code == INVALID_PARAMS                # no uri
        assert (await refused(c, "skills/list", cursor="not-a-cursor")).error.code == INVALID_PARAMS
        with pytest.raises(MCPError) as info:
            await c.read_resource("skill://default/old-habit/SKILL.md")
        assert info.value.error.code == INVALID_PARAMS


@pytest.mark.parametrize("mode", MODES)
async def test_directories_list_their_children(library, mode):
    async with Client(build_server(library), mode=mode) as c:
        root = await ask(c, "resources/directory/read", uri="skill://default/write-unit-tests")
        (child,) = root["resources"]
        text = (await c.read_resource(child["uri"])).contents[0].text
        assert child["uri"] == "skill://default/write-unit-tests/SKILL.md" and child["name"] == "SKILL.md"
        assert child["mimeType"] == "text/markdown" and child["size"] == len(text.encode("utf-8"))
        names, cursor = [], None
        while True:
            page = await ask(c, "resources/directory/read", uri="skill://proj-b",
                             **({} if cursor is None else {"cursor": cursor}))
            assert all(r["mimeType"] == "inode/directory" for r in page["resources"])
            names += [r["name"] for r in page["resources"]]
            if (cursor := page.get("nextCursor")) is None:
                break
        assert names == [f"check-{i:02d}" for i in range(60)]
        for uri in ("skill://default/write-unit-tests/SKILL.md", "skill://default/old-habit", "skill://nowhere",
                    "https://example.org"):
            assert (await refused(c, "resources/directory/read", uri=uri)).error.code == INVALID_PARAMS, uri


async def test_over_stdio_the_handshake_declares_it_and_lists(tmp_path):
    home = tmp_path / "home"
    async with Client(stdio_params(home), mode="legacy", read_timeout_seconds=60) as c:
        assert c.server_capabilities.extensions[EXTENSION_ID] == {"directoryRead": True}
        skills = await every_page(c)
        assert len(skills) == STARTER
        first = skills[0]
        text = (await c.read_resource(first["uri"])).contents[0].text
        assert first["resources"][0]["digest"] == sha256(text)


@pytest.mark.parametrize("mode", MODES)
async def test_over_http_a_token_sees_only_its_namespaces(tmp_path, mode):
    home = tmp_path / "home"
    async with open_app(load_config(home=home)) as app:
        await app.library.add(doc("team-a-plan"), namespace="team-a")
        await app.library.add(doc("team-b-plan"), namespace="team-b", status="candidate")
    alice, both = new_token(), new_token()
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(token_entry("alice", alice, ["team-a"]) + "\n" + token_entry("both", both, ["team-a", "team-b"]))
    b_uri = "skill://team-b/team-b-plan/SKILL.md"
    with served(home, "http", METACLAW_TOKENS_FILE=str(tokens)) as (port, _):
        async with connect("http", home, port, mode, token=alice) as a:
            assert a.server_capabilities.extensions[EXTENSION_ID] == {"directoryRead": True}
            assert [s["uri"] for s in await every_page(a)] == ["skill://team-a/team-a-plan/SKILL.md"]
            assert (await refused(a, "skills/get", uri=b_uri)).error.code == INVALID_PARAMS
            assert (await refused(a, "skills/get", uri="skill://default/write-unit-tests/SKILL.md")
                    ).error.code == INVALID_PARAMS
            for uri in ("skill://team-b", "skill://team-b/team-b-plan"):
                assert (await refused(a, "resources/directory/read", uri=uri)).error.code == INVALID_PARAMS
            with pytest.raises(MCPError) as info:
                await a.read_resource(b_uri)
            assert info.value.error.code == INVALID_PARAMS
        async with connect("http", home, port, mode, token=both) as b:
            assert [s["uri"] for s in await every_page(b)] == ["skill://team-a/team-a-plan/SKILL.md", b_uri]
            entry = (await ask(b, "skills/get", uri=b_uri))["skill"]
            text = (await b.read_resource(b_uri)).contents[0].text
            assert entry["resources"][0]["digest"] == sha256(text)
