"""Tiny random models of many Hugging Face architecture families, for tests and the architectures table.

Each builder returns ``(hf_model, tokenizer)``: 2 layers, 4 attention heads, d_model 64, the GPT-2
tokenizer shipped with circuitkit, random weights with non-trivial norm scales (``1 + 0.2 N(0, 1)``) and
random biases (Hugging Face initialises both to constants, which would hide mistakes in how they are
handled). Nothing is downloaded.

>>> hf, tok = tiny_family("bloom", dtype=torch.float64)
>>> path = save_family("bloom", "/tmp/bloom")  # save_pretrained of model and tokenizer, for load_model(path)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from circuitkit.testing_models import gpt2_tokenizer

N_LAYERS = 2
N_HEADS = 4
D_MODEL = 64
HEAD_DIM = D_MODEL // N_HEADS
D_MLP = 2 * D_MODEL
N_POSITIONS = 64
#: A sliding attention window shorter than the test prompts (Mistral, Gemma-2, Gemma-3).
WINDOW = 3


def _common(tok: Any) -> dict[str, Any]:
    return {"vocab_size": len(tok), "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id}


def _llama_like(tok: Any, **extra: Any) -> dict[str, Any]:
    return {
        **_common(tok),
        "hidden_size": D_MODEL,
        "intermediate_size": D_MLP,
        "num_hidden_layers": N_LAYERS,
        "num_attention_heads": N_HEADS,
        "max_position_embeddings": N_POSITIONS,
        "initializer_range": 0.1,
        **extra,
    }


def _gpt2(tok: Any) -> Any:
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(
        **_common(tok), n_layer=N_LAYERS, n_head=N_HEADS, n_embd=D_MODEL, n_positions=N_POSITIONS, initializer_range=0.1
    )
    return GPT2LMHeadModel(cfg)


def _neox(parallel: bool) -> Callable[[Any], Any]:
    def build(tok: Any) -> Any:
        from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

        # rotary_pct: a keyword transformers still reads (into rope_parameters), though the signature lacks it
        rotary: dict[str, Any] = {"rotary_pct": 0.5}
        cfg = GPTNeoXConfig(**_llama_like(tok), use_parallel_residual=parallel, tie_word_embeddings=False, **rotary)
        return GPTNeoXForCausalLM(cfg)

    return build


def _llama(tok: Any) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(**_llama_like(tok, num_key_value_heads=2)))


def _smollm(tok: Any) -> Any:
    """SmolLM (v1/v2) is a Llama with tied embeddings."""
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(**_llama_like(tok, num_key_value_heads=2, tie_word_embeddings=True)))


def _mistral(tok: Any) -> Any:
    from transformers import MistralConfig, MistralForCausalLM

    return MistralForCausalLM(MistralConfig(**_llama_like(tok, num_key_value_heads=2, sliding_window=WINDOW)))


def _qwen2(tok: Any) -> Any:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    return Qwen2ForCausalLM(Qwen2Config(**_llama_like(tok, num_key_value_heads=2, tie_word_embeddings=False)))


def _qwen3(tok: Any) -> Any:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    return Qwen3ForCausalLM(Qwen3Config(**_llama_like(tok, num_key_value_heads=2, head_dim=HEAD_DIM, tie_word_embeddings=False)))


def _gemma(tok: Any) -> Any:
    from transformers import GemmaConfig, GemmaForCausalLM

    return GemmaForCausalLM(GemmaConfig(**_llama_like(tok, num_key_value_heads=2, head_dim=HEAD_DIM)))


def _gemma2(tok: Any) -> Any:
    from transformers import Gemma2Config, Gemma2ForCausalLM

    # A small final soft-capping, so that skipping it changes the logits visibly.
    cfg = Gemma2Config(
        **_llama_like(tok, num_key_value_heads=2, head_dim=HEAD_DIM),
        sliding_window=WINDOW,
        final_logit_softcapping=5.0,
        attn_logit_softcapping=20.0,
        query_pre_attn_scalar=HEAD_DIM,
    )
    return Gemma2ForCausalLM(cfg)


def _gemma3(tok: Any) -> Any:
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    cfg = Gemma3TextConfig(
        **_llama_like(tok, num_key_value_heads=2, head_dim=HEAD_DIM),
        sliding_window=WINDOW,
        layer_types=["sliding_attention", "full_attention"],
        final_logit_softcapping=5.0,
        query_pre_attn_scalar=HEAD_DIM,
    )
    return Gemma3ForCausalLM(cfg)


def _olmo(tok: Any) -> Any:
    from transformers import OlmoConfig, OlmoForCausalLM

    return OlmoForCausalLM(OlmoConfig(**_llama_like(tok, tie_word_embeddings=False)))


def _olmo2(tok: Any) -> Any:
    from transformers import Olmo2Config, Olmo2ForCausalLM

    return Olmo2ForCausalLM(Olmo2Config(**_llama_like(tok, tie_word_embeddings=False)))


def _phi(tok: Any) -> Any:
    from transformers import PhiConfig, PhiForCausalLM

    rotary: dict[str, Any] = {"partial_rotary_factor": 0.5}  # read into rope_parameters
    return PhiForCausalLM(PhiConfig(**_llama_like(tok), **rotary))


def _phi3(tok: Any) -> Any:
    from transformers import Phi3Config, Phi3ForCausalLM

    cfg = Phi3Config(**_llama_like(tok, num_key_value_heads=N_HEADS), pad_token_id=tok.eos_token_id)
    return Phi3ForCausalLM(cfg)


def _falcon(tok: Any) -> Any:
    """Falcon-7B's shape: multi-query attention (one key/value head), attention and MLP in parallel."""
    from transformers import FalconConfig, FalconForCausalLM

    cfg = FalconConfig(
        **_common(tok),
        hidden_size=D_MODEL,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=N_HEADS,
        new_decoder_architecture=False,
        multi_query=True,
        parallel_attn=True,
        bias=True,
        alibi=False,
        max_position_embeddings=N_POSITIONS,
        initializer_range=0.1,
    )
    return FalconForCausalLM(cfg)


def _stablelm(tok: Any) -> Any:
    from transformers import StableLmConfig, StableLmForCausalLM

    return StableLmForCausalLM(StableLmConfig(**_llama_like(tok, num_key_value_heads=N_HEADS), use_qkv_bias=True))


def _smollm3(tok: Any) -> Any:
    from transformers import SmolLM3Config, SmolLM3ForCausalLM

    # Rotary positions in layer 0 only (SmolLM3 leaves them out of every fourth layer; here of layer 1).
    cfg = SmolLM3Config(**_llama_like(tok, num_key_value_heads=2), no_rope_layers=[1, 0], pad_token_id=tok.eos_token_id)
    return SmolLM3ForCausalLM(cfg)


def _bloom(tok: Any) -> Any:
    from transformers import BloomConfig, BloomForCausalLM

    cfg = BloomConfig(**_common(tok), hidden_size=D_MODEL, n_layer=N_LAYERS, n_head=N_HEADS, initializer_range=0.1)
    return BloomForCausalLM(cfg)


def _opt(tok: Any) -> Any:
    from transformers import OPTConfig, OPTForCausalLM

    cfg = OPTConfig(
        **_common(tok),
        hidden_size=D_MODEL,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=N_HEADS,
        ffn_dim=D_MLP,
        word_embed_proj_dim=D_MODEL,
        max_position_embeddings=N_POSITIONS,
        init_std=0.1,
        pad_token_id=tok.eos_token_id,
    )
    return OPTForCausalLM(cfg)


def _gptj(tok: Any) -> Any:
    from transformers import GPTJConfig, GPTJForCausalLM

    cfg = GPTJConfig(
        **_common(tok),
        n_embd=D_MODEL,
        n_layer=N_LAYERS,
        n_head=N_HEADS,
        rotary_dim=8,
        n_positions=N_POSITIONS,
        initializer_range=0.1,
    )
    return GPTJForCausalLM(cfg)


#: family name -> builder of the Hugging Face model (random weights) given the tokenizer.
BUILDERS: dict[str, Callable[[Any], Any]] = {
    "gpt2": _gpt2,
    "gpt_neox_parallel": _neox(True),
    "gpt_neox_sequential": _neox(False),
    "llama": _llama,
    "mistral": _mistral,
    "qwen2": _qwen2,
    "qwen3": _qwen3,
    "gemma": _gemma,
    "gemma2": _gemma2,
    "gemma3": _gemma3,
    "olmo": _olmo,
    "olmo2": _olmo2,
    "phi": _phi,
    "phi3": _phi3,
    "falcon": _falcon,
    "stablelm": _stablelm,
    "smollm": _smollm,
    "smollm3": _smollm3,
    "bloom": _bloom,
    "opt": _opt,
    "gptj": _gptj,
}

#: Every family :func:`tiny_family` builds.
FAMILIES: tuple[str, ...] = tuple(BUILDERS)


def _randomise(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Norm scales ``1 + 0.2 N(0, 1)`` (Gemma-style ``(1 + w)`` scales: ``0.2 N(0, 1)``) and biases
    ``0.05 N(0, 1)``, drawn from ``gen``."""
    with torch.no_grad():
        for mod in model.modules():
            is_norm = "norm" in type(mod).__name__.lower()
            for name, p in mod.named_parameters(recurse=False):
                if name == "bias":
                    p.copy_(0.05 * torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p))
                elif is_norm and name == "weight":
                    centre = 0.0 if float(p.detach().float().mean()) == 0.0 else 1.0
                    p.copy_(centre + 0.2 * torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p))


def tiny_family(family: str, *, dtype: torch.dtype = torch.float32, seed: int = 0) -> tuple[Any, Any]:
    """``(hf_model, tokenizer)`` of ``family`` (one of :data:`FAMILIES`), in eval mode and ``dtype``."""
    try:
        build = BUILDERS[family]
    except KeyError:
        raise ValueError(f"unknown family {family!r}; known: {', '.join(FAMILIES)}") from None
    tok = gpt2_tokenizer()
    torch.manual_seed(seed)
    model = build(tok)
    _randomise(model, torch.Generator().manual_seed(seed + 1))
    return model.to(dtype).eval(), tok


def save_family(family: str, path: str | Path, *, dtype: torch.dtype = torch.float32, seed: int = 0) -> Path:
    """Build ``family`` with :func:`tiny_family` and save model and tokenizer to ``path`` (for
    :func:`circuitkit.load_model`); returns ``path``."""
    path = Path(path)
    model, tok = tiny_family(family, dtype=dtype, seed=seed)
    model.save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path
