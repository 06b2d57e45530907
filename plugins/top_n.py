"""Top-n edge selection.

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
from circuitkit.results import Circuit, Scores


@dataclass
class TopNConfig(PluginConfig):
    """Options of top-n selection.

    Attributes:
        n_edges: how many edges to keep before pruning.
        absolute: rank by ``|score|`` (True) or by signed score (False).
    """

    n_edges: int = 200
    absolute: bool = True


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


class TopN(Selector):
    config: TopNConfig

    def validate(self, graph) -> None:  # noqa: ANN001
        top_n_mask(Scores(graph, torch.zeros(graph.n_edges)), self.config.n_edges, self.config.absolute)

    def select(self, scores: Scores) -> Circuit:
        return Circuit.from_mask(scores.graph, top_n_mask(scores, self.config.n_edges, self.config.absolute), scores)


@hookimpl
def circuitkit_register_selectors(registry) -> None:  # noqa: ANN001
    registry.add("top_n", TopN, TopNConfig)
