"""Threshold edge selection.

Keeps every edge whose ``|score|`` is at least ``threshold`` (or whose signed score is, with
``absolute=false``), then prunes dangling edges (Graph.prune): an edge stays only if its source is reachable
from ``input`` and its destination reaches ``logits`` through kept edges. The circuit is therefore
connected, and may hold fewer edges than pass the threshold.

The threshold has no default: scores are drops of the task metric, whose scale depends on the metric, the
model and the method, so no one number means "important" everywhere (0 would keep every edge and report a
faithfulness of 1). A run without ``selector.threshold`` stops before any computation and says so. A
threshold that keeps at least :data:`NEARLY_ALL` of the edges (or nodes, or neurons), or none of them, is
logged as a warning with the scale of the scores, since such a circuit measures nothing.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from circuitkit.api import Circuit, ConfigError, PluginConfig, Scores, Selector, hookimpl, rank_key, select_units


@dataclass
class ThresholdConfig(PluginConfig):
    """Options of threshold selection.

    Attributes:
        threshold: keep edges scoring at least this (nodes or neurons with node- or neuron-level
            scores). Required: scores are in units of the task metric, so pick it from a run's
            ``scores.json`` (or use ``selector=top_n``).
        absolute: compare ``|score|`` (True) or the signed score (False).
    """

    threshold: float | None = None
    absolute: bool = True

    def __post_init__(self) -> None:
        # A missing threshold is refused by Threshold.validate (the config's default leaves it to the user).
        t = self.threshold
        if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t)):
            raise ConfigError(f"selector.threshold must be a finite number, got {t!r}.")


#: A threshold keeping at least this fraction of the units is warned about.
NEARLY_ALL = 0.9

log = logging.getLogger("circuitkit")


def threshold_mask(scores: Scores, threshold: float, absolute: bool) -> np.ndarray:
    """``[n_edges]`` bool: edges whose (absolute) score is at least ``threshold`` (NaN scores never pass)."""
    return (rank_key(scores.values, absolute) >= threshold).numpy()


class Threshold(Selector):
    config: ThresholdConfig

    def validate(self, graph) -> None:  # noqa: ANN001
        t = self.config.threshold
        if t is None:
            raise ConfigError(
                "selector=threshold needs selector.threshold=<value>: edges (nodes, neurons) whose |score| is at "
                "least the value are kept. Scores are drops of the task metric, so their scale depends on the metric, "
                "model and method: look at a previous run's scores.json, or use selector=top_n selector.n_edges=<k>."
            )
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
            raise ConfigError(f"selector.threshold must be a finite number, got {t!r}.")

    def select(self, scores: Scores) -> Circuit:
        self.validate(scores.graph)
        t, absolute = float(self.config.threshold), self.config.absolute  # type: ignore[arg-type]
        if scores.level != "edge":  # node- or neuron-level scores: keep the units that pass
            unit, key = ("neurons", scores.neurons) if scores.level == "neuron" else ("nodes", scores.nodes)
            assert key is not None
            warn_extreme(rank_key(key, absolute).flatten(), t, unit)
            return select_units(scores, threshold=t, absolute=absolute)
        warn_extreme(rank_key(scores.values, absolute), t, "edges")
        return Circuit.from_mask(scores.graph, threshold_mask(scores, t, absolute), scores)


def warn_extreme(key, threshold: float, unit: str) -> None:  # noqa: ANN001
    """Log a warning when ``threshold`` keeps (nearly) every unit of ``key`` or none of them."""
    total = int(key.numel())
    kept = int((key >= threshold).sum())
    if total == 0 or 0 < kept < NEARLY_ALL * total:
        return
    finite = key[key.isfinite()]
    ranked = finite.sort(descending=True).values
    scale = ", ".join(f"the {k}th largest is {float(ranked[k - 1]):.3g}" for k in (10, 100, 1000) if k <= len(ranked))
    if kept == 0:
        what = f"keeps none of the {total} {unit}: the circuit is empty, so its faithfulness is 0 by construction"
    else:
        what = (
            f"keeps {kept} of the {total} {unit} ({100 * kept / total:.0f}%): the circuit is (nearly) the whole model, so its "
            "faithfulness (near 1) says nothing about a circuit"
        )
    log.warning(
        "selector.threshold=%g %s. Scores range up to %.3g%s; choose a threshold in that range.",
        threshold,
        what,
        float(ranked[0]) if len(ranked) else float("nan"),
        f" ({scale})" if scale else "",
    )


@hookimpl
def circuitkit_register_selectors(registry) -> None:  # noqa: ANN001
    registry.add("threshold", Threshold, ThresholdConfig)
