"""How sure a result is: bootstrap intervals over examples, per-edge standard errors, inclusion frequencies.

Every number circuitkit reports is a mean over the task's examples (the clean, corrupted and circuit
metric; an edge's score). Their uncertainty comes from the examples:

- **Bootstrap intervals** (:func:`bootstrap_weights`, :func:`percentile_interval`): the examples are
  resampled with replacement ``n_resamples`` times (seeded from the run's seed), every statistic is
  recomputed on each resample and the interval is the ``(1 - level) / 2`` and ``(1 + level) / 2``
  percentiles of the recomputed values (the percentile bootstrap; Efron & Tibshirani 1993, ch. 13).
  A ratio such as faithfulness ``(m(circuit) - m(corrupted)) / (m(clean) - m(corrupted))`` is recomputed
  from the *same* resample of all three metrics (the examples are resampled jointly), so its interval
  accounts for the correlation between numerator and denominator. So are CPR and CMD, which are computed
  on each resample's whole curve.
- **Per-edge standard errors** (:class:`PerExampleScores`): a score is the mean of per-example scores
  ``s_e(x)``; its standard error is ``sd(s_e) / sqrt(n)`` with the sample standard deviation (``n - 1``).
  Gradient methods and exact patching accumulate the per-example values in the same pass that computes
  the scores (no second run).
- **Inclusion frequency** (:func:`inclusion_frequency`): how often each edge would be in the top-``n``
  (by ``|score|``) if the examples were resampled — the scores of a resample are the means of the
  per-example scores over it, exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from circuitkit.errors import ConfigError

#: Bytes of per-example scores kept in memory (above it only the standard errors are kept).
MAX_PER_EXAMPLE_BYTES = 512 * 2**20


@dataclass
class BootstrapConfig:
    """Options of the bootstrap intervals (the run's ``bootstrap:`` config block).

    Attributes:
        n_resamples: resamples of the examples (0: no intervals).
        level: coverage of the intervals, in (0, 1).
    """

    n_resamples: int = 1000
    level: float = 0.95

    def check(self) -> BootstrapConfig:
        if isinstance(self.n_resamples, bool) or not isinstance(self.n_resamples, int) or self.n_resamples < 0:
            raise ConfigError(f"bootstrap.n_resamples must be a whole number >= 0 (0: no intervals), got {self.n_resamples!r}.")
        if not isinstance(self.level, (int, float)) or not 0.0 < float(self.level) < 1.0:
            raise ConfigError(f"bootstrap.level must be a number between 0 and 1 (e.g. 0.95), got {self.level!r}.")
        return self


def bootstrap_config(ctx: Any) -> BootstrapConfig:
    """The run's bootstrap options (``ctx.bootstrap``: a :class:`BootstrapConfig` or a mapping), else the defaults."""
    b = getattr(ctx, "bootstrap", None)
    if b is None:
        return BootstrapConfig()
    if isinstance(b, BootstrapConfig):
        return b.check()
    if isinstance(b, dict):
        unknown = set(b) - {"n_resamples", "level"}
        if unknown:
            raise ConfigError(f"bootstrap has no option '{sorted(unknown)[0]}'; its options are n_resamples and level.")
        return BootstrapConfig(**b).check()
    raise ConfigError(f"bootstrap must be a mapping with n_resamples and level, got {b!r}.")


def bootstrap_weights(n: int, n_resamples: int, seed: int) -> torch.Tensor:
    """``[n_resamples, n]`` float64: how often each example is drawn in each resample, divided by ``n``.

    The mean of per-example values ``v [..., n]`` over every resample is ``v @ weights.T``. Seeded: the same
    ``(n, n_resamples, seed)`` gives the same resamples, so every statistic of a run uses the same ones
    (and intervals of different statistics are jointly consistent)."""
    if n < 1:
        return torch.zeros(n_resamples, 0, dtype=torch.float64)
    gen = torch.Generator().manual_seed(int(seed) + 0x5EED)
    idx = torch.randint(0, n, (n_resamples, n), generator=gen)
    counts = torch.zeros(n_resamples, n, dtype=torch.float64)
    counts.scatter_add_(1, idx, torch.ones_like(idx, dtype=torch.float64))
    return counts / n


def percentile_interval(samples: torch.Tensor | np.ndarray, level: float) -> list[float] | None:
    """``[low, high]``: the percentile interval of ``samples`` (1-D); None if any sample is not finite."""
    a = np.asarray(samples, dtype=np.float64).ravel()
    if a.size == 0 or not np.all(np.isfinite(a)):
        return None
    lo, hi = np.quantile(a, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return [float(lo), float(hi)]


def ratio_samples(value: torch.Tensor, clean: torch.Tensor, corrupted: torch.Tensor) -> torch.Tensor:
    """Faithfulness per resample, ``(value - corrupted) / (clean - corrupted)``, NaN where the gap is ~0."""
    gap = clean - corrupted
    tiny = 1e-9 * torch.clamp(clean.abs(), min=1.0)
    out = (value - corrupted) / torch.where(gap.abs() < tiny, torch.ones_like(gap), gap)
    return torch.where(gap.abs() < tiny, torch.full_like(out, float("nan")), out)


@dataclass
class MetricIntervals:
    """Bootstrap samples of an evaluation: ``clean``, ``corrupted`` ``[k]`` and ``circuits [m, k]`` (metric
    means per resample), and ``faithfulness [m, k]`` (ratio per resample, NaN where undefined)."""

    level: float
    clean: torch.Tensor
    corrupted: torch.Tensor
    circuits: torch.Tensor
    faithfulness: torch.Tensor

    def interval(self, samples: torch.Tensor) -> list[float] | None:
        return percentile_interval(samples, self.level)


def metric_intervals(
    clean: torch.Tensor, corrupted: torch.Tensor, circuits: torch.Tensor, cfg: BootstrapConfig, seed: int
) -> MetricIntervals | None:
    """Bootstrap samples of the means of per-example ``clean [n]``, ``corrupted [n]`` and ``circuits [m, n]``
    and of each circuit's faithfulness, resampling the examples jointly. None when ``cfg.n_resamples`` is 0."""
    if cfg.n_resamples == 0:
        return None
    n = clean.shape[0]
    w = bootstrap_weights(n, cfg.n_resamples, seed)
    c = clean.double() @ w.T
    k = corrupted.double() @ w.T
    m = circuits.double().reshape(-1, n) @ w.T
    return MetricIntervals(float(cfg.level), c, k, m, ratio_samples(m, c[None], k[None]))


def interval_info(cfg: BootstrapConfig) -> dict[str, Any]:
    """How the intervals of a result were computed (``interval_info`` in results.json)."""
    return {"level": float(cfg.level), "n_resamples": int(cfg.n_resamples), "method": "percentile bootstrap over examples"}


def evaluation_intervals(ev: Any, ctx: Any) -> MetricIntervals | None:
    """Bootstrap samples of an :class:`~circuitkit.evaluation.Evaluation` (its per-example values), with
    the run's options (``ctx.bootstrap``) and seed; None when it has no per-example values or
    ``n_resamples`` is 0."""
    if ev.clean_values is None or ev.corrupted_values is None or ev.circuit_values is None:
        return None
    return metric_intervals(
        ev.clean_values, ev.corrupted_values, ev.circuit_values, bootstrap_config(ctx), int(getattr(ctx, "seed", 0))
    )


def add_circuit_uncertainty(res: Any, ev: Any, mi: MetricIntervals | None, index: int, ctx: Any) -> None:
    """Put circuit ``index`` of ``ev`` into an :class:`~circuitkit.results.EvalResult`: the per-example clean,
    corrupted and circuit metrics and the intervals of those three and of faithfulness."""
    if ev.clean_values is not None and ev.circuit_values is not None:
        res.per_example.update(
            {
                "clean_metric": ev.clean_values.tolist(),
                "corrupted_metric": ev.corrupted_values.tolist(),
                "circuit_metric": ev.circuit_values[index].tolist(),
            }
        )
    if mi is None:
        return
    defined = ev.faithfulness(ev.circuits[index]) is not None
    res.intervals.update(
        {
            "clean_metric": mi.interval(mi.clean),
            "corrupted_metric": mi.interval(mi.corrupted),
            "circuit_metric": mi.interval(mi.circuits[index]),
            "faithfulness": mi.interval(mi.faithfulness[index]) if defined else None,
        }
    )
    res.interval_info = interval_info(bootstrap_config(ctx))


def area_samples(fractions: Sequence[float], f: torch.Tensor, distance_to_one: bool = False) -> torch.Tensor:
    """Per resample, the trapezoid area of ``f [n_points, k]`` over ``fractions`` (sorted): CPR, or with
    ``distance_to_one`` CMD (``|1 - f|``), as :func:`circuitkit.analysis.cpr` / :func:`~circuitkit.analysis.cmd`."""
    x = torch.as_tensor(list(fractions), dtype=torch.float64)
    order = torch.argsort(x, stable=True)
    x, y = x[order], f.double()[order]
    if distance_to_one:
        y = (1.0 - y).abs()
    return ((x[1:] - x[:-1])[:, None] * (y[1:] + y[:-1]) / 2.0).sum(0)


def fmt_interval(value: Any, interval: Sequence[float] | None, digits: int = 3) -> str:
    """``0.91 [0.86, 0.95]`` (the value alone when there is no interval)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return str(value)
    if interval is None:
        return f"{value:.{digits}g}"
    lo, hi = interval
    return f"{value:.{digits}g} [{lo:.{digits}g}, {hi:.{digits}g}]"


# ----- per-edge standard errors --------------------------------------------------------------------


class PerExampleScores:
    """Accumulates per-example edge scores batch by batch: their mean, standard error and (while they fit
    in ``max_bytes``) the ``[n_examples, n_edges]`` matrix itself.

    Means and variances are combined per batch with Chan et al.'s pairwise update (numerically stable: no
    ``sum(x^2) - n * mean^2`` cancellation)."""

    def __init__(self, n_edges: int, max_bytes: int = MAX_PER_EXAMPLE_BYTES) -> None:
        self.n_edges = n_edges
        self.n = 0
        self.mean = torch.zeros(n_edges, dtype=torch.float64)
        self.m2 = torch.zeros(n_edges, dtype=torch.float64)
        self.max_bytes = max_bytes
        self._rows: list[torch.Tensor] | None = []

    def add(self, values: torch.Tensor) -> None:
        """Add one batch of per-example scores ``[batch, n_edges]``."""
        v = values.detach().double().cpu()
        nb = v.shape[0]
        if nb == 0:
            return
        mb = v.mean(0)
        m2b = ((v - mb) ** 2).sum(0)
        tot = self.n + nb
        d = mb - self.mean
        self.mean += d * (nb / tot)
        self.m2 += m2b + d * d * (self.n * nb / tot)
        self.n = tot
        if self._rows is not None:
            if (self.n * self.n_edges * 8) > self.max_bytes:
                self._rows = None
            else:
                self._rows.append(v)

    def stderr(self) -> torch.Tensor:
        """``sd / sqrt(n)`` per edge (sample standard deviation; NaN with fewer than two examples)."""
        if self.n < 2:
            return torch.full((self.n_edges,), float("nan"), dtype=torch.float64)
        return torch.sqrt(torch.clamp(self.m2, min=0.0) / (self.n - 1) / self.n)

    def matrix(self) -> torch.Tensor | None:
        """``[n_examples, n_edges]`` float64, or None when it did not fit in ``max_bytes``."""
        if self._rows is None or not self._rows:
            return None
        return torch.cat(self._rows)


def stderr_of(per_example: torch.Tensor) -> torch.Tensor:
    """Standard error of the mean over dim 0 of ``per_example [n, ...]`` (sample sd / sqrt(n))."""
    n = per_example.shape[0]
    return per_example.double().std(0, unbiased=True) / math.sqrt(n)


def inclusion_frequency(
    per_example: torch.Tensor, n_edges: int, n_resamples: int, seed: int, absolute: bool = True, chunk: int = 64
) -> torch.Tensor:
    """``[n_edges_graph]``: the fraction of resamples of the examples in which each edge is among the
    top-``n_edges`` by score (``|score|`` when ``absolute``), the scores of a resample being the means of
    ``per_example [n, n_edges_graph]`` over it."""
    n, e = per_example.shape
    k = max(0, min(int(n_edges), e))
    counts = torch.zeros(e, dtype=torch.float64)
    if k == 0 or n_resamples == 0:
        return counts
    w = bootstrap_weights(n, n_resamples, seed)
    pe = per_example.double()
    for s in range(0, n_resamples, chunk):
        means = w[s : s + chunk] @ pe  # [chunk, E]
        key = means.abs() if absolute else means
        top = torch.topk(key, k, dim=1).indices
        counts += torch.bincount(top.reshape(-1), minlength=e).double()
    return counts / n_resamples


__all__ = [
    "BootstrapConfig",
    "add_circuit_uncertainty",
    "area_samples",
    "evaluation_intervals",
    "interval_info",
    "MetricIntervals",
    "PerExampleScores",
    "bootstrap_config",
    "bootstrap_weights",
    "fmt_interval",
    "inclusion_frequency",
    "metric_intervals",
    "percentile_interval",
    "ratio_samples",
    "stderr_of",
]
