"""The trained policy at /v1: the real server over real HTTP on a tiny randomly initialised Llama that
uses SmolLM2's real tokenizer (the local backend's own code path, small enough for CI), the real
SQLite store, and real MCP clients. Only the Tinker service, which this machine cannot reach, is a
stand-in (tests/test_llm_tinker.py's), returning the SDK's own types."""
from __future__ import annotations

import json
from pathlib import Path

import anyio
import httpx
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("transformers")

from mcp import Client  # noqa: E402

from metaclaw_mcp.app import open_app  # noqa: E402
from metaclaw_mcp.config import load_config  # noqa: E402
from metaclaw_mcp.models import Message, TokenData  # noqa: E402
from metaclaw_mcp.policy.api import PolicyApi  # noqa: E402
from metaclaw_mcp.policy.base import SamplingRequest, eos_ids, follow_checkpoints  # noqa: E402
from metaclaw_mcp.policy.local import sample_sequences, top_p_filter  # noqa: E402
from metaclaw_mcp.training.render import load_tokenizer  # noqa: E402
from mcp_servers import call, served, turn_row  # noqa: E402
from tiny_models import make_tiny_llama  # noqa: E402

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    return load_tokenizer(str(tiny_model))


def local_env(model: Path, **extra: str) -> dict[str, str]:
    return {"METACLAW_BACKEND": "local", "METACLAW_LOCAL_MODEL_PATH": str(model), "METACLAW_LOAD_STARTER_SKILLS": "false",
            "METACLAW_RETRIEVAL_MODE": "lexical", "METACLAW_LORA_RANK": "4", **extra}


def chat(**kw) -> dict:
    return {"model": "metaclaw", "messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 8, **kw}


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model):
    home = tmp_path_factory.mktemp("policy") / "home"
    home.mkdir()
    with served(home, "http", **local_env(tiny_model)) as (port, _):
        yield home, f"http://127.0.0.1:{port}"


async def test_models_lists_the_served_policy(server, tiny_model):
    _, base = server
    async with httpx.AsyncClient(base_url=base, timeout=120) as h:
        r = await h.get("/v1/models")
    assert r.status_code == 200
    (model,) = r.json()["data"]
    assert model["id"] == "metaclaw" and model["root"] == tiny_model.name
    assert model["metaclaw"] == {"backend": "local", "checkpoint": f"base:{tiny_model.name}"}


async def test_each_choice_is_a_turn_with_tokens_logprobs_and_the_returned_text(server, tokenizer, tiny_model):
    home, base = server
    async with httpx.AsyncClient(base_url=base, timeout=120) as h:
        r = await h.post("/v1/chat/completions", json=chat(n=3, seed=7, user="alice"))
        again = await h.post("/v1/chat/completions", json=chat(n=3, seed=7, user="alice"))
    assert r.status_code == 200, r.text
    body = r.json()
    texts = [c["message"]["content"] for c in body["choices"]]
    assert [c["index"] for c in body["choices"]] == [0, 1, 2] and all(c["finish_reason"] in ("stop", "length")
                                                                     for c in body["choices"])
    assert [c["message"]["content"] for c in again.json()["choices"]] == texts   # the seed repeats the draws
    ids = body["metaclaw"]["turn_ids"]
    assert len(ids) == 3 and r.headers["x-metaclaw-turn-ids"].split(",") == ids
    assert body["metaclaw"]["checkpoint"] == f"base:{tiny_model.name}"
    prompts = set()
    completion_tokens = 0
    for turn_id, text in zip(ids, texts):
        row = turn_row(home, turn_id)
        prompt, completion, logprobs = (json.loads(row[c]) for c in ("prompt_ids", "completion_ids", "logprobs"))
        assert len(completion) == len(logprobs) > 0 and all(lp <= 0 for lp in logprobs)
        assert tokenizer.decode(completion, skip_special_tokens=True) == text == row["response"]
        assert row["session_id"] == "alice" and json.loads(row["messages"])[-1]["content"] == "Name a colour."
        prompts.add(tuple(prompt))
        completion_tokens += len(completion)
    assert len(prompts) == 1   # the n samples of one request share their prompt: one group for centring
    assert body["usage"]["completion_tokens"] == completion_tokens
    assert body["usage"]["prompt_tokens"] == len(next(iter(prompts)))


async def test_streaming_sends_deltas_then_the_turns_then_done(server):
    home, base = server
    async with httpx.AsyncClient(base_url=base, timeout=120) as h:
        r = await h.post("/v1/chat/completions", json=chat(n=2, stream=True, seed=3))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = [line[len("data: "):] for line in r.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    streamed = ["", ""]
    for c in chunks:
        for choice in c["choices"]:
            streamed[choice["index"]] += choice["delta"].get("content", "")
    final = chunks[-1]
    assert [c["finish_reason"] for c in final["choices"]] in (["length", "length"], ["stop", "length"],
                                                              ["length", "stop"], ["stop", "stop"])
    ids = final["metaclaw"]["turn_ids"]
    assert [turn_row(home, t)["response"] for t in ids] == streamed


async def test_anthropic_messages_in_both_shapes(server):
    home, base = server
    req = {"model": "claude-any", "max_tokens": 6, "system": "Be brief.",
           "messages": [{"role": "user", "content": [{"type": "text", "text": "Hello"}]}]}
    async with httpx.AsyncClient(base_url=base, timeout=120) as h:
        r = await h.post("/v1/messages", json=req)
        s = await h.post("/v1/messages", json={**req, "stream": True})
        bad = await h.post("/v1/messages", json={"messages": req["messages"]})   # no max_tokens
    body = r.json()
    assert r.status_code == 200 and body["type"] == "message" and body["content"][0]["type"] == "text"
    assert body["stop_reason"] in ("end_turn", "max_tokens") and body["usage"]["output_tokens"] > 0
    assert turn_row(home, body["metaclaw"]["turn_ids"][0])["response"] == body["content"][0]["text"]
    kinds = [line[len("event: "):] for line in s.text.splitlines() if line.startswith("event: ")]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop" and "content_block_delta" in kinds
    assert bad.status_code == 400 and bad.json()["type"] == "error"
    assert "max_tokens" in bad.json()["error"]["message"]


@pytest.mark.parametrize("body, content_type, where", [
    ({"model": "metaclaw"}, "application/json", "messages"),
    (chat(n=True), "application/json", "n"),
    (chat(temperature="hot"), "application/json", "temperature"),
    (chat(n=99), "application/json", "policy_max_n"),
    (chat(max_tokens=10**6), "application/json", "policy_max_tokens"),
    (chat(messages=[{"role": "wizard", "content": "hi"}]), "application/json", "messages.0.role"),
    ("{not json", "application/json", "not JSON"),
    ([1, 2], "application/json", "JSON object"),
    (chat(), "text/plain", "Content-Type"),
])
async def test_bad_requests_get_an_openai_error_body(server, body, content_type, where):
    _, base = server
    data = body if isinstance(body, str) else json.dumps(body)
    async with httpx.AsyncClient(base_url=base, timeout=60) as h:
        r = await h.post("/v1/chat/completions", content=data, headers={"content-type": content_type})
    assert 400 <= r.status_code < 500
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and where in err["message"] and "\n" not in err["message"]


async def test_feedback_and_rate_turn_rate_the_endpoints_turns(server):
    _, base = server
    async with httpx.AsyncClient(base_url=base, timeout=120) as h:
        ids = (await h.post("/v1/chat/completions", json=chat(n=2))).json()["metaclaw"]["turn_ids"]
        fb = await h.post("/v1/feedback", json={"turn_id": ids[0], "score": 1.0, "feedback": "good"})
        missing = await h.post("/v1/feedback", json={"turn_id": "t-nope", "score": 1.0})
        strict = await h.post("/v1/feedback", json={"turn_id": ids[0], "score": True})
    assert fb.status_code == 200 and fb.json()["queued_for_training"] is True
    assert fb.json()["training"].startswith("queued for RL")
    assert missing.status_code == 404 and "no turn" in missing.json()["error"]["message"]
    assert strict.status_code == 400
    async with Client(f"{base}/mcp", read_timeout_seconds=60) as c:
        err, out = await call(c, "rate_turn", {"turn_id": ids[1], "score": -1.0, "source": "env"})
    assert not err and out["queued_for_training"] is True   # an RL turn rated -1 still teaches


async def test_v1_needs_the_bearer_token_and_keeps_to_the_tokens_namespaces(tmp_path, tiny_model):
    home = tmp_path / "home"
    home.mkdir()
    tokens = tmp_path / "tokens.toml"
    from metaclaw_mcp.access import token_entry
    tokens.write_text(token_entry("team", "tok-team-0123456789abcdef", ["team"], "agent"))
    with served(home, "http", "--tokens-file", str(tokens), **local_env(tiny_model)) as (port, _):
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=120) as h:
            anon = await h.post("/v1/chat/completions", json=chat())
            auth = {"Authorization": "Bearer tok-team-0123456789abcdef"}
            ok = await h.post("/v1/chat/completions", json=chat(), headers={**auth, "X-MetaClaw-Namespace": "team"})
            other = await h.post("/v1/chat/completions", json=chat(),
                                 headers={**auth, "X-MetaClaw-Namespace": "default"})
    assert anon.status_code == 401 and anon.json()["error"]["type"] == "authentication_error"
    assert ok.status_code == 200 and turn_row(home, ok.json()["metaclaw"]["turn_ids"][0])["namespace"] == "team"
    assert other.status_code == 403 and other.json()["error"]["type"] == "permission_error"


def test_sampling_draws_from_the_nucleus_and_reports_the_drawn_tokens_logprobs(tiny_model, tokenizer):
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    assert top_p_filter(probs, 0.7)[0].tolist() == pytest.approx([0.5 / 0.8, 0.3 / 0.8, 0.0, 0.0])
    from metaclaw_mcp.training.local_backend import load_base_model
    model = load_base_model(str(tiny_model)).eval()
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True)
    prompt = list(prompt["input_ids"] if not isinstance(prompt, list) else prompt)
    (seq,) = sample_sequences(model, tokenizer, prompt, SamplingRequest(n=1, max_tokens=6, temperature=0.7, seed=1),
                              set())
    with torch.no_grad():   # the logprob of each drawn token under softmax(logits / T), recomputed in one pass
        logits = model(input_ids=torch.tensor([prompt + seq.tokens])).logits[0, len(prompt) - 1:-1].float()
    expected = torch.log_softmax(logits / 0.7, -1).gather(-1, torch.tensor(seq.tokens)[:, None])[:, 0]
    assert seq.logprobs == pytest.approx(expected.tolist(), abs=1e-4)
    assert seq.finish_reason == "length" and len(seq.tokens) == 6
    stop_text = seq.text[2:4]
    if stop_text.strip():
        (cut,) = sample_sequences(model, tokenizer, prompt, SamplingRequest(n=1, max_tokens=6, temperature=0.7, seed=1,
                                                                            stop=(stop_text,)), set())
        assert cut.finish_reason == "stop" and stop_text not in cut.text and seq.text.startswith(cut.text)


async def test_hot_swap_under_concurrent_requests_attributes_every_answer(tmp_path, tiny_model, tokenizer):
    """Requests keep coming while the trainer saves two sampler checkpoints; none fails, and each greedy answer
    is the one its named checkpoint gives."""
    config = load_config(home=tmp_path / "home", backend="local", local_model_path=str(tiny_model),
                         load_starter_skills=False, retrieval_mode="lexical", lora_rank=4, learning_rate=5e-2,
                         batch_size=2, save_every=1, policy_inject_skills=False)
    async with open_app(config) as app:
        follow_checkpoints(app.trainer, app.policy)
        api = PolicyApi(app)
        answers: list[tuple[str, str]] = []
        failures: list[str] = []
        done = anyio.Event()

        async def client() -> None:
            transport = httpx.ASGITransport(app=api.asgi())
            async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as h:
                while not done.is_set():
                    r = await h.post("/v1/chat/completions", json=chat(temperature=0.0, max_tokens=5))
                    if r.status_code != 200:
                        failures.append(r.text)
                        continue
                    answers.append((r.json()["metaclaw"]["checkpoint"], r.json()["choices"][0]["message"]["content"]))
                    await anyio.sleep(0)

        async def train_twice() -> None:
            prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Name a colour."}],
                                                   add_generation_prompt=True)
            prompt = list(prompt["input_ids"] if not isinstance(prompt, list) else prompt)
            for step in range(2):
                for reward, completion in ((1.0, [300, 301, 302]), (-1.0, [400, 401, 402])):
                    rep = await app.report_turn("s", [Message(role="user", content="Name a colour.")], f"x{step}",
                                                tokens=TokenData(prompt_ids=prompt, completion_ids=completion,
                                                                 logprobs=[-5.0] * 3))
                    await app.rate_turn(rep.turn_id, reward, "env")
                assert await app.trainer.once() is True
                with anyio.fail_after(60):   # the swap is done when once() returns: wait for answers from it
                    while sum(c == app.policy.checkpoint for c, _ in answers) < 2:
                        await anyio.sleep(0.02)
            done.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(client)
            tg.start_soon(client)
            tg.start_soon(train_twice)
    assert failures == []
    served = {c for c, _ in answers}
    assert len(served) == 3, served   # the base model, then each of the two checkpoints
    from peft import PeftModel

    from metaclaw_mcp.training.local_backend import load_base_model
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Name a colour."}], add_generation_prompt=True)
    prompt = list(prompt["input_ids"] if not isinstance(prompt, list) else prompt)
    for checkpoint in served:   # each checkpoint's own greedy answer, from its adapter folder
        model = load_base_model(str(tiny_model)).eval()
        if not checkpoint.startswith("base:"):
            model = PeftModel.from_pretrained(model, checkpoint).eval()
        (seq,) = sample_sequences(model, tokenizer, prompt, SamplingRequest(n=1, max_tokens=5, temperature=0.0),
                                  eos_ids(tokenizer))
        assert {text for c, text in answers if c == checkpoint} == {seq.text}, checkpoint


# ---- the Tinker policy, against the stand-in service ----

class SamplingStandIn:
    """Stand-in for tinker.ServiceClient (training from tests/test_tinker_backend.py) that also creates
    sampling clients; each samples `num_samples` sequences (SDK `SampleResponse`/`SampledSequence`) that
    spell out which weights answered."""

    def __init__(self, tokenizer):
        from test_tinker_backend import StandInService
        self.training = StandInService()
        self.tokenizer = tokenizer
        self.created: list[str] = []
        self.log = self.training.log

    def __getattr__(self, name):   # training calls go to the training stand-in
        return getattr(self.training, name)

    def create_sampling_client(self, model_path: str | None = None, base_model: str | None = None, **_):
        from test_tinker_backend import RecordingFuture
        self.created.append(model_path or f"base:{base_model}")
        return RecordingFuture(self.log, "create_sampling_client", SamplingClientStandIn(self, model_path or "base"))


class SamplingClientStandIn:
    def __init__(self, service: SamplingStandIn, weights: str):
        self.service, self.weights = service, weights

    def sample(self, prompt, num_samples: int, sampling_params):
        import numpy as np
        import tinker
        from tinker.types import SampledSequence, SampleResponse

        from test_tinker_backend import RecordingFuture
        assert isinstance(prompt, tinker.ModelInput) and isinstance(sampling_params, tinker.SamplingParams)
        tok = self.service.tokenizer
        seqs = []
        for i in range(num_samples):
            ids = tok.encode(f"answer {i} from {self.weights.rsplit('/', 1)[-1]}", add_special_tokens=False)
            ids.append(tok.eos_token_id)
            seqs.append(SampledSequence(stop_reason="stop", sequence_id=f"s{i}", tokens_np=np.asarray(ids, dtype=np.int32),
                                        logprobs_np=np.full(len(ids), -0.25, dtype=np.float32)))
        return RecordingFuture(self.service.log, "sample", SampleResponse(sequences=seqs))


async def test_tinker_policy_serves_the_base_model_then_each_new_sampler_checkpoint(tmp_path):
    from metaclaw_mcp.policy.tinker_policy import TinkerPolicy
    from metaclaw_mcp.training import Trainer
    from metaclaw_mcp.training.tinker_backend import TinkerBackend
    from tiny_models import TOKENIZER_DIR

    tok = load_tokenizer(str(TOKENIZER_DIR))
    service = SamplingStandIn(tok)
    config = load_config(home=tmp_path / "home", backend="tinker", tinker_api_key="tml-test-key",
                         model_name="Qwen/Qwen3-4B", tokenizer_path=str(TOKENIZER_DIR), load_starter_skills=False,
                         retrieval_mode="lexical", batch_size=2, save_every=1)
    async with open_app(config) as app:
        trainer = Trainer(app.db, config, TinkerBackend(config, service_factory=lambda: service))
        policy = TinkerPolicy(config, app.db, service=service)
        follow_checkpoints(trainer, policy)
        transport = httpx.ASGITransport(app=PolicyApi(app, policy=policy).asgi())
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as h:
            first = (await h.post("/v1/chat/completions", json=chat(n=2))).json()
            assert [c["message"]["content"] for c in first["choices"]] == ["answer 0 from base", "answer 1 from base"]
            assert first["metaclaw"]["checkpoint"] == "base:Qwen/Qwen3-4B"
            for turn_id in first["metaclaw"]["turn_ids"]:
                turn = await app.turns.get(turn_id)
                assert turn["logprobs"] == [-0.25] * len(turn["completion_ids"])
                assert tok.decode(turn["completion_ids"], skip_special_tokens=True) == turn["response"]
            for turn_id, score in zip(first["metaclaw"]["turn_ids"], (1.0, -1.0)):
                await app.rate_turn(turn_id, score, "env")
            assert await trainer.once() is True
            after = (await h.post("/v1/chat/completions", json=chat(n=1))).json()
    path = "tinker://run-1/sampler_weights/step-000001"
    assert service.created == ["base:Qwen/Qwen3-4B", path]
    assert after["metaclaw"]["checkpoint"] == path
    assert after["choices"][0]["message"]["content"] == "answer 0 from step-000001"
    assert len(service.training.trained_batches) == 1 and len(service.training.trained_batches[0]) == 2


# ---- no network, and no waiting on it ----

async def test_an_unknown_tokenizer_fails_at_once_offline_and_says_why(tmp_path):
    import time

    import transformers  # noqa: F401  (imported first: the figure is the look-up, not the import)
    config = load_config(home=tmp_path / "home", backend="tinker", tinker_api_key="tml-test-key",
                         model_name="nobody/no-such-model", load_starter_skills=False, retrieval_mode="lexical",
                         batch_size=1)
    async with open_app(config) as app:
        rep = await app.report_turn("s", [Message(role="user", content="hi")], "hello")
        rated = await app.rate_turn(rep.turn_id, 1.0)
        assert rated.training.startswith("queued for distillation")
        t0 = time.perf_counter()
        assert await app.trainer.once() is False     # a Tinker step needs tokens: the turn waits
        assert time.perf_counter() - t0 < 1.0
        status = await app.trainer.status()
        assert "nobody/no-such-model" in status["distillation"] and "allow_downloads" in status["distillation"]
        assert status["last_error"] == status["distillation"]
        assert (await app.turns.get(rep.turn_id))["train_state"] == "rated"


def test_a_stdio_server_exits_within_2s_of_stdin_closing_during_a_tokenizer_download(tmp_path):
    """With downloads allowed, the tokenizer look-up hangs on a hub that never answers (a local socket that
    accepts and stays silent); closing stdin still ends the server within 2 s."""
    import socket
    import subprocess
    import time

    from mcp_servers import CLI, server_env

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    home = tmp_path / "home"
    env = server_env(home, METACLAW_ALLOW_DOWNLOADS="true", METACLAW_MODEL_NAME="nobody/slow-model",
                     METACLAW_RETRIEVAL_MODE="lexical", METACLAW_MIN_BATCH_SIZE="1",
                     METACLAW_BATCH_MAX_WAIT_SECONDS="0", METACLAW_TRAIN_POLL_SECONDS="0.2",
                     HF_ENDPOINT=f"http://127.0.0.1:{silent.getsockname()[1]}", HF_HUB_OFFLINE="0")
    proc = subprocess.Popen([CLI, "serve"], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    try:
        def send(msg: dict) -> dict:
            proc.stdin.write((json.dumps(msg) + "\n").encode())
            proc.stdin.flush()
            return json.loads(proc.stdout.readline())
        send({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})
        proc.stdin.write(b'{"jsonrpc": "2.0", "method": "notifications/initialized"}\n')
        reply = send({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "report_turn", "arguments": {
            "session_id": "s", "messages": [{"role": "user", "content": "hi"}], "response": "hello"}}})
        turn_id = reply["result"]["structuredContent"]["turn_id"]
        send({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "rate_turn", "arguments": {
            "turn_id": turn_id, "score": 1.0}}})
        silent.settimeout(30)
        conn, _ = silent.accept()    # the trainer is now waiting on the hub
        t0 = time.perf_counter()
        proc.stdin.close()
        proc.wait(10)
        took = time.perf_counter() - t0
        conn.close()
    finally:
        if proc.poll() is None:
            proc.kill()
        silent.close()
    assert proc.returncode == 0 and took < 2.0, (proc.returncode, took)


def test_tool_calls_in_the_sampled_text_come_back_as_openai_tool_calls():
    from metaclaw_mcp.policy.api import tool_calls_in
    text, calls = tool_calls_in('Checking.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>')
    assert text == "Checking." and len(calls) == 1
    assert calls[0]["type"] == "function" and calls[0]["function"] == {"name": "get_weather",
                                                                      "arguments": '{"city": "Oslo"}'}
    assert tool_calls_in("<tool_call>not json</tool_call>") == ("<tool_call>not json</tool_call>", [])
    assert tool_calls_in("plain answer") == ("plain answer", [])
