"""The local backend: real LoRA steps with torch + peft on a tiny randomly initialised Llama that uses
SmolLM2's real tokenizer, through the same datums and trainer as every backend."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

from metaclaw_mcp.app import open_app  # noqa: E402
from metaclaw_mcp.config import load_config  # noqa: E402
from metaclaw_mcp.models import Message, TokenData  # noqa: E402
from metaclaw_mcp.training.datums import RLSample, rl_datum, sft_datum  # noqa: E402
from metaclaw_mcp.training.local_backend import LocalBackend, datum_loss, token_logprobs  # noqa: E402
from metaclaw_mcp.training.render import load_tokenizer, render_sft  # noqa: E402
from tiny_models import make_tiny_llama  # noqa: E402


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


def config_for(tmp_path, model_dir: Path, **kw):
    return load_config(home=tmp_path / "home", backend="local", local_model_path=str(model_dir),
                       tokenizer_path=str(model_dir), load_starter_skills=False, lora_rank=4, learning_rate=kw.pop("learning_rate", 1e-2), **kw)


def test_losses_match_their_definitions():
    logp = torch.tensor([-9.0, -1.0, -2.0])
    d = rl_datum(RLSample("t", [1, 2], [3, 4], [-1.5, -2.0], 1.0), 0.5, 64)
    ratio = torch.exp(torch.tensor([0.0, 0.5, 0.0]))
    assert datum_loss(logp, d, "importance_sampling", None).item() == pytest.approx(-(0.5 * (ratio[1] + 1.0)).item())
    ppo = datum_loss(logp, d, "ppo", {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2}).item()
    assert ppo == pytest.approx(-(0.5 * 1.2 + 0.5 * 1.0))  # the ratio exp(0.5) is clipped at 1.2 for a positive advantage
    sft = sft_datum([1, 2, 3, 4], [0, 0, 1, 1], 64)
    assert datum_loss(logp, sft, "cross_entropy", None).item() == pytest.approx(3.0)


def test_cross_entropy_steps_lower_the_loss_and_save_peft_adapters(tmp_path, tiny_model_dir):
    config = config_for(tmp_path, tiny_model_dir, save_every=2)
    tok = load_tokenizer(str(tiny_model_dir))
    tokens, weights = render_sft(tok, [{"role": "user", "content": "Say the magic word."}], "Abracadabra!")
    datum = sft_datum(tokens, weights, 256)
    backend = LocalBackend(config)
    losses = [backend._train_sync(step, [datum], "cross_entropy", None).loss for step in range(1, 7)]
    assert all(b < a for a, b in zip(losses, losses[1:])), losses  # every step lowers the loss
    assert losses[0] - losses[-1] > 1.0, losses
    adapter = config.home / "adapters" / "step-000006"
    assert (adapter / "adapter_config.json").exists() and (adapter / "optimizer.pt").exists()
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 4


def test_rl_step_raises_the_logprob_of_a_rewarded_completion(tmp_path, tiny_model_dir):
    config = config_for(tmp_path, tiny_model_dir)
    backend = LocalBackend(config)
    backend._load()
    prompt, good, bad = [1, 4093, 198, 6004, 2], [3511, 308, 2], [9690, 7018, 2]
    with torch.no_grad():
        old_good = token_logprobs(backend.model, rl_datum(RLSample("g", prompt, good, [0.0] * 3, 1), 1.0, 64))[-3:]
        old_bad = token_logprobs(backend.model, rl_datum(RLSample("b", prompt, bad, [0.0] * 3, 0), 1.0, 64))[-3:]
    datums = [rl_datum(RLSample("g", prompt, good, old_good.tolist(), 1.0), 0.5, 64),
              rl_datum(RLSample("b", prompt, bad, old_bad.tolist(), 0.0), -0.5, 64)]
    for step in range(1, 4):
        backend._train_sync(step, datums, "importance_sampling", None)
    with torch.no_grad():
        new_good = token_logprobs(backend.model, datums[0])[-3:]
        new_bad = token_logprobs(backend.model, datums[1])[-3:]
    assert new_good.sum() > old_good.sum() and new_bad.sum() < old_bad.sum()


@pytest.mark.anyio
async def test_the_trainer_drives_the_local_backend_and_resumes_from_its_adapter(tmp_path, tiny_model_dir):
    config = config_for(tmp_path, tiny_model_dir, batch_size=2)
    async with open_app(config) as app:
        for r in (1.0, -1.0):
            rep = await app.report_turn("s", [Message(role="user", content="hi")], "x",
                                        tokens=TokenData(prompt_ids=[1, 2, 3], completion_ids=[5, 6], logprobs=[-3.0, -3.0]))
            await app.rate_turn(rep.turn_id, r, "env")
        assert await app.trainer.once() is True
        step = await app.db.fetchone("SELECT step, loss FROM train_steps")
        ckpt = await app.db.fetchone("SELECT kind, path, backend FROM checkpoints WHERE kind = 'state'")
    assert step["step"] == 1 and step["loss"] is not None
    assert ckpt["backend"] == "local" and Path(ckpt["path"], "adapter_model.safetensors").exists()
    resumed = LocalBackend(config)
    await resumed.restore(ckpt["path"])
    resumed._load()
    assert any("lora" in n for n, p in resumed.model.named_parameters() if p.requires_grad)


@pytest.mark.parametrize("loss_fn", ["importance_sampling", "ppo", "cispo", "cross_entropy"])
def test_the_loss_computed_from_a_servers_logprobs_matches_the_trained_loss(loss_fn):
    """Without loss:sum from the server, the Tinker backend sums the loss itself (numpy); it must be the loss
    the local backend trains (torch), for every loss."""
    from metaclaw_mcp.training.datums import loss_from_logprobs
    gen = torch.Generator().manual_seed(4)
    if loss_fn == "cross_entropy":
        datum = sft_datum([1, 2, 3, 4, 5, 6], [0, 0, 1, 1, 1, 0], 64)
    else:
        datum = rl_datum(RLSample("t", [1, 2, 3], [4, 5, 6, 7], [-0.3, -1.2, -0.05, -2.0], 1.0),
                         [0.7, -0.4, 1.3, 0.2], 64)
    logp = -torch.rand(datum.model_input.length, generator=gen) * 3
    cfg = {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2}
    assert loss_from_logprobs(datum, logp.tolist(), loss_fn, cfg) == pytest.approx(
        datum_loss(logp, datum, loss_fn, cfg).item(), rel=1e-5, abs=1e-6)
