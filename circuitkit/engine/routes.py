"""Information flow routes: the proximity-based contribution of every source to every destination's input,
from one clean forward."""

from __future__ import annotations

from collections.abc import Callable

import torch

from circuitkit.data import Batch
from circuitkit.engine.forward import _forward
from circuitkit.engine.sources import head_output_hooks, new_source_buffer
from circuitkit.model import CircuitModel


def route_importance(dst_input: torch.Tensor, sources: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """Proximity importance of each source's contribution to one destination's input, averaged per example.

    For each example, position ``t <= last`` and source ``u`` (L1 norms)::

        proximity_u = max(0, ||x||_1 - ||x - c_u||_1)        x = dst_input[t], c_u = sources[u, t]
        importance_u = proximity_u / sum_u' proximity_u'     (0 where every proximity is 0)

    averaged over the positions ``0 .. last`` of the example.

    Args:
        dst_input: ``[batch, pos, d]`` or ``[batch, pos, heads, d]`` destination input(s).
        sources: ``[n_sources, batch, pos, d]`` contributions of the upstream sources.
        last: ``[batch]`` index of each example's last real position.

    Returns:
        ``[n_sources, batch]`` (or ``[n_sources, batch, heads]`` for per-head inputs).
    """
    per_head = dst_input.dim() == 4
    x = dst_input if per_head else dst_input.unsqueeze(2)  # [b, p, h, d]
    n_s, b, p, _ = sources.shape
    pos = torch.arange(p, device=x.device)
    valid = (pos[None, :] <= last.to(x.device)[:, None]).to(sources.dtype)  # [b, p]
    counts = valid.sum(1)  # [b]
    out = []
    for h in range(x.shape[2]):
        xh = x[:, :, h]  # [b, p, d]
        prox = (xh.abs().sum(-1)[None] - (xh[None] - sources).abs().sum(-1)).clamp(min=0)  # [S, b, p]
        total = prox.sum(0, keepdim=True)
        imp = torch.where(total > 0, prox / torch.where(total > 0, total, torch.ones_like(total)), torch.zeros_like(prox))
        out.append((imp * valid[None]).sum(-1) / counts[None])  # [S, b]
    res = torch.stack(out, -1)  # [S, b, h]
    return res if per_head else res[..., 0]


@torch.no_grad()
def information_flow_scores(model: CircuitModel, batch: Batch, scores: torch.Tensor) -> None:
    """Add the :func:`route_importance` of every edge, summed over the examples of ``batch``, to
    ``scores [n_sources, n_destinations]`` (float64), from one forward on ``batch.clean``."""
    g = model.graph
    tokens = batch.clean.to(model.device)
    last = batch.last.to(model.device)
    buf = new_source_buffer(model, tokens)

    def put(index: int, per_head: bool) -> Callable:
        def hook(t: torch.Tensor, hook: object) -> torch.Tensor:
            if per_head:
                buf[index : index + g.n_heads] = t.detach().permute(2, 0, 1, 3)
            else:
                buf[index] = t.detach()
            return t

        return hook

    def read(dst0: int, n_up: int, per_head: bool) -> Callable:
        def hook(t: torch.Tensor, hook: object) -> torch.Tensor:
            # On the buffer's device (``t`` is on its layer's device when the model is split over several).
            imp = route_importance(t.detach().to(buf.device), buf[:n_up], last).sum(1)  # [S] or [S, h]
            if per_head:  # h: query heads for q inputs, key/value heads for k and v inputs
                scores[:n_up, dst0 : dst0 + imp.shape[1]] += imp.double()
            else:
                scores[:n_up, dst0] += imp.double()
            return t

        return hook

    hooks: list = [(model.INPUT_HOOK, put(0, False))]
    for layer in range(g.n_layers):
        n_up = g.n_upstream_heads(layer)
        for x, dst0, _ in g.head_inputs(layer):
            hooks.append((model.head_in_hook(layer, x), read(dst0, n_up, True)))
        hooks += head_output_hooks(model, layer, put(g.src_head(layer, 0), True))
        hooks.append((model.mlp_in_hook(layer), read(g.dst_mlp(layer), g.n_upstream_mlp(layer), False)))
        hooks.append((model.mlp_out_hook(layer), put(g.src_mlp(layer), False)))
    _forward(model, tokens, hooks, final_hook=read(g.dst_logits, g.n_sources, False))
