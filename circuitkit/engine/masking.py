"""Circuit masking: one forward in which every edge not in the circuit carries its removed value, for
several circuits at once (stacked copies of the batch)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from circuitkit.data import Batch
from circuitkit.engine.common import Metric, _on
from circuitkit.engine.forward import _forward
from circuitkit.engine.readout import answer_metric
from circuitkit.engine.sources import SourceRun, head_output_hooks
from circuitkit.model import CircuitModel


def masked_forward(
    model: CircuitModel,
    tokens: torch.Tensor,
    removed: torch.Tensor,
    keep: torch.Tensor,
    *,
    start_layer: int = 0,
    clean: SourceRun | None = None,
    neurons: torch.Tensor | None = None,
) -> torch.Tensor:
    """Run the clean tokens with every edge *not* kept carrying its removed value (``removed``).

    Args:
        model: the model.
        tokens: ``[batch, pos]`` clean tokens.
        removed: ``[n_sources, batch, pos, d]`` what each source's output is on a removed edge: its output
            on the corrupted prompt (patching), or a zero or mean value (:mod:`circuitkit.interventions`).
        keep: ``[copies, n_sources, n_destinations]`` (1 = edge kept, 0 = removed); several circuits
            are evaluated at once by stacking ``copies`` of the batch.
        start_layer: when every removed edge goes into layer ``start_layer`` or later, everything before
            that layer equals the clean run: start there from ``clean.resid`` (a
            :func:`run_sources` result with ``keep_resid=True``). ``n_layers`` means only edges into the
            logits are removed: no layer is run at all.
        clean: the clean run (needed when ``start_layer > 0``).
        neurons: ``[copies, n_sources, d]`` (1 = kept): output dimensions of each source that carry
            their removed value on *every* edge, kept or not (neuron-level circuits). An edge then
            carries, per dimension, its clean value only where it is kept and the dimension is kept.

    Returns:
        The final residual stream ``[copies * batch, pos, d]`` (copy-major).
    """
    g = model.graph
    c = keep.shape[0]
    b, p = tokens.shape
    d = model.d_model
    dev = model.device
    remove = 1 - keep.to(device=dev, dtype=removed.dtype)  # [c, S, D]
    if neurons is not None:
        if start_layer > 0:
            raise ValueError("neuron masks are only supported with start_layer=0")
        kept_dims = neurons.to(device=dev, dtype=removed.dtype)  # [c, S, d]
        if kept_dims.shape != (c, g.n_sources, d):
            raise ValueError(f"neurons must be [copies={c}, n_sources={g.n_sources}, d_model={d}], got {tuple(kept_dims.shape)}")
    if start_layer > 0:
        if clean is None or clean.resid is None or clean.sources is None:
            raise ValueError("start_layer > 0 needs the clean run with keep_resid=True")
        if bool(remove[:, :, : g.dst_mlp(start_layer - 1) + 1].any()):
            raise ValueError(f"an edge into a layer before {start_layer} is removed; start earlier")
    if start_layer >= g.n_layers:
        assert clean is not None and clean.sources is not None
        w = remove[:, :, g.dst_logits]  # [c, S]
        add = torch.einsum("sbpd,cs->cbpd", removed - clean.sources, w)
        return (clean.final.unsqueeze(0) + _on(add, clean.final)).reshape(c * b, p, d)
    run = torch.zeros(g.n_sources, c, b, p, d, dtype=removed.dtype, device=dev)
    if start_layer > 0:
        assert clean is not None and clean.sources is not None
        n_pre = g.n_upstream_heads(start_layer)
        run[:n_pre] = clean.sources[:n_pre].unsqueeze(1)

    def put(index: int, per_head: bool) -> Callable:
        def hook(t: torch.Tensor, hook: object) -> torch.Tensor:
            if per_head:
                run[index : index + g.n_heads] = t.reshape(c, b, p, g.n_heads, d).permute(3, 0, 1, 2, 4)
            else:
                run[index] = t.reshape(c, b, p, d)
            return t

        return hook

    def patch_neurons(dst0: int, width: int, n_up: int, per_head: bool) -> Callable:
        kept = keep.to(device=dev, dtype=removed.dtype)[:, :n_up, dst0 : dst0 + width]  # [c, S, width]
        dims = kept_dims[:, :n_up]  # [c, S, d]

        def hook(t: torch.Tensor, hook: object) -> torch.Tensor:
            diff = removed[:n_up].unsqueeze(1) - run[:n_up]  # [S, c, b, p, d]
            # per dimension, an edge is removed unless the edge and the dimension are both kept
            add = diff.sum(0)[:, :, :, None, :] - torch.einsum("scbpd,csd,csh->cbphd", diff, dims, kept)
            add = _on(add, t)
            if per_head:
                return t + add.reshape(c * b, p, width, d)
            return t + add.reshape(c * b, p, d)

        return hook

    def patch(dst0: int, width: int, n_up: int, per_head: bool) -> Callable:
        if neurons is not None:
            return patch_neurons(dst0, width, n_up, per_head)
        w = remove[:, :n_up, dst0 : dst0 + width]  # [c, S, width]
        if not bool(w.any()):
            return lambda t, hook: t
        # Sources whose edges into this destination are all kept contribute nothing.
        used = w.any(0).any(1).nonzero().squeeze(1)
        w = w[:, used]

        def hook(t: torch.Tensor, hook: object) -> torch.Tensor:
            diff = removed[used].unsqueeze(1) - run[used]  # [s, c, b, p, d]
            add = torch.einsum("scbpd,csh->cbphd", diff, w)
            add = _on(add, t)
            if per_head:
                return t + add.reshape(c * b, p, width, d)
            return t + add.reshape(c * b, p, d)

        return hook

    hooks: list = [(model.INPUT_HOOK, put(0, False))] if start_layer == 0 else []
    for layer in range(start_layer, g.n_layers):
        n_up = g.n_upstream_heads(layer)
        for x, dst0, width in g.head_inputs(layer):
            hooks.append((model.head_in_hook(layer, x), patch(dst0, width, n_up, True)))
        hooks += head_output_hooks(model, layer, put(g.src_head(layer, 0), True))
        hooks.append((model.mlp_in_hook(layer), patch(g.dst_mlp(layer), 1, g.n_upstream_mlp(layer), False)))
        hooks.append((model.mlp_out_hook(layer), put(g.src_mlp(layer), False)))
    final_patch = patch(g.dst_logits, 1, g.n_sources, False)
    with torch.no_grad():
        if start_layer == 0:
            return _forward(model, tokens.to(dev).repeat(c, 1), hooks, final_hook=final_patch)
        assert clean is not None and clean.resid is not None
        start = clean.resid[start_layer].repeat(c, 1, 1)
        return _forward(
            model, tokens.to(dev).repeat(c, 1), hooks, final_hook=final_patch, start_at_layer=start_layer, resid=start
        )


def masked_metric(
    model: CircuitModel,
    batch: Batch,
    metric: Metric,
    removed: torch.Tensor,
    keep: torch.Tensor,
    *,
    start_layer: int = 0,
    clean: SourceRun | None = None,
    neurons: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-example metric ``[copies, batch]`` with the non-kept edges removed (see :func:`masked_forward`)."""
    c = keep.shape[0]
    final = masked_forward(model, batch.clean, removed, keep, start_layer=start_layer, clean=clean, neurons=neurons)
    rep = batch.repeat(c).to(model.device)
    with torch.no_grad():
        return answer_metric(model, final, rep, metric).reshape(c, len(batch))
