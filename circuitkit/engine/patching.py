"""Exact patching of single edges and single units (nodes or neurons): stacked copies of the batch, each
with one edge or unit carrying its removed value and everything else clean."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from circuitkit.data import Batch
from circuitkit.engine.common import Metric, _on
from circuitkit.engine.fastpaths import _projected_inputs_ok
from circuitkit.engine.forward import _forward, attention_modes
from circuitkit.engine.readout import answer_metric
from circuitkit.engine.sources import SourceRun
from circuitkit.engine.wiring import HookFn, Hooks, Slot
from circuitkit.model import CircuitModel, to_module


def _per_copy_hook(
    shape: tuple[int, ...], edits: Sequence[tuple[int, int | None]], apply: Callable, *, reuse_fresh: bool = False
) -> HookFn | None:
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
    removed_minus_clean: torch.Tensor,
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
    destination's input by exactly ``removed_minus_clean[src[c]]``. No source outputs are recorded; each
    destination hook adds one ``[batch, pos, d]`` tensor per copy that enters it.

    Args:
        removed_minus_clean: ``[n_sources, batch, pos, d]``: what each source's output is on a removed
            edge minus its clean output.
        src, dst: ``[copies]`` source and destination indices of each copy's edge; every destination
            must be in layer ``start_layer`` or later (or the logits).
        start_layer: where the stacked forward starts from the clean residual stream (``clean.resid``).
        clean: the clean run with ``keep_resid=True``.
    """
    g = model.graph
    plan = model.wiring
    diff = removed_minus_clean
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
            final[k] += _on(diff[src_l[k]], final)
        with torch.no_grad():
            return answer_metric(model, final.reshape(c * b, p, d), rep, metric).reshape(c, b)
    by_dst: dict[int, list[int]] = {}
    for k, v in enumerate(dst_l):
        by_dst.setdefault(v, []).append(k)

    def add(view: torch.Tensor, k: int) -> None:
        view += _on(diff[src_l[k]], view)

    def add_one(slot: Slot) -> HookFn | None:
        return _per_copy_hook((c, b, p, d), [(k, None) for k in by_dst.get(slot.first, ())], add)

    assert clean.resid is not None
    projected = _projected_inputs_ok(model)
    hooks: Hooks = []
    for slot in plan.destination_slots(start_layer):
        if not slot.per_head:
            hook = add_one(slot)
            if hook is not None:
                hooks.append((slot.hook, hook))
            continue
        edits = [(k, v - slot.first) for v in range(slot.first, slot.first + slot.width) for k in by_dst.get(v, ())]
        if edits:
            make = _projected_head_hook if projected else _head_input_hook
            with torch.no_grad():
                hooks.append(make(model, clean, diff, src_l, (c, b, p), slot, edits))
    # Per-head q/k/v inputs only where a copy's edge enters a head and its projections are not replaced
    # directly; per-head outputs nowhere.
    head_dst = set() if projected else {g.dst_layer(v) for v in dst_l if g.is_head_dst(v)}
    modes = {layer: (layer in head_dst, False) for layer in range(g.n_layers)}
    with torch.no_grad(), attention_modes(model, modes):
        start = clean.resid[start_layer].repeat(c, 1, 1)
        final = _forward(
            model, rep.clean, hooks, final_hook=add_one(plan.logits), start_at_layer=start_layer, answer_at=rep.last, resid=start
        )
        return answer_metric(model, final, rep, metric).reshape(c, b)


def _head_input_hook(
    model: CircuitModel,
    clean: SourceRun,
    removed_minus_clean: torch.Tensor,
    src: list[int],
    cbp: tuple[int, int, int],
    slot: Slot,
    edits: list[tuple[int, int]],
) -> tuple[str, HookFn]:
    """Copy ``k`` of ``edits`` adds its source's difference to head slot ``h`` of the per-head q, k or v
    input ``slot`` (the bridge's split q/k/v inputs must be on in the slot's layer)."""

    def add(view: torch.Tensor, k: int) -> None:
        view += _on(removed_minus_clean[src[k]], view)

    # The per-head copy of the residual is the bridge's own fresh tensor when it is contiguous and not a
    # view: added to in place then.
    hook = _per_copy_hook((*cbp, slot.width, model.d_model), edits, add, reuse_fresh=True)
    assert hook is not None
    return slot.hook, hook


def _projected_head_hook(
    model: CircuitModel,
    clean: SourceRun,
    removed_minus_clean: torch.Tensor,
    src: list[int],
    cbp: tuple[int, int, int],
    slot: Slot,
    edits: list[tuple[int, int]],
) -> tuple[str, HookFn]:
    """The same edit as :func:`_head_input_hook` without per-head inputs: in copy ``k`` only head slot
    ``h`` reads the changed input, and everything upstream of it is clean, so its projection is
    ``proj(norm(clean residual + difference))``, computed here for all edited copies in one batch and
    written into slot ``h`` of the projection's output (``slot.proj_hook``). The layer then runs with one
    shared input, which saves the per-head normalisations and copies."""
    c, b, p = cbp
    block = model.bridge.blocks[slot.layer]
    assert clean.resid is not None and slot.proj_hook is not None
    rows = torch.tensor([src[k] for k, _ in edits], device=removed_minus_clean.device)
    # On this layer's device (the model may be split over several).
    x = to_module(clean.resid[slot.layer][None] + removed_minus_clean[rows], block.ln1)
    project = getattr(block.attn, slot.role)
    proj = project(to_module(block.ln1(x), project).reshape(len(edits) * b, p, -1))
    proj = proj.reshape(len(edits), b, p, slot.width, -1)
    row_of = {k: i for i, (k, _) in enumerate(edits)}
    head_of = {k: h for k, h in edits}

    def put(view: torch.Tensor, k: int) -> None:
        view.copy_(proj[row_of[k], :, :, head_of[k]])

    hook = _per_copy_hook((c, b, p, slot.width, proj.shape[-1]), edits, put, reuse_fresh=True)
    assert hook is not None
    return slot.proj_hook, hook


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
    plan = model.wiring
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

    def write(slot: Slot) -> HookFn | None:
        if slot.per_head:
            edits = [(k, u - slot.first) for u in range(slot.first, slot.first + slot.width) for k in by_unit.get(u, ())]
            return _per_copy_hook((c, b, p, slot.width, d), edits, replace)
        return _per_copy_hook((c, b, p, d), [(k, None) for k in by_unit.get(slot.first, ())], replace)

    hooks = plan.hooks(model, write=write, start_layer=start_layer)
    rep = batch.repeat(c).to(model.device)
    # Per-head outputs only in the layers of the heads patched.
    unit_layers = {slot.layer for slot in map(plan.source_slot, unit_l) if slot.role == "heads"}
    modes = {layer: (False, layer in unit_layers) for layer in range(model.graph.n_layers)}
    with torch.no_grad(), attention_modes(model, modes):
        if start_layer == 0:
            final = _forward(model, batch.clean.to(model.device).repeat(c, 1), hooks)
        else:
            assert clean is not None and clean.resid is not None
            start = clean.resid[start_layer].repeat(c, 1, 1)
            final = _forward(model, rep.clean, hooks, start_at_layer=start_layer, resid=start)
        return answer_metric(model, final, rep, metric).reshape(c, b)
