"""Threshold edge selection.

Keeps every edge whose ``|score|`` is at least ``threshold`` (or whose signed score is, with
``absolute=false``), then prunes dangling edges (Graph.prune): an edge stays only if its source is reachable
from ``input`` and its destination reaches ``logits`` through kept edges. The circuit is therefore
connected, and may hold fewer edges than pass the threshold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from circuitkit import hookimpl
from circuitkit.errors import ConfigError
from circuitkit.interfaces import PluginConfig, Selector
from circuitkit.nodes import rank_key, select_units
from circuitkit.results import Circuit, Scores


@dataclass
class ThresholdConfig(PluginConfig):
    """Options of threshold selection.

    Attributes:
        threshold: keep edges scoring at least this (nodes or neurons with node- or neuron-level
            scores).
        absolute: compare ``|score|`` (True) or the signed score (False).
    """

    threshold: float = 0.0
    absolute: bool = True


def threshold_mask(scores: Scores, threshold: float, absolute: bool) -> np.ndarray:
    """``[n_edges]`` bool: edges whose (absolute) score is at least ``threshold`` (NaN scores never pass)."""
    return (rank_key(scores.values, absolute) >= threshold).numpy()


class Threshold(Selector):
    config: ThresholdConfig

    def validate(self, graph) -> None:  # noqa: ANN001
        t = self.config.threshold
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
            raise ConfigError(f"selector.threshold must be a finite number, got {t!r}.")

    def select(self, scores: Scores) -> Circuit:
        self.validate(scores.graph)
        if scores.level != "edge":  # node- or neuron-level scores: keep the units that pass
            return select_units(scores, threshold=float(self.config.threshold), absolute=self.config.absolute)
        mask = threshold_mask(scores, float(self.config.threshold), self.config.absolute)
        return Circuit.from_mask(scores.graph, mask, scores)


@hookimpl
def circuitkit_register_selectors(registry) -> None:  # noqa: ANN001
    registry.add("threshold", Threshold, ThresholdConfig)
