"""Datum-building throughput: rated turns per second turned into `tinker.Datum`s.

RL: turns with sampler tokens (prompt 512, completion 256 tokens), grouped 8 per prompt, through
`plan_rl_batch` (grouping, centred advantages, datums). Distillation: text-only turns rendered with
SmolLM2's real chat template (`render_sft` + `sft_datum`). Prints the median of 5 runs.

    python bench/datums.py
"""
from __future__ import annotations

import random
import statistics
import time
from pathlib import Path

from metaclaw_mcp.training.datums import sft_datum
from metaclaw_mcp.training.render import load_tokenizer, render_sft
from metaclaw_mcp.training.trainer import plan_rl_batch


def rl_turns(n: int, prompt_len: int = 512, completion_len: int = 256, group: int = 8) -> list[dict]:
    rng = random.Random(0)
    prompts = [[rng.randrange(50_000) for _ in range(prompt_len)] for _ in range(n // group)]
    return [{"id": f"t{i}", "namespace": "bench", "prompt_ids": prompts[i // group],
             "completion_ids": [rng.randrange(50_000) for _ in range(completion_len)],
             "logprobs": [-rng.random() for _ in range(completion_len)], "reward": rng.choice([-1.0, 0.0, 1.0])}
            for i in range(n)]


def timed(fn, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    turns = rl_turns(1024)
    rl_s = timed(lambda: plan_rl_batch(turns, {}, 8192))
    tok = load_tokenizer(str(Path(__file__).resolve().parent.parent / "tests" / "data" / "smollm2-tokenizer"))
    rng = random.Random(1)
    words = "the a data test time value file error result model skill user answer".split()
    convs = [([{"role": "system", "content": "You are helpful."},
               {"role": "user", "content": " ".join(rng.choices(words, k=120))}], " ".join(rng.choices(words, k=80)))
             for _ in range(256)]
    sft_s = timed(lambda: [sft_datum(*render_sft(tok, m, r), 8192) for m, r in convs])
    print(f"{'kind':<14} {'turns':>6} {'median s':>9} {'turns/s':>9}")
    print(f"{'rl (768 tok)':<14} {len(turns):>6} {rl_s:>9.3f} {len(turns) / rl_s:>9.0f}")
    print(f"{'distill':<14} {len(convs):>6} {sft_s:>9.3f} {len(convs) / sft_s:>9.0f}")


if __name__ == "__main__":
    main()
