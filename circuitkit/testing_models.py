"""Tiny models built from a config, for tests and benchmarks (random weights, no downloads)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from circuitkit.model import ZOO_DIR, CircuitModel, bridge_model

TOKENIZER_DIR = ZOO_DIR / "gpt2-tokenizer"


def gpt2_tokenizer() -> Any:
    """The GPT-2 tokenizer shipped with circuitkit (offline)."""
    from transformers import GPT2Tokenizer

    return GPT2Tokenizer.from_pretrained(str(TOKENIZER_DIR))


def tiny_gpt2(
    n_layers: int = 2,
    n_heads: int = 4,
    d_model: int = 32,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    tokenizer: Any = None,
    save_to: str | Path | None = None,
    **config: Any,
) -> CircuitModel:
    """A randomly initialised GPT-2-architecture model wrapped for circuitkit.

    Biases are randomised too (Hugging Face initialises them to zero), so tests exercise them.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = tokenizer or gpt2_tokenizer()
    torch.manual_seed(seed)
    cfg = GPT2Config(n_layer=n_layers, n_head=n_heads, n_embd=d_model, n_positions=64, vocab_size=len(tok), **config)
    model = GPT2LMHeadModel(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.02)
    model = model.to(dtype)
    if save_to is not None:
        model.save_pretrained(str(save_to))
        tok.save_pretrained(str(save_to))
    return bridge_model(model, tok, name="tiny-gpt2", device="cpu")
