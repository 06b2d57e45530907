"""The smallest circuit of a ranking that reaches a target faithfulness (Hanna et al. 2024's question).

:func:`smallest_reaching` searches the circuit size ``n`` (the ``n`` of top-n: edges requested before
pruning). It evaluates a coarse grid of sizes in one batched sweep over the data (by default MIB's edge
budgets, 0.1 % ... 100 % of the graph, which are also the points of the faithfulness curve); the first
size whose faithfulness reaches the target brackets the answer between it and the size before (0 edges,
the corrupted run, before the first). A k-ary bisection then narrows the bracket: each round evaluates
``refine_points`` evenly spaced sizes inside it in one batched sweep and keeps the part just below the
smallest size that reaches the target, until the bracket is one edge wide (or ``refine_steps`` rounds).

Faithfulness need not grow with size, so the answer is the smallest size *found* to reach the target
(the first along the grid and the bisection), not a proof that no smaller circuit does. The pruned
edge count never shrinks as ``n`` grows (top-n sets are nested and pruning is monotone), so the smallest
``n`` also gives the fewest edges of its kind.

:func:`search_circuit` runs the search for a selector that builds a circuit for any ``n``
(``top_n``, ``greedy``), evaluating through :func:`circuitkit.evaluation.evaluate_keeps`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from circuitkit.errors import ConfigError

#: MIB's edge budgets, in percent of the graph's edges (the default grid).
GRID_PERCENTAGES = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0)


@dataclass
class SizeSearch:
    """The outcome of :func:`smallest_reaching`.

    Attributes:
        target: the faithfulness to reach.
        reached: whether some evaluated size reaches it.
        n: the smallest size found that reaches the target; when none does, the size with the largest
            faithfulness (the largest such size on ties); None when faithfulness is undefined.
        faithfulness: the faithfulness at ``n``.
        below: the largest size known *not* to reach the target below ``n`` (0 when ``n`` is the first
            grid size); ``n - below == 1`` means ``n`` is the exact smallest along the ranking.
        rows: every size evaluated, in order: ``{"n": size, "faithfulness": f, "stage": "grid" | "refine"}``.
        rounds: bisection rounds run.
    """

    target: float
    reached: bool
    n: int | None
    faithfulness: float | None
    below: int | None
    rows: list[dict[str, Any]] = field(default_factory=list)
    rounds: int = 0


def check_search_options(where: str, target: float, refine_points: int, refine_steps: int | None) -> None:
    import math

    if isinstance(target, bool) or not isinstance(target, (int, float)) or not math.isfinite(target):
        raise ConfigError(f"{where}.target must be a finite number (a faithfulness, e.g. 0.85), got {target!r}.")
    if refine_points < 1:
        raise ConfigError(f"{where}.refine_points must be at least 1, got {refine_points}.")
    if refine_steps is not None and refine_steps < 0:
        raise ConfigError(f"{where}.refine_steps must be >= 0 (or null: until one edge apart), got {refine_steps}.")


def grid_sizes(percentages: Sequence[float], total: int, where: str = "selector") -> list[int]:
    """Sizes ``int(p / 100 * total)`` of the grid's percentages (MIB's rounding), sorted and distinct."""
    import math

    bad = [
        p
        for p in percentages
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p) or not 0 < p <= 100
    ]
    if bad or not percentages:
        raise ConfigError(f"{where}.search_budgets must be a non-empty list of percentages in (0, 100]; got {list(percentages)}.")
    return sorted({int(float(p) / 100.0 * total + 1e-9) for p in percentages})


def smallest_reaching(
    measure: Callable[[list[int]], list[float | None]],
    grid: Sequence[int],
    target: float,
    *,
    refine_points: int = 3,
    refine_steps: int | None = None,
) -> SizeSearch:
    """The smallest size along ``grid`` and a bisection whose faithfulness reaches ``target``.

    ``measure(sizes)`` returns the faithfulness of the circuit of each size (None where undefined); it is
    called once for the grid and once per bisection round, each call meant to be one batched sweep.
    """
    grid = sorted(set(int(n) for n in grid))
    fs = measure(list(grid))
    out = SizeSearch(target, False, None, None, None)
    out.rows = [{"n": n, "faithfulness": f, "stage": "grid"} for n, f in zip(grid, fs, strict=True)]
    if any(f is None for f in fs):
        return out
    first = next((i for i, f in enumerate(fs) if f >= target), None)  # type: ignore[operator]
    if first is None:
        best = max(range(len(grid)), key=lambda i: (fs[i], grid[i]))
        out.n, out.faithfulness = grid[best], fs[best]
        return out
    hi, f_hi = grid[first], fs[first]
    lo = grid[first - 1] if first > 0 else 0
    if target <= 0 and first == 0:
        lo = hi  # the empty circuit (f = 0) reaches it too; nothing to search below the first size
    seen = set(grid)
    while refine_steps is None or out.rounds < refine_steps:
        if hi - lo <= 1:
            break
        k = min(refine_points, hi - lo - 1)
        pts = sorted({lo + round((j + 1) * (hi - lo) / (k + 1)) for j in range(k)} - seen - {lo, hi})
        if not pts:
            break
        vals = measure(pts)
        out.rounds += 1
        seen.update(pts)
        new_lo, reached = lo, None
        for n, f in zip(pts, vals, strict=True):
            out.rows.append({"n": n, "faithfulness": f, "stage": "refine"})
            if reached is None:
                if f is not None and f >= target:
                    reached = (n, f)
                else:
                    new_lo = n
        if reached is not None:
            hi, f_hi = reached
        lo = new_lo
    out.reached, out.n, out.faithfulness, out.below = True, hi, f_hi, lo
    return out


def search_circuit(
    build: Callable[[int], Any],
    scores: Any,
    model: Any,
    task: Any,
    data: Any,
    ctx: Any,
    *,
    target: float,
    percentages: Sequence[float] = GRID_PERCENTAGES,
    refine_points: int = 3,
    refine_steps: int | None = None,
    circuits_per_pass: int = 8,
    where: str = "selector",
) -> tuple[Any, dict[str, Any]]:
    """The circuit ``build(n)`` of the smallest ``n`` reaching ``target``, and the record of the search
    (``Circuit.selection``). ``build(n)`` returns the circuit of size ``n`` (a :class:`Circuit`)."""
    from circuitkit.evaluation import evaluate_keeps

    total = scores.graph.n_edges
    grid = grid_sizes(percentages, total, where)
    circuits: dict[int, Any] = {}
    endpoints: dict[str, float] = {}

    def measure(sizes: list[int]) -> list[float | None]:
        for n in sizes:
            if n not in circuits:
                circuits[n] = build(n)
        keeps = torch.stack([circuits[n].keep_dense() for n in sizes])
        ev = evaluate_keeps(
            model,
            task,
            data,
            keeps,
            ctx,
            circuits_per_pass=circuits_per_pass,
            desc=f"smallest circuit, faithfulness >= {target:g}",
        )
        endpoints.update(clean_metric=ev.clean, corrupted_metric=ev.corrupted)
        return [ev.faithfulness(m) for m in ev.circuits]

    found = smallest_reaching(measure, grid, target, refine_points=refine_points, refine_steps=refine_steps)
    rows = sorted(
        (
            {
                "requested_edges": r["n"],
                "n_edges": circuits[r["n"]].n_edges,
                "faithfulness": r["faithfulness"],
                "stage": r["stage"],
            }
            for r in found.rows
        ),
        key=lambda r: r["requested_edges"],
    )
    record: dict[str, Any] = {
        "target": target,
        "reached": found.reached,
        "requested_edges": found.n,
        "edges_in_circuit": circuits[found.n].n_edges if found.n is not None else None,
        "edges_in_graph": total,
        "fraction_of_graph": (circuits[found.n].n_edges / total) if found.n is not None else None,
        "faithfulness": found.faithfulness,
        "largest_not_reaching": found.below,
        "exact": bool(found.reached and found.below is not None and found.n is not None and found.n - found.below <= 1),
        "bisection_rounds": found.rounds,
        **endpoints,
        "evaluated": rows,
    }
    if found.n is None:  # faithfulness undefined: no behaviour to measure; keep every edge of the grid's largest size
        circuit = circuits.get(grid[-1]) or build(grid[-1])
        record["note"] = (
            "faithfulness is undefined (clean and corrupted metrics are equal): no size could be chosen; the largest grid size was kept."
        )
        record["requested_edges"] = grid[-1]
        record["edges_in_circuit"] = circuit.n_edges
        record["fraction_of_graph"] = circuit.n_edges / total
        return circuit, record
    if not found.reached:
        record["note"] = (
            f"no evaluated size reaches faithfulness {target:g}: the largest reached is {found.faithfulness:.4g} "
            f"at n={found.n} ({circuits[found.n].n_edges} edges); that circuit was kept."
        )
    return circuits[found.n], record


class SearchesSize:
    """Mixin of selectors whose ``n_edges`` may be null: then :meth:`select_in_run` finds the smallest
    ``n_edges`` whose circuit reaches ``target`` faithfulness (the config needs ``n_edges``, ``target``,
    ``search_budgets``, ``refine_points``, ``refine_steps``, ``circuits_per_pass``; :meth:`fixed` builds
    the selector with a given ``n_edges``)."""

    config: Any

    def searching(self) -> bool:
        c = self.config
        return c.n_edges is None and getattr(c, "n_nodes", None) is None and getattr(c, "n_neurons", None) is None

    def measures_circuits(self) -> bool:
        return self.searching()

    def check_search(self) -> None:
        c = self.config
        check_search_options("selector", c.target, c.refine_points, c.refine_steps)
        grid_sizes(c.search_budgets, 100)
        if c.circuits_per_pass < 1:
            raise ConfigError(f"selector.circuits_per_pass must be at least 1, got {c.circuits_per_pass}.")

    def fixed(self, n: int) -> Any:
        import dataclasses

        cls: Any = type(self)  # a selector class (this is its mixin)
        return cls(dataclasses.replace(self.config, n_edges=int(n)))

    def refuse_without_model(self) -> None:
        raise ConfigError(
            f"selector.n_edges is null: {self.config.name or 'the selector'} then searches for the smallest circuit reaching "
            f"faithfulness {self.config.target:g}, which measures circuits on the model; call "
            "select_in_run(scores, model, task, data, ctx), or give n_edges for a fixed size."
        )

    def search(self, scores: Any, model: Any, task: Any, data: Any, ctx: Any) -> Any:
        c = self.config
        circuit, record = search_circuit(
            lambda n: self.fixed(n).select(scores),
            scores,
            model,
            task,
            data,
            ctx,
            target=float(c.target),
            percentages=list(c.search_budgets),
            refine_points=int(c.refine_points),
            refine_steps=c.refine_steps,
            circuits_per_pass=int(c.circuits_per_pass),
        )
        record = {"selector": c.name, "absolute": c.absolute, **record}
        if record.get("note"):
            import logging

            logging.getLogger("circuitkit").warning("selector %s: %s", c.name, record["note"])
        circuit.selection = record
        return circuit
