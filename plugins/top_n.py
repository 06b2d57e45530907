"""Top-n edge selection.

With node- or neuron-level scores (``method.level=node|neuron``), ``n_nodes`` / ``n_neurons`` choose
nodes or neurons instead, and the circuit is every edge between the kept nodes.

Keeps the ``n_edges`` highest-scoring edges (by absolute score unless ``absolute=false``), then prunes
dangling edges: an edge stays only if its source is reachable from ``input`` and its destination reaches
``logits`` through kept edges. The circuit can therefore hold fewer than ``n_edges`` edges; the number
kept is reported.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from circuitkit import hookimpl
from circuitkit.errors import ConfigError
from circuitkit.interfaces import PluginConfig, Selector
from circuitkit.nodes import select_units
from circuitkit.results import Circuit, Scores


@dataclass
class TopNConfig(PluginConfig):
    """Options of top-n selection.

    Attributes:
        n_edges: how many edges to keep before pruning.
        absolute: rank by ``|score|`` (True) or by signed score (False).
        n_nodes: with node- or neuron-level scores (``method.level=node``): keep this many nodes (heads,
            MLPs, input) and every edge between them.
        n_neurons: with neuron-level scores (``method.level=neuron``): keep this many neurons (output
            dimensions of nodes) and every edge between their nodes.
    """

    n_edges: int = 200
    absolute: bool = True
    n_nodes: int | None = None
    n_neurons: int | None = None


def top_n_mask(scores: Scores, n: int, absolute: bool) -> np.ndarray:
    total = scores.graph.n_edges
    if not isinstance(n, int) or n < 0:
        raise ConfigError(f"selector.n_edges must be a non-negative integer, got {n!r}.")
    if n > total:
        raise ConfigError(f"selector.n_edges={n} is larger than the graph, which has {total} edges. Use at most {total}.")
    key = scores.values.abs() if absolute else scores.values
    key = torch.nan_to_num(key, nan=-float("inf"))
    idx = torch.argsort(key, descending=True, stable=True)[:n]
    mask = np.zeros(total, dtype=bool)
    mask[idx.numpy()] = True
    return mask


def _unit_options(level: str) -> str:
    return "selector.n_neurons=<k> or selector.n_nodes=<k>." if level == "neuron" else "selector.n_nodes=<k>."


class TopN(Selector):
    config: TopNConfig

    def validate(self, graph) -> None:  # noqa: ANN001
        cfg = self.config
        if cfg.n_nodes is not None and cfg.n_neurons is not None:
            raise ConfigError("set selector.n_nodes or selector.n_neurons, not both.")
        if cfg.n_nodes is not None and (
            not isinstance(cfg.n_nodes, int) or isinstance(cfg.n_nodes, bool) or not 0 <= cfg.n_nodes <= graph.n_sources
        ):
            raise ConfigError(
                f"selector.n_nodes must be an integer from 0 to {graph.n_sources} (the graph's nodes besides logits), got {cfg.n_nodes!r}."
            )
        if cfg.n_neurons is not None and (
            not isinstance(cfg.n_neurons, int) or isinstance(cfg.n_neurons, bool) or cfg.n_neurons < 0
        ):
            raise ConfigError(f"selector.n_neurons must be a non-negative integer, got {cfg.n_neurons!r}.")
        if cfg.n_nodes is None and cfg.n_neurons is None:
            top_n_mask(Scores(graph, torch.zeros(graph.n_edges)), cfg.n_edges, cfg.absolute)

    def check_level(self, level: str) -> None:
        cfg = self.config
        if level == "edge" and (cfg.n_nodes is not None or cfg.n_neurons is not None):
            raise ConfigError("selector.n_nodes / selector.n_neurons need node- or neuron-level scores: add method.level=node (or neuron).")
        if level == "node" and cfg.n_neurons is not None:
            raise ConfigError("selector.n_neurons needs neuron-level scores: run the method with method.level=neuron.")
        if level != "edge" and cfg.n_nodes is None and cfg.n_neurons is None:
            raise ConfigError(f"these scores are {level}-level (method.level={level}): choose " + _unit_options(level))

    def select(self, scores: Scores) -> Circuit:
        cfg = self.config
        if cfg.n_nodes is not None or cfg.n_neurons is not None:
            return select_units(scores, n_nodes=cfg.n_nodes, n_neurons=cfg.n_neurons, absolute=cfg.absolute)
        if scores.level != "edge":
            raise ConfigError(f"these scores are {scores.level}-level (method.level={scores.level}): choose " + _unit_options(scores.level))
        return Circuit.from_mask(scores.graph, top_n_mask(scores, cfg.n_edges, cfg.absolute), scores)


@hookimpl
def circuitkit_register_selectors(registry) -> None:  # noqa: ANN001
    registry.add("top_n", TopN, TopNConfig)
