"""The MCP Skills extension (`io.modelcontextprotocol/skills`, SEP-2640) over the skill library.

Every active or candidate skill is a skill directory of one file, its SKILL.md, at
`skill://<namespace>/<slug>/SKILL.md`: the namespace is the organisational prefix (the URI's
authority) and the slug, which is the SKILL.md `name`, the final segment. The extension adds:

- `skills/list`: a page of `Skill` entries (keyset cursor over namespace, then slug);
- `skills/get`: the entry of one skill, by the URI of its SKILL.md;
- `resources/directory/read`: the children of `skill://<namespace>` (its skill directories) and of
  `skill://<namespace>/<slug>` (its SKILL.md), declared as the `directoryRead` setting.

An entry carries the SKILL.md front matter as a JSON object (parsed back from the very text served,
so it is the front matter verbatim) and a manifest of the skill's files with the SHA-256 digest and
byte size of what `resources/read` returns for each. A caller sees only the namespaces its bearer
token may use (`access.Principal`); anything else reads as not served (-32602, as for an unknown
URI). `attach` adds what the SDK's `Extension` cannot contribute: the `skill://.../SKILL.md`
resource template, and the extension's settings in the handshake-era `initialize` answer, where the
SDK leaves `capabilities.extensions` out (the 2025-11-25 schema has no such field; `server/discover`
on 2026-07-28 carries it anyway).
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Sequence
from typing import Any

import yaml
from mcp import MCPError
from mcp.server import MCPServer
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.extension import Extension, MethodBinding
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ResourceNotFoundError
from mcp_types import INVALID_PARAMS, PaginatedRequestParams, RequestParams

from .access import Principal, principal_of
from .app import App
from .models import SLUG_RE
from .skills.library import SELECT_SKILL, SkillRecord, record_from_row
from .skills.skillmd import FRONT_MATTER, SAFE_LOADER, render_skill_md

EXTENSION_ID = "io.modelcontextprotocol/skills"
SKILL_FILE = "SKILL.md"
SKILL_MD_TEMPLATE = "skill://{namespace}/{slug}/" + SKILL_FILE
SKILL_MIME = "text/markdown"
DIRECTORY_MIME = "inode/directory"
SERVED_STATUSES = ("active", "candidate")
PAGE_SIZE = 50
# A freshness hint for listings and entries (skills change as the library learns); digests, not this,
# are what a host verifies content against.
TTL_MS = 30_000
# Entries depend on who asks (tokens bound to namespaces), so no shared cache may serve them to another.
CACHE_SCOPE = "private"

_NAMESPACE = r"[A-Za-z0-9_.\-]{1,64}"     # models.Namespace
_SLUG = SLUG_RE.pattern.strip("^$")
SKILL_MD_URI = re.compile(rf"skill://(?P<namespace>{_NAMESPACE})/(?P<slug>{_SLUG})/SKILL\.md")
SKILL_DIR_URI = re.compile(rf"skill://(?P<namespace>{_NAMESPACE})(?:/(?P<slug>{_SLUG}))?")


class GetSkillParams(RequestParams):
    """`skills/get` parameters: the URI of a skill's SKILL.md."""
    uri: str


class ReadDirectoryParams(PaginatedRequestParams):
    """`resources/directory/read` parameters: a directory resource's URI, and a cursor."""
    uri: str


def skill_md_uri(namespace: str, slug: str) -> str:
    """The URI of a skill's SKILL.md: `skill://<namespace>/<slug>/SKILL.md`."""
    return f"skill://{namespace}/{slug}/{SKILL_FILE}"


def skill_md_text(record: SkillRecord) -> str:
    """A skill's SKILL.md as every `skill://` resource serves it."""
    return render_skill_md(record.doc())


def frontmatter_of(text: str) -> dict[str, Any]:
    """The YAML front matter of SKILL.md text as a JSON object (a value JSON has no type for, such as a
    date, as its text)."""
    match = FRONT_MATTER.match(text)
    meta = yaml.load(match.group(1), Loader=SAFE_LOADER) if match else None
    if not isinstance(meta, dict):
        raise ValueError("SKILL.md has no front matter mapping")
    return json.loads(json.dumps(meta, default=str))


def file_entry(uri: str, text: str) -> dict[str, Any]:
    """A `SkillResource`: the URI, and the `sha256:<hex>` digest and byte size of the UTF-8 text."""
    data = text.encode("utf-8")
    return {"uri": uri, "digest": "sha256:" + hashlib.sha256(data).hexdigest(), "size": len(data)}


def skill_entry(record: SkillRecord) -> dict[str, Any]:
    """A `Skill` entry: its SKILL.md URI, front matter and complete file manifest (SKILL.md only)."""
    uri = skill_md_uri(record.namespace, record.slug)
    text = skill_md_text(record)
    return {"uri": uri, "frontmatter": frontmatter_of(text), "resources": [file_entry(uri, text)]}


def encode_cursor(namespace: str, slug: str) -> str:
    """An opaque cursor: the (namespace, slug) a page ended at."""
    return base64.urlsafe_b64encode(json.dumps([namespace, slug]).encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> tuple[str, str]:
    """The (namespace, slug) a cursor names; ("", "") for none (before every skill). INVALID_PARAMS
    (-32602) for a cursor this server did not hand out."""
    if cursor is None:
        return "", ""
    try:
        key = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, binascii.Error):
        key = None
    if not (isinstance(key, list) and len(key) == 2 and all(isinstance(k, str) for k in key)):
        raise MCPError(code=INVALID_PARAMS, message=f"invalid cursor {cursor[:80]!r}: pass back a nextCursor unchanged")
    return key[0], key[1]


def not_served(uri: str) -> MCPError:
    """The error for a URI that names no skill this caller may see (-32602)."""
    return MCPError(code=INVALID_PARAMS, message=f"no skill is served at {uri[:300]}", data={"uri": uri[:300]})


class SkillsExtension(Extension):
    """`skills/list`, `skills/get` and `resources/directory/read` over `app.library`'s active and
    candidate skills, for the namespaces the caller may use. `principal_key` is where the transport's
    bearer check leaves the caller in the request's scope state. Pass it to
    `MCPServer(extensions=[...])`, then `attach` it to that server."""

    identifier = EXTENSION_ID

    def __init__(self, app: App, principal_key: str, page_size: int = PAGE_SIZE, ttl_ms: int = TTL_MS):
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        self.app = app
        self.principal_key = principal_key
        self.page_size = page_size
        self.ttl_ms = ttl_ms

    def settings(self) -> dict[str, Any]:
        """The capability's settings: `resources/directory/read` is served."""
        return {"directoryRead": True}

    def methods(self) -> Sequence[MethodBinding]:
        """The three methods the extension serves."""
        return (MethodBinding("skills/list", PaginatedRequestParams, self.list_skills),
                MethodBinding("skills/get", GetSkillParams, self.get_skill),
                MethodBinding("resources/directory/read", ReadDirectoryParams, self.read_directory))

    def attach(self, mcp: MCPServer) -> None:
        """Register on `mcp` (built with this extension) the `skill://<namespace>/<slug>/SKILL.md` resource
        template, and put the capability into `initialize` answers."""
        async def skill_md(namespace: str, slug: str, ctx: Context) -> str:
            """One skill's current version as SKILL.md (active or candidate, in a namespace the caller may use)."""
            try:
                request = ctx.request_context.request
            except (AttributeError, LookupError, ValueError):   # no request context: not over a transport
                request = None
            record = await self.served(principal_of(request, self.principal_key), namespace, slug)
            if record is None:
                raise ResourceNotFoundError(f"no skill is served at {skill_md_uri(namespace, slug)[:300]}")
            return skill_md_text(record)

        mcp.resource(SKILL_MD_TEMPLATE, name="skill-md", title="A learned skill's SKILL.md",
                     mime_type=SKILL_MIME)(skill_md)
        mcp.middleware.append(self.advertise_in_initialize)

    async def advertise_in_initialize(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        """Server middleware: `capabilities.extensions[EXTENSION_ID]` in the `initialize` answer."""
        result = await call_next(ctx)
        if ctx.method == "initialize" and isinstance(result, dict) and isinstance(result.get("capabilities"), dict):
            caps = result["capabilities"]
            extensions = {**(caps.get("extensions") or {}), EXTENSION_ID: self.settings()}
            result = {**result, "capabilities": {**caps, "extensions": extensions}}
        return result

    # ---- reads ----

    def caller(self, ctx: ServerRequestContext[Any, Any]) -> Principal:
        """Who sent the request."""
        return principal_of(ctx.request, self.principal_key)

    async def served(self, who: Principal, namespace: str, slug: str) -> SkillRecord | None:
        """The skill `slug` of `namespace` when it is served to `who` (active or candidate, in a namespace
        `who` may use), else None."""
        if not who.may_use(namespace):
            return None
        row = await self.app.db.fetchone(
            SELECT_SKILL + " WHERE s.namespace = ? AND s.slug = ? AND s.status IN (?, ?)",
            (namespace, slug, *SERVED_STATUSES))
        return None if row is None else record_from_row(row)

    async def page(self, who: Principal, after: tuple[str, str], namespace: str | None = None
                   ) -> tuple[list[SkillRecord], str | None]:
        """The served skills after `after` in (namespace, slug) order, at most `page_size` of them, only in
        `namespace` when given, and the cursor of the next page (None at the end)."""
        where = ["s.status IN (?, ?)", "(s.namespace, s.slug) > (?, ?)"]
        params: list[Any] = [*SERVED_STATUSES, *after]
        if namespace is not None:
            where.append("s.namespace = ?")
            params.append(namespace)
        if not who.every_namespace:
            allowed = sorted(who.namespaces)
            where.append(f"s.namespace IN ({', '.join('?' * len(allowed))})")
            params += allowed
        rows = await self.app.db.fetchall(
            SELECT_SKILL + " WHERE " + " AND ".join(where) + " ORDER BY s.namespace, s.slug LIMIT ?",
            (*params, self.page_size + 1))
        records = [record_from_row(r) for r in rows[:self.page_size]]
        more = len(rows) > self.page_size
        return records, encode_cursor(records[-1].namespace, records[-1].slug) if more else None

    def cacheable(self, body: dict[str, Any]) -> dict[str, Any]:
        """A complete, cacheable result: `resultType`, the body, `ttlMs` and `cacheScope`."""
        return {"resultType": "complete", **body, "ttlMs": self.ttl_ms, "cacheScope": CACHE_SCOPE}

    # ---- the methods ----

    async def list_skills(self, ctx: ServerRequestContext[Any, Any], params: PaginatedRequestParams) -> HandlerResult:
        """`skills/list`: a page of entries in (namespace, slug) order, with `nextCursor` while more remain."""
        records, cursor = await self.page(self.caller(ctx), decode_cursor(params.cursor))
        body: dict[str, Any] = {"skills": [skill_entry(r) for r in records]}
        if cursor is not None:
            body["nextCursor"] = cursor
        return self.cacheable(body)

    async def get_skill(self, ctx: ServerRequestContext[Any, Any], params: GetSkillParams) -> HandlerResult:
        """`skills/get`: the entry of the skill whose SKILL.md is at `params.uri`; -32602 when none is served."""
        match = SKILL_MD_URI.fullmatch(params.uri)
        record = None if match is None else await self.served(self.caller(ctx), match["namespace"], match["slug"])
        if record is None:
            raise not_served(params.uri)
        return self.cacheable({"skill": skill_entry(record)})

    async def read_directory(self, ctx: ServerRequestContext[Any, Any], params: ReadDirectoryParams) -> HandlerResult:
        """`resources/directory/read`: for `skill://<namespace>` its skill directories (paged), for
        `skill://<namespace>/<slug>` its SKILL.md; -32602 for anything else, or what the caller may not see."""
        who, uri = self.caller(ctx), params.uri
        match = SKILL_DIR_URI.fullmatch(uri)
        if match is None:
            raise MCPError(code=INVALID_PARAMS, message=f"{uri[:300]} is not a directory resource of this server",
                           data={"uri": uri[:300]})
        namespace, slug = match["namespace"], match["slug"]
        if slug is not None:
            record = await self.served(who, namespace, slug)
            if record is None:
                raise not_served(uri)
            text = skill_md_text(record)
            child = {"uri": skill_md_uri(namespace, slug), "name": SKILL_FILE, "title": record.name,
                     "description": record.description, "mimeType": SKILL_MIME,
                     "size": len(text.encode("utf-8"))}
            return {"resultType": "complete", "resources": [child]}
        after = decode_cursor(params.cursor) if params.cursor is not None else (namespace, "")
        if after[0] != namespace:
            raise MCPError(code=INVALID_PARAMS, message=f"this cursor is not one of {uri[:300]}")
        records, cursor = await self.page(who, after, namespace=namespace)
        if not records and params.cursor is None:   # no skill served there: no such directory
            raise not_served(uri)
        body: dict[str, Any] = {"resultType": "complete", "resources": [
            {"uri": f"skill://{r.namespace}/{r.slug}", "name": r.slug, "mimeType": DIRECTORY_MIME} for r in records]}
        if cursor is not None:
            body["nextCursor"] = cursor
        return body


__all__ = ["EXTENSION_ID", "GetSkillParams", "ReadDirectoryParams", "SKILL_MD_TEMPLATE", "SkillsExtension",
           "file_entry", "frontmatter_of", "skill_entry", "skill_md_text", "skill_md_uri"]
