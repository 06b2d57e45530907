"""Node-level scores: the effect of corrupting every outgoing edge of a node (a head, an MLP, the input).

The node score of ``u`` estimates ``metric(clean) - metric(u's output corrupted everywhere)``, i.e. the
effect of corrupting all edges ``u -> *`` at once (as in node-level attribution patching, e.g. the
``level="node"`` option of the MIB circuit track).

- Gradient methods (EAP, EAP-IG, clean-corrupted, EAP-IG-activations): the input of every destination
  is a sum of source outputs, so ``d metric / d out_u = sum_v d metric / d in_v`` over the destinations
  ``v`` that ``u`` feeds, and the node score ``(out_u(clean) - out_u(corrupted)) . d metric / d out_u``
  is exactly the sum of ``u``'s outgoing edge scores: :func:`node_scores_from_edges`.
- Exact patching is not additive over edges; :func:`exact_node_patching` measures it directly (the
  batch stacked ``nodes_per_pass`` times, one node's outgoing edges corrupted per copy).

Node scores are ``[n_sources]`` float64 tensors in the graph's source order (``graph.source_names``);
:func:`node_circuit` turns a set of nodes into the edge circuit between them.
"""

from __future__ import annotations

import numpy as np
import torch

from circuitkit import engine
from circuitkit.data import TaskData
from circuitkit.errors import ConfigError
from circuitkit.graph import Graph
from circuitkit.interfaces import RunContext, Task
from circuitkit.interventions import removed_values
from circuitkit.model import CircuitModel
from circuitkit.results import Circuit, Scores, node_scores


def node_scores_from_edges(scores: Scores) -> torch.Tensor:
    """``[n_sources]``: the sum of each source node's outgoing edge scores (exact node-level scores for
    gradient methods; see the module docstring)."""
    return node_scores(scores.dense())


def _exact_unit_patching(
    model: CircuitModel,
    task: Task,
    data: TaskData,
    ctx: RunContext,
    units: torch.Tensor,
    dims: torch.Tensor | None,
    per_pass: int,
) -> torch.Tensor:
    """Mean drop of the metric for each (unit, dim) copy: units grouped by layer, each group's stacked
    passes starting at that layer (:func:`circuitkit.engine.single_unit_metric`)."""
    g = model.graph
    layer = torch.tensor([s.layer for s in model.wiring.sources for _ in range(s.width)])[units]  # the input: 0
    groups = []
    for L in range(g.n_layers):
        sel = (layer == L).nonzero().squeeze(1)
        groups += [(L, chunk) for chunk in torch.split(sel, per_pass) if len(chunk)]
    total = torch.zeros(len(units), dtype=torch.float64)
    n = 0
    for batch in data.batches(ctx.batch_size, model.pad_id):
        batch = batch.to(model.device)
        removed = removed_values(model, batch, ctx.intervention)
        clean = engine.run_sources(model, batch.clean, keep_resid=True)
        with torch.no_grad():
            clean_metric = engine.answer_metric(model, clean.final, batch, task.metric).double()
        for L, chunk in groups:
            patched = engine.single_unit_metric(
                model,
                batch,
                task.metric,
                removed,
                units[chunk],
                None if dims is None else dims[chunk],
                start_layer=L,
                clean=clean,
            ).double()
            total[chunk] += (clean_metric[None, :] - patched).sum(1).cpu()
        n += len(batch)
    return total / n


def exact_node_patching(
    model: CircuitModel,
    task: Task,
    data: TaskData,
    ctx: RunContext,
    *,
    nodes_per_pass: int = 16,
) -> torch.Tensor:
    """``[n_sources]``: the exact mean drop of the metric when every outgoing edge of a node carries its
    corrupted value (the node's output is replaced by its corrupted output for every reader)."""
    if nodes_per_pass < 1:
        raise ConfigError(f"nodes_per_pass must be at least 1, got {nodes_per_pass}.")
    g = model.graph
    return _exact_unit_patching(model, task, data, ctx, torch.arange(g.n_sources), None, nodes_per_pass)


def exact_neuron_patching(
    model: CircuitModel,
    task: Task,
    data: TaskData,
    ctx: RunContext,
    *,
    neurons_per_pass: int = 32,
) -> torch.Tensor:
    """``[n_sources, d_model]``: the exact mean drop of the metric when one output dimension of a node
    carries its corrupted value for every reader (one neuron per stacked copy). Node ``u``'s neuron
    scores do not sum to its node score: patching is not additive."""
    if neurons_per_pass < 1:
        raise ConfigError(f"neurons_per_pass must be at least 1, got {neurons_per_pass}.")
    g = model.graph
    d = model.d_model
    units = torch.arange(g.n_sources).repeat_interleave(d)
    dims = torch.arange(d).repeat(g.n_sources)
    return _exact_unit_patching(model, task, data, ctx, units, dims, neurons_per_pass).reshape(g.n_sources, d)


def node_circuit(graph: Graph, nodes: np.ndarray | list[str], scores: Scores | None = None) -> Circuit:
    """The circuit of every edge between kept nodes (``logits`` is always kept), pruned.

    Args:
        nodes: a ``[n_sources]`` bool mask over ``graph.source_names``, or a list of node names.
    """
    if isinstance(nodes, (list, tuple)):
        index = {n: i for i, n in enumerate(graph.source_names)}
        mask = np.zeros(graph.n_sources, dtype=bool)
        for name in nodes:
            if name not in index:
                raise ConfigError(f"'{name}' is not a node of this graph; nodes look like 'input', 'a0.h1', 'm2'.")
            mask[index[name]] = True
    else:
        mask = np.asarray(nodes, dtype=bool)
    node_mask = np.append(mask, True)  # logits
    # A grouped key/value input is kept when one of the heads it feeds is.
    edges = node_mask[graph.edge_src] & graph.dst_mask(node_mask)[graph.edge_dst]
    circuit = Circuit.from_mask(graph, edges, scores)
    circuit.level = "node"
    return circuit


def neuron_circuit(graph: Graph, neurons: np.ndarray, scores: Scores | None = None) -> Circuit:
    """The circuit of the kept neurons ``[n_sources, d_model]`` (bool): every edge between nodes with at
    least one kept neuron (pruned); the other dimensions of those nodes carry their corrupted value."""
    neurons = np.asarray(neurons, dtype=bool)
    circuit = node_circuit(graph, np.asarray(neurons.any(1)), scores)
    circuit.level = "neuron"
    circuit.neurons = neurons.copy()
    return circuit


def rank_key(values: torch.Tensor, absolute: bool) -> torch.Tensor:
    """What selectors rank by: ``|values|`` (or the signed values), NaN last."""
    key = values.abs() if absolute else values
    return torch.nan_to_num(key, nan=-float("inf"))


def top_mask(key: torch.Tensor, n: int) -> np.ndarray:
    """Bool mask (``key``'s shape) of the ``n`` highest keys; ties broken by position."""
    mask = np.zeros(key.numel(), dtype=bool)
    mask[torch.argsort(key.reshape(-1), descending=True, stable=True)[:n].numpy()] = True
    return mask.reshape(tuple(key.shape))


def check_count(n: object, key: str, total: int | None = None, what: str = "") -> int:
    """``n`` as an int, or a :class:`ConfigError` naming ``key`` when it is not an integer in ``0 .. total``."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 0 or (total is not None and n > total):
        bound = f"an integer from 0 to {total}{f' ({what})' if what else ''}" if total is not None else "a non-negative integer"
        raise ConfigError(f"{key} must be {bound}, got {n!r}.")
    return n


def select_units(
    scores: Scores,
    *,
    n_nodes: int | None = None,
    n_neurons: int | None = None,
    threshold: float | None = None,
    absolute: bool = True,
) -> Circuit:
    """A node- or neuron-level circuit from node/neuron-level ``scores``: the top ``n_nodes`` nodes, the
    top ``n_neurons`` neurons, or (``threshold``) every unit scoring at least the threshold."""
    g = scores.graph
    if scores.level == "edge" or scores.nodes is None:
        raise ConfigError(
            "selecting nodes or neurons needs node- or neuron-level scores: run the method with "
            "method.level=node (or neuron), or select edges with selector.n_edges."
        )
    if n_neurons is not None or (threshold is not None and scores.level == "neuron"):
        if scores.neurons is None:
            raise ConfigError("selector.n_neurons needs neuron-level scores: run the method with method.level=neuron.")
        key = rank_key(scores.neurons, absolute)
        if threshold is not None:
            return neuron_circuit(g, (key >= threshold).numpy(), scores)
        return neuron_circuit(
            g, top_mask(key, check_count(n_neurons, "selector.n_neurons", key.numel(), "nodes x d_model")), scores
        )
    key = rank_key(scores.nodes, absolute)
    if threshold is not None:
        return node_circuit(g, (key >= threshold).numpy(), scores)
    n = check_count(n_nodes, "selector.n_nodes", g.n_sources, "the graph's nodes besides logits")
    return node_circuit(g, top_mask(key, n), scores)
