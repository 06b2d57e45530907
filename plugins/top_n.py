"""Top-n edge selection.

With node- or neuron-level scores (``method.level=node|neuron``), ``n_nodes`` / ``n_neurons`` choose
nodes or neurons instead, and the circuit is every edge between the kept nodes.

Keeps the ``n_edges`` highest-scoring edges (by absolute score unless ``absolute=false``), then prunes
dangling edges: an edge stays only if its source is reachable from ``input`` and its destination reaches
``logits`` through kept edges. The circuit can therefore hold fewer than ``n_edges`` edges; the number
kept is reported.

With ``n_edges`` null (the default) the run chooses ``n_edges``: the smallest that reaches faithfulness
``target`` (0.85), found with batched evaluations of a grid of sizes (``search_budgets``, MIB's edge
budgets) and a bisection between the two grid sizes around the target (:mod:`circuitkit.search`). How it
was found is written to results.json (``selection``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from circuitkit.api import (
    GRID_PERCENTAGES,
    Circuit,
    ConfigError,
    PluginConfig,
    Scores,
    SearchesSize,
    Selector,
    check_count,
    hookimpl,
    rank_key,
    select_units,
    top_mask,
)


@dataclass
class TopNConfig(PluginConfig):
    """Options of top-n selection.

    Attributes:
        n_edges: how many edges to keep before pruning; null: the smallest number whose circuit reaches
            faithfulness ``target`` (searched in the run).
        absolute: rank by ``|score|`` (True) or by signed score (False).
        n_nodes: with node- or neuron-level scores (``method.level=node``): keep this many nodes (heads,
            MLPs, input) and every edge between them.
        n_neurons: with neuron-level scores (``method.level=neuron``): keep this many neurons (output
            dimensions of nodes) and every edge between their nodes.
        target: with ``n_edges`` null: the faithfulness the circuit must reach.
        search_budgets: with ``n_edges`` null: the sizes evaluated first, in percent of the graph's edges.
        refine_points: sizes evaluated per bisection round (one batched sweep over the data per round).
        refine_steps: bisection rounds; null: until the answer is exact to one edge.
        circuits_per_pass: the most circuits stacked in one forward pass while searching (memory grows with it; on
            a CPU fewer where their per-head tensors would pass ``circuitkit.evaluation.CPU_PASS_BYTES``).
    """

    n_edges: int | None = None
    absolute: bool = True
    n_nodes: int | None = None
    n_neurons: int | None = None
    target: float = 0.85
    search_budgets: list[float] = field(default_factory=lambda: list(GRID_PERCENTAGES))
    refine_points: int = 3
    refine_steps: int | None = None
    circuits_per_pass: int = 8

    def __post_init__(self) -> None:
        # What the graph decides (sizes against its edges and nodes) is checked by TopN.validate.
        n = self.n_edges
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
            raise ConfigError(f"selector.n_edges must be a non-negative integer, got {n!r}.")
        if self.n_nodes is not None and self.n_neurons is not None:
            raise ConfigError("set selector.n_nodes or selector.n_neurons, not both.")


def top_n_mask(scores: Scores, n: int | None, absolute: bool) -> np.ndarray:
    total = scores.graph.n_edges
    if not isinstance(n, int) or n < 0:
        raise ConfigError(f"selector.n_edges must be a non-negative integer, got {n!r}.")
    if n > total:
        raise ConfigError(f"selector.n_edges={n} is larger than the graph, which has {total} edges. Use at most {total}.")
    return top_mask(rank_key(scores.values, absolute), n)


class TopN(SearchesSize, Selector):
    config: TopNConfig

    def validate(self, graph) -> None:  # noqa: ANN001
        cfg = self.config
        if cfg.n_nodes is not None and cfg.n_neurons is not None:
            raise ConfigError("set selector.n_nodes or selector.n_neurons, not both.")
        if cfg.n_nodes is not None:
            check_count(cfg.n_nodes, "selector.n_nodes", graph.n_sources, "the graph's nodes besides logits")
        if cfg.n_neurons is not None:
            check_count(cfg.n_neurons, "selector.n_neurons")
        if self.searching():
            self.check_search()
        elif cfg.n_nodes is None and cfg.n_neurons is None:
            top_n_mask(Scores(graph, torch.zeros(graph.n_edges)), cfg.n_edges, cfg.absolute)

    def check_level(self, level: str) -> None:
        cfg = self.config
        if level == "edge" and (cfg.n_nodes is not None or cfg.n_neurons is not None):
            raise ConfigError(
                "selector.n_nodes / selector.n_neurons need node- or neuron-level scores: add method.level=node (or neuron)."
            )
        if level == "node" and cfg.n_neurons is not None:
            raise ConfigError("selector.n_neurons needs neuron-level scores: run the method with method.level=neuron.")
        if level != "edge" and cfg.n_nodes is None and cfg.n_neurons is None:
            units = "selector.n_neurons=<k> or selector.n_nodes=<k>." if level == "neuron" else "selector.n_nodes=<k>."
            raise ConfigError(f"these scores are {level}-level (method.level={level}): choose {units}")

    def select(self, scores: Scores) -> Circuit:
        cfg = self.config
        self.check_level(scores.level)
        if cfg.n_nodes is not None or cfg.n_neurons is not None:
            return select_units(scores, n_nodes=cfg.n_nodes, n_neurons=cfg.n_neurons, absolute=cfg.absolute)
        if self.searching():
            self.refuse_without_model()
        return Circuit.from_mask(scores.graph, top_n_mask(scores, cfg.n_edges, cfg.absolute), scores)

    def select_in_run(self, scores: Scores, model, task, data, ctx) -> Circuit:  # noqa: ANN001
        if scores.level == "edge" and self.searching():
            self.check_search()
            return self.search(scores, model, task, data, ctx)
        return self.select(scores)


@hookimpl
def circuitkit_register_selectors(registry) -> None:  # noqa: ANN001
    registry.add("top_n", TopN, TopNConfig)
