"""Who is looking at the dashboard: login sessions for browsers, and CSRF tokens for its forms.

The server's rule (`access.py`): without tokens (loopback, single user) everyone is `LOCAL`; with
tokens, a request needs one. Programs send `Authorization: Bearer <token>`; a browser cannot, so
`/dashboard/login` takes the token once and sets a session cookie (HttpOnly, SameSite=Strict,
path /dashboard) that names the token's principal, expires after `SESSION_SECONDS`, and is signed
with HMAC-SHA256 under a secret made when the process starts (a restart logs everyone out; the
token itself is never stored in the browser).

Every form carries a CSRF token: the HMAC of the session cookie (of "" without one) under the same
secret. A page of another site can neither read it nor the cookie (SameSite=Strict keeps it off
cross-site requests anyway), so a forged POST fails with 403.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable

from ..access import LOCAL, Principal, TokenTable

COOKIE = "metaclaw_dashboard"
SESSION_SECONDS = 12 * 3600


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Sessions:
    """The sessions and CSRF tokens of one dashboard process, checked against `tokens` (None: no token
    is configured, and every caller is `LOCAL`). `secret` (default: 32 random bytes) signs both;
    `clock` gives seconds since the epoch."""

    def __init__(self, tokens: TokenTable | None, secret: bytes | None = None,
                 lifetime: float = SESSION_SECONDS, clock: Callable[[], float] = time.time):
        self.tokens = tokens
        self.secret = secret or secrets.token_bytes(32)
        self.lifetime = lifetime
        self.clock = clock
        self.by_name = {p.name: p for p in tokens.principals()} if tokens is not None else {}

    @property
    def open(self) -> bool:
        """True when no token is configured: no login, every caller is `LOCAL`."""
        return self.tokens is None

    def _sign(self, text: str) -> str:
        return hmac.new(self.secret, text.encode("utf-8"), hashlib.sha256).hexdigest()

    def login(self, token: str) -> str | None:
        """The session cookie's value for a valid `token`, or None for a wrong one (or when no token is
        configured: there is nothing to log in to)."""
        if self.tokens is None:
            return None
        principal = self.tokens.lookup(token.strip())
        if principal is None:
            return None
        body = f"{secrets.token_hex(8)}.{_b64(principal.name.encode('utf-8'))}.{int(self.clock() + self.lifetime)}"
        return f"{body}.{self._sign('session|' + body)}"

    def principal(self, cookie: str | None) -> Principal | None:
        """Whom a session cookie stands for: its principal while the signature holds, the session has
        not expired and the token file still has that name; else None."""
        if not cookie or self.tokens is None:
            return None
        body, _, signature = cookie.rpartition(".")
        if not body or not hmac.compare_digest(self._sign("session|" + body), signature):
            return None
        try:
            _, name, expires = body.split(".")
            if int(expires) < self.clock():
                return None
            return self.by_name.get(_unb64(name).decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            return None

    def caller(self, cookie: str | None, bearer: str | None, checked: Principal | None = None) -> Principal | None:
        """Who makes a request: `LOCAL` without tokens; else the principal the transport's bearer check
        found (`checked`), that of the bearer token sent, or that of the session cookie; None: nobody."""
        if self.tokens is None:
            return LOCAL
        if checked is not None:
            return checked
        if bearer:
            found = self.tokens.lookup(bearer)
            if found is not None:
                return found
        return self.principal(cookie)

    def csrf(self, cookie: str | None) -> str:
        """The CSRF token forms carry for the session `cookie` (None or "" without one)."""
        return self._sign("csrf|" + (cookie or ""))

    def csrf_ok(self, cookie: str | None, supplied: str | None) -> bool:
        """Whether `supplied` is the CSRF token of `cookie` (constant time)."""
        return bool(supplied) and hmac.compare_digest(self.csrf(cookie), supplied or "")


__all__ = ["COOKIE", "SESSION_SECONDS", "Sessions"]
