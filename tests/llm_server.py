"""A real local HTTP server speaking the OpenAI chat-completions wire format, scripted per request.

It runs uvicorn (a starlette app) in the test's own event loop on 127.0.0.1 and a free port,
and records what it received: bodies, headers, arrival times and the most requests it had in
flight at once. It is the remote-LLM boundary of the tests: everything on our side is real.
"""
from __future__ import annotations

import json
import socket
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


def completion(text: str, prompt_tokens: int | None = 12, completion_tokens: int | None = 5,
               model: str = "fake-model") -> dict[str, Any]:
    """A chat-completions response body (usage omitted when both counts are None)."""
    body: dict[str, Any] = {
        "id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}
    if prompt_tokens is not None or completion_tokens is not None:
        body["usage"] = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                         "total_tokens": (prompt_tokens or 0) + (completion_tokens or 0)}
    return body


@dataclass
class Reply:
    """What the server answers to one request: a JSON body (dict/list) or raw text, after `delay` seconds."""
    status: int = 200
    body: Any = field(default_factory=lambda: completion("ok"))
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


Script = Sequence[Reply] | Callable[[int, dict[str, Any], dict[str, str]], Reply]


class ChatServer:
    """Answers the n-th request with script[n] (the last entry repeats), or with script(n, body, headers)."""

    def __init__(self, script: Script):
        self.script = script
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.paths: list[str] = []
        self.times: list[float] = []
        self.active = 0
        self.max_active = 0
        self.base_url = ""

    @property
    def count(self) -> int:
        return len(self.bodies)

    def _reply(self, n: int, body: dict[str, Any], headers: dict[str, str]) -> Reply:
        if callable(self.script):
            return self.script(n, body, headers)
        return self.script[min(n, len(self.script) - 1)]

    async def handle(self, request: Request) -> Response:
        n = len(self.bodies)
        body = json.loads(await request.body())
        headers = dict(request.headers)
        self.bodies.append(body)
        self.headers.append(headers)
        self.paths.append(request.url.path)
        self.times.append(time.monotonic())
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            reply = self._reply(n, body, headers)
            if reply.delay:
                await anyio.sleep(reply.delay)
            if isinstance(reply.body, (dict, list)):
                return Response(json.dumps(reply.body), reply.status, reply.headers, media_type="application/json")
            return Response(str(reply.body), reply.status, reply.headers, media_type="text/plain")
        finally:
            self.active -= 1


@asynccontextmanager
async def serve_chat(script: Script) -> AsyncIterator[ChatServer]:
    """Run a ChatServer for the block; its base_url is http://127.0.0.1:<port>/v1."""
    fake = ChatServer(script)
    app = Starlette(routes=[Route("/v1/chat/completions", fake.handle, methods=["POST"])])
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    fake.base_url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False,
                                           timeout_graceful_shutdown=0.3))
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve, [sock])
        with anyio.fail_after(10):
            while not server.started:
                await anyio.sleep(0.01)
        try:
            yield fake
        finally:
            server.should_exit = True
    sock.close()
