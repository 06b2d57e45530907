"""Compare finished runs: a table of their numbers and a plot of their faithfulness curves.

Usage::

    python -m circuitkit.compare multirun/2025-01-31/12-00-00          # every run under a sweep dir
    python -m circuitkit.compare outputs/run_a outputs/run_b --out cmp.png
    python -m circuitkit.compare multirun/... --csv runs.csv --sort faithfulness
    python -m circuitkit.compare --html outputs/eap_run outputs/eap_ig_run        # compare.html

Each argument is a run directory (one holding ``results.json``) or any directory above run directories
(a Hydra multirun sweep dir); run directories are found recursively. The plot needs matplotlib; without it
only the table is printed. ``--html`` also writes ``compare.html``, an interactive explorer of the runs'
circuits (:mod:`circuitkit.explorer`): any two of them side by side, shared and unique edges coloured, their
overlap (edge and node IoU, shared fractions), and a top-n slider re-selecting both.

The plot has one panel per task and one colour per method, with the fraction of the graph's edges on a log
x axis (``--x n_edges`` for edge counts); the table lists ``edges_for_0.85``, the smallest circuit reaching
the target faithfulness, where a ``faithfulness_curve`` evaluator measured it. A run whose ``results.json``
cannot be read (truncated, not UTF-8, not a results object) is skipped with a warning.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

from circuitkit.errors import CircuitkitError
from circuitkit.results import read_json

#: Column names tried, in order, for the x and y axes of a curve table.
CURVE_X = ("n_edges", "edges", "edges_in_circuit", "k", "n", "top_n", "fraction", "edge_fraction", "percent")
CURVE_Y = ("faithfulness", "normalized_faithfulness", "cpr", "performance", "score", "metric", "value")


def _is_number(v: Any) -> TypeGuard[int | float]:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def table_columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The union of the rows' keys, in first-seen order."""
    cols: list[str] = []
    for row in rows:
        for k in row:
            if k not in cols:
                cols.append(k)
    return cols


def curve_axes(rows: Sequence[dict[str, Any]], x: str | None = None) -> tuple[str, str] | None:
    """``(x, y)`` column names of a curve table (edges -> faithfulness), or None if it has no two numeric columns.

    ``x`` forces the x column (e.g. ``fraction`` to compare models of different sizes) when the table has it.
    """
    cols = table_columns(rows)
    numeric = [c for c in cols if any(_is_number(r.get(c)) for r in rows)]
    if len(numeric) < 2:
        return None
    lowered = {c.lower(): c for c in numeric}
    prefer = ((x.lower(),) if x else ()) + CURVE_X
    x = next((lowered[c] for c in prefer if c in lowered), numeric[0])
    y = next((lowered[c] for c in CURVE_Y if c in lowered and lowered[c] != x), None)
    if y is None:
        y = next(c for c in numeric if c != x)
    return x, y


def curve_points(rows: Sequence[dict[str, Any]], x: str | None = None) -> tuple[str, str, list[float], list[float]] | None:
    """``(x_name, y_name, xs, ys)`` of a curve table, sorted by x; rows with a missing value are skipped."""
    axes = curve_axes(rows, x)
    if axes is None:
        return None
    x, y = axes
    pts = sorted((float(r[x]), float(r[y])) for r in rows if _is_number(r.get(x)) and _is_number(r.get(y)))
    return x, y, [p[0] for p in pts], [p[1] for p in pts]


@dataclass
class RunSummary:
    """The numbers of one run directory, read from its ``results.json``."""

    path: Path
    status: str
    method: str
    task: str
    model: str
    values: dict[str, float] = field(default_factory=dict)  # "evaluator/key" -> number
    seconds: float | None = None
    curves: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # evaluator -> curve rows
    edges: int | None = None
    from_cache: bool | None = None
    edges_in_graph: int | None = None
    #: the faithfulness target of the curve evaluator's ``edges_for_target`` (0.85 unless set)
    target: float | None = None

    def find(self, *keys: str) -> float | None:
        """The first value whose key (without the evaluator prefix) is one of ``keys`` (case-insensitive)."""
        wanted = [k.lower() for k in keys]
        for want in wanted:
            for full, v in self.values.items():
                if full.split("/", 1)[-1].lower() == want:
                    return v
        return None


def load_run(run_dir: str | Path) -> RunSummary:
    """Read one run directory.

    Raises:
        CircuitkitError: its results.json cannot be read, or is not a circuitkit results object.
    """
    run_dir = Path(run_dir)
    res = read_json(run_dir / "results.json", "Results")
    if not isinstance(res, dict):
        raise CircuitkitError(
            f"{run_dir / 'results.json'} is not a circuitkit results file (a JSON {type(res).__name__}, not an object)."
        )
    try:
        return _summary(run_dir, res)
    except (AttributeError, TypeError, ValueError) as e:
        raise CircuitkitError(f"{run_dir / 'results.json'} is not a circuitkit results file ({type(e).__name__}: {e}).") from None


def _summary(run_dir: Path, res: dict[str, Any]) -> RunSummary:
    meta = res.get("meta") or {}
    if not isinstance(meta, dict):
        raise TypeError("'meta' is not an object")
    values: dict[str, float] = {}
    curves: dict[str, list[dict[str, Any]]] = {}
    for key, ev in res.items():
        if not (isinstance(ev, dict) and "values" in ev and isinstance(ev["values"], dict)):
            continue
        for k, v in ev["values"].items():
            if _is_number(v):
                values[f"{key}/{k}"] = float(v)
        curve = (ev.get("tables") or {}).get("curve")
        if isinstance(curve, list) and curve and all(isinstance(row, dict) for row in curve):
            curves[key] = curve
    secs = res.get("seconds") or {}
    if not isinstance(secs, dict):
        raise TypeError("'seconds' is not an object")
    target = None
    evaluators = (meta.get("config") or {}).get("evaluator") if isinstance(meta.get("config"), dict) else None
    if isinstance(evaluators, dict) and isinstance(evaluators.get("faithfulness_curve"), dict):
        t = evaluators["faithfulness_curve"].get("target")
        target = float(t) if _is_number(t) else None
    edges_in_graph = res.get("edges_in_graph")
    model = str(meta.get("model", "?"))
    return RunSummary(
        path=run_dir,
        status=str(res.get("status", "?")),
        method=str(meta.get("method", "?")),
        task=str(meta.get("task", "?")),
        model=Path(model).name if ("/" in model or "\\" in model) else model,
        values=values,
        seconds=sum(float(v) for v in secs.values() if _is_number(v)) if secs else None,
        curves=curves,
        edges=res.get("edges_in_circuit") if _is_number(res.get("edges_in_circuit")) else None,
        from_cache=meta.get("scores_from_cache"),
        edges_in_graph=int(edges_in_graph) if _is_number(edges_in_graph) and edges_in_graph > 0 else None,
        target=target,
    )


def find_run_dirs(paths: Iterable[str | Path]) -> list[Path]:
    """Every directory holding a ``results.json`` at or below ``paths`` (sorted, no duplicates)."""
    found: list[Path] = []
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise CircuitkitError(f"{p} does not exist. Pass run directories or a multirun directory.")
        if p.is_file() and p.name == "results.json":
            p = p.parent
        if (p / "results.json").is_file():
            hits = [p]
        else:
            hits = sorted(r.parent for r in p.rglob("results.json"))
        found.extend(h for h in hits if h not in found)
    if not found:
        raise CircuitkitError(
            f"No results.json found under {', '.join(str(p) for p in paths)}. Pass directories of finished runs."
        )
    return sorted(found, key=_natural_key)


def _natural_key(p: Path) -> list[Any]:
    import re

    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(p))]


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def _label(run: RunSummary, root: Path | None) -> str:
    if root is not None:
        try:
            rel = run.path.relative_to(root)
            return str(rel) if str(rel) != "." else run.path.name
        except ValueError:
            pass
    return str(run.path)


def summary_rows(runs: Sequence[RunSummary], root: Path | None = None) -> tuple[list[str], list[list[Any]]]:
    """Header and rows of the comparison table. CPR/CMD/agreement columns appear only when some run has them."""
    optional = [("CPR", ("cpr",)), ("CMD", ("cmd",)), ("agreement", ("agreement",))]
    optional = [(name, keys) for name, keys in optional if any(r.find(*keys) is not None for r in runs)]
    show_cache = any(r.from_cache for r in runs)
    # The smallest circuit reaching the target faithfulness (faithfulness_curve's edges_for_target).
    targets = {r.target if r.target is not None else 0.85 for r in runs if r.find("edges_for_target") is not None}
    target_col = [f"edges_for_{targets.pop():g}" if len(targets) == 1 else "edges_for_target"] if targets else []
    header = [
        "run",
        "method",
        "task",
        "model",
        "status",
        "faithfulness",
        "edges",
        *target_col,
        *[n for n, _ in optional],
        "seconds",
    ]
    if show_cache:
        header.append("cached")
    rows = []
    for r in runs:
        rows.append(
            [_label(r, root), r.method, r.task, r.model, r.status, r.find("faithfulness"), r.edges]
            + ([_int(r.find("edges_for_target"))] if target_col else [])
            + [r.find(*keys) for _, keys in optional]
            + [r.seconds]
            + (["yes" if r.from_cache else "no"] if show_cache else [])
        )
    return header, rows


def _int(v: float | None) -> int | None:
    return None if v is None else int(v)


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [list(header)] + [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def curve_series(
    run: RunSummary, rows: Sequence[dict[str, Any]], x: str | None = None
) -> tuple[str, str, list[float], list[float]] | None:
    """``(x_name, y_name, xs, ys)`` of one curve for the plot. The default x is the fraction of the graph's
    edges in the circuit (the curve's ``fraction`` column, else its edge counts over the run's
    ``edges_in_graph``), so models and methods of different sizes share one axis."""
    if x is None or x.lower() == "fraction":
        if any(_is_number(r.get("fraction")) for r in rows):
            return curve_points(rows, "fraction")
        pts = curve_points(rows, "n_edges")
        if pts is not None and pts[0] in ("n_edges", "edges", "edges_in_circuit") and run.edges_in_graph:
            return "fraction", pts[1], [v / run.edges_in_graph for v in pts[2]], pts[3]
        return pts
    return curve_points(rows, x)


def write_comparison_plot(
    runs: Sequence[RunSummary], out: str | Path, root: Path | None = None, x: str | None = None
) -> Path | None:
    """Write :func:`curve_figure` (every run's faithfulness curves, a panel per task) to ``out`` (the format
    follows the suffix). Returns None when no run has a curve. One run's curves, or methods overlaid in one
    panel, are :func:`circuitkit.plot.plot_curves`.

    Raises:
        ImportError: matplotlib is not installed.
    """
    fig = curve_figure(runs, root, x)
    if fig is None:
        return None
    import matplotlib.pyplot as plt

    from circuitkit.plot import save_figure

    try:
        return save_figure(fig, [out], dpi=120)[0]
    finally:
        plt.close(fig)


def curve_figure(runs: Sequence[RunSummary], root: Path | None = None, x: str | None = None) -> Any:
    """The matplotlib figure of every run's faithfulness curve(s), or None when no run has a curve.

    One panel per task, one colour per method, one line style per further distinction (model, run); the x
    axis is the fraction of the graph's edges in the circuit on a log scale by default (``x`` picks another
    curve column), and the legend sits outside the panels. The caller closes the figure.
    """
    series = []
    for r in runs:
        for ev, rows in r.curves.items():
            pts = curve_series(r, rows, x)
            if pts is not None:
                series.append((r, ev, *pts))
    if not series:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({s[0].task for s in series})
    methods = sorted({s[0].method for s in series})
    cmap = plt.get_cmap("tab10" if len(methods) <= 10 else "tab20" if len(methods) <= 20 else "turbo")
    colour = {m: cmap(i if len(methods) <= 20 else i / max(1, len(methods) - 1)) for i, m in enumerate(methods)}
    styles = ["-", "--", ":", "-.", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1))]
    markers = ["o", "s", "^", "D", "v", "P", "X", "*"]
    # Lines of one method in one panel are told apart by style (model, then run).
    variant: dict[tuple[str, str], list[str]] = {}
    for r, ev, *_ in series:
        key = f"{r.model} ({_label(r, root)})" + (f" [{ev}]" if len(r.curves) > 1 else "")
        variant.setdefault((r.task, r.method), [])
        if key not in variant[(r.task, r.method)]:
            variant[(r.task, r.method)].append(key)
    many = max(len(v) for v in variant.values()) > 1

    ncols = min(3, len(tasks))
    nrows = -(-len(tasks) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols + 2.6, 3.4 * nrows + 0.6), squeeze=False, sharey=True)
    try:
        x_name, y_name = series[0][2], series[0][3]
        log_x = all(v > 0 for s in series for v in s[4]) or x_name == "fraction"
        handles: dict[str, Any] = {}
        for t, task in enumerate(tasks):
            ax = axes[t // ncols][t % ncols]
            for r, ev, _xn, _yn, xs, ys in (s for s in series if s[0].task == task):
                key = f"{r.model} ({_label(r, root)})" + (f" [{ev}]" if len(r.curves) > 1 else "")
                k = variant[(task, r.method)].index(key)
                if log_x:
                    xs, ys = [a for a in xs if a > 0], [b for a, b in zip(xs, ys) if a > 0]
                label = r.method + (f": {key}" if many else "")
                (line,) = ax.plot(
                    xs, ys, color=colour[r.method], linestyle=styles[k % len(styles)],
                    marker=markers[k % len(markers)] if many else "o", markersize=3, linewidth=1.4, label=label,
                )  # fmt: skip
                handles.setdefault(label, line)
            if log_x:
                ax.set_xscale("log")
            ax.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
            ax.axhline(0.85, color="grey", linewidth=0.6, linestyle=":")
            ax.set_title(task)
            ax.set_xlabel("fraction of edges in the circuit" if x_name == "fraction" else x_name)
            ax.grid(alpha=0.3, which="both")
            if t % ncols == 0:
                ax.set_ylabel(y_name)
        for t in range(len(tasks), nrows * ncols):
            axes[t // ncols][t % ncols].set_visible(False)
        fig.legend(
            list(handles.values()), list(handles.keys()), loc="center left", bbox_to_anchor=(1.0, 0.5),
            fontsize=7, frameon=False, title="method",
        )  # fmt: skip
        fig.suptitle("Faithfulness curves (dotted: 0.85)")
        fig.tight_layout()
    except BaseException:
        plt.close(fig)
        raise
    return fig


def _common_root(dirs: Sequence[Path]) -> Path | None:
    import os

    try:
        return Path(os.path.commonpath([str(d.resolve()) for d in dirs]))
    except ValueError:
        return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m circuitkit.compare",
        description="Compare circuitkit runs: print a table and plot their faithfulness curves.",
    )
    parser.add_argument("paths", nargs="+", help="run directories, or directories above them (a multirun sweep dir)")
    parser.add_argument("--out", help="PNG file for the curve plot (default: compare.png in the runs' common directory)")
    parser.add_argument("--no-plot", action="store_true", help="only print the table")
    parser.add_argument("--csv", help="also write the table to this CSV file")
    parser.add_argument("--sort", help="sort by this column (e.g. faithfulness, seconds, edges)")
    parser.add_argument(
        "--html",
        action="store_true",
        help="also write an interactive explorer of the runs' circuits (shared and unique edges, overlap): compare.html",
    )
    parser.add_argument("--html-out", help="file for the --html explorer (default: compare.html in the runs' common directory)")
    parser.add_argument(
        "--x",
        help="x axis of the curve plot: a curve table column (default: fraction, the share of the graph's edges, on a log scale; e.g. n_edges)",
    )
    parser.add_argument(
        "--matrices-dir",
        help="where overlap.csv/png, transfer.csv/png and matrices.json go (default: the runs' common directory)",
    )
    parser.add_argument("--wandb", metavar="PROJECT", help="also log the tables and heatmaps to this W&B project")
    args = parser.parse_args(argv)
    try:
        dirs = find_run_dirs(args.paths)
    except CircuitkitError as e:
        print(f"circuitkit.compare: error: {e}", file=sys.stderr)
        return 1
    # One unreadable run never stops the comparison of the others.
    runs, kept = [], []
    for d in dirs:
        try:
            runs.append(load_run(d))
            kept.append(d)
        except CircuitkitError as e:
            print(f"circuitkit.compare: warning: skipping {d}: {e}", file=sys.stderr)
    if not runs:
        print(f"circuitkit.compare: error: none of the {len(dirs)} run(s) found has a readable results.json.", file=sys.stderr)
        return 1
    dirs = kept
    dirs = [d.resolve() for d in dirs]
    for r, d in zip(runs, dirs, strict=True):
        r.path = d
    root = _common_root(dirs)
    if root is not None and len(dirs) == 1:
        root = root.parent
    header, rows = summary_rows(runs, root)
    if args.sort:
        if args.sort not in header:
            print(f"circuitkit.compare: error: cannot sort by '{args.sort}'; columns are: {', '.join(header)}.", file=sys.stderr)
            return 1
        i = header.index(args.sort)
        desc = args.sort in ("faithfulness", "CPR", "agreement")  # higher is better: best first
        present = sorted((row for row in rows if row[i] is not None), key=lambda row: row[i], reverse=desc)
        rows = present + [row for row in rows if row[i] is None]
    print(format_table(header, rows))
    if args.csv:
        with open(args.csv, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows([["" if v is None else v for v in row] for row in rows])
        print(f"table written to {args.csv}")
    # Circuit overlap between runs and the task x task transfer matrix (circuitkit/matrices.py).
    from circuitkit import matrices

    try:
        mdir = Path(args.matrices_dir) if args.matrices_dir else (root or Path.cwd())
        lines, written_files = matrices.write_matrices(dirs, [_label(r, root) for r in runs], mdir, plot=not args.no_plot)
    except ImportError:
        lines, written_files = matrices.write_matrices(dirs, [_label(r, root) for r in runs], mdir, plot=False)
    except CircuitkitError as e:
        print(f"circuitkit.compare: error: {e}", file=sys.stderr)
        return 1
    for line in lines:
        print(line)
    if written_files:
        print(f"matrices written to {', '.join(str(p) for p in written_files.values())}")
        if args.wandb:
            try:
                where = matrices.log_wandb(written_files, args.wandb)
            except Exception as e:  # noqa: BLE001 - the local files are written
                print(
                    f"circuitkit.compare: warning: W&B logging failed ({type(e).__name__}: {e}); the files above are complete.",
                    file=sys.stderr,
                )
            else:
                print(f"matrices logged to W&B {where}")
    if args.html or args.html_out:
        from circuitkit import explorer

        page = Path(args.html_out) if args.html_out else (root or Path.cwd()) / "compare.html"
        if len(dirs) < 2:
            print(
                f"circuitkit.compare: error: --html compares circuits, but only one run was found ({dirs[0]}); pass two or more run directories (a run's own explorer is its circuit.html).",
                file=sys.stderr,
            )
            return 1
        try:
            explorer.for_run_dirs(dirs, page, labels=[f"{r.method} / {r.task} ({_label(r, root)})" for r in runs])
        except CircuitkitError as e:
            print(f"circuitkit.compare: error: {e}", file=sys.stderr)
            return 1
        print(f"circuit explorer written to {page}")
    if not args.no_plot:
        out = Path(args.out) if args.out else (root or Path.cwd()) / "compare.png"
        try:
            written = write_comparison_plot(runs, out, root, args.x)
        except ImportError:
            print("no plot: matplotlib cannot be imported (pip install matplotlib).", file=sys.stderr)
        else:
            if written is None:
                print("no plot: no run has a faithfulness curve (add a curve evaluator, e.g. evaluator=[faithfulness_curve]).")
            else:
                print(f"faithfulness curves plotted to {written}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
