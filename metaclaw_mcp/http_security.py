"""What HTTP requests are checked against, for every server of this package that speaks HTTP (the
MCP transports, `/v1`, `/metrics`, the dashboard, alone or beside `/mcp`): the bearer tokens and the
Host and Origin rule for the bound address."""
from __future__ import annotations

from mcp.server.transport_security import TransportSecuritySettings

from .access import TokenTable
from .config import MetaClawConfig


def token_table(config: MetaClawConfig) -> TokenTable | None:
    """The tokens HTTP requests are checked against: the token file, else the one shared token, else
    None (loopback without a token: the single-user default)."""
    if config.tokens_file is not None:
        return TokenTable.load(config.tokens_file)
    if config.auth_token is not None:
        return TokenTable.single(config.auth_token.get_secret_value())
    return None


def transport_security(config: MetaClawConfig) -> TransportSecuritySettings:
    """The Host and Origin checks for an HTTP or SSE server bound to `config.host`:`config.port`.

    On a loopback address (any of 127.0.0.0/8, ::1, localhost) a request must name this port on the
    bound address or on `localhost`, `127.0.0.1` or `[::1]` in `Host` (else 421), and an `Origin`, when
    sent, must be one of those as an http:// origin (else 403): a page from another site that resolves
    its name to a loopback address (DNS rebinding) is refused. Off loopback, where a bearer token is
    required (a browser page cannot send it), the checks are off: the names a public server answers
    to are not known here.
    """
    if not config.is_loopback:
        return TransportSecuritySettings(enable_dns_rebinding_protection=False)
    bound = f"[{config.host}]" if ":" in config.host else config.host
    names = dict.fromkeys([bound, "localhost", "127.0.0.1", "[::1]"])
    hosts = [f"{name}:{config.port}" for name in names]
    if config.port == 80:  # the default port may be left out of Host
        hosts += list(names)
    return TransportSecuritySettings(enable_dns_rebinding_protection=True, allowed_hosts=hosts,
                                     allowed_origins=[f"http://{host}" for host in hosts])


__all__ = ["token_table", "transport_security"]
