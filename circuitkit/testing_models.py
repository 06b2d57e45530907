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
    device: str = "cpu",
    **config: Any,
) -> CircuitModel:
    """A randomly initialised GPT-2-architecture model wrapped for circuitkit, on ``device`` (``"cpu"``,
    ``"auto"``, ``"cuda"``...). Up to 64 positions unless ``n_positions`` is given.

    Biases are randomised too (Hugging Face initialises them to zero), so tests exercise them.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = tokenizer or gpt2_tokenizer()
    torch.manual_seed(seed)
    cfg = GPT2Config(n_layer=n_layers, n_head=n_heads, n_embd=d_model, vocab_size=len(tok), **{"n_positions": 64, **config})
    model: Any = GPT2LMHeadModel(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.02)
    model = model.to(dtype)
    if save_to is not None:
        model.save_pretrained(str(save_to))
        tok.save_pretrained(str(save_to))
    return bridge_model(model, tok, name="tiny-gpt2", device=device)


def tiny_llama(
    n_layers: int = 2,
    n_heads: int = 4,
    n_kv_heads: int = 2,
    d_model: int = 32,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    tokenizer: Any = None,
    save_to: str | Path | None = None,
    init_std: float = 0.1,
    intermediate_size: int | None = None,
    device: str = "cpu",
    **config: Any,
) -> CircuitModel:
    """A randomly initialised Llama-architecture model (grouped-query attention: ``n_heads`` query heads
    share ``n_kv_heads`` key/value heads; RMS norms, rotary positions, gated MLP of width
    ``intermediate_size``, default ``2 * d_model``) wrapped for circuitkit.

    Weights are drawn with standard deviation ``init_std`` (larger than Hugging Face's 0.02, so attention
    patterns are far from uniform at this width) and the norms' scales around 1, so tests exercise them.
    Placed on ``device``; up to 64 positions unless ``max_position_embeddings`` is given.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = tokenizer or gpt2_tokenizer()
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=d_model,
        intermediate_size=intermediate_size or 2 * d_model,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv_heads,
        initializer_range=init_std,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        **{"max_position_embeddings": 64, **config},
    )
    model: Any = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
    model = model.to(dtype)
    if save_to is not None:
        model.save_pretrained(str(save_to))
        tok.save_pretrained(str(save_to))
    return bridge_model(model, tok, name="tiny-llama", device=device)
