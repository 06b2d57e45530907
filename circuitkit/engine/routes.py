"""Information flow routes: the proximity-based contribution of every source to every destination's input,
from one clean forward."""

from __future__ import annotations

import torch

from circuitkit.data import Batch
from circuitkit.engine.forward import _forward
from circuitkit.engine.sources import _source_writers, new_source_buffer
from circuitkit.engine.wiring import HookFn, Slot
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
    tokens = batch.clean.to(model.device)
    last = batch.last.to(model.device)
    buf = new_source_buffer(model, tokens)

    def read(slot: Slot) -> HookFn:
        def hook(t: torch.Tensor, hook: object) -> torch.Tensor:
            # On the buffer's device (``t`` is on its layer's device when the model is split over several).
            imp = route_importance(t.detach().to(buf.device), buf[: slot.n_up], last).sum(1)  # [S] or [S, width]
            if slot.per_head:  # width: query heads for q inputs, key/value heads for k and v inputs
                scores[: slot.n_up, slot.index] += imp.double()
            else:
                scores[: slot.n_up, slot.first] += imp.double()
            return t

        return hook

    hooks = _source_writers(model, buf) + model.wiring.hooks(model, read=read)
    _forward(model, tokens, hooks, final_hook=read(model.wiring.logits))
