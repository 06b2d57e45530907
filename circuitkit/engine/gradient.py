"""Gradient passes: one forward/backward that contracts the gradient at every destination input with the
stored source-output differences (:func:`gradient_pass`), and its stacked form with per-copy replaced
source outputs and per-copy row weights (:func:`stacked_gradient_pass`, EAP-IG on activations).

A replaced source output is a constant in the autograd graph: no gradient flows into the source through
it (its other uses are unaffected), exactly as when a hook returns a new tensor.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from circuitkit.data import Batch
from circuitkit.engine.common import Metric, _on
from circuitkit.engine.forward import _forward
from circuitkit.engine.readout import answer_metric
from circuitkit.engine.wiring import HookFn, Slot
from circuitkit.model import CircuitModel

#: Sources converted at a time when the difference buffer is stored in a lower precision.
CONTRACT_CHUNK = 16


def _contract(flat_diff: torch.Tensor, n_up: int, grad: torch.Tensor) -> torch.Tensor:
    """``flat_diff[:n_up] @ grad`` as float64 ``[n_up, k]``. A bf16/fp16 buffer is converted to the
    gradient's precision a few sources at a time, so the products accumulate in full precision."""
    if flat_diff.dtype == grad.dtype:
        return (flat_diff[:n_up] @ grad).double()
    out = torch.empty(n_up, grad.shape[1], dtype=torch.float64, device=grad.device)
    for s in range(0, n_up, CONTRACT_CHUNK):
        e = min(s + CONTRACT_CHUNK, n_up)
        out[s:e] = (flat_diff[s:e].to(grad.dtype) @ grad).double()
    return out


def _contract_per_example(diff: torch.Tensor, n_up: int, grad: torch.Tensor) -> torch.Tensor:
    """Per-example contraction: ``diff [S, b, k]`` (sources, examples, positions*width) with ``grad
    [b, w, k]`` as float64 ``[n_up, w, b]`` (summed over positions only). Several outputs (a layer's heads):
    one batched product over the examples on a strided view of the buffer; one output (an MLP or the
    logits, where a batched matrix-vector product is slow): one product per example. A bf16/fp16 buffer is
    converted a few sources at a time."""
    b = grad.shape[0]
    if grad.shape[1] > 1 and diff.dtype == grad.dtype:
        return torch.bmm(diff[:n_up].transpose(0, 1), grad.transpose(1, 2)).double().permute(1, 2, 0)
    out = torch.empty(n_up, grad.shape[1], b, dtype=torch.float64, device=grad.device)
    for i in range(b):
        g = grad[i].T  # [k, w]
        if diff.dtype == grad.dtype:
            out[:, :, i] = (diff[:n_up, i] @ g).double()
        else:
            for s in range(0, n_up, CONTRACT_CHUNK):
                e = min(s + CONTRACT_CHUNK, n_up)
                out[s:e, :, i] = (diff[s:e, i].to(grad.dtype) @ g).double()
    return out


def gradient_pass(
    model: CircuitModel,
    batch: Batch,
    metric: Metric,
    clean_minus_removed: torch.Tensor,
    scores: torch.Tensor,
    *,
    input_override: torch.Tensor | None = None,
    weight: float = 1.0,
    fill_from: torch.Tensor | None = None,
    neuron_scores: torch.Tensor | None = None,
    positions: slice | None = None,
    per_example: torch.Tensor | None = None,
) -> torch.Tensor:
    """One forward/backward that adds ``weight * diff . d(sum of metric)/d(input of dst)`` to ``scores``,
    ``diff`` being ``clean_minus_removed``.

    Args:
        model: the model.
        batch: the batch; the forward runs on ``batch.clean`` tokens.
        metric: per-example metric.
        clean_minus_removed: ``[n_sources, batch, pos, d]`` source output differences: clean output minus
            what a removed edge carries (the corrupted output, or a zero or mean value).
        scores: ``[n_sources, n_destinations]`` float64 accumulator, updated in place.
        input_override: ``[batch, pos, d]`` replaces the input node's output (the embeddings) for this
            pass, as integrated gradients does; the stored differences are unchanged.
        weight: factor applied to this pass's contribution.
        fill_from: the removed source outputs ``[n_sources, batch, pos, d]``: this (clean) pass writes
            ``clean - removed`` into ``clean_minus_removed`` during the forward, so the contraction in the
            backward sees the full difference (rounded once to that buffer's dtype). This saves a separate
            clean forward. Only valid without ``input_override``. ``fill_from`` may be
            ``clean_minus_removed`` itself: each output is then overwritten in place by its difference.
        neuron_scores: ``[n_sources, d]`` float64 accumulator: when given, also adds
            ``weight * sum over batch and positions of diff[u] * d(sum of metric)/d(out_u)`` per output
            dimension of every source ``u`` (neuron-level scores; their sum over dimensions is the sum of
            ``u``'s outgoing edge scores, since every reader's input contains ``out_u``).
        positions: the differences (and ``fill_from``) hold these positions only, and only they
            contribute: the scores of all positions are the sum over a partition of them into such passes.
        per_example: ``[n_sources, n_destinations, batch]`` float64 accumulator: when given, the
            contraction is done per example (summed over positions only) and ``weight`` times each
            example's contribution is added here as well as (summed over the batch) to ``scores`` — the
            per-example scores behind the standard errors, from the same pass.

    Returns:
        The per-example metric of this pass ``[batch]`` (detached).
    """
    if fill_from is not None and input_override is not None:
        raise ValueError("fill_from needs the clean input: do not combine it with input_override")
    diff = clean_minus_removed
    at = positions or slice(None)

    def at_input(t: torch.Tensor, hook: object) -> torch.Tensor:
        # The embeddings become the leaf of this pass's autograd graph (replaced for integrated gradients).
        if fill_from is not None:
            diff[0] = t.detach()[:, at].to(diff.device) - fill_from[0]
        x = _on(input_override, t) if input_override is not None else t
        x = x.detach().clone().requires_grad_(True)
        if neuron_scores is not None:
            x.register_hook(_neuron_grad(model.wiring.input, diff, neuron_scores, weight, at))
        return x

    def write(slot: Slot) -> HookFn | None:
        if slot.role == "input":
            return at_input
        return _difference_writer(slot, diff, fill_from, at) if fill_from is not None else None

    def grad(slot: Slot) -> Callable[[torch.Tensor], None] | None:
        if neuron_scores is None or slot.role == "input":
            return None
        return _neuron_grad(slot, diff, neuron_scores, weight, at)

    def read(slot: Slot) -> HookFn:
        return _contraction(slot, diff, scores, weight, at, per_example)

    plan = model.wiring
    hooks = plan.hooks(model, write=write, grad=grad, read=read)
    with torch.enable_grad():
        final = _forward(model, batch.clean.to(model.device), hooks, final_hook=read(plan.logits))
        values = answer_metric(model, final, batch.to(model.device), metric)
        values.sum().backward()
    return values.detach()


def _difference_writer(slot: Slot, diff: torch.Tensor, fill_from: torch.Tensor, at: slice) -> HookFn:
    """A hook that writes the slot's clean outputs minus ``fill_from``'s into ``diff`` (read only)."""

    def hook(t: torch.Tensor, hook: object) -> torch.Tensor:
        x = t.detach()[:, at].to(diff.device)
        if slot.per_head:
            diff[slot.index] = x.permute(2, 0, 1, 3) - fill_from[slot.index]
        else:
            diff[slot.first] = x - fill_from[slot.first]
        return t

    return hook


def _neuron_grad(
    slot: Slot, diff: torch.Tensor, neuron_scores: torch.Tensor, weight: float, at: slice
) -> Callable[[torch.Tensor], None]:
    """The backward callback that adds ``weight * diff[u] * grad`` summed over batch and positions, per
    output dimension, to ``neuron_scores[u]`` for each source ``u`` of the slot."""

    def on_grad(grad: torch.Tensor) -> None:
        grad = grad[:, at].to(diff.device)
        if slot.per_head:  # grad [b, p, h, d]
            d = diff[slot.index].to(grad.dtype)  # [h, b, p, d]
            neuron_scores[slot.index] += weight * torch.einsum("hbpd,bphd->hd", d, grad).double()
        else:
            neuron_scores[slot.first] += weight * (diff[slot.first].to(grad.dtype) * grad).sum((0, 1)).double()

    return on_grad


def _contraction(
    slot: Slot, diff: torch.Tensor, scores: torch.Tensor, weight: float, at: slice, per_example: torch.Tensor | None
) -> HookFn:
    """The hook at a destination slot whose backward callback adds ``weight`` times the contraction of the
    gradient there with the differences of its upstream sources to ``scores[:n_up, slot]`` (and per example
    to ``per_example``)."""
    n_up, cols, width = slot.n_up, slot.index, slot.width
    flat = diff.reshape(diff.shape[0], -1)  # [S, b*p*d]

    def on_grad(grad: torch.Tensor) -> None:
        # grad [b, p, d], or [b, p, width, d] at a per-head input (query heads for q, key/value heads for k, v)
        g = grad[:, at]
        if per_example is not None:
            b = grad.shape[0]
            rows = g.permute(0, 2, 1, 3).reshape(b, width, -1) if slot.per_head else g.reshape(b, 1, -1)
            pe = _contract_per_example(diff.reshape(diff.shape[0], b, -1), n_up, rows.to(flat.device))
            per_example[:n_up, cols] += weight * pe
            scores[:n_up, cols] += weight * pe.sum(-1)
            return
        columns = (
            g.permute(2, 0, 1, 3).reshape(width, -1).to(flat.device).T if slot.per_head else g.reshape(-1, 1).to(flat.device)
        )
        scores[:n_up, cols] += weight * _contract(flat, n_up, columns)

    return _grad_hook(on_grad, copy=not slot.per_head)


def _grad_hook(on_grad: Callable[[torch.Tensor], None], *, copy: bool) -> HookFn:
    """A destination hook that calls ``on_grad`` with the gradient of the destination's input. With
    ``copy`` (an MLP input or the logits, whose hook sees the residual stream itself) the input is copied
    first, so the gradient read is that of the destination's input alone, not of the residual stream."""

    def hook(t: torch.Tensor, hook: object) -> torch.Tensor:
        if copy:
            t = t.clone()
        if t.requires_grad:
            t.register_hook(on_grad)
        return t

    return hook


#: One copy's replacements: ``[(source_index, value [batch, pos, d_model]), ...]``.
Overrides = Sequence[tuple[int, torch.Tensor]]


def source_groups(model: CircuitModel) -> list[list[int]]:
    """The source indices of each source slot, in forward order: ``[input]``, then per layer the heads of
    the attention layer and the MLP (the units the EAP-IG library interpolates together)."""
    return [list(range(s.first, s.first + s.width)) for s in model.wiring.sources]


def stacked_gradient_pass(
    model: CircuitModel,
    batch: Batch,
    metric: Metric,
    clean_minus_removed: torch.Tensor,
    scores: torch.Tensor,
    overrides: Sequence[Overrides],
    rows: torch.Tensor,
    *,
    weight: float = 1.0,
) -> torch.Tensor:
    """One forward/backward over ``copies = len(overrides)`` stacked copies of the clean batch.

    In copy ``c`` each ``(s, value)`` of ``overrides[c]`` replaces source ``s``'s output by ``value``.
    For every destination ``v`` and upstream source ``u`` this adds

        ``weight * sum_c rows[c, u] * diff[u] . d(sum of metric over copy c)/d(input of v in copy c)``

    to ``scores[u, v]``, ``diff`` being ``clean_minus_removed``.

    Args:
        clean_minus_removed: ``[n_sources, batch, pos, d]`` (clean minus corrupted outputs, or any
            per-source vectors).
        scores: ``[n_sources, n_destinations]`` float64 accumulator, updated in place.
        overrides: per copy, the source outputs to replace.
        rows: ``[copies, n_sources]`` weight of each copy's gradient for each source row.

    Returns:
        The per-example metric ``[copies, batch]`` (detached).
    """
    g = model.graph
    c = len(overrides)
    b, p = batch.clean.shape
    flat = clean_minus_removed.reshape(clean_minus_removed.shape[0], -1)
    rows = rows.to(device=flat.device, dtype=flat.dtype)
    if rows.shape != (c, g.n_sources):
        raise ValueError(f"rows must be [copies={c}, n_sources={g.n_sources}], got {tuple(rows.shape)}")
    by_source: dict[int, list[tuple[int, torch.Tensor]]] = {}
    for copy, items in enumerate(overrides):
        for s, value in items:
            by_source.setdefault(int(s), []).append((copy, value))

    def replace(t: torch.Tensor, slot: Slot) -> torch.Tensor:
        """``t`` with the overrides of the slot's sources applied (per head on a heads slot)."""
        todo = [(s, item) for s in range(slot.first, slot.first + slot.width) for item in by_source.get(s, ())]
        if not todo:
            return t
        t = t.clone()
        for s, (copy, value) in todo:
            copy_rows = slice(copy * b, (copy + 1) * b)
            if slot.per_head:
                t[copy_rows, :, s - slot.first] = value.to(device=t.device, dtype=t.dtype)
            else:
                t[copy_rows] = value.to(device=t.device, dtype=t.dtype)
        return t

    def write(slot: Slot) -> HookFn:
        if slot.role == "input":  # the leaf of this pass's autograd graph
            return lambda t, hook: replace(t.detach(), slot).detach().clone().requires_grad_(True)
        return lambda t, hook: replace(t, slot)

    def read(slot: Slot) -> HookFn:
        n_up, r = slot.n_up, rows[:, : slot.n_up]  # r [c, S]

        def on_grad(grad: torch.Tensor) -> None:
            if slot.per_head:
                gh = grad.reshape(c, b, p, slot.width, -1).permute(0, 3, 1, 2, 4).reshape(c * slot.width, -1)
                gh = gh.to(device=flat.device, dtype=flat.dtype)
                full = (flat[:n_up] @ gh.T).reshape(n_up, c, slot.width)
                scores[:n_up, slot.index] += weight * torch.einsum("sch,cs->sh", full, r).double()
            else:
                gc = grad.reshape(c, -1).to(device=flat.device, dtype=flat.dtype)
                full = flat[:n_up] @ gc.T  # [S, c]
                scores[:n_up, slot.first] += weight * (full * r.T).sum(1).double()

        return _grad_hook(on_grad, copy=not slot.per_head)

    plan = model.wiring
    rep = batch.repeat(c).to(model.device)
    with torch.enable_grad():
        final = _forward(model, rep.clean, plan.hooks(model, write=write, read=read), final_hook=read(plan.logits))
        values = answer_metric(model, final, rep, metric)
        values.sum().backward()
    return values.detach().reshape(c, b)
