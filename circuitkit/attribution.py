"""Attribution algorithms shared by the builtin method plugins (and available to third-party ones).

- :func:`gradient_attribution`: EAP, EAP-IG (inputs) and clean-corrupted are one algorithm that differs
  only in where the gradients are taken: at input embeddings ``corrupted + alpha * (clean - corrupted)``
  for a list of ``alpha`` values, averaged, contracted with ``out(clean) - out(corrupted)`` of every source.
- :func:`exact_patching`: the true effect of corrupting each edge alone, several edges per pass.

Scores are summed over examples and divided by the number of examples at the end (float64), so they do
not depend on the batch size. Both also keep each example's score (same passes), which gives every edge's
standard error (``Scores.stderr``) and the bootstrap of circuits over examples (:mod:`circuitkit.uncertainty`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from circuitkit import engine
from circuitkit.data import TaskData
from circuitkit.engine.memory import check_attribution_fits
from circuitkit.errors import ConfigError
from circuitkit.interfaces import RunContext, Task
from circuitkit.interventions import Intervention, removed_values
from circuitkit.model import CircuitModel
from circuitkit.progress import progress, progress_bar
from circuitkit.results import Scores, node_scores
from circuitkit.uncertainty import PerExampleScores


def gradient_attribution(
    model: CircuitModel,
    task: Task,
    data: TaskData,
    ctx: RunContext,
    alphas: Sequence[float],
    *,
    method: str,
    meta: dict | None = None,
    level: str = "edge",
    stderr: bool = True,
) -> Scores:
    """Score every edge by ``(out_clean - out_corrupted) . mean_alpha grad(alpha)``.

    Args:
        alphas: interpolation points; the gradient is taken with the input embeddings set to
            ``corrupted + alpha * (clean - corrupted)``. ``[1.0]`` is EAP; ``[k/m for k in 1..m]`` is
            EAP-IG with ``m`` steps; ``[0.0, 1.0]`` is clean-corrupted.
        method: the method's name, recorded in the scores' provenance.
        level: ``edge``; ``node`` adds node scores (each node's outgoing edge scores summed, which is
            exactly the node-level attribution); ``neuron`` adds per-dimension scores of every node's
            output, ``(out_clean - out_corrupted)[d] * grad[d]`` summed over examples and positions.
        stderr: also contract per example in the same passes (summed over positions and interpolation
            points) and give the scores their standard errors (``Scores.stderr``) and per-example values
            (``Scores.per_example``, while they fit in memory; see :mod:`circuitkit.uncertainty`).

    Cost per batch: one corrupted forward without autograd, then one forward/backward per alpha (the
    ``alpha == 1`` pass also collects the clean source outputs). With ``ctx.positions_per_pass = k``
    the difference buffer holds ``k`` positions at a time and these passes run once per group of ``k``
    positions (memory divided, time multiplied by the number of groups; the scores are the same sums).
    """
    if not alphas:
        raise ConfigError(f"{method}: at least one interpolation point is needed.")
    check_level(level, method)
    g = model.graph
    scores = torch.zeros(g.n_sources, g.n_destinations, dtype=torch.float64, device=model.device)
    neurons = torch.zeros(g.n_sources, model.d_model, dtype=torch.float64, device=model.device) if level == "neuron" else None
    buffer_dtype = resolve_buffer_dtype(ctx, model)
    width = max((len(x) for x in data.clean_ids), default=1)
    span = resolve_positions_per_pass(ctx, width)
    batch_size = min(ctx.batch_size, max(len(data), 1))
    # In the model's precision the corrupted outputs and the differences share one buffer: the clean pass
    # overwrites each corrupted output with clean - corrupted in place.
    shared = buffer_dtype == model.dtype
    check_attribution_fits(
        model,
        batch_size,
        width,
        method,
        positions=span,
        buffer_dtype=buffer_dtype,
        interpolates=any(a != 1.0 for a in alphas),
        per_example=stderr,
        neurons=level == "neuron",
    )
    n = 0
    acc = PerExampleScores(g.n_edges) if stderr else None
    has_clean = any(a == 1.0 for a in alphas)
    interpolates = any(a != 1.0 for a in alphas)
    order = sorted(alphas, key=lambda a: a != 1.0)  # the clean pass first: it completes clean_minus_removed
    weight = 1.0 / len(alphas)
    for batch in progress(
        data.batches(ctx.batch_size, model.pad_id), ctx, total=_n_batches(data, ctx), desc=f"{method} attribution"
    ):
        batch = batch.to(model.device)
        p = batch.clean.shape[1]
        pe = (
            None
            if acc is None
            else torch.zeros(g.n_sources, g.n_destinations, len(batch), dtype=torch.float64, device=model.device)
        )
        groups = [None] if span >= p else [slice(s, min(s + span, p)) for s in range(0, p, span)]
        # The interpolated inputs are ig_start + a * ig_diff at every position. In one group they come from
        # the buffer (ig_diff None: clean_minus_removed[0]); in several, the buffer holds only some positions.
        ig_start, ig_diff = None, None
        if interpolates and groups[0] is not None:
            ig_start = (ctx.intervention or Intervention()).input_values(model, batch)
            ig_diff = engine.input_embeddings(model, batch.clean) - ig_start
        for at in groups:
            corrupted = removed_values(model, batch, ctx.intervention, positions=at)
            assert corrupted is not None
            if interpolates and ig_start is None:
                ig_start = corrupted[0].clone()  # kept apart from the buffer, which the clean pass overwrites
            if not has_clean:
                clean = engine.run_sources(model, batch.clean, positions=at).sources
                assert clean is not None
                clean_minus_removed = (clean - corrupted).to(buffer_dtype)
                del clean
            elif shared:
                clean_minus_removed = corrupted  # one buffer: it becomes clean - corrupted during the clean pass
            else:
                clean_minus_removed = torch.empty_like(corrupted, dtype=buffer_dtype)
            for a in order:
                if a == 1.0:
                    engine.gradient_pass(
                        model,
                        batch,
                        task.metric,
                        clean_minus_removed,
                        scores,
                        weight=weight,
                        fill_from=corrupted,
                        neuron_scores=neurons,
                        positions=at,
                        per_example=pe,
                    )
                else:
                    assert ig_start is not None
                    emb = ig_start + a * (ig_diff if ig_diff is not None else clean_minus_removed[0].to(ig_start.dtype))
                    engine.gradient_pass(
                        model,
                        batch,
                        task.metric,
                        clean_minus_removed,
                        scores,
                        input_override=emb,
                        weight=weight,
                        neuron_scores=neurons,
                        positions=at,
                        per_example=pe,
                    )
            del corrupted, clean_minus_removed
        if acc is not None and pe is not None:
            acc.add(g.to_flat(pe.permute(2, 0, 1)))
        n += len(batch)
    out = Scores.from_dense(g, scores / n, {"method": method, "n_examples": n, **(meta or {}), "level": level})
    if acc is not None:
        out.stderr, out.per_example = acc.stderr(), acc.matrix()
    if level == "edge":
        return out
    # Node scores: the outgoing edge scores summed (neuron level: the neuron scores summed, the same number).
    nodes = node_scores(out.dense()) if neurons is None else None
    res = Scores(g, out.values, out.meta, level, nodes, None if neurons is None else (neurons / n).cpu())
    res.stderr, res.per_example = out.stderr, out.per_example
    return res


def check_level(level: object, method: str) -> None:
    from circuitkit.results import LEVELS

    if level not in LEVELS:
        raise ConfigError(f"{method}: method.level must be one of {', '.join(LEVELS)}, got {level!r}.")


def resolve_buffer_dtype(ctx: RunContext, model: CircuitModel) -> torch.dtype:
    """The dtype of the activation-difference buffer: ``ctx.buffer_dtype`` or the model's."""
    from circuitkit.model import resolve_dtype

    name = ctx.buffer_dtype
    return resolve_dtype(name) if name else model.dtype


def resolve_positions_per_pass(ctx: RunContext, width: int) -> int:
    """Positions per gradient pass: ``ctx.positions_per_pass`` (None: all ``width``)."""
    k = ctx.positions_per_pass
    if k is None:
        return width
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"positions_per_pass must be a positive integer or null (all positions), got {k!r}.")
    return min(k, width)


def _n_batches(data: TaskData, ctx: RunContext) -> int:
    return (len(data) + ctx.batch_size - 1) // ctx.batch_size


def exact_patching(
    model: CircuitModel,
    task: Task,
    data: TaskData,
    ctx: RunContext,
    *,
    edges_per_pass: int = 32,
    edges: torch.Tensor | None = None,
    method: str = "patching",
    level: str = "edge",
) -> Scores:
    """The exact drop of the metric when each edge alone carries its corrupted value.

    Several edges share one pass: the batch is stacked ``edges_per_pass`` times and each copy has a
    different edge removed. Edges are grouped by the layer they enter, and each group's passes start at
    that layer from the clean residual stream (everything before it is the clean run); edges into the
    logits need no layer at all. A copy adds only its edge's removed-minus-clean difference at its
    destination (:func:`circuitkit.engine.single_edge_metric`), so a pass costs little more than the
    model's own forward from that layer: an edge into a head's q, k or v input replaces only that head's
    projection, computed for all such copies at once (no per-head inputs), and metrics that read only the
    answer tokens' logits unembed only those tokens (:func:`circuitkit.engine.answer_metric`). Edges into
    MLPs and into heads go in separate passes. ``edges`` restricts the computation to a subset of edge indices (the
    others get NaN). ``level="node"`` / ``"neuron"`` measures whole nodes / single output dimensions
    instead (:func:`circuitkit.nodes.exact_node_patching`, :func:`circuitkit.nodes.exact_neuron_patching`).
    """
    g = model.graph
    if edges_per_pass < 1:
        raise ConfigError(f"patching: edges_per_pass must be at least 1, got {edges_per_pass}.")
    check_level(level, method)
    if level != "edge":
        from circuitkit.nodes import exact_neuron_patching, exact_node_patching

        meta = {"method": method, "n_examples": len(data), "level": level, "units_per_pass": edges_per_pass}
        if level == "node":
            return Scores.for_nodes(g, exact_node_patching(model, task, data, ctx, nodes_per_pass=edges_per_pass), meta)
        neurons = exact_neuron_patching(model, task, data, ctx, neurons_per_pass=edges_per_pass)
        return Scores.for_nodes(g, node_scores(neurons), meta, neurons=neurons)
    todo = torch.arange(g.n_edges) if edges is None else torch.as_tensor(edges, dtype=torch.long)
    total = torch.zeros(g.n_edges, dtype=torch.float64)
    n = 0
    acc = PerExampleScores(g.n_edges)
    src = torch.as_tensor(g.edge_src)
    dst = torch.as_tensor(g.edge_dst)
    mlp_dst = torch.tensor([g.dst_mlp(layer) for layer in range(g.n_layers)], dtype=torch.long)
    layer_of = torch.searchsorted(mlp_dst, dst)  # each layer's destinations end with its MLP; logits: n_layers
    groups = []
    for layer in range(g.n_layers + 1):
        sel = todo[layer_of[todo] == layer]
        # Edges into the MLP apart from edges into heads: a pass with no head destination runs the layer's
        # attention without per-head inputs, which is cheaper.
        into_mlp = dst[sel] == (g.dst_mlp(layer) if layer < g.n_layers else g.dst_logits)
        for part in (sel[into_mlp], sel[~into_mlp]):
            groups += [(layer, chunk) for chunk in torch.split(part, edges_per_pass) if len(chunk)]
    batches = list(data.batches(ctx.batch_size, model.pad_id))
    with progress_bar(ctx, total=len(groups) * len(batches), desc=f"{method} (exact)") as bar:
        for batch in batches:
            batch = batch.to(model.device)
            corrupted = removed_values(model, batch, ctx.intervention)
            assert corrupted is not None
            clean = engine.run_sources(model, batch.clean, keep_resid=True)
            with torch.no_grad():
                clean_metric = engine.answer_metric(model, clean.final, batch, task.metric).double()
            assert clean.sources is not None
            removed_minus_clean = corrupted - clean.sources
            pe = torch.zeros(len(batch), g.n_edges, dtype=torch.float64)
            for layer, chunk in groups:
                patched = engine.single_edge_metric(
                    model, batch, task.metric, removed_minus_clean, src[chunk], dst[chunk], start_layer=layer, clean=clean
                ).double()
                drop = (clean_metric[None, :] - patched).cpu()  # [edges, batch]
                total[chunk] += drop.sum(1)
                pe[:, chunk] = drop.T
                bar.update(1)
            acc.add(pe)
            n += len(batch)
    out = total / n
    if edges is not None:
        mask = torch.ones(g.n_edges, dtype=torch.bool)
        mask[todo] = False
        out[mask] = float("nan")
    res = Scores(g, out, {"method": method, "n_examples": n, "edges_per_pass": edges_per_pass, "level": "edge"})
    res.stderr = acc.stderr()
    res.per_example = acc.matrix()
    if edges is not None:
        res.stderr[mask] = float("nan")
        res.per_example = None
    return res
