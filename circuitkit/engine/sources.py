"""Source outputs: what each node adds to the residual stream (head shares behind a post-attention norm),
the hooks that read or replace them, and the recording of every source's output in one forward."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from circuitkit.engine.common import _on, _StopForward
from circuitkit.engine.forward import _forward
from circuitkit.model import CircuitModel


@dataclass
class SourceRun:
    """What a source-recording forward pass (:func:`run_sources`) returns: the final residual stream and, if
    collected, the source outputs and the residual stream entering each layer."""

    final: torch.Tensor  # [batch, pos, d_model]
    sources: torch.Tensor | None = None  # [n_sources, batch, pos, d_model]
    resid: list[torch.Tensor] | None = None  # the residual stream entering each layer


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
    eps = getattr(hf_norm, "eps", 1e-6) if eps is None else eps
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
    got = model.__dict__.get("_share_dtype")
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
            eps = getattr(hf_norm, "eps", 1e-6) if eps is None else eps
            w = hf_norm.weight.double() + (1.0 if getattr(norm, "uses_weight_offset", False) else 0.0)
            exact = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w
            if float((out - exact).abs().max()) <= 64 * torch.finfo(torch.float64).eps * float(exact.abs().max()):
                got = torch.float64
        model.__dict__["_share_dtype"] = got
    return got


def head_output_hooks(model: CircuitModel, layer: int, fn: Callable) -> list:
    """Hooks that show ``fn(t, hook)`` layer ``layer``'s head outputs ``t [batch, pos, heads, d]`` as the
    graph defines them: what each head adds to the residual stream. ``fn`` may return ``t`` (read only)
    or a tensor of the same shape that replaces them.

    Without a norm after the attention that is the bridge's per-head result (``hook_result``). With
    one (:meth:`~circuitkit.model.CircuitModel.attn_post_norm`) it is each head's share of the normed
    attention output (:func:`head_shares`), and a replacement changes the normed output by the
    replaced shares' differences: the other heads keep their shares of this pass."""
    if model.attn_post_norm(layer) is None:
        return [(model.head_out_hook(layer), fn)]
    box: dict[str, torch.Tensor] = {}

    def grab(key: str) -> Callable:
        def hook(t: torch.Tensor, hook: object) -> torch.Tensor:
            box[key] = t
            return t

        return hook

    def at_output(t: torch.Tensor, hook: object) -> torch.Tensor:
        if "result" not in box:
            raise RuntimeError(f"layer {layer}'s per-head results were not computed in this pass (use_attn_result is off)")
        shares = head_shares(model, layer, box.pop("result"), box.pop("normed_in"))
        new = fn(shares, hook)
        if new is shares:
            return t
        return t + _on((new - shares).sum(-2), t).to(t.dtype)

    return [
        (model.head_out_hook(layer), grab("result")),
        (f"blocks.{layer}.ln1_post.hook_in", grab("normed_in")),
        (model.attn_out_hook(layer), at_output),
    ]


def head_output_grad_hooks(model: CircuitModel, layer: int, on_grad: Callable[[torch.Tensor], None]) -> list:
    """Hooks that call ``on_grad(g)`` in the backward pass with ``g [batch, pos, heads, d]``, the gradient
    with respect to each of layer ``layer``'s head outputs as the graph defines them (see
    :func:`head_output_hooks`). Behind a norm after the attention every head's share is added to the
    residual stream as it is, so each head's gradient is the gradient at the normed output."""
    n_heads = model.graph.n_heads
    post = model.attn_post_norm(layer) is not None

    def hook(t: torch.Tensor, hook: object) -> torch.Tensor:
        if t.requires_grad:
            t.register_hook(lambda g: on_grad(g.unsqueeze(2).expand(-1, -1, n_heads, -1)) if post else on_grad(g))
        return t

    return [(model.attn_out_hook(layer) if post else model.head_out_hook(layer), hook)]


def _source_writers(model: CircuitModel, buf: torch.Tensor, positions: slice | None = None) -> list:
    """Hooks that copy every source's output into ``buf [n_sources, batch, pos, d]`` (from whatever device
    the hook's layer is on); with ``positions``, only those positions (``buf`` is then that wide)."""
    g = model.graph
    at = positions or slice(None)

    def put(index: int, per_head: bool) -> Callable:
        def hook(t: torch.Tensor, hook: object) -> torch.Tensor:
            if per_head:
                buf[index : index + g.n_heads] = t.detach()[:, at].permute(2, 0, 1, 3)
            else:
                buf[index] = t.detach()[:, at]
            return t

        return hook

    hooks = [(model.INPUT_HOOK, put(0, False))]
    for layer in range(g.n_layers):
        hooks += head_output_hooks(model, layer, put(g.src_head(layer, 0), True))
        hooks.append((model.mlp_out_hook(layer), put(g.src_mlp(layer), False)))
    return hooks


def new_source_buffer(
    model: CircuitModel, tokens: torch.Tensor, dtype: torch.dtype | None = None, positions: slice | None = None
) -> torch.Tensor:
    b, p = tokens.shape
    p = len(range(p)[positions]) if positions is not None else p
    return torch.zeros(model.graph.n_sources, b, p, model.d_model, dtype=dtype or model.dtype, device=model.device)


@torch.no_grad()
def run_sources(model: CircuitModel, tokens: torch.Tensor, *, keep_resid: bool = False, positions: slice | None = None) -> SourceRun:
    """Forward without autograd, keeping every source's output ``[n_sources, batch, pos, d]`` (and, with
    ``keep_resid``, the residual stream entering every layer), all on ``model.device``. With ``positions``
    the source outputs are kept at those positions only."""
    tokens = tokens.to(model.device)
    buf = new_source_buffer(model, tokens, positions=positions)
    hooks = _source_writers(model, buf, positions)
    resid: list[torch.Tensor] = []
    home = model.device
    if keep_resid:
        hooks += [
            (f"blocks.{layer}.hook_resid_pre", lambda t, hook: (resid.append(t.detach().to(home)), t)[1])
            for layer in range(model.graph.n_layers)
        ]
    final = _forward(model, tokens, hooks)
    return SourceRun(final=final, sources=buf, resid=resid if keep_resid else None)


@torch.no_grad()
def input_embeddings(model: CircuitModel, tokens: torch.Tensor) -> torch.Tensor:
    """The input node's output (token and position embeddings) ``[batch, pos, d]`` for ``tokens``; the rest
    of the model does not run."""
    box: dict[str, torch.Tensor] = {}

    def grab(t: torch.Tensor, hook: object) -> torch.Tensor:
        box["x"] = t.detach().to(model.device)
        raise _StopForward

    try:
        with model.bridge.hooks(fwd_hooks=[(model.INPUT_HOOK, grab)]):
            model.bridge(tokens.to(model.device))
    except _StopForward:
        pass
    return box["x"]
