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
from circuitkit.engine.sources import head_output_grad_hooks, head_output_hooks
from circuitkit.model import CircuitModel

#: Sources converted at a time when the difference buffer is stored in a lower precision.
CONTRACT_CHUNK = 16


def _contract(flat_delta: torch.Tensor, n_up: int, grad: torch.Tensor) -> torch.Tensor:
    """``flat_delta[:n_up] @ grad`` as float64 ``[n_up, k]``. A bf16/fp16 buffer is converted to the
    gradient's precision a few sources at a time, so the products accumulate in full precision."""
    if flat_delta.dtype == grad.dtype:
        return (flat_delta[:n_up] @ grad).double()
    out = torch.empty(n_up, grad.shape[1], dtype=torch.float64, device=grad.device)
    for s in range(0, n_up, CONTRACT_CHUNK):
        e = min(s + CONTRACT_CHUNK, n_up)
        out[s:e] = (flat_delta[s:e].to(grad.dtype) @ grad).double()
    return out


def _contract_per_example(delta: torch.Tensor, n_up: int, grad: torch.Tensor) -> torch.Tensor:
    """Per-example contraction: ``delta [S, b, k]`` (sources, examples, positions*width) with ``grad
    [b, w, k]`` as float64 ``[n_up, w, b]`` (summed over positions only). Several outputs (a layer's heads):
    one batched product over the examples on a strided view of the buffer; one output (an MLP or the
    logits, where a batched matrix-vector product is slow): one product per example. A bf16/fp16 buffer is
    converted a few sources at a time."""
    b = grad.shape[0]
    if grad.shape[1] > 1 and delta.dtype == grad.dtype:
        return torch.bmm(delta[:n_up].transpose(0, 1), grad.transpose(1, 2)).double().permute(1, 2, 0)
    out = torch.empty(n_up, grad.shape[1], b, dtype=torch.float64, device=grad.device)
    for i in range(b):
        g = grad[i].T  # [k, w]
        if delta.dtype == grad.dtype:
            out[:, :, i] = (delta[:n_up, i] @ g).double()
        else:
            for s in range(0, n_up, CONTRACT_CHUNK):
                e = min(s + CONTRACT_CHUNK, n_up)
                out[s:e, :, i] = (delta[s:e, i].to(grad.dtype) @ g).double()
    return out


def gradient_pass(
    model: CircuitModel,
    batch: Batch,
    metric: Metric,
    delta: torch.Tensor,
    scores: torch.Tensor,
    *,
    input_override: torch.Tensor | None = None,
    weight: float = 1.0,
    fill_from: torch.Tensor | None = None,
    neuron_scores: torch.Tensor | None = None,
    positions: slice | None = None,
    per_example: torch.Tensor | None = None,
) -> torch.Tensor:
    """One forward/backward that adds ``weight * delta . d(sum of metric)/d(input of dst)`` to ``scores``.

    Args:
        model: the model.
        batch: the batch; the forward runs on ``batch.clean`` tokens.
        metric: per-example metric.
        delta: ``[n_sources, batch, pos, d]`` source output differences (clean - corrupted).
        scores: ``[n_sources, n_destinations]`` float64 accumulator, updated in place.
        input_override: ``[batch, pos, d]`` replaces the input node's output (the embeddings) for this
            pass, as integrated gradients does; the stored ``delta`` is unchanged.
        weight: factor applied to this pass's contribution.
        fill_from: the corrupted source outputs ``[n_sources, batch, pos, d]``: this (clean) pass writes
            ``clean - corrupted`` into ``delta`` during the forward, so the contraction in the backward
            sees the full difference (rounded once to ``delta``'s dtype).
            This saves a separate clean forward. Only valid without ``input_override``. ``fill_from`` may
            be ``delta`` itself: each output is then overwritten in place by its difference.
        neuron_scores: ``[n_sources, d]`` float64 accumulator: when given, also adds
            ``weight * sum over batch and positions of delta[u] * d(sum of metric)/d(out_u)`` per output
            dimension of every source ``u`` (neuron-level scores; their sum over dimensions is the sum of
            ``u``'s outgoing edge scores, since every reader's input contains ``out_u``).
        positions: ``delta`` (and ``fill_from``) hold these positions only, and only they contribute: the
            scores of all positions are the sum over a partition of them into such passes.
        per_example: ``[n_sources, n_destinations, batch]`` float64 accumulator: when given, the
            contraction is done per example (summed over positions only) and ``weight`` times each
            example's contribution is added here as well as (summed over the batch) to ``scores`` — the
            per-example scores behind the standard errors, from the same pass.

    Returns:
        The per-example metric of this pass ``[batch]`` (detached).
    """
    g = model.graph
    n_heads = g.n_heads
    at = positions or slice(None)
    flat_delta = delta.reshape(delta.shape[0], -1)  # [S, b*p*d]

    def contract_heads(dst0: int, width: int, n_up: int) -> Callable:
        def on_grad(grad: torch.Tensor) -> None:
            # grad [b, p, h, d] -> [h, b*p*d] (h: query heads for q, key/value heads for k and v)
            if per_example is not None:
                b = grad.shape[0]
                gb = grad[:, at].permute(0, 2, 1, 3).reshape(b, width, -1).to(flat_delta.device)
                pe = _contract_per_example(delta.reshape(delta.shape[0], b, -1), n_up, gb)
                per_example[:n_up, dst0 : dst0 + width] += weight * pe
                scores[:n_up, dst0 : dst0 + width] += weight * pe.sum(-1)
                return
            gh = grad[:, at].permute(2, 0, 1, 3).reshape(width, -1).to(flat_delta.device)
            scores[:n_up, dst0 : dst0 + width] += weight * _contract(flat_delta, n_up, gh.T)

        def hook(t: torch.Tensor, hook: object) -> torch.Tensor:
            if t.requires_grad:
                t.register_hook(on_grad)
            return t

        return hook

    def contract_one(dst: int, n_up: int) -> Callable:
        def on_grad(grad: torch.Tensor) -> None:
            if per_example is not None:
                b = grad.shape[0]
                gb = grad[:, at].reshape(b, 1, -1).to(flat_delta.device)
                pe = _contract_per_example(delta.reshape(delta.shape[0], b, -1), n_up, gb)[:, 0]
                per_example[:n_up, dst] += weight * pe
                scores[:n_up, dst] += weight * pe.sum(-1)
                return
            scores[:n_up, dst] += weight * _contract(flat_delta, n_up, grad[:, at].reshape(-1, 1).to(flat_delta.device))[:, 0]

        def hook(t: torch.Tensor, hook: object) -> torch.Tensor:
            # The MLP-input hook sees the residual tensor itself; a copy makes the gradient we read the
            # gradient of the destination's input alone, not of the residual stream around it.
            t = t.clone()
            if t.requires_grad:
                t.register_hook(on_grad)
            return t

        return hook

    def per_neuron(index: int, per_head: bool) -> Callable:
        def on_grad(grad: torch.Tensor) -> None:
            assert neuron_scores is not None
            grad = grad[:, at].to(delta.device)
            if per_head:  # grad [b, p, h, d]
                width = grad.shape[2]
                d = delta[index : index + width].to(grad.dtype)  # [h, b, p, d]
                neuron_scores[index : index + width] += weight * torch.einsum("hbpd,bphd->hd", d, grad).double()
            else:
                neuron_scores[index] += weight * (delta[index].to(grad.dtype) * grad).sum((0, 1)).double()

        return on_grad

    def embed_hook(t: torch.Tensor, hook: object) -> torch.Tensor:
        if fill_from is not None:
            delta[0] = t.detach()[:, at].to(delta.device) - fill_from[0]
        x = _on(input_override, t) if input_override is not None else t
        x = x.detach().clone().requires_grad_(True)
        if neuron_scores is not None:
            x.register_hook(per_neuron(0, False))
        return x

    def grad_at_source(index: int, per_head: bool) -> Callable:
        def hook(t: torch.Tensor, hook: object) -> torch.Tensor:
            if t.requires_grad:
                t.register_hook(per_neuron(index, per_head))
            return t

        return hook

    def add_source(index: int, per_head: bool) -> Callable:
        def hook(t: torch.Tensor, hook: object) -> torch.Tensor:
            x = t.detach()[:, at].to(delta.device)
            if per_head:
                delta[index : index + n_heads] = x.permute(2, 0, 1, 3) - fill_from[index : index + n_heads]
            else:
                delta[index] = x - fill_from[index]
            return t

        return hook

    if fill_from is not None and input_override is not None:
        raise ValueError("fill_from needs the clean input: do not combine it with input_override")
    hooks: list = [(model.INPUT_HOOK, embed_hook)]
    if fill_from is not None:
        for layer in range(g.n_layers):
            hooks += head_output_hooks(model, layer, add_source(g.src_head(layer, 0), True))
            hooks.append((model.mlp_out_hook(layer), add_source(g.src_mlp(layer), False)))
    if neuron_scores is not None:
        for layer in range(g.n_layers):
            hooks += head_output_grad_hooks(model, layer, per_neuron(g.src_head(layer, 0), True))
            hooks.append((model.mlp_out_hook(layer), grad_at_source(g.src_mlp(layer), False)))
    for layer in range(g.n_layers):
        n_up = g.n_upstream_heads(layer)
        for x, dst0, width in g.head_inputs(layer):
            hooks.append((model.head_in_hook(layer, x), contract_heads(dst0, width, n_up)))
        hooks.append((model.mlp_in_hook(layer), contract_one(g.dst_mlp(layer), g.n_upstream_mlp(layer))))
    final_contract = contract_one(g.dst_logits, g.n_sources)
    with torch.enable_grad():
        final = _forward(model, batch.clean.to(model.device), hooks, final_hook=final_contract)
        values = answer_metric(model, final, batch.to(model.device), metric)
        values.sum().backward()
    return values.detach()


#: One copy's replacements: ``[(source_index, value [batch, pos, d_model]), ...]``.
Overrides = Sequence[tuple[int, torch.Tensor]]


def source_groups(model: CircuitModel) -> list[list[int]]:
    """The source indices of each output hook, in forward order: ``[input]``, then per layer the heads of
    the attention layer and the MLP (the units the EAP-IG library interpolates together)."""
    g = model.graph
    groups = [[0]]
    for layer in range(g.n_layers):
        groups.append([g.src_head(layer, h) for h in range(g.n_heads)])
        groups.append([g.src_mlp(layer)])
    return groups


def stacked_gradient_pass(
    model: CircuitModel,
    batch: Batch,
    metric: Callable[[torch.Tensor, Batch], torch.Tensor],
    delta: torch.Tensor,
    scores: torch.Tensor,
    overrides: Sequence[Overrides],
    rows: torch.Tensor,
    *,
    weight: float = 1.0,
) -> torch.Tensor:
    """One forward/backward over ``copies = len(overrides)`` stacked copies of the clean batch.

    In copy ``c`` each ``(s, value)`` of ``overrides[c]`` replaces source ``s``'s output by ``value``.
    For every destination ``v`` and upstream source ``u`` this adds

        ``weight * sum_c rows[c, u] * delta[u] . d(sum of metric over copy c)/d(input of v in copy c)``

    to ``scores[u, v]``.

    Args:
        delta: ``[n_sources, batch, pos, d]`` (clean - corrupted outputs, or any per-source vectors).
        scores: ``[n_sources, n_destinations]`` float64 accumulator, updated in place.
        overrides: per copy, the source outputs to replace.
        rows: ``[copies, n_sources]`` weight of each copy's gradient for each source row.

    Returns:
        The per-example metric ``[copies, batch]`` (detached).
    """
    g = model.graph
    c = len(overrides)
    b, p = batch.clean.shape
    n_heads = g.n_heads
    flat_delta = delta.reshape(delta.shape[0], -1)
    rows = rows.to(device=delta.device, dtype=delta.dtype)
    if rows.shape != (c, g.n_sources):
        raise ValueError(f"rows must be [copies={c}, n_sources={g.n_sources}], got {tuple(rows.shape)}")

    by_source: dict[int, list[tuple[int, torch.Tensor]]] = {}
    for copy, items in enumerate(overrides):
        for s, value in items:
            by_source.setdefault(int(s), []).append((copy, value))

    def contract_heads(dst0: int, width: int, n_up: int) -> Callable:
        r = rows[:, :n_up]  # [c, S]

        def on_grad(grad: torch.Tensor) -> None:
            gh = grad.reshape(c, b, p, width, -1).permute(0, 3, 1, 2, 4).reshape(c * width, -1)
            gh = gh.to(device=flat_delta.device, dtype=flat_delta.dtype)
            full = (flat_delta[:n_up] @ gh.T).reshape(n_up, c, width)
            scores[:n_up, dst0 : dst0 + width] += weight * torch.einsum("sch,cs->sh", full, r).double()

        def hook(t: torch.Tensor, hook: object) -> torch.Tensor:
            if t.requires_grad:
                t.register_hook(on_grad)
            return t

        return hook

    def contract_one(dst: int, n_up: int) -> Callable:
        r = rows[:, :n_up]

        def on_grad(grad: torch.Tensor) -> None:
            gc = grad.reshape(c, -1).to(device=flat_delta.device, dtype=flat_delta.dtype)
            full = flat_delta[:n_up] @ gc.T  # [S, c]
            scores[:n_up, dst] += weight * (full * r.T).sum(1).double()

        def hook(t: torch.Tensor, hook: object) -> torch.Tensor:
            t = t.clone()  # the gradient of this destination's input alone (see engine.gradient_pass)
            if t.requires_grad:
                t.register_hook(on_grad)
            return t

        return hook

    def replace(t: torch.Tensor, base: int, width: int) -> torch.Tensor:
        """Apply the overrides of sources ``base .. base + width - 1`` to ``t`` (per head if width > 1)."""
        todo = [(s, item) for s in range(base, base + width) for item in by_source.get(s, ())]
        if not todo:
            return t
        t = t.clone()
        for s, (copy, value) in todo:
            rows_ = slice(copy * b, (copy + 1) * b)
            if width > 1:
                t[rows_, :, s - base] = value.to(device=t.device, dtype=t.dtype)
            else:
                t[rows_] = value.to(device=t.device, dtype=t.dtype)
        return t

    def input_hook(t: torch.Tensor, hook: object) -> torch.Tensor:
        return replace(t.detach(), 0, 1).detach().clone().requires_grad_(True)

    def heads_hook(layer: int) -> Callable:
        base = g.src_head(layer, 0)
        return lambda t, hook: replace(t, base, n_heads)

    def mlp_hook(layer: int) -> Callable:
        base = g.src_mlp(layer)
        return lambda t, hook: replace(t, base, 1)

    hooks: list = [(model.INPUT_HOOK, input_hook)]
    for layer in range(g.n_layers):
        n_up = g.n_upstream_heads(layer)
        for x, dst0, width in g.head_inputs(layer):
            hooks.append((model.head_in_hook(layer, x), contract_heads(dst0, width, n_up)))
        hooks += head_output_hooks(model, layer, heads_hook(layer))
        hooks.append((model.mlp_in_hook(layer), contract_one(g.dst_mlp(layer), g.n_upstream_mlp(layer))))
        hooks.append((model.mlp_out_hook(layer), mlp_hook(layer)))
    rep = batch.repeat(c).to(model.device)
    with torch.enable_grad():
        final = _forward(model, rep.clean, hooks, final_hook=contract_one(g.dst_logits, g.n_sources))
        values = answer_metric(model, final, rep, metric)
        values.sum().backward()
    return values.detach().reshape(c, b)
