"""The trained policy over HTTP, in the OpenAI and Anthropic shapes, beside `/mcp` in the same process.

    GET  /v1/models             the one model served ("metaclaw"), with the base model and checkpoint
    POST /v1/chat/completions   OpenAI Chat Completions: n, temperature, top_p, max_tokens, stop, seed, stream
    POST /v1/messages           Anthropic Messages (one completion), streaming or not
    POST /v1/feedback           {"turn_id", "score", "feedback"?, "source"?}: rate_turn for HTTP-only agents

Each request's skills are fetched for its last user message and added to the system prompt
(`policy_inject_skills`), and each completion is recorded as a turn with its prompt ids,
completion ids and the sampler's logprobs, so it is ready for RL once rated. The `n` completions
of one request share their prompt ids and so form one group for advantage centring. Responses
name their turns: a top-level `metaclaw` object (`turn_ids` in choice order, `retrieval_id`,
`checkpoint`) and, when not streamed, the header `X-MetaClaw-Turn-Ids`; a stream carries the
`metaclaw` object in its last event before the end.

The namespace is the `X-MetaClaw-Namespace` header (default "default"), the session the
`X-MetaClaw-Session` header, else the request's `user` (OpenAI) or `metadata.user_id`
(Anthropic), else "v1". The bearer rule of `/mcp` applies (the transport checks it); a token
bound to namespaces may use only those.
"""
from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError, model_validator
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..access import Principal, principal_of
from ..errors import Busy, Forbidden, InvalidInput, MetaClawError, NotFound
from ..messages import content_text, last_user_text
from ..models import Message, TokenData
from ..arguments import argument_errors
from ..server import PRINCIPAL_KEY
from ..training.render import plain_messages, token_ids
from .base import Policy, Sampled, SamplingRequest

if TYPE_CHECKING:
    from mcp.server.transport_security import TransportSecuritySettings

log = logging.getLogger("metaclaw_mcp.policy")

SERVED_MODEL = "metaclaw"   # the id /v1/models lists; requests may name any model (one is served)
TURN_IDS_HEADER = "X-MetaClaw-Turn-Ids"
NAMESPACE_HEADER = "x-metaclaw-namespace"
SESSION_HEADER = "x-metaclaw-session"
MAX_BODY_BYTES = 4_000_000


class ApiError(Exception):
    """A request the endpoint refuses: HTTP `status`, the error `kind` (OpenAI's `type`) and a one-line message."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None):
        super().__init__(message)
        self.status, self.kind, self.param = status, kind, param


class ChatRequest(BaseModel):
    """The OpenAI Chat Completions fields the endpoint uses; other fields clients send are ignored.
    Numbers are strict: a boolean is not a number, a string is not one either."""
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    n: StrictInt = Field(1, ge=1)
    max_tokens: StrictInt | None = Field(None, ge=1)
    max_completion_tokens: StrictInt | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0, strict=True)
    top_p: float = Field(1.0, gt=0.0, le=1.0, strict=True)
    stop: str | list[str] | None = None
    seed: StrictInt | None = None
    stream: StrictBool = False
    user: str | None = Field(None, max_length=256)
    tools: list[dict[str, Any]] | None = None


class AnthropicMessage(BaseModel):
    """One Anthropic message: a role and its content (a string, or blocks of which text is used)."""
    model_config = ConfigDict(extra="ignore")
    role: Literal["user", "assistant"]
    content: str | list[dict[str, Any]]


class MessagesRequest(BaseModel):
    """The Anthropic Messages fields the endpoint uses (`max_tokens` is required there too)."""
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    max_tokens: StrictInt = Field(ge=1)
    messages: list[AnthropicMessage] = Field(min_length=1)
    system: str | list[dict[str, Any]] | None = None
    temperature: float = Field(1.0, ge=0.0, le=1.0, strict=True)
    top_p: float = Field(1.0, gt=0.0, le=1.0, strict=True)
    stop_sequences: list[str] | None = None
    stream: StrictBool = False
    metadata: dict[str, Any] | None = None


class FeedbackRequest(BaseModel):
    """A rating for a turn the endpoint recorded (rate_turn's arguments)."""
    model_config = ConfigDict(extra="forbid")
    turn_id: str = Field(min_length=1, max_length=200)
    score: float = Field(strict=True)
    feedback: str | None = None
    source: Literal["user", "env", "judge", "agent"] = "user"

    @model_validator(mode="after")
    def _finite(self) -> FeedbackRequest:
        if not -1.0 <= self.score <= 1.0:
            raise ValueError("score must be in [-1, 1]")
        return self


_TOOL_CALL = re.compile(r"<tool_call>\s*(\{.*?\})\s*</tool_call>", re.DOTALL)


def tool_calls_in(text: str) -> tuple[str, list[dict[str, Any]]]:
    """(the text without them, OpenAI tool calls) for `<tool_call>{"name", "arguments"}</tool_call>`
    blocks, the form chat templates with tool support (Qwen, Hermes) teach; a block that is not a JSON
    object with a string `name` stays in the text."""
    calls: list[dict[str, Any]] = []

    def take(m: re.Match[str]) -> str:
        try:
            call = json.loads(m.group(1))
        except ValueError:
            return m.group(0)
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            return m.group(0)
        args = call.get("arguments", {})
        calls.append({"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                      "function": {"name": call["name"],
                                   "arguments": args if isinstance(args, str) else json.dumps(args)}})
        return ""
    rest = _TOOL_CALL.sub(take, text)
    return (rest.strip() if calls else text), calls


def anthropic_text(content: str | list[dict[str, Any]]) -> str:
    """An Anthropic content's text: the string, or its text blocks (and tool results' text) one per line."""
    if isinstance(content, str):
        return content
    parts = []
    for block in content:
        if block.get("type") == "text" and isinstance(block.get("text"), str):
            parts.append(block["text"])
        elif block.get("type") == "tool_result":
            parts.append(content_text(block.get("content")) if not isinstance(block.get("content"), str)
                         else block["content"])
        elif block.get("type") == "tool_use":
            parts.append(json.dumps({"tool_use": {"name": block.get("name"), "input": block.get("input")}}))
    return "\n".join(p for p in parts if p)


class PolicyApi:
    """The `/v1` routes over one `app.App` (its retrieval and turn log; typed loosely here, as the app
    builds this face and not the other way round) and a policy (default: the app's).
    `security`: the Host and Origin checks of the MCP endpoint, applied here too (DNS rebinding)."""

    def __init__(self, app: Any, security: TransportSecuritySettings | None = None, policy: Policy | None = None):
        from mcp.server.transport_security import TransportSecurityMiddleware

        self.app = app
        self.config = app.config
        self.security = TransportSecurityMiddleware(security)
        self._policy = policy

    @property
    def policy(self) -> Policy | None:
        """The policy served: the one given, else the app's (None: nothing served, requests get 503)."""
        return self._policy if self._policy is not None else self.app.policy

    def asgi(self) -> Starlette:
        """The Starlette app of the four routes (mounted by the transport under `/v1`)."""
        return Starlette(routes=[
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
            Route("/v1/messages", self.messages, methods=["POST"]),
            Route("/v1/feedback", self.feedback, methods=["POST"]),
        ], exception_handlers={404: self._not_found, 405: self._not_allowed})

    # ---- errors ----

    @staticmethod
    def error(status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
              anthropic: bool = False) -> JSONResponse:
        """An error body in the caller's API shape: OpenAI `{"error": {"message", "type", "param", "code"}}`,
        Anthropic `{"type": "error", "error": {"type", "message"}}`."""
        if anthropic:
            return JSONResponse({"type": "error", "error": {"type": kind, "message": message}}, status_code=status)
        return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": None}},
                            status_code=status)

    async def _not_found(self, request: Request, exc: Exception) -> Response:
        return self.error(404, f"no route {request.url.path}; the endpoint serves /v1/models, /v1/chat/completions, "
                               "/v1/messages and /v1/feedback", "not_found_error")

    async def _not_allowed(self, request: Request, exc: Exception) -> Response:
        return self.error(405, f"{request.method} is not allowed on {request.url.path}", "invalid_request_error")

    async def _body(self, request: Request, model: type[BaseModel]) -> Any:
        refused = await self.security.validate_request(request, is_post=True)
        if refused is not None:
            raise ApiError(refused.status_code, bytes(refused.body).decode(errors="replace") +
                           (" (send Content-Type: application/json)" if refused.status_code == 400 else ""))
        raw = await request.body()
        if len(raw) > MAX_BODY_BYTES:
            raise ApiError(413, f"the request body is {len(raw)} bytes; at most {MAX_BODY_BYTES}")
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise ApiError(400, f"the request body is not JSON ({type(exc).__name__}: {str(exc)[:100]})") from None
        if not isinstance(data, dict):
            raise ApiError(400, "the request body must be a JSON object")
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            raise ApiError(400, argument_errors(exc)) from None

    # ---- routes ----

    async def models(self, request: Request) -> Response:
        """GET /v1/models: the served model, OpenAI's list shape."""
        refused = await self.security.validate_request(request)
        if refused is not None:
            return self.error(refused.status_code, bytes(refused.body).decode(errors="replace"))
        policy = self.policy
        data = [] if policy is None else [{
            "id": SERVED_MODEL, "object": "model", "created": int(time.time()), "owned_by": "metaclaw-mcp",
            "root": policy.base_model, "metaclaw": {"backend": policy.backend, "checkpoint": policy.checkpoint}}]
        return JSONResponse({"object": "list", "data": data})

    async def feedback(self, request: Request) -> Response:
        """POST /v1/feedback: rate a turn (rate_turn); the RateResult as JSON."""
        try:
            body = await self._body(request, FeedbackRequest)
            out = await self.app.rate_turn(body.turn_id, body.score, body.source, body.feedback,
                                           caller=self._caller(request))
        except ApiError as exc:
            return self.error(exc.status, str(exc), exc.kind)
        except MetaClawError as exc:
            return self._app_error(exc)
        return JSONResponse(out.model_dump(mode="json"))

    async def chat_completions(self, request: Request) -> Response:
        """POST /v1/chat/completions (see the module docstring)."""
        try:
            body: ChatRequest = await self._body(request, ChatRequest)
            if body.n > self.config.policy_max_n:
                raise ApiError(400, f"n is {body.n}; at most {self.config.policy_max_n} (policy_max_n)", param="n")
            stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
            if len(stop) > 4:
                raise ApiError(400, f"stop has {len(stop)} sequences; at most 4", param="stop")
            messages = [m.model_dump(mode="json", exclude_none=True) for m in body.messages]
            sampling = self._sampling(body.n, body.max_completion_tokens or body.max_tokens, body.temperature,
                                      body.top_p, stop, body.seed)
            session = request.headers.get(SESSION_HEADER) or body.user or "v1"
            job = await self._prepare(request, messages, body.messages, session, sampling, body.tools)
        except ApiError as exc:
            return self.error(exc.status, str(exc), exc.kind, exc.param)
        except MetaClawError as exc:
            return self._app_error(exc)
        created, cid = int(time.time()), f"chatcmpl-{uuid.uuid4().hex}"
        if body.stream:
            return StreamingResponse(self._chat_stream(job, cid, created), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        try:
            sampled, turn_ids = await job.run()
        except ApiError as exc:
            return self.error(exc.status, str(exc), exc.kind)
        choices = []
        for i, s in enumerate(sampled.sequences):
            text, calls = tool_calls_in(s.text) if body.tools else (s.text, [])
            message: dict[str, Any] = {"role": "assistant", "content": text or (None if calls else "")}
            if calls:
                message["tool_calls"] = calls
            choices.append({"index": i, "message": message, "logprobs": None,
                            "finish_reason": "tool_calls" if calls else s.finish_reason})
        completion = sum(len(s.tokens) for s in sampled.sequences)
        payload = {"id": cid, "object": "chat.completion", "created": created, "model": SERVED_MODEL,
                   "choices": choices, "usage": {"prompt_tokens": len(job.prompt_ids), "completion_tokens": completion,
                                                 "total_tokens": len(job.prompt_ids) + completion},
                   "metaclaw": job.naming(sampled, turn_ids)}
        return JSONResponse(payload, headers={TURN_IDS_HEADER: ",".join(t or "" for t in turn_ids)})

    async def _chat_stream(self, job: Job, cid: str, created: int) -> AsyncIterator[str]:
        def event(choices: list[dict[str, Any]], **extra: Any) -> str:
            return "data: " + json.dumps({"id": cid, "object": "chat.completion.chunk", "created": created,
                                          "model": SERVED_MODEL, "choices": choices, **extra}) + "\n\n"
        n = job.sampling.n
        yield event([{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
                     for i in range(n)])
        try:
            async for item in job.stream():
                if isinstance(item[0], int):   # (choice index, text)
                    index, text = item
                    yield event([{"index": index, "delta": {"content": text}, "finish_reason": None}])
                else:
                    sampled, turn_ids = item
                    yield event([{"index": i, "delta": {}, "finish_reason": s.finish_reason}
                                 for i, s in enumerate(sampled.sequences)], metaclaw=job.naming(sampled, turn_ids))
        except ApiError as exc:
            yield "data: " + json.dumps({"error": {"message": str(exc), "type": exc.kind, "param": None,
                                                   "code": None}}) + "\n\n"
        yield "data: [DONE]\n\n"

    async def messages(self, request: Request) -> Response:
        """POST /v1/messages, the Anthropic Messages shape (see the module docstring)."""
        try:
            body: MessagesRequest = await self._body(request, MessagesRequest)
            chat: list[dict[str, Any]] = []
            system = anthropic_text(body.system) if body.system else ""
            if system:
                chat.append({"role": "system", "content": system})
            chat += [{"role": m.role, "content": anthropic_text(m.content)} for m in body.messages]
            if any(not m["content"] for m in chat):
                raise ApiError(400, "every message needs text content")
            models = [Message.model_validate(m) for m in chat]
            stop = tuple(body.stop_sequences or ())
            sampling = self._sampling(1, body.max_tokens, body.temperature, body.top_p, stop, None)
            user = (body.metadata or {}).get("user_id")
            session = request.headers.get(SESSION_HEADER) or (user if isinstance(user, str) else None) or "v1"
            job = await self._prepare(request, chat, models, session, sampling, None)
        except ApiError as exc:
            return self.error(exc.status, str(exc), exc.kind, anthropic=True)
        except MetaClawError as exc:
            return self._app_error(exc, anthropic=True)
        mid = f"msg_{uuid.uuid4().hex}"
        if body.stream:
            return StreamingResponse(self._messages_stream(job, mid), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        try:
            sampled, turn_ids = await job.run()
        except ApiError as exc:
            return self.error(exc.status, str(exc), exc.kind, anthropic=True)
        seq = sampled.sequences[0]
        payload = {"id": mid, "type": "message", "role": "assistant", "model": SERVED_MODEL,
                   "content": [{"type": "text", "text": seq.text}], "stop_reason": self._stop_reason(seq),
                   "stop_sequence": None,
                   "usage": {"input_tokens": len(job.prompt_ids), "output_tokens": len(seq.tokens)},
                   "metaclaw": job.naming(sampled, turn_ids)}
        return JSONResponse(payload, headers={TURN_IDS_HEADER: ",".join(t or "" for t in turn_ids)})

    async def _messages_stream(self, job: Job, mid: str) -> AsyncIterator[str]:
        def event(kind: str, **data: Any) -> str:
            return f"event: {kind}\ndata: " + json.dumps({"type": kind, **data}) + "\n\n"
        yield event("message_start", message={
            "id": mid, "type": "message", "role": "assistant", "model": SERVED_MODEL, "content": [],
            "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": len(job.prompt_ids), "output_tokens": 0}})
        yield event("content_block_start", index=0, content_block={"type": "text", "text": ""})
        try:
            async for item in job.stream():
                if isinstance(item[0], int):   # (choice index, text)
                    yield event("content_block_delta", index=0, delta={"type": "text_delta", "text": item[1]})
                else:
                    sampled, turn_ids = item
                    seq = sampled.sequences[0]
                    yield event("content_block_stop", index=0)
                    yield event("message_delta", delta={"stop_reason": self._stop_reason(seq), "stop_sequence": None},
                                usage={"output_tokens": len(seq.tokens)}, metaclaw=job.naming(sampled, turn_ids))
        except ApiError as exc:
            yield event("error", error={"type": exc.kind, "message": str(exc)})
            return
        yield event("message_stop")

    # ---- shared ----

    @staticmethod
    def _stop_reason(seq: Any) -> str:
        # a stop sequence is cut from the text like an end of turn; which one matched is not kept
        return "max_tokens" if seq.finish_reason == "length" else "end_turn"

    def _sampling(self, n: int, max_tokens: int | None, temperature: float, top_p: float, stop: tuple[str, ...],
                  seed: int | None) -> SamplingRequest:
        cap = self.config.policy_max_tokens
        if max_tokens is not None and max_tokens > cap:
            raise ApiError(400, f"max_tokens is {max_tokens}; at most {cap} (policy_max_tokens)", param="max_tokens")
        return SamplingRequest(n=n, max_tokens=max_tokens or min(cap, 512), temperature=temperature, top_p=top_p,
                               stop=stop, seed=seed)

    @staticmethod
    def _caller(request: Request) -> Principal:
        return principal_of(request, PRINCIPAL_KEY)

    def _app_error(self, exc: MetaClawError, anthropic: bool = False) -> JSONResponse:
        status = {InvalidInput: 400, Forbidden: 403, NotFound: 404, Busy: 503}.get(type(exc), 500)
        kind = {400: "invalid_request_error", 403: "permission_error", 404: "not_found_error"}.get(status, "api_error")
        return self.error(status, str(exc), kind, anthropic=anthropic)

    async def _prepare(self, request: Request, messages: list[dict[str, Any]], models: list[Message], session: str,
                       sampling: SamplingRequest, tools: list[dict[str, Any]] | None) -> Job:
        """Check the namespace, fetch and inject skills, render the prompt: a Job ready to sample."""
        policy = self.policy
        if policy is None:
            raise ApiError(503, "no trained policy is served: set backend = 'local' or 'tinker' (or policy) "
                                "in the config", "api_error")
        namespace = request.headers.get(NAMESPACE_HEADER) or "default"
        caller = self._caller(request)
        await self.app.namespace_ok(namespace, caller)
        retrieval_id, injection = None, ""
        query = last_user_text(messages).strip()[:self.config.max_query_chars]
        if self.config.policy_inject_skills and query:
            found = await self.app.fetch_skills(query, session_id=session, namespace=namespace, messages=models,
                                                caller=caller)
            retrieval_id, injection = (found.retrieval_id if found.skills else None), found.injection
        shown = plain_messages(messages)
        if injection:
            if shown and shown[0]["role"] == "system":
                shown[0] = {"role": "system", "content": (shown[0]["content"] + "\n\n" + injection).strip()}
            else:
                shown.insert(0, {"role": "system", "content": injection})
        try:
            tokenizer = await policy.tokenizer()
        except Exception as exc:
            raise ApiError(503, f"the policy's tokenizer cannot be loaded ({type(exc).__name__}: {str(exc)[:200]})",
                           "api_error") from None
        try:
            encoded = tokenizer.apply_chat_template(shown, tools=tools or None, add_generation_prompt=True,
                                                    tokenize=True)
        except Exception as exc:  # roles the template refuses, tools it cannot render
            raise ApiError(400, f"the model's chat template cannot render these messages ({type(exc).__name__}: "
                                f"{str(exc)[:200]})") from None
        prompt_ids = token_ids(encoded)
        if len(prompt_ids) + sampling.max_tokens > self.config.max_seq_len:
            raise ApiError(400, f"the prompt is {len(prompt_ids)} tokens; with max_tokens {sampling.max_tokens} that "
                                f"is over max_seq_len {self.config.max_seq_len}", param="messages")
        return Job(self.app, policy, models, prompt_ids, sampling, session, namespace, caller, retrieval_id)


class Job:
    """One request, rendered: samples the policy, then records each completion as a turn."""

    def __init__(self, app: Any, policy: Any, messages: list[Message], prompt_ids: list[int],
                 sampling: SamplingRequest, session: str, namespace: str, caller: Principal,
                 retrieval_id: str | None):
        self.app, self.policy, self.messages, self.prompt_ids = app, policy, messages, prompt_ids
        self.sampling, self.session, self.namespace, self.caller = sampling, session, namespace, caller
        self.retrieval_id = retrieval_id
        self.request_id = uuid.uuid4().hex

    def naming(self, sampled: Sampled, turn_ids: list[str | None]) -> dict[str, Any]:
        """The response's `metaclaw` object: turn ids in choice order, the retrieval id, the checkpoint."""
        return {"turn_ids": turn_ids, "retrieval_id": self.retrieval_id, "checkpoint": sampled.checkpoint}

    async def run(self, on_text: Any = None) -> tuple[Sampled, list[str | None]]:
        """Sample, then report each completion as a turn; (sampled, turn ids, None where one could not be
        recorded). ApiError 503 when the policy cannot sample."""
        try:
            sampled = await self.policy.sample(self.prompt_ids, self.sampling, on_text)
        except ApiError:
            raise
        except Exception as exc:  # a model that will not load, a service that is down
            log.warning("the policy could not sample: %s: %s", type(exc).__name__, exc)
            raise ApiError(503, f"the policy could not sample ({type(exc).__name__}: {str(exc)[:300]})",
                           "api_error") from None
        return sampled, await self.record(sampled)

    async def stream(self) -> AsyncIterator[tuple[int, str] | tuple[Sampled, list[str | None]]]:
        """(choice index, text) pieces as they are sampled, then (sampled, turn ids) once recorded."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()

        def on_text(index: int, text: str) -> None:   # called from the sampling thread
            loop.call_soon_threadsafe(queue.put_nowait, (index, text))

        async def work() -> None:
            try:
                queue.put_nowait(await self.run(on_text))
            except Exception as exc:
                queue.put_nowait(exc)
        task = asyncio.ensure_future(work())
        try:
            while True:
                item = await queue.get()
                if isinstance(item, Exception):
                    raise item
                yield item
                if not (isinstance(item, tuple) and isinstance(item[0], int)):
                    return
        finally:
            if not task.done():
                task.cancel()

    async def record(self, sampled: Sampled) -> list[str | None]:
        """One turn per completion (report_turn), tokens and logprobs included; a completion that cannot be
        recorded (a turn over max_turn_bytes) is still answered, with a warning in the log."""
        ids: list[str | None] = []
        for i, seq in enumerate(sampled.sequences):
            try:
                tokens = TokenData(prompt_ids=self.prompt_ids, completion_ids=seq.tokens, logprobs=seq.logprobs) \
                    if seq.tokens else None
                out = await self.app.report_turn(
                    self.session, self.messages, seq.text, retrieval_id=self.retrieval_id,
                    model=f"{SERVED_MODEL}:{sampled.checkpoint}", tokens=tokens,
                    metadata={"endpoint": "v1", "checkpoint": sampled.checkpoint, "request_id": self.request_id,
                              "choice": i, "finish_reason": seq.finish_reason},
                    namespace=self.namespace, caller=self.caller)
                ids.append(out.turn_id)
            except (MetaClawError, ValueError) as exc:
                log.warning("completion %d of request %s was answered but not recorded: %s", i, self.request_id, exc)
                ids.append(None)
        return ids
