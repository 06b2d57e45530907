"""Faithfulness at many edge budgets, MIB's CPR and CMD, and the smallest circuit reaching a target.

For each budget a circuit is selected from the run's scores (``ctx.scores``; the scores of the circuit
being evaluated if the run has none) by a selector chosen here (default ``top_n`` by ``|score|``), and its
faithfulness ``f = (m(circuit) - m(corrupted)) / (m(clean) - m(corrupted))`` is measured. All budgets are
evaluated in one sweep over the data (:func:`circuitkit.evaluation.evaluate_keeps`: clean and corrupted
runs once per batch, circuits stacked). The circuit handed to the evaluator is measured in the same sweep
(``circuit_metric``, ``faithfulness``, ``edges_in_circuit``), so it can be placed on the curve.

**CPR and CMD** are computed exactly as MIB defines them (Mueller et al. 2025, "MIB: A Mechanistic
Interpretability Benchmark", ICML; the benchmark's ``evaluate_area_under_curve``, checked in the MIB
circuit-track evaluation code):

- x-axis: the budget as a *fraction of the graph's edges* in ``[0, 1]`` (0.001 ... 1 for the default
  percentages), linear, the requested budget (not the count left after pruning);
- ``CPR = sum_i (x[i+1] - x[i]) * (f[i] + f[i+1]) / 2`` (trapezoid rule between consecutive budgets);
- ``CMD = sum_i (x[i+1] - x[i]) * (|1 - f[i]| + |1 - f[i+1]|) / 2``;
- no point at ``x = 0`` and no normalisation (with the default budgets the x-range is 0.999).

A budget of ``p`` percent keeps ``int(p / 100 * n_edges)`` edges before pruning, as MIB does. MIB takes
CPR from circuits selected by *signed* score and CMD from circuits selected by ``|score|``; set
``cpr_signed=true`` to do the same (a second, signed curve is evaluated in the same sweep and CPR is
computed on it; the table ``curve_signed`` holds it).

**Smallest circuit reaching ``target``**: the first budget whose faithfulness reaches ``target`` gives an
interval (previous budget, that budget) — (0 edges, first budget) if the first one already does, the
empty circuit being the corrupted run (f = 0). The interval is then narrowed by a k-ary bisection
(:func:`circuitkit.search.smallest_reaching`, the search of ``top_n`` without ``n_edges``):
``refine_steps`` rounds (default: until one edge apart), each evaluating ``refine_points`` evenly spaced
edge counts inside it in one sweep and keeping the sub-interval just below the smallest count that
reaches the target. The result is the
smallest evaluated budget that reaches the target (faithfulness need not grow with size, so this is the
smallest found, not a proof that none smaller exists).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from circuitkit.api import (
    MIB_PERCENTAGES,
    UNDEFINED_NOTE,
    Circuit,
    ConfigError,
    EvalResult,
    Evaluation,
    Evaluator,
    PluginConfig,
    RunContext,
    Scores,
    Task,
    add_circuit_uncertainty,
    add_gap_check,
    area_samples,
    cmd,
    cpr,
    evaluate_keeps,
    evaluation_intervals,
    get_registry,
    hookimpl,
    smallest_reaching,
)

log = logging.getLogger("circuitkit")


@dataclass
class FaithfulnessCurveConfig(PluginConfig):
    """Options of the faithfulness curve.

    Attributes:
        budgets: edge budgets, in ``unit`` (default: MIB's percentages).
        unit: ``percent`` (of the graph's edges) or ``edges`` (counts).
        selector: selector that builds each circuit; it must take ``n_edges`` (``top_n``, ``greedy``).
        absolute: select by ``|score|`` (True) or signed score (False).
        cpr_signed: compute CPR on a second curve selected by signed score (MIB's protocol), CMD on this one.
        target: faithfulness to reach for ``edges_for_target``.
        refine_steps: bisection rounds between budgets for ``edges_for_target`` (0: budgets only; null:
            until the answer is exact to one edge).
        refine_points: edge counts evaluated per round (one sweep over the data per round).
        circuits_per_pass: the most circuits stacked in one forward pass (memory grows with it; on a CPU fewer
            where their per-head tensors would pass ``circuitkit.evaluation.CPU_PASS_BYTES``).
    """

    budgets: list[float] = field(default_factory=lambda: list(MIB_PERCENTAGES))
    unit: str = "percent"
    selector: str = "top_n"
    absolute: bool = True
    cpr_signed: bool = False
    target: float = 0.85
    refine_steps: int | None = None
    refine_points: int = 3
    circuits_per_pass: int = 8

    def __post_init__(self) -> None:
        check_curve_options(self, None)  # the edge counts of unit=edges are checked against the graph later


UNITS = ("percent", "edges")
NO_TARGET: dict[str, None] = {
    "edges_for_target": None,
    "budget_for_target": None,
    "fraction_for_target": None,
    "faithfulness_at_target": None,
}


def budget_edges(budget: float, unit: str, total: int) -> int:
    """Edges a budget asks for: ``int(p / 100 * total)`` for percentages (MIB), the count itself for edges."""
    if unit == "percent":
        return int(budget / 100.0 * total + 1e-9)
    return int(round(budget))


def check_curve_options(c: FaithfulnessCurveConfig, total: int | None) -> list[float]:
    """Sorted, deduplicated budgets; a ConfigError for bad options (edge counts checked once ``total``, the
    graph's edge count, is known)."""
    if c.unit not in UNITS:
        raise ConfigError(f"evaluator.{c.name}.unit must be one of {', '.join(UNITS)}, got '{c.unit}'.")
    budgets = [float(b) for b in c.budgets]
    if not budgets:
        raise ConfigError(f"evaluator.{c.name}.budgets is empty; give at least one budget.")
    hi = 100.0 if c.unit == "percent" else float(total if total is not None else math.inf)
    bad = [b for b in budgets if not math.isfinite(b) or not (0 < b <= hi)]
    if bad:
        what = "percentages in (0, 100]" if c.unit == "percent" else f"edge counts in [1, {total}] (this graph has {total} edges)"
        if total is None and c.unit == "edges":
            what = "positive edge counts"
        raise ConfigError(f"evaluator.{c.name}.budgets must be {what}; got {bad[0]:g}.")
    if c.unit == "edges" and any(b != int(b) for b in budgets):
        raise ConfigError(f"evaluator.{c.name}.budgets are edge counts (unit=edges) and must be whole numbers.")
    if not math.isfinite(c.target):
        raise ConfigError(f"evaluator.{c.name}.target must be a finite number, got {c.target}.")
    if (c.refine_steps is not None and c.refine_steps < 0) or c.refine_points < 1:
        raise ConfigError(f"evaluator.{c.name}: refine_steps must be >= 0 (or null) and refine_points >= 1.")
    if c.circuits_per_pass < 1:
        raise ConfigError(f"evaluator.{c.name}.circuits_per_pass must be at least 1.")
    return sorted(set(budgets))


class FaithfulnessCurve(Evaluator):
    config: FaithfulnessCurveConfig

    # ----- options ------------------------------------------------------------------------------
    def __init__(self, config: FaithfulnessCurveConfig) -> None:
        super().__init__(config)
        self._selector_entry()  # the selector must be registered and take n_edges

    def _check(self, total: int | None) -> list[float]:
        return check_curve_options(self.config, total)

    def _selector_entry(self) -> Any:
        entry = get_registry().selectors.get(self.config.selector)
        if "n_edges" not in {f.name for f in dataclasses.fields(entry.options)}:
            raise ConfigError(
                f"evaluator.{self.config.name}.selector={self.config.selector} does not take n_edges; the curve needs a "
                "selector that keeps a given number of edges (top_n, greedy)."
            )
        return entry

    def _selector(self, n: int, absolute: bool) -> Any:
        entry = self._selector_entry()
        opts: dict[str, Any] = {"n_edges": int(n)}
        if "absolute" in {f.name for f in dataclasses.fields(entry.options)}:
            opts["absolute"] = absolute
        return entry.cls(entry.config(name=entry.name, **opts))

    def circuit_at(self, scores: Scores, n: int, absolute: bool | None = None) -> Circuit:
        """The circuit the configured selector picks with ``n`` edges."""
        return self._selector(n, self.config.absolute if absolute is None else absolute).select(scores)

    # ----- evaluation ---------------------------------------------------------------------------
    def evaluate(self, model, task: Task, data, circuit: Circuit, ctx: RunContext) -> EvalResult:  # noqa: ANN001
        c = self.config
        name = c.name or "faithfulness_curve"
        scores = ctx.scores if ctx.scores is not None else circuit.scores
        if scores is None:
            raise ConfigError(
                f"Evaluator '{name}' needs edge scores: run it after attribution, or pass a circuit that has scores."
            )
        if scores.level != "edge":
            # Part of the default evaluators: a node- or neuron-level run keeps its faithfulness and says why
            # there is no curve.
            note = (
                f"No faithfulness curve: '{name}' ranks edges, but the scores are {scores.level}-level "
                f"(method.level={scores.level}); the circuit's faithfulness is in the 'faithfulness' evaluator. "
                "Use method.level=edge for the curve."
            )
            log.warning("%s", note)
            res = EvalResult(name, {"cpr": None, "cmd": None, "average_faithfulness": None, **NO_TARGET})
            res.notes.append(note)
            return res
        g = scores.graph
        total = g.n_edges
        budgets = self._check(total)
        requested = [budget_edges(b, c.unit, total) for b in budgets]
        fractions = [n / total for n in requested] if c.unit == "edges" else [b / 100.0 for b in budgets]

        curves = [(c.absolute, "curve")]
        if c.cpr_signed:
            curves.append((False, "curve_signed"))
        circuits = [self.circuit_at(scores, n, a) for a, _ in curves for n in requested]
        ev = self._run(model, task, data, [circuit, *circuits], ctx, "faithfulness curve")
        own_metric, own_f = ev.circuits[0], ev.faithfulness(ev.circuits[0])
        full, mi = ev, evaluation_intervals(ev, ctx)  # per-example values and bootstrap samples of every circuit
        ev = Evaluation(ev.clean, ev.corrupted, ev.circuits[1:], ev.n_examples)

        res = EvalResult(name)
        res.values.update(
            {
                "clean_metric": ev.clean,
                "corrupted_metric": ev.corrupted,
                "edges_in_graph": total,
                "n_examples": ev.n_examples,
                "target": c.target,
                "circuit_metric": own_metric,
                "faithfulness": own_f,
                "edges_in_circuit": circuit.n_edges,
            }
        )
        add_circuit_uncertainty(res, full, mi, 0, ctx)
        add_gap_check(res, full, ctx)
        nb = len(budgets)
        faith: dict[str, list[float | None]] = {}
        for k, (_, table) in enumerate(curves):
            rows = []
            fs = []
            for i, b in enumerate(budgets):
                circ = circuits[k * nb + i]
                m = ev.circuits[k * nb + i]
                f = ev.faithfulness(m)
                fs.append(f)
                rows.append(
                    {
                        "budget": b,
                        "fraction": fractions[i],
                        "requested_edges": requested[i],
                        "n_edges": circ.n_edges,
                        "n_nodes": int(circ.nodes.sum()),
                        "faithfulness": f,
                        "circuit_metric": m,
                    }
                )
                if mi is not None:  # bootstrap intervals of this point (the same resamples as every other)
                    j = 1 + k * nb + i
                    fci = mi.interval(mi.faithfulness[j]) if f is not None else None
                    mci = mi.interval(mi.circuits[j])
                    rows[-1]["faithfulness_ci_low"], rows[-1]["faithfulness_ci_high"] = fci or (None, None)
                    rows[-1]["circuit_metric_ci_low"], rows[-1]["circuit_metric_ci_high"] = mci or (None, None)
            res.tables[table] = rows
            faith[table] = fs

        f_main = faith["curve"]
        f_cpr = faith["curve_signed" if c.cpr_signed else "curve"]
        defined = all(v is not None for v in f_main) and all(v is not None for v in f_cpr)
        if not defined:
            res.notes.append(UNDEFINED_NOTE)
        if defined and nb >= 2:
            res.values["cpr"] = cpr(fractions, f_cpr)  # type: ignore[arg-type]
            res.values["cmd"] = cmd(fractions, f_main)  # type: ignore[arg-type]
            res.values["average_faithfulness"] = float(np.mean(f_main))  # type: ignore[arg-type]
            if mi is not None:  # CPR, CMD and the mean recomputed on each resample's whole curve
                main = mi.faithfulness[1 : 1 + nb]
                for_cpr = mi.faithfulness[1 + nb : 1 + 2 * nb] if c.cpr_signed else main
                res.intervals["cpr"] = mi.interval(area_samples(fractions, for_cpr))
                res.intervals["cmd"] = mi.interval(area_samples(fractions, main, distance_to_one=True))
                res.intervals["average_faithfulness"] = mi.interval(main.mean(0))
        else:
            res.values.update({"cpr": None, "cmd": None, "average_faithfulness": None})
            if defined:
                res.notes.append("CPR and CMD need at least two budgets.")
        if full.circuit_values is not None:
            res.per_example["curve_circuit_metric"] = full.circuit_values[1 : 1 + nb].tolist()

        if defined:
            self._target(res, model, task, data, scores, ctx, requested, f_main, total)  # type: ignore[arg-type]
        else:
            res.values.update(NO_TARGET)
        return res

    def _run(self, model, task, data, circuits: list[Circuit], ctx, desc: str) -> Evaluation:  # noqa: ANN001
        keeps = torch.stack([c.keep_dense() for c in circuits])
        return evaluate_keeps(model, task, data, keeps, ctx, circuits_per_pass=self.config.circuits_per_pass, desc=desc)

    def _target(
        self, res: EvalResult, model, task, data, scores: Scores, ctx, requested: list[int], fs: list[float], total: int
    ) -> None:  # noqa: ANN001
        """Fill ``edges_for_target`` (the smallest size found reaching the target) with the bisection of
        :func:`circuitkit.search.smallest_reaching`, starting from the curve's budgets."""
        c = self.config
        known = dict(zip(requested, fs, strict=True))
        refine_rows: list[dict[str, Any]] = []
        circuits: dict[int, Circuit] = {}

        def measure(sizes: list[int]) -> list[float | None]:
            new = [n for n in sizes if n not in known]
            if new:
                circs = [self.circuit_at(scores, n) for n in new]
                ev = self._run(model, task, data, circs, ctx, "faithfulness curve (refine)")
                for n, circ, m in zip(new, circs, ev.circuits, strict=True):
                    known[n] = ev.faithfulness(m)  # type: ignore[assignment]
                    circuits[n] = circ
                    refine_rows.append(
                        {"requested_edges": n, "n_edges": circ.n_edges, "faithfulness": known[n], "circuit_metric": m}
                    )
            return [known[n] for n in sizes]

        found = smallest_reaching(measure, requested, c.target, refine_points=c.refine_points, refine_steps=c.refine_steps)
        res.tables["refine"] = refine_rows
        if not found.reached:
            res.values.update(NO_TARGET)
            res.notes.append(f"No budget reaches faithfulness {c.target:g} (the largest reaches {max(fs):.3g}).")
            return
        assert found.n is not None
        circuit = circuits.get(found.n) or self.circuit_at(scores, found.n)
        res.values.update(
            {
                "edges_for_target": circuit.n_edges,
                "budget_for_target": found.n,
                "fraction_for_target": found.n / total,
                "faithfulness_at_target": found.faithfulness,
            }
        )


@hookimpl
def circuitkit_register_evaluators(registry) -> None:  # noqa: ANN001
    registry.add("faithfulness_curve", FaithfulnessCurve, FaithfulnessCurveConfig)
