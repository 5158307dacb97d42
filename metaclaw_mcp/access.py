"""Who may do what: bearer tokens bound to namespaces and a role. Pure, no I/O but reading the token file.

Three set-ups, from none to many users:

- **Single user** (the default): stdio, or HTTP on a loopback address without a token. The one
  caller is `LOCAL`: every namespace, role `admin`.
- **One shared token** (`--auth-token` / `METACLAW_AUTH_TOKEN`): whoever has it is `admin` on every
  namespace, as before tokens were bound.
- **A token file** (`tokens_file`, TOML), one table per token:

      [[token]]
      name = "laptop-agent"
      sha256 = "9f86d0818..."          # hex SHA-256 of the token (or `token = "..."`, plain)
      namespaces = ["proj-a"]          # or ["*"] for all
      role = "agent"                   # agent: the four tools and skill resources; admin: also
                                       # the operator's routes and actions

  `metaclaw-mcp tokens add` writes such an entry and prints the token once.

Tokens are compared in constant time (`hmac.compare_digest` of SHA-256 digests), and every
table is checked whatever matched earlier, so the time taken does not say which entry was close.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError, Forbidden

ROLES = ("agent", "admin")
ALL = "*"


@dataclass(frozen=True)
class Principal:
    """The caller of a request: a name for logs (never the token), the namespaces it may use
    (`ALL` among them: every one), and its role."""
    name: str
    namespaces: frozenset[str] = field(default_factory=lambda: frozenset({ALL}))
    role: str = "admin"

    def may_use(self, namespace: str) -> bool:
        """Whether this principal may read and write `namespace`."""
        return ALL in self.namespaces or namespace in self.namespaces

    @property
    def every_namespace(self) -> bool:
        """Whether this principal may use every namespace (its set holds `ALL`)."""
        return ALL in self.namespaces

    def check(self, namespace: str) -> None:
        """Raise Forbidden unless this principal may use `namespace`."""
        if not self.may_use(namespace):
            allowed = ", ".join(sorted(self.namespaces)) or "none"
            raise Forbidden(f"this token may not use namespace {namespace[:80]!r} (it may use: {allowed})")

    def check_admin(self, what: str) -> None:
        """Raise Forbidden unless this principal is an admin."""
        if self.role != "admin":
            raise Forbidden(f"{what} needs an admin token; this one ({self.name}) is {self.role!r}")


LOCAL = Principal("local")


def author_of(principal: Principal) -> str | None:
    """What turns, ratings and skill versions record as their writer: the token's name, or None for
    `LOCAL` (the single-user default, where there is no one else to tell apart)."""
    return None if principal is LOCAL else principal.name


def digest(token: str) -> bytes:
    """SHA-256 of a token (what the token file stores)."""
    return hashlib.sha256(token.encode("utf-8")).digest()


def new_token() -> str:
    """A fresh random token: 32 bytes, URL-safe base64 (43 characters)."""
    return "mc_" + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class _Entry:
    digest: bytes
    principal: Principal


class TokenTable:
    """Bearer tokens and the principal each stands for."""

    def __init__(self, entries: Iterable[tuple[str | bytes, Principal]] = ()):
        self._entries = [_Entry(t if isinstance(t, bytes) else digest(t), p) for t, p in entries]

    def __len__(self) -> int:
        return len(self._entries)

    def principals(self) -> list[Principal]:
        """Every entry's principal, in file order."""
        return [e.principal for e in self._entries]

    def lookup(self, token: str | bytes) -> Principal | None:
        """The principal of `token`, or None. Constant time in the token's content."""
        supplied = digest(token.decode("utf-8", "replace") if isinstance(token, bytes) else token)
        found = None
        for entry in self._entries:
            if hmac.compare_digest(entry.digest, supplied) and found is None:
                found = entry.principal
        return found

    @classmethod
    def single(cls, token: str) -> TokenTable:
        """One shared token: admin on every namespace."""
        return cls([(token, Principal("shared token"))])

    @classmethod
    def load(cls, path: Path) -> TokenTable:
        """Read a token file (module docstring). ConfigError with the entry and what is wrong."""
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"tokens_file {path} does not exist; create it with `metaclaw-mcp tokens add`") from None
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"tokens_file {path} cannot be read: {exc}") from None
        rows = data.get("token", [])
        if not isinstance(rows, list):
            raise ConfigError(f"tokens_file {path}: [[token]] tables expected")
        entries: list[tuple[str | bytes, Principal]] = []
        names: set[str] = set()
        for i, row in enumerate(rows, start=1):
            where = f"tokens_file {path}, token {i}"
            if not isinstance(row, dict):
                raise ConfigError(f"{where}: a table expected")
            unknown = set(row) - {"name", "token", "sha256", "namespaces", "role"}
            if unknown:
                raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
            name = row.get("name")
            if not isinstance(name, str) or not name.strip():
                raise ConfigError(f"{where}: `name` (a string) is required")
            if name in names:
                raise ConfigError(f"{where}: the name {name!r} is used twice")
            names.add(name)
            role = row.get("role", "agent")
            if role not in ROLES:
                raise ConfigError(f"{where} ({name}): role {role!r} is not one of {', '.join(ROLES)}")
            namespaces = row.get("namespaces")
            if (not isinstance(namespaces, list) or not namespaces
                    or not all(isinstance(n, str) and n for n in namespaces)):
                raise ConfigError(f"{where} ({name}): `namespaces` must be a non-empty list of names (or [\"*\"])")
            if ("token" in row) == ("sha256" in row):
                raise ConfigError(f"{where} ({name}): give exactly one of `token` and `sha256`")
            if "token" in row:
                if not isinstance(row["token"], str) or len(row["token"]) < 16:
                    raise ConfigError(f"{where} ({name}): `token` must be a string of at least 16 characters")
                secret: str | bytes = row["token"]
            else:
                try:
                    secret = bytes.fromhex(str(row["sha256"]))
                except ValueError:
                    secret = b""
                if len(secret) != 32:
                    raise ConfigError(f"{where} ({name}): `sha256` must be 64 hex digits")
            entries.append((secret, Principal(name, frozenset(namespaces), role)))
        if not entries:
            raise ConfigError(f"tokens_file {path} has no [[token]] entries")
        return cls(entries)


def principal_of(request: Any, key: str) -> Principal:
    """The principal the HTTP bearer check left in a request's scope state under `key` (the
    transport's `server.PRINCIPAL_KEY`), else `LOCAL` (stdio, in-process, or loopback HTTP without a
    token: the single-user default). `request`: anything with an ASGI `scope` (or None)."""
    scope = getattr(request, "scope", None) or {}
    found = (scope.get("state") or {}).get(key)
    return found if isinstance(found, Principal) else LOCAL


def token_entry(name: str, token: str, namespaces: Sequence[str], role: str = "agent") -> str:
    """The TOML of one token-file entry (the token's SHA-256, never the token itself)."""
    if role not in ROLES:
        raise ConfigError(f"role {role!r} is not one of {', '.join(ROLES)}")
    quoted = ", ".join(f'"{n}"' for n in namespaces)
    return (f'[[token]]\nname = "{name}"\nsha256 = "{digest(token).hex()}"\nnamespaces = [{quoted}]\n'
            f'role = "{role}"\n')


__all__ = ["ALL", "LOCAL", "author_of", "Principal", "ROLES", "TokenTable", "digest", "new_token", "principal_of",
           "token_entry"]
