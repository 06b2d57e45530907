"""Head outputs behind a post-attention norm: each head's share of the normed attention output, and the
precision the norm computes in."""

from __future__ import annotations

import torch

from circuitkit.engine.common import _on
from circuitkit.model import CircuitModel


def head_shares(model: CircuitModel, layer: int, result: torch.Tensor, normed_in: torch.Tensor) -> torch.Tensor:
    """``[batch, pos, heads, d]``: each head's share of what layer ``layer``'s attention adds to the residual
    stream when a norm follows the attention (:meth:`~circuitkit.model.CircuitModel.attn_post_norm`).

    The norm sees ``X = sum_h result_h + b_O`` (``normed_in``, the tensor the norm received) and adds
    ``N(X) = X / rms(X) * w`` (RMSNorm; ``1 + w`` for Gemma's offset scales). ``N`` is linear once its
    normaliser ``1 / rms(X)`` is fixed, so head ``h``'s share is ``(result_h + b_O / n_heads) / rms(X) * w``:
    the shares sum to ``N(X)`` in every run, and the output bias's normed part is split equally between
    the heads (as zero ablation splits ``b_O``). The normaliser is the one of this forward pass, so the
    shares of all heads change together when one head's output does (the norm couples them).
    Computed in the precision the norm itself computes in (:func:`share_dtype`), and returned in
    ``result``'s dtype."""
    norm = model.attn_post_norm(layer)
    assert norm is not None
    hf_norm = norm.original_component
    work = share_dtype(model)
    x = normed_in.to(work)
    eps = getattr(hf_norm, "variance_epsilon", None)
    eps = float(getattr(hf_norm, "eps", 1e-6) if eps is None else eps)
    inv = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)  # [b, p, 1]
    w = hf_norm.weight.to(device=x.device, dtype=work)
    if getattr(norm, "uses_weight_offset", False):
        w = 1.0 + w
    r = _on(result, x).to(work)
    bias = getattr(model.bridge.blocks[layer].attn.o.original_component, "bias", None)
    if bias is not None:
        r = r + bias.to(device=x.device, dtype=work) / r.shape[-2]
    return (r * (inv * w).unsqueeze(-2)).to(result.dtype)


def share_dtype(model: CircuitModel) -> torch.dtype:
    """The precision the model's post-attention norms compute in: float32, or float64 where a float64
    model's norm keeps float64 (Gemma's and OLMo-2's RMSNorms compute in float32 whatever the model's
    dtype). Found once by comparing the norm's output on a float64 probe with both precisions."""
    got = model.capabilities.share_dtype
    if got is None:
        got = torch.float32
        norm = model.attn_post_norm(0) if model.graph.n_layers else None
        if norm is not None and model.dtype == torch.float64:
            hf_norm = norm.original_component
            x = torch.randn(4, model.d_model, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
            x = x.to(hf_norm.weight.device)
            with torch.no_grad():
                out = hf_norm(x)
            eps = getattr(hf_norm, "variance_epsilon", None)
            eps = float(getattr(hf_norm, "eps", 1e-6) if eps is None else eps)
            w = hf_norm.weight.double() + (1.0 if getattr(norm, "uses_weight_offset", False) else 0.0)
            exact = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w
            if float((out - exact).abs().max()) <= 64 * torch.finfo(torch.float64).eps * float(exact.abs().max()):
                got = torch.float64
        model.capabilities.share_dtype = got
    return got
