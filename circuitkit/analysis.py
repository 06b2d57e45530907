"""Comparing methods and circuits: score agreement, circuit overlap, and faithfulness curves' areas.

- :func:`score_agreement`: Pearson and Spearman correlation of ``|score|`` between two :class:`Scores`
  (e.g. a method against exact ``patching``), as in Hanna et al. (2024).
- :func:`overlap`: edge and node IoU, precision and recall of one circuit against a reference.
- :func:`overlap_vs_faithfulness`: circuits of two methods at equal sizes, their overlap and the
  faithfulness of each, to show that high overlap does not imply high faithfulness.
- :func:`cpr`, :func:`cmd`, :func:`area_under_curve`: the MIB areas under a faithfulness curve (see
  :func:`cpr` for the exact definition).

No SciPy at runtime: ranks (average ties) are computed with NumPy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from circuitkit.errors import CircuitkitError, ConfigError
from circuitkit.results import Circuit, Scores

# ----- correlations --------------------------------------------------------------------------------


def _as_array(x: Any) -> np.ndarray:
    if isinstance(x, Scores):
        x = x.values
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64).reshape(-1)


def rankdata(x: Any) -> np.ndarray:
    """Ranks 1..n of ``x``, ties sharing the average of their ranks (SciPy's ``rankdata(method="average")``)."""
    a = _as_array(x)
    n = len(a)
    order = np.argsort(a, kind="mergesort")
    sorted_a = a[order]
    # Start of each run of equal values in sorted order.
    starts = np.flatnonzero(np.r_[True, sorted_a[1:] != sorted_a[:-1]])
    ends = np.r_[starts[1:], n]  # exclusive
    avg = (starts + ends + 1) / 2.0  # mean of the 1-based ranks starts+1 .. ends
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def pearson(x: Any, y: Any) -> float | None:
    """Pearson correlation; None when either input is constant (or has fewer than 2 values)."""
    a, b = _as_array(x), _as_array(y)
    if a.shape != b.shape:
        raise CircuitkitError(f"Cannot correlate arrays of different lengths ({len(a)} and {len(b)}).")
    if len(a) < 2:
        return None
    a = a - a.mean()
    b = b - b.mean()
    den = math.sqrt(float(a @ a) * float(b @ b))
    if den == 0.0 or not math.isfinite(den):
        return None
    return float(np.clip((a @ b) / den, -1.0, 1.0))


def spearman(x: Any, y: Any) -> float | None:
    """Spearman rank correlation: Pearson correlation of the average-tie ranks."""
    return pearson(rankdata(x), rankdata(y))


def score_agreement(a: Scores, b: Scores, absolute: bool = True) -> dict[str, float | int | None]:
    """Pearson and Spearman correlation between two methods' edge scores (over all edges).

    Args:
        a: scores of one method (e.g. EAP-IG).
        b: scores of the reference (e.g. exact ``patching``).
        absolute: correlate ``|score|`` (default, as Hanna et al. 2024 compare importance, not sign).

    Returns:
        ``{"pearson", "spearman", "n_edges"}``; a correlation is None when one side is constant.
    """
    if a.graph != b.graph:
        raise CircuitkitError(
            f"The two scores are for different graphs ({a.graph.n_layers}x{a.graph.n_heads} and "
            f"{b.graph.n_layers}x{b.graph.n_heads}); compare scores of the same model."
        )
    x, y = a.values, b.values
    if absolute:
        x, y = x.abs(), y.abs()
    return {"pearson": pearson(x, y), "spearman": spearman(x, y), "n_edges": a.graph.n_edges}


# ----- overlap ------------------------------------------------------------------------------------


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def _set_stats(a: np.ndarray, ref: np.ndarray, prefix: str) -> dict[str, float | int | None]:
    inter = int((a & ref).sum())
    union = int((a | ref).sum())
    return {
        f"{prefix}_iou": _ratio(inter, union),
        f"{prefix}_precision": _ratio(inter, int(a.sum())),
        f"{prefix}_recall": _ratio(inter, int(ref.sum())),
        f"{prefix}_intersection": inter,
        f"{prefix}s_a": int(a.sum()),
        f"{prefix}s_reference": int(ref.sum()),
    }


def overlap(a: Circuit, reference: Circuit) -> dict[str, float | int | None]:
    """Edge and node overlap of circuit ``a`` with ``reference``.

    ``iou = |A & R| / |A | R|``, ``precision = |A & R| / |A|``, ``recall = |A & R| / |R|``, for edges and for
    nodes (the nodes the kept edges touch). A ratio whose denominator is 0 is None.

    Returns:
        ``edge_iou, edge_precision, edge_recall, edge_intersection, edges_a, edges_reference`` and the
        same with ``node``.
    """
    if a.graph != reference.graph:
        raise CircuitkitError("The two circuits are for different graphs; compare circuits of the same model.")
    out = _set_stats(np.asarray(a.edges, bool), np.asarray(reference.edges, bool), "edge")
    out.update(_set_stats(a.nodes, reference.nodes, "node"))
    return out


def overlap_vs_faithfulness(
    model: Any,
    task: Any,
    data: Any,
    a: Scores,
    b: Scores,
    sizes: Sequence[int],
    ctx: Any,
    *,
    selector: str = "top_n",
    absolute: bool = True,
    labels: tuple[str, str] = ("a", "b"),
) -> list[dict[str, Any]]:
    """For each size, the circuits of ``a`` and ``b`` with that many edges, their overlap and faithfulness.

    All ``2 * len(sizes)`` circuits are evaluated in one sweep over the data
    (:func:`circuitkit.evaluation.evaluate_keeps`). A row per size::

        {"n_edges": requested size, "edges_<a>": kept after pruning, "edges_<b>": ...,
         "edge_iou", "node_iou", "faithfulness_<a>", "faithfulness_<b>"}

    Two methods can pick largely the same edges and still differ widely in faithfulness (the few edges
    where they differ can carry the behaviour), which is why overlap alone is no verdict.
    """
    from circuitkit.evaluation import evaluate_keeps
    from circuitkit.plugins import get_registry

    la, lb = labels
    if la == lb:
        raise ConfigError(f"overlap_vs_faithfulness needs two different labels, got {labels}.")
    reg = get_registry().selectors
    circuits: list[tuple[Circuit, Circuit]] = []
    for n in sizes:
        sel = reg.build(selector, {"n_edges": int(n), "absolute": absolute})
        circuits.append((sel.select(a), sel.select(b)))
    keeps = torch.stack([c.keep_dense() for pair in circuits for c in pair])
    ev = evaluate_keeps(model, task, data, keeps, ctx, desc="overlap vs faithfulness")
    rows = []
    for i, (n, (ca, cb)) in enumerate(zip(sizes, circuits, strict=True)):
        ov = overlap(ca, cb)
        rows.append(
            {
                "n_edges": int(n),
                f"edges_{la}": ca.n_edges,
                f"edges_{lb}": cb.n_edges,
                "edge_iou": ov["edge_iou"],
                "node_iou": ov["node_iou"],
                f"faithfulness_{la}": ev.faithfulness(ev.circuits[2 * i]),
                f"faithfulness_{lb}": ev.faithfulness(ev.circuits[2 * i + 1]),
            }
        )
    return rows


# ----- areas under faithfulness curves -------------------------------------------------------------

#: MIB's edge budgets, in percent of the graph's edges (Mueller et al. 2025).
MIB_PERCENTAGES = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0)


def area_under_curve(x: Sequence[float], y: Sequence[float]) -> float:
    """Trapezoid rule ``sum_i (x[i+1] - x[i]) * (y[i] + y[i+1]) / 2`` over points sorted by ``x``.

    No point is added at either end and nothing is normalised: the area spans ``[min x, max x]``.
    """
    if len(x) != len(y):
        raise CircuitkitError(f"x and y must have the same length ({len(x)} and {len(y)}).")
    if len(x) < 2:
        raise CircuitkitError("An area needs at least two points of the curve.")
    pts = sorted(zip((float(v) for v in x), (float(v) for v in y), strict=True))
    return float(sum((x2 - x1) * (y1 + y2) / 2.0 for (x1, y1), (x2, y2) in zip(pts, pts[1:], strict=False)))


def cpr(fractions: Sequence[float], faithfulness: Sequence[float]) -> float:
    """MIB's integrated circuit performance ratio: the area under faithfulness vs fraction of edges.

    Definition (Mueller et al. 2025, "MIB: A Mechanistic Interpretability Benchmark", circuit
    localization track; as computed by the benchmark's ``evaluate_area_under_curve``): circuits are
    taken at the edge budgets ``k`` = 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100 % of the graph's edges
    (``int(k * n_edges)`` edges, then pruned), ``f(k) = (m(C_k) - m(corrupted)) / (m(clean) -
    m(corrupted))``, and

        CPR = sum_i (k[i+1] - k[i]) * (f(k[i]) + f(k[i+1])) / 2

    with ``k`` as a fraction in ``[0, 1]`` on a linear axis (the requested budget, not the edge count left
    after pruning), the trapezoid rule between consecutive budgets, no point added at ``k = 0`` and no
    normalisation (a circuit with ``f = 1`` everywhere scores 0.999 with MIB's budgets). Higher is better.
    """
    return area_under_curve(fractions, faithfulness)


def cmd(fractions: Sequence[float], faithfulness: Sequence[float]) -> float:
    """MIB's circuit-model difference: the area between the faithfulness curve and 1.

    ``CMD = sum_i (k[i+1] - k[i]) * (|1 - f(k[i])| + |1 - f(k[i+1])|) / 2`` with the same axis, budgets and
    trapezoid rule as :func:`cpr` (the trapezoid of ``|1 - f|`` at the points, not the exact area of
    ``|1 - f|`` of the interpolated curve). Lower is better; 0 means every circuit behaves like the model.
    """
    return area_under_curve(fractions, [abs(1.0 - float(v)) for v in faithfulness])


__all__ = [
    "MIB_PERCENTAGES",
    "area_under_curve",
    "cmd",
    "cpr",
    "overlap",
    "overlap_vs_faithfulness",
    "pearson",
    "rankdata",
    "score_agreement",
    "spearman",
]
