"""Run the server on one transport, with the app's background tasks owned by the process."""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import select
import signal
import sys
from collections.abc import Callable, Iterator
from typing import Any

import anyio

from .access import TokenTable
from .app import App
from .config import MetaClawConfig
from .errors import ConfigError
from .http_security import token_table, transport_security
from .server import PRINCIPAL_KEY, MetaClawServer, build_server

log = logging.getLogger("metaclaw_mcp")

# Where signals can be watched from the event loop (POSIX), the process handles SIGINT and SIGTERM
# itself on every transport; elsewhere (Windows) uvicorn's own handling and KeyboardInterrupt remain.
OWN_SIGNALS = sys.platform != "win32"
# How long HTTP and SSE connections still open at shutdown (event streams) may take to finish.
SHUTDOWN_GRACE_SECONDS = 5.0


class BearerAuth:
    """ASGI middleware: every HTTP request must carry `Authorization: Bearer <token>` of a token in
    `tokens`; the request then goes on with the token's principal in its scope's state (where the
    tools read who is calling: `server.caller`). Anything else gets 401 before the app sees it, except
    under `SELF_CHECKED`: the dashboard, which browsers reach with its login cookie (they cannot send
    the header), checks the caller itself against the same tokens."""

    SELF_CHECKED = ("/dashboard",)

    def __init__(self, app: Any, tokens: TokenTable):
        self.app = app
        self.tokens = tokens

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            header = dict(scope.get("headers") or []).get(b"authorization", b"")
            scheme, _, supplied = header.partition(b" ")
            principal = self.tokens.lookup(supplied.strip()) if scheme.lower() == b"bearer" else None
            path = scope.get("path", "")
            if principal is None and any(path == p or path.startswith(p + "/") for p in self.SELF_CHECKED):
                await self.app(scope, receive, send)
                return
            if principal is None and path.startswith("/.well-known/"):
                # Nothing is published there: a 404 (not a 401) tells an OAuth-capable client (the
                # Inspector) that there is no authorization server to discover, so it sends the header.
                body = (b'{"error": "not_found", "detail": "no OAuth here: this server takes bearer tokens; '
                        b'send Authorization: Bearer <token>"}')
                await send({"type": "http.response.start", "status": 404, "headers": [
                    (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
            if principal is None:
                body = (b'{"error": {"message": "send Authorization: Bearer <token>", "type": "authentication_error", '
                        b'"param": null, "code": "unauthorized"}}' if scope.get("path", "").startswith("/v1")
                        else b'{"error": "unauthorized", "detail": "send Authorization: Bearer <token>"}')
                await send({"type": "http.response.start", "status": 401, "headers": [
                    (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", b'Bearer realm="metaclaw-mcp"')]})
                await send({"type": "http.response.body", "body": body})
                return
            scope = {**scope, "state": {**(scope.get("state") or {}), PRINCIPAL_KEY: principal}}
        await self.app(scope, receive, send)



class CompleteResponses:
    """ASGI middleware: every HTTP response ends, once. The SDK's event streams can stop without their
    final body (a stream open at shutdown) or be followed by a second, empty response (its SSE
    endpoint's), which uvicorn logs as errors; here an unfinished response gets its final, empty
    body, and whatever comes after that is dropped."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = complete = False
        end = {"type": "http.response.body", "body": b"", "more_body": False}

        async def send_once(message: dict[str, Any]) -> None:
            nonlocal started, complete
            if complete:
                return
            if message["type"] == "http.response.start":
                if started:  # a second response: finish the first instead
                    complete = True
                    await send(end)
                    return
                started = True
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                complete = True
            await send(message)

        await self.app(scope, receive, send_once)
        if started and not complete:
            await send(end)


def guarded_h11(request_timeout: float) -> type[Any]:
    """uvicorn's h11 protocol with a deadline on each request: its head and body must arrive within
    `request_timeout` seconds of its first byte (of connecting, for a connection's first request),
    or the connection is closed. uvicorn's own keep-alive timeout covers only the idle time after a
    response, so a client that connects and never finishes its headers would hold a socket forever."""
    import asyncio

    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._deadline is None:  # the first bytes of the next request
                self._arm()
            super().data_received(data)
            if self.conn.their_state not in (h11.IDLE, h11.SEND_BODY):  # the request is in (or the connection over)
                self._disarm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._deadline = self.loop.call_later(request_timeout, self._too_slow)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _too_slow(self) -> None:
            self._deadline = None
            if not self.transport.is_closing():
                log.debug("closing a connection from %s: no whole request within %gs", self.client, request_timeout)
                self.transport.close()

    return GuardedH11


def check_bind(config: MetaClawConfig) -> TokenTable | None:
    """ConfigError unless the bind is safe: off loopback HTTP/SSE needs a token (`auth_token` or
    `tokens_file`), and a token file must read cleanly. Returns the tokens HTTP requests are checked
    against (`token_table`; None for stdio or a loopback server without a token), read once."""
    if config.transport != "stdio" and not config.is_loopback and not (config.auth_token or config.tokens_file):
        raise ConfigError(f"refusing to listen on {config.host}, which is not a loopback address, without a token: "
                          "pass --auth-token (or set METACLAW_AUTH_TOKEN, or METACLAW_TOKENS_FILE), or bind 127.0.0.1")
    # a bad token file is a clear error before anything listens
    return token_table(config) if config.transport != "stdio" else None


def check_port(config: MetaClawConfig) -> None:
    """ConfigError, one line, when `config.host`:`config.port` cannot be listened on (the port in use, an
    address not of this machine, no permission), found by binding each of its addresses as the server
    will, before the app starts or anything says it is serving (uvicorn would log the failure after
    its start-up and exit through a traceback)."""
    import socket

    where = f"{config.host}:{config.port}"
    try:
        addresses = socket.getaddrinfo(config.host, config.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"cannot listen on {where}: {str(exc.strerror or exc).lower()}") from None
    for family, kind, proto, _, address in addresses:
        try:
            with socket.socket(family, kind, proto) as sock:
                if os.name != "nt":  # as asyncio's create_server: a port left in TIME_WAIT is free
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(address)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {where}: {str(exc.strerror or exc).lower()}") from None


def setup_logging(level: str) -> None:
    """Logs to stderr (stdout belongs to the protocol on stdio), at `level` (a logging level name)."""
    logging.basicConfig(level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


# ---- stdin for the SDK's stdio reader ----

_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def repair_line(line: bytes) -> bytes:
    """One line of JSON-RPC input with each lone UTF-16 surrogate escape (`"\\ud800"` not followed by
    its low half) replaced by U+FFFD, so that a strict parser accepts it and the request is answered
    (the SDK's reader drops a line it cannot parse without replying). Any other line comes back as it was.
    """
    if not _SURROGATE_ESCAPE.search(line):  # the common case: one regex scan, no parse
        return line
    try:
        message = json.loads(line, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):  # not JSON at all: the SDK reports it as it does any bad line
        return line
    text = json.dumps(message, ensure_ascii=False, separators=(",", ":"))
    try:
        text.encode("utf-8")
        return line  # escapes of whole pairs only: the line is valid as it is
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", text).encode("utf-8") + (b"\n" if line.endswith(b"\n") else b"")


class StdinLines(io.RawIOBase):
    """A file descriptor read as whole lines, each passed through `repair_line`, ending at end of input
    or as soon as `end()` is called (a thread blocked in a read returns at once, with end of input)."""

    def __init__(self, fd: int):
        super().__init__()
        self._fd = fd
        self._wake_r, self._wake_w = os.pipe()
        self._partial = bytearray()  # the start of a line whose newline has not arrived
        self._ready = memoryview(b"")  # repaired lines not yet read
        self._ended = False

    def readable(self) -> bool:
        """Always readable (io.RawIOBase)."""
        return True

    def readinto(self, buffer: Any) -> int:
        """Fill `buffer` with what stdin has (bytes read; 0 at its end or once the input was ended)."""
        while not self._ready:
            if self._ended:
                return 0
            self._fill()
        n = min(len(buffer), len(self._ready))
        buffer[:n] = self._ready[:n]
        self._ready = self._ready[n:]
        return n

    def _fill(self) -> None:
        readable, _, _ = select.select([self._fd, self._wake_r], [], [])
        if self._wake_r in readable:
            self._ended = True
            return
        chunk = os.read(self._fd, 1 << 16)
        if not chunk:
            self._ended = True
            rest, self._partial = bytes(self._partial), bytearray()
            self._ready = memoryview(repair_line(rest))
            return
        self._partial += chunk
        end = self._partial.rfind(b"\n", len(self._partial) - len(chunk))
        if end < 0:
            return
        complete = bytes(self._partial[:end])
        del self._partial[:end + 1]
        self._ready = memoryview(b"".join(repair_line(line) + b"\n" for line in complete.split(b"\n")))

    def end(self) -> None:
        """End the input now: the reader gets what is already repaired, then end of input."""
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def close(self) -> None:
        """Close the wake-up pipe and the stream (idempotent)."""
        if not self.closed:
            for fd in (self._wake_r, self._wake_w):
                with contextlib.suppress(OSError):
                    os.close(fd)
        super().close()


@contextlib.contextmanager
def stdin_for_sdk() -> Iterator[StdinLines | None]:
    """Give the SDK's stdio reader fd 0 through `StdinLines` (as `sys.stdin`, which the SDK then reads in
    place), with fd 0 itself pointing at the null device meanwhile, as the SDK's own claim does (a
    child process reads end of input, not the protocol). Yields None where this cannot be done (Windows,
    no stdin); the SDK then reads stdin itself."""
    if not OWN_SIGNALS:
        yield None
        return
    import fcntl

    try:
        wire = fcntl.fcntl(0, fcntl.F_DUPFD_CLOEXEC, 3)
    except OSError:
        yield None
        return
    null = os.open(os.devnull, os.O_RDONLY)
    try:
        os.dup2(null, 0)
    finally:
        os.close(null)
    lines = StdinLines(wire)
    saved = sys.stdin
    sys.stdin = io.TextIOWrapper(io.BufferedReader(lines), encoding="utf-8", errors="replace")
    try:
        yield lines
    finally:
        sys.stdin = saved
        lines.end()
        os.dup2(wire, 0)
        os.close(wire)


# ---- shutdown ----

class Shutdown:
    """What SIGINT and SIGTERM do: the first stops the running transport gracefully (`stop`, set by the
    transport; before one runs, the serving is cancelled), a later one stops it at once (`force`)."""

    def __init__(self, scope: anyio.CancelScope):
        self.scope = scope
        self.stop: Callable[[], None] = scope.cancel
        self.force: Callable[[], None] = scope.cancel
        self.requested = False

    def on_stop(self, stop: Callable[[], None], force: Callable[[], None] | None = None) -> None:
        """Set what the transport that starts now does on a signal (at once if one already came)."""
        self.stop, self.force = stop, force or self.scope.cancel
        if self.requested:
            stop()

    async def watch(self, signals: Any) -> None:
        """Stop on the first SIGINT/SIGTERM from `signals` (an async iterator of signal numbers); force on the
        second."""
        async for signum in signals:
            if not self.requested:
                self.requested = True
                log.info("%s received: shutting down", signal.Signals(signum).name)
                self.stop()
            else:
                log.info("%s received again: stopping now", signal.Signals(signum).name)
                self.force()


async def serve(config: MetaClawConfig) -> None:
    """Serve until the transport ends: stdin closes (stdio), or SIGINT or SIGTERM arrives (any transport).

    Either signal stops the transport (HTTP and SSE connections still open get SHUTDOWN_GRACE_SECONDS),
    then the app closes as it does when stdin closes (buffered retrieval-log rows written, the database
    closed) and this returns, so the process exits 0; a second signal stops without the grace period.
    """
    tokens = check_bind(config)
    if config.transport != "stdio":
        check_port(config)
    with anyio.CancelScope() as scope:
        shutdown = Shutdown(scope)
        if not OWN_SIGNALS:
            await _serve(config, shutdown, tokens)
            return
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with anyio.create_task_group() as tg:
                tg.start_soon(shutdown.watch, signals)
                try:
                    await _serve(config, shutdown, tokens)
                finally:
                    tg.cancel_scope.cancel()


async def _serve(config: MetaClawConfig, shutdown: Shutdown, tokens: TokenTable | None) -> None:
    async with App(config).running(serve_policy=config.transport != "stdio") as app:
        server = build_server(app)
        if config.transport == "stdio":
            await _serve_stdio(server, shutdown)
        else:
            await _serve_http(server, app, config, shutdown, tokens)


async def _serve_stdio(server: MetaClawServer, shutdown: Shutdown) -> None:
    with stdin_for_sdk() as stdin:
        if stdin is not None:  # a signal ends the input, as closing stdin does
            shutdown.on_stop(stdin.end)
        await server.run_stdio_async()


class PathRouter:
    """ASGI: HTTP requests under `prefix` go to `branch`, everything else (lifespan included) to `main`."""

    def __init__(self, main: Any, branch: Any, prefix: str = "/v1"):
        self.main, self.branch, self.prefix = main, branch, prefix

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and (path == self.prefix or path.startswith(self.prefix + "/")):
            await self.branch(scope, receive, send)
        else:
            await self.main(scope, receive, send)


async def _serve_http(server: MetaClawServer, app: App, config: MetaClawConfig, shutdown: Shutdown,
                      tokens: TokenTable | None) -> None:
    import uvicorn

    class Server(uvicorn.Server):
        # uvicorn would take SIGINT and SIGTERM from us and, after its shutdown, raise them again
        # with the default handlers, killing the process before the app has closed.
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    security = transport_security(config)
    if config.transport == "http":
        asgi = server.streamable_http_app(streamable_http_path="/mcp", transport_security=security, host=config.host)
    else:
        asgi = server.sse_app(sse_path="/sse", message_path="/messages/", transport_security=security, host=config.host)
    if config.policy != "off":   # the trained policy beside the MCP endpoint, in the same process
        from .policy.api import PolicyApi
        asgi = PathRouter(asgi, PolicyApi(app, security).asgi())
    from .metrics import PATH, metrics_app   # GET /metrics: Prometheus text, admin callers only
    asgi = PathRouter(asgi, metrics_app(app, security, PRINCIPAL_KEY), prefix=PATH)
    from .dashboard.routes import PATH as DASHBOARD, dashboard_app   # /dashboard: pages for people
    asgi = PathRouter(asgi, dashboard_app(app, security, tokens, PRINCIPAL_KEY), prefix=DASHBOARD)
    asgi = CompleteResponses(asgi)
    if tokens is not None:
        if config.http_rate_limit is not None:   # inside the bearer check: one bucket per token
            from .ratelimit import RateLimit, TokenBuckets
            asgi = RateLimit(asgi, TokenBuckets(config.http_rate_limit, config.http_rate_burst), PRINCIPAL_KEY)
        asgi = BearerAuth(asgi, tokens)
    uv_config = uvicorn.Config(asgi, host=config.host, port=config.port, log_config=None, access_log=False,
                               lifespan="on", log_level=config.log_level.lower(),
                               timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS,
                               http=guarded_h11(config.http_request_timeout_seconds),
                               limit_concurrency=config.http_max_connections)
    if not OWN_SIGNALS:
        uv = uvicorn.Server(uv_config)
    else:
        uv = Server(uv_config)

        def force() -> None:
            uv.force_exit = True
        # handle_exit is what uvicorn's own handler calls; it also ends open SSE streams (sse-starlette hooks it).
        shutdown.on_stop(lambda: uv.handle_exit(signal.SIGTERM, None), force)
    log.info("metaclaw-mcp serving %s on http://%s:%d%s", config.transport, config.host, config.port,
             "/mcp" if config.transport == "http" else "/sse")
    await uv.serve()


def run(config: MetaClawConfig) -> None:
    """Serve on the configured transport until stopped (the `serve` command); ConfigError for an unsafe bind."""
    setup_logging(config.log_level)
    anyio.run(serve, config)

