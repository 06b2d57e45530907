"""Greedy edge selection from the logits backwards (Hanna et al. 2024, "Have Faith in Faithfulness").

The circuit starts as the ``logits`` node alone; the candidates are the edges into it. Repeatedly, the
highest-scoring candidate (by ``|score|``, or signed score with ``absolute=false``) joins the circuit; if
its source node was not in the circuit yet, that node joins and the edges into it become candidates.
This stops after ``n_edges`` edges, so every chosen edge leads to ``logits`` through chosen edges. Edges
whose source cannot be reached from ``input`` are then pruned (Graph.prune), so the circuit can hold
fewer than ``n_edges`` edges. Ties are broken by the graph's edge order.

With ``n_edges`` null (the default) the run chooses ``n_edges``: the smallest whose circuit reaches
faithfulness ``target``, searched as by ``top_n`` (:mod:`circuitkit.search`).
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field

import numpy as np
import torch

from circuitkit.api import GRID_PERCENTAGES, Circuit, ConfigError, Graph, PluginConfig, Scores, SearchesSize, Selector, hookimpl


@dataclass
class GreedyConfig(PluginConfig):
    """Options of greedy selection.

    Attributes:
        n_edges: how many edges to add before pruning; null: the smallest number whose circuit reaches
            faithfulness ``target`` (searched in the run).
        absolute: rank by ``|score|`` (True) or by signed score (False).
        target: with ``n_edges`` null: the faithfulness the circuit must reach.
        search_budgets: with ``n_edges`` null: the sizes evaluated first, in percent of the graph's edges.
        refine_points: sizes evaluated per bisection round (one batched sweep over the data per round).
        refine_steps: bisection rounds; null: until the answer is exact to one edge.
        circuits_per_pass: the most circuits stacked in one forward pass while searching (memory grows with it; on
            a CPU fewer where their per-head tensors would pass ``circuitkit.evaluation.CPU_PASS_BYTES``).
    """

    n_edges: int | None = None
    absolute: bool = True
    target: float = 0.85
    search_budgets: list[float] = field(default_factory=lambda: list(GRID_PERCENTAGES))
    refine_points: int = 3
    refine_steps: int | None = None
    circuits_per_pass: int = 8

    def __post_init__(self) -> None:
        # Whether n_edges fits the graph is checked by Greedy.validate.
        n = self.n_edges
        if n is not None and (isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0):
            raise ConfigError(f"selector.n_edges must be a non-negative integer, got {n!r}.")


def check_n_edges(n: object, graph: Graph) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ConfigError(f"selector.n_edges must be a non-negative integer, got {n!r}.")
    if n > graph.n_edges:
        raise ConfigError(
            f"selector.n_edges={n} is larger than the graph, which has {graph.n_edges} edges. Use at most {graph.n_edges}."
        )
    return int(n)


def greedy_order(scores: Scores, n: int | None, absolute: bool = True) -> list[int]:
    """The flat indices of the first ``n`` edges the greedy search adds, in the order it adds them."""
    g = scores.graph
    count = check_n_edges(n, g)
    magnitude = scores.values.abs() if absolute else scores.values
    key = torch.nan_to_num(magnitude, nan=-math.inf).tolist()
    edge_src = g.edge_src
    # The edges into each node (a grouped key/value input is an input of every head of its group).
    into: list[list[int]] = [[] for _ in g.node_names]
    for e, d in enumerate(g.edge_dst.tolist()):
        for node in g.dst_nodes[d].tolist():
            into[node].append(e)
    in_circuit = np.zeros(len(g.node_names), dtype=bool)
    logits = len(g.node_names) - 1
    in_circuit[logits] = True
    candidate = np.zeros(g.n_edges, dtype=bool)  # already a candidate (an edge can enter several heads)
    heap = [(-key[e], e) for e in into[logits]]
    candidate[into[logits]] = True
    heapq.heapify(heap)
    order: list[int] = []
    while len(order) < count and heap:
        _, e = heapq.heappop(heap)
        order.append(e)
        s = int(edge_src[e])  # source indices equal node indices
        if not in_circuit[s]:
            in_circuit[s] = True
            for e2 in into[s]:
                if not candidate[e2]:
                    candidate[e2] = True
                    heapq.heappush(heap, (-key[e2], e2))
    return order


def greedy_mask(scores: Scores, n: int | None, absolute: bool = True) -> np.ndarray:
    mask = np.zeros(scores.graph.n_edges, dtype=bool)
    mask[greedy_order(scores, n, absolute)] = True
    return mask


class Greedy(SearchesSize, Selector):
    config: GreedyConfig

    def validate(self, graph: Graph) -> None:
        if self.searching():
            self.check_search()
        else:
            check_n_edges(self.config.n_edges, graph)

    def check_level(self, level: str) -> None:
        if level != "edge":
            raise ConfigError(
                f"greedy selects edges, but method.level={level}; use selector=top_n selector.n_nodes=<k> or "
                "selector=threshold, or method.level=edge."
            )

    def select(self, scores: Scores) -> Circuit:
        self.check_level(scores.level)
        if self.searching():
            self.refuse_without_model()
        return Circuit.from_mask(scores.graph, greedy_mask(scores, self.config.n_edges, self.config.absolute), scores)

    def select_in_run(self, scores: Scores, model, task, data, ctx) -> Circuit:  # noqa: ANN001
        if self.searching():
            self.check_level(scores.level)
            self.check_search()
            return self.search(scores, model, task, data, ctx)
        return self.select(scores)


@hookimpl
def circuitkit_register_selectors(registry) -> None:  # noqa: ANN001
    registry.add("greedy", Greedy, GreedyConfig)
