"""Rated turns to `tinker.Datum`s: pure functions, no I/O.

Shapes use suffixes: `_G` one value per turn of a group, `_N` one per position of the
shifted sequence (N = prompt + completion tokens - 1), `_C` one per completion token.

RL layout (importance_sampling / ppo / cispo), for tokens t_0 .. t_{P+C-1}:
    model_input   = t_0 .. t_{N-1}            (N = P + C - 1)
    target_tokens = t_1 .. t_N                (what each position predicts)
    logprobs_N    = 0 for targets in the prompt, the sampler's logprob for completion targets
    advantages_N  = 0 for targets in the prompt, the turn's advantage for completion targets
So position i < P - 1 predicts a prompt token (masked), and P - 1 <= i < N a completion token.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import tinker

from ..models import MAX_TOKEN_ID

RL_LOSSES = ("importance_sampling", "ppo", "cispo")
# The keys each loss accepts; anything else raises client-side, so nothing else is ever sent.
LOSS_KEYS = {
    "importance_sampling": ("target_tokens", "logprobs", "advantages"),
    "ppo": ("target_tokens", "logprobs", "advantages"),
    "cispo": ("target_tokens", "logprobs", "advantages"),
    "cross_entropy": ("target_tokens", "weights"),
}


# Token ids are integers in [0, TOKEN_ID_LIMIT): the bound report_turn accepts (models.MAX_TOKEN_ID),
# checked again here because rows stored before that bound existed may hold any integer.
TOKEN_ID_LIMIT = MAX_TOKEN_ID + 1


class DatumError(ValueError):
    """A turn cannot become a datum (the message says why); the trainer skips it with that reason."""


def _shown(value: Any) -> str:
    """A short repr: an integer too long to print is described by its size instead."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"an integer of {value.bit_length()} bits"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_token_ids(value: Any, field: str) -> list[int]:
    """`value` as a non-empty list of token ids, each an int in [0, TOKEN_ID_LIMIT).

    Raises DatumError naming the field and the first bad position, e.g. "prompt_ids[1] = ...".
    """
    if not isinstance(value, list) or not value:
        raise DatumError(f"{field} is {_shown(value)}, not a non-empty list of token ids")
    for i, v in enumerate(value):
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < TOKEN_ID_LIMIT:
            raise DatumError(f"{field}[{i}] = {_shown(v)} is not a token id (an integer in [0, {TOKEN_ID_LIMIT}))")
    return value


def check_rl_inputs(prompt_ids: Any, completion_ids: Any, logprobs_C: Any, reward: Any) -> None:
    """Raise DatumError unless these are what an RL turn holds: token ids, one finite logprob per
    completion token (or None), and a finite reward. Stored rows are checked with it before grouping,
    so a turn that cannot be trained never shifts the advantages of the turns beside it."""
    check_token_ids(prompt_ids, "prompt_ids")
    check_token_ids(completion_ids, "completion_ids")
    if logprobs_C is not None:
        if not isinstance(logprobs_C, list) or len(logprobs_C) != len(completion_ids):
            raise DatumError(f"logprobs is {_shown(logprobs_C)}, not one value per completion token "
                             f"({len(completion_ids)})")
        for i, v in enumerate(logprobs_C):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise DatumError(f"logprobs[{i}] = {_shown(v)} is not a finite log-probability")
    if isinstance(reward, bool) or not isinstance(reward, (int, float)) or not math.isfinite(reward):
        raise DatumError(f"reward {_shown(reward)} is not a finite number")


@dataclass(frozen=True)
class RLSample:
    """One rated turn with the sampler's tokens."""
    turn_id: str
    prompt_ids: Sequence[int]
    completion_ids: Sequence[int]
    logprobs_C: Sequence[float]
    reward: float


def centred_advantages(rewards_G: Sequence[float]) -> np.ndarray:
    """reward - mean(reward) within a group (no std division); float64, shape (G,)."""
    r = np.asarray(rewards_G, dtype=np.float64)
    if r.size == 0:
        return r
    if not np.all(np.isfinite(r)):
        raise DatumError("a reward is not finite")
    return r - r.mean()


def truncate_left(prompt_ids: Sequence[int], completion_ids: Sequence[int], max_seq_len: int) -> list[int]:
    """The prompt cut from the left so prompt + completion fit `max_seq_len`; the completion is never cut."""
    if len(completion_ids) + 1 > max_seq_len:
        raise DatumError(f"completion has {len(completion_ids)} tokens; with one prompt token that exceeds "
                         f"max_seq_len={max_seq_len}")
    keep = max_seq_len - len(completion_ids)
    return list(prompt_ids[-keep:]) if len(prompt_ids) > keep else list(prompt_ids)


def rl_datum(sample: RLSample, advantage: float | Sequence[float], max_seq_len: int) -> tinker.Datum:
    """One RL datum with target_tokens (int64), logprobs and advantages (float32), all of length N.
    `advantage`: one value for every completion token, or one per completion token (shape (C,),
    as on-policy distillation gives).

    Raises DatumError when the sample cannot be one (an id outside [0, TOKEN_ID_LIMIT), lengths
    that disagree, a value that is not finite, a completion longer than `max_seq_len` - 1).
    """
    if not sample.completion_ids:
        raise DatumError("no completion tokens")
    check_token_ids(list(sample.prompt_ids), "prompt_ids")
    check_token_ids(list(sample.completion_ids), "completion_ids")
    if len(sample.logprobs_C) != len(sample.completion_ids):
        raise DatumError(f"{len(sample.logprobs_C)} logprobs for {len(sample.completion_ids)} completion tokens")
    advantage_C = np.broadcast_to(np.asarray(advantage, dtype=np.float64), (len(sample.completion_ids),)) \
        if np.ndim(advantage) == 0 or len(advantage) == len(sample.completion_ids) else None  # type: ignore[arg-type]
    if advantage_C is None:
        raise DatumError(f"{len(advantage)} advantages for {len(sample.completion_ids)} completion tokens")  # type: ignore[arg-type]
    if not np.all(np.isfinite(advantage_C)):
        raise DatumError(f"an advantage is not finite ({_shown(advantage)})")
    prompt = truncate_left(sample.prompt_ids, sample.completion_ids, max_seq_len)
    if not prompt:
        raise DatumError("no prompt tokens")
    tokens = np.asarray([*prompt, *sample.completion_ids], dtype=np.int64)
    n = len(tokens) - 1
    first = len(prompt) - 1  # index in the shifted arrays of the first completion target
    logprobs_N = np.zeros(n, dtype=np.float32)
    logprobs_N[first:] = np.asarray(sample.logprobs_C, dtype=np.float32)
    if not np.all(np.isfinite(logprobs_N)):
        raise DatumError("a logprob is not finite")
    advantages_N = np.zeros(n, dtype=np.float32)
    advantages_N[first:] = advantage_C.astype(np.float32)
    return tinker.Datum(
        model_input=tinker.ModelInput.from_ints(tokens[:-1].tolist()),
        loss_fn_inputs={"target_tokens": tinker.TensorData.from_numpy(tokens[1:]),
                        "logprobs": tinker.TensorData.from_numpy(logprobs_N),
                        "advantages": tinker.TensorData.from_numpy(advantages_N)})


def sft_datum(tokens: Sequence[int], weights: Sequence[float], max_seq_len: int) -> tinker.Datum:
    """A cross_entropy datum from a rendered conversation and per-token weights (1 on trained tokens).

    `weights[i]` says whether token i is trained; after the shift, weights_N[i] = weights[i + 1].
    Over-long sequences lose tokens from the left, never a weighted one.
    """
    if len(tokens) != len(weights):
        raise DatumError(f"{len(tokens)} tokens but {len(weights)} weights")
    w = np.asarray(weights, dtype=np.float32)
    if not np.any(w > 0):
        raise DatumError("no token is weighted")
    first_trained = int(np.argmax(w > 0))
    if len(tokens) > max_seq_len:
        cut = len(tokens) - max_seq_len
        if cut >= first_trained:
            raise DatumError(f"the trained tokens alone exceed max_seq_len={max_seq_len}")
        tokens, w = list(tokens)[cut:], w[cut:]
    t = np.asarray(tokens, dtype=np.int64)
    return tinker.Datum(model_input=tinker.ModelInput.from_ints(t[:-1].tolist()),
                        loss_fn_inputs={"target_tokens": tinker.TensorData.from_numpy(t[1:]),
                                        "weights": tinker.TensorData.from_numpy(w[1:])})


def loss_from_logprobs(datum: tinker.Datum, logprobs_N: Sequence[float], loss_fn: str,
                       loss_fn_config: dict[str, float] | None = None) -> float:
    """One datum's loss, summed over its N positions, from the trained model's logprobs of its targets
    (what `forward_backward` returns per datum as `loss_fn_outputs[i]["logprobs"]`) and the datum's own
    inputs, as Tinker defines each loss: cross_entropy -sum(w * lp); importance_sampling
    -sum(r * A) with r = exp(lp - sampler lp); ppo -sum(min(r * A, clip(r) * A)); cispo
    -sum(clip(r) * A * lp). The same formulas as the local backend's torch ones, without gradients:
    for servers whose metrics carry no `loss:sum`. DatumError for a length that disagrees."""
    lp = np.asarray(logprobs_N, dtype=np.float64)
    inputs = {k: np.asarray(v.data, dtype=np.float64) for k, v in datum.loss_fn_inputs.items() if k != "target_tokens"}
    if any(len(v) != len(lp) for v in inputs.values()):
        raise DatumError(f"{len(lp)} logprobs for a datum of {datum.model_input.length} positions")
    if loss_fn == "cross_entropy":
        return float(-(inputs["weights"] * lp).sum())
    adv, old = inputs["advantages"], inputs["logprobs"]
    ratio = np.exp((lp - old) * (adv != 0))   # prompt positions carry no advantage and no sampler logprob
    if loss_fn == "importance_sampling":
        return float(-(ratio * adv).sum())
    low, high = (loss_fn_config or {}).get("clip_low_threshold", 0.8), (loss_fn_config or {}).get("clip_high_threshold", 1.2)
    clipped = np.clip(ratio, low, high)
    if loss_fn == "ppo":
        return float(-np.minimum(ratio * adv, clipped * adv).sum())
    if loss_fn == "cispo":
        return float(-(clipped * adv * lp).sum())
    raise DatumError(f"unknown loss_fn {loss_fn!r}")


def datum_to_json(datum: tinker.Datum, loss_fn: str) -> dict:
    """The export format: {"loss_fn", "model_input": [ids], "loss_fn_inputs": {key: [values]}}."""
    return {"loss_fn": loss_fn, "model_input": datum.model_input.to_ints(),
            "loss_fn_inputs": {k: v.data for k, v in datum.loss_fn_inputs.items()}}


def check_keys(datum: tinker.Datum, loss_fn: str) -> None:
    """Raise DatumError unless the datum carries exactly the keys `loss_fn` accepts, all of length N."""
    want = set(LOSS_KEYS[loss_fn])
    have = set(datum.loss_fn_inputs)
    if have != want:
        raise DatumError(f"{loss_fn} takes {sorted(want)}, the datum has {sorted(have)}")
    n = datum.model_input.length
    for key, tensor in datum.loss_fn_inputs.items():
        if len(tensor.data) != n:
            raise DatumError(f"{key} has {len(tensor.data)} values for {n} input tokens")
