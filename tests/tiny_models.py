"""A tiny randomly initialised Llama that uses SmolLM2's real tokenizer, saved like any local model folder."""
from __future__ import annotations

from pathlib import Path

TOKENIZER_DIR = Path(__file__).parent / "data" / "smollm2-tokenizer"


def make_tiny_llama(folder: Path, hidden: int = 32) -> Path:
    import torch
    import transformers

    from metaclaw_mcp.training.render import load_tokenizer

    tok = load_tokenizer(str(TOKENIZER_DIR))
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                                   num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                   max_position_embeddings=256, tie_word_embeddings=True)
    transformers.LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
