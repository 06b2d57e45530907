"""Exact patching of single edges and single units (nodes or neurons): stacked copies of the batch, each
with one edge or unit carrying its removed value and everything else clean."""

from __future__ import annotations

from collections.abc import Callable

import torch

from circuitkit.data import Batch
from circuitkit.engine.common import Metric, _on
from circuitkit.engine.fastpaths import _projected_inputs_ok
from circuitkit.engine.forward import _forward, attention_modes
from circuitkit.engine.readout import answer_metric
from circuitkit.engine.sources import SourceRun, head_output_hooks
from circuitkit.model import CircuitModel, to_module


def _per_copy_hook(
    shape: tuple[int, ...], edits: list[tuple[int, int | None]], apply: Callable, *, reuse_fresh: bool = False
) -> Callable | None:
    """A hook that edits single copies of a stacked pass: the tensor is seen as ``shape``
    (``[copies, batch, pos, (heads,) d]``) and ``apply(view, k)`` is called on copy ``k`` (head ``h``
    when given) for each ``(k, h)`` of ``edits`` and returned in its own shape. The tensor is copied first
    unless ``reuse_fresh`` and it is contiguous and not a view. None when there is nothing to edit."""
    if not edits:
        return None

    def hook(t: torch.Tensor, hook: object) -> torch.Tensor:
        x = (t if reuse_fresh and t._base is None and t.is_contiguous() else t.clone()).reshape(shape)
        for k, h in edits:
            apply(x[k] if h is None else x[k, :, :, h], k)
        return x.reshape(t.shape)

    return hook


def single_edge_metric(
    model: CircuitModel,
    batch: Batch,
    metric: Metric,
    delta: torch.Tensor,
    src: torch.Tensor,
    dst: torch.Tensor,
    *,
    start_layer: int,
    clean: SourceRun,
) -> torch.Tensor:
    """Per-example metric ``[copies, batch]`` where copy ``c`` has the single edge ``src[c] -> dst[c]``
    carrying its removed value, every other edge clean.

    The sparse form of :func:`masked_metric` for exact patching: the source of a removed edge is upstream
    of its destination, so in that copy it still has its clean value, and the edge changes the
    destination's input by exactly ``delta[src[c]]`` (removed minus clean output). No source outputs are
    recorded; each destination hook adds one ``[batch, pos, d]`` tensor per copy that enters it.

    Args:
        delta: ``[n_sources, batch, pos, d]`` removed-minus-clean source outputs.
        src, dst: ``[copies]`` source and destination indices of each copy's edge; every destination
            must be in layer ``start_layer`` or later (or the logits).
        start_layer: where the stacked forward starts from the clean residual stream (``clean.resid``).
        clean: the clean run with ``keep_resid=True``.
    """
    g = model.graph
    c = len(src)
    b, p = batch.clean.shape
    d = model.d_model
    src_l, dst_l = src.tolist(), dst.tolist()
    first = g.dst_head(start_layer, "q", 0) if start_layer < g.n_layers else g.dst_logits
    if min(dst_l) < first:
        raise ValueError(f"an edge enters a layer before {start_layer}; start earlier")
    rep = batch.repeat(c).to(model.device)
    if start_layer >= g.n_layers:  # edges into the logits: no layer to run
        final = clean.final.unsqueeze(0).repeat(c, 1, 1, 1)
        for k in range(c):
            final[k] += _on(delta[src_l[k]], final)
        with torch.no_grad():
            return answer_metric(model, final.reshape(c * b, p, d), rep, metric).reshape(c, b)
    by_dst: dict[int, list[int]] = {}
    for k, v in enumerate(dst_l):
        by_dst.setdefault(v, []).append(k)

    def add(view: torch.Tensor, k: int) -> None:
        view += _on(delta[src_l[k]], view)

    def add_one(dst_: int) -> Callable | None:
        return _per_copy_hook((c, b, p, d), [(k, None) for k in by_dst.get(dst_, ())], add)

    assert clean.resid is not None
    projected = _projected_inputs_ok(model)
    hooks: list = []
    for layer in range(start_layer, g.n_layers):
        for x, dst0, width in g.head_inputs(layer):
            edits = [(k, v - dst0) for v in range(dst0, dst0 + width) for k in by_dst.get(v, ())]
            if edits:
                make = _projected_head_hook if projected else _head_input_hook
                with torch.no_grad():
                    hooks.append(make(model, clean, delta, src_l, (c, b, p), layer, x, width, edits))
        hooks.append((model.mlp_in_hook(layer), add_one(g.dst_mlp(layer))))
    hooks = [(name, h) for name, h in hooks if h is not None]
    final_add = add_one(g.dst_logits)
    # Per-head q/k/v inputs only where a copy's edge enters a head and its projections are not replaced
    # directly; per-head outputs nowhere.
    head_dst = set() if projected else {g.dst_layer(v) for v in dst_l if g.is_head_dst(v)}
    modes = {layer: (layer in head_dst, False) for layer in range(g.n_layers)}
    with torch.no_grad(), attention_modes(model, modes):
        start = clean.resid[start_layer].repeat(c, 1, 1)
        final = _forward(
            model, rep.clean, hooks, final_hook=final_add, start_at_layer=start_layer, answer_at=rep.last, resid=start
        )
        return answer_metric(model, final, rep, metric).reshape(c, b)


def _head_input_hook(
    model: CircuitModel,
    clean: SourceRun,
    delta: torch.Tensor,
    src: list[int],
    cbp: tuple[int, int, int],
    layer: int,
    qkv: str,
    width: int,
    edits: list[tuple[int, int]],
) -> tuple[str, Callable | None]:
    """Copy ``k`` of ``edits`` adds its source's difference to slot ``h`` of the per-head ``qkv`` input
    (the bridge's split q/k/v inputs must be on in ``layer``)."""

    def add(view: torch.Tensor, k: int) -> None:
        view += _on(delta[src[k]], view)

    # The per-head copy of the residual is the bridge's own fresh tensor when it is contiguous and not a
    # view: added to in place then.
    return model.head_in_hook(layer, qkv), _per_copy_hook((*cbp, width, model.d_model), edits, add, reuse_fresh=True)


def _projected_head_hook(
    model: CircuitModel,
    clean: SourceRun,
    delta: torch.Tensor,
    src: list[int],
    cbp: tuple[int, int, int],
    layer: int,
    qkv: str,
    width: int,
    edits: list[tuple[int, int]],
) -> tuple[str, Callable | None]:
    """The same edit as :func:`_head_input_hook` without per-head inputs: in copy ``k`` only head slot
    ``h`` reads the changed input, and everything upstream of it is clean, so its projection is
    ``proj(norm(clean residual + difference))``, computed here for all edited copies in one batch and
    written into slot ``h`` of the projection's output. The layer then runs with one shared input, which
    saves the per-head normalisations and copies."""
    c, b, p = cbp
    block = model.bridge.blocks[layer]
    assert clean.resid is not None
    rows = torch.tensor([src[k] for k, _ in edits], device=delta.device)
    # On this layer's device (the model may be split over several).
    x = to_module(clean.resid[layer][None] + delta[rows], block.ln1)
    project = getattr(block.attn, qkv)
    proj = project(to_module(block.ln1(x), project).reshape(len(edits) * b, p, -1))
    proj = proj.reshape(len(edits), b, p, width, -1)
    row_of = {k: i for i, (k, _) in enumerate(edits)}
    slot = {k: h for k, h in edits}

    def put(view: torch.Tensor, k: int) -> None:
        view.copy_(proj[row_of[k], :, :, slot[k]])

    return model.head_proj_hook(layer, qkv), _per_copy_hook((c, b, p, width, proj.shape[-1]), edits, put, reuse_fresh=True)


def single_unit_metric(
    model: CircuitModel,
    batch: Batch,
    metric: Metric,
    removed: torch.Tensor,
    units: torch.Tensor,
    dims: torch.Tensor | None = None,
    *,
    start_layer: int = 0,
    clean: SourceRun | None = None,
) -> torch.Tensor:
    """Per-example metric ``[copies, batch]`` where copy ``c`` replaces the output of source
    ``units[c]`` by its removed value for every reader (node-level patching), or only output dimension
    ``dims[c]`` of it (neuron-level patching).

    Args:
        removed: ``[n_sources, batch, pos, d]`` what a removed source carries.
        start_layer: every unit is in layer ``start_layer`` or later (the input node: 0); the stacked
            forward starts there from ``clean.resid``.
    """
    g = model.graph
    c = len(units)
    b, p = batch.clean.shape
    d = model.d_model
    unit_l = units.tolist()
    dim_l = dims.tolist() if dims is not None else [None] * c
    by_unit: dict[int, list[int]] = {}
    for k, u in enumerate(unit_l):
        by_unit.setdefault(u, []).append(k)

    def replace(view: torch.Tensor, k: int) -> None:
        u = unit_l[k]
        if dim_l[k] is None:
            view.copy_(removed[u])
        else:
            view[..., dim_l[k]].copy_(removed[u][..., dim_l[k]])

    def at_heads(base: int) -> Callable | None:
        edits = [(k, u - base) for u in range(base, base + g.n_heads) for k in by_unit.get(u, ())]
        return _per_copy_hook((c, b, p, g.n_heads, d), edits, replace)

    def at_one(u: int) -> Callable | None:
        return _per_copy_hook((c, b, p, d), [(k, None) for k in by_unit.get(u, ())], replace)

    hooks: list = [(model.INPUT_HOOK, at_one(0))] if start_layer == 0 else []
    for layer in range(start_layer, g.n_layers):
        heads = at_heads(g.src_head(layer, 0))
        if heads is not None:
            hooks += head_output_hooks(model, layer, heads)
        hooks.append((model.mlp_out_hook(layer), at_one(g.src_mlp(layer))))
    hooks = [(name, h) for name, h in hooks if h is not None]
    rep = batch.repeat(c).to(model.device)
    unit_layers = {(u - 1) // (g.n_heads + 1) for u in unit_l if u != 0 and (u - 1) % (g.n_heads + 1) < g.n_heads}
    modes = {layer: (False, layer in unit_layers) for layer in range(g.n_layers)}
    with torch.no_grad(), attention_modes(model, modes):
        if start_layer == 0:
            final = _forward(model, batch.clean.to(model.device).repeat(c, 1), hooks)
        else:
            assert clean is not None and clean.resid is not None
            start = clean.resid[start_layer].repeat(c, 1, 1)
            final = _forward(model, rep.clean, hooks, start_at_layer=start_layer, resid=start)
        return answer_metric(model, final, rep, metric).reshape(c, b)
