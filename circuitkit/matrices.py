"""Runs compared with each other: circuit overlap and task-transfer matrices (``python -m circuitkit.compare``).

- **Overlap**: for every pair of runs with circuits of the same graph, the edge and node overlap of
  their circuits (:func:`circuitkit.analysis.overlap`): IoU (symmetric), and precision / recall of the row
  run's circuit against the column run's (``precision = |A & B| / |A|``, ``recall = |A & B| / |B|``).
- **Transfer**: runs with the ``transfer`` evaluator give a matrix of faithfulness with rows = the task the
  circuit was found on (and its method when several methods are compared) and columns = the task it was
  evaluated on, with the bootstrap interval of each cell.

:func:`write_matrices` writes ``overlap.csv``, ``transfer.csv`` and ``matrices.json`` (and heatmaps
``overlap.png``, ``transfer.png``) into an output directory.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from circuitkit.errors import CircuitkitError
from circuitkit.results import Circuit, atomic_write_text

OVERLAP_KEYS = ("edge_iou", "edge_precision", "edge_recall", "node_iou", "node_precision", "node_recall")


def overlap_matrices(
    circuits: Sequence[Circuit | None], labels: Sequence[str]
) -> tuple[dict[str, list[list[float | None]]], list[str]]:
    """``{key: matrix}`` for each of :data:`OVERLAP_KEYS` (None where a run has no circuit or the graphs
    differ), and notes on runs left out."""
    from circuitkit.analysis import overlap

    n = len(circuits)
    out: dict[str, list[list[float | None]]] = {k: [[None] * n for _ in range(n)] for k in OVERLAP_KEYS}
    notes = []
    for i, a in enumerate(circuits):
        if a is None:
            notes.append(f"{labels[i]}: no readable circuit.json")
            continue
        for j, b in enumerate(circuits):
            if b is None or a.graph != b.graph:
                continue
            ov = overlap(a, b)
            for k in OVERLAP_KEYS:
                out[k][i][j] = ov[k]
    return out, notes


def transfer_matrix(results: Sequence[dict[str, Any]], labels: Sequence[str]) -> dict[str, Any] | None:
    """The transfer matrix of the runs that have a ``transfer`` evaluator, or None if none has.

    Returns ``{"rows": [row labels], "columns": [task names], "faithfulness": [[...]], "ci_low": ...,
    "ci_high": ...}``; a row is labelled with the run's task, plus its method when the runs mix methods."""
    found = []
    for res, label in zip(results, labels, strict=True):
        for ev in res.values():
            if isinstance(ev, dict) and isinstance(ev.get("tables"), dict) and "transfer" in ev["tables"]:
                meta = res.get("meta") or {}
                found.append((label, meta.get("task"), meta.get("method"), ev["tables"]["transfer"]))
                break
    if not found:
        return None
    methods = {m for _, _, m, _ in found}
    columns: list[str] = []
    for *_, rows in found:
        for r in rows:
            if r.get("task") not in columns:
                columns.append(r.get("task"))
    row_labels = []
    for label, task, method, _ in found:
        name = f"{task}" + (f" ({method})" if len(methods) > 1 else "")
        row_labels.append(name if name not in row_labels else f"{name} [{label}]")
    mats = {k: [[None] * len(columns) for _ in found] for k in ("faithfulness", "ci_low", "ci_high")}
    for i, (*_, rows) in enumerate(found):
        for r in rows:
            j = columns.index(r.get("task"))
            mats["faithfulness"][i][j] = r.get("faithfulness")
            mats["ci_low"][i][j] = r.get("faithfulness_ci_low")
            mats["ci_high"][i][j] = r.get("faithfulness_ci_high")
    return {"rows": row_labels, "columns": columns, **mats}


def _cell(v: Any, lo: Any = None, hi: Any = None) -> str:
    if v is None:
        return "-"
    if lo is None or hi is None:
        return f"{v:.3f}"
    return f"{v:.3f} [{lo:.3f}, {hi:.3f}]"


def format_matrix(rows: Sequence[str], cols: Sequence[str], cells: Sequence[Sequence[str]], corner: str = "") -> str:
    widths = [max(len(corner), *(len(r) for r in rows))] + [
        max(len(c), *(len(row[j]) for row in cells)) for j, c in enumerate(cols)
    ]
    lines = ["  ".join(s.ljust(w) for s, w in zip([corner, *cols], widths, strict=True))]
    for r, row in zip(rows, cells, strict=True):
        lines.append("  ".join(s.ljust(w) for s, w in zip([r, *row], widths, strict=True)))
    return "\n".join(lines)


def heatmap(matrix: Sequence[Sequence[float | None]], rows: Sequence[str], cols: Sequence[str], title: str, out: Path,
            vmin: float | None = 0.0, vmax: float | None = 1.0) -> Path:  # fmt: skip
    """Write a heatmap PNG of ``matrix`` with each cell's value printed in it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a = np.array([[np.nan if v is None else float(v) for v in row] for row in matrix], dtype=np.float64)
    fig, ax = plt.subplots(figsize=(1.1 * len(cols) + 3.0, 0.6 * len(rows) + 2.0))
    try:
        im = ax.imshow(a, cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto")
        ax.set_xticks(range(len(cols)), labels=list(cols), rotation=40, ha="right", fontsize=8)
        ax.set_yticks(range(len(rows)), labels=list(rows), fontsize=8)
        for i in range(a.shape[0]):
            for j in range(a.shape[1]):
                if np.isfinite(a[i, j]):
                    ax.text(j, i, f"{a[i, j]:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if a[i, j] < ((vmin or 0) + (vmax or 1)) / 2 else "black")  # fmt: skip
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        ax.set_title(title, fontsize=10)
        fig.tight_layout()
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp.png")
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
        tmp.replace(out)
    finally:
        plt.close(fig)
    return out


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    import io

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows([["" if v is None else v for v in row] for row in rows])
    atomic_write_text(path, buf.getvalue())


def write_matrices(
    run_dirs: Sequence[Path], labels: Sequence[str], out_dir: Path, *, plot: bool = True
) -> tuple[list[str], dict[str, Path]]:
    """Compute and write the overlap and transfer matrices of ``run_dirs``; returns the lines to print and
    ``{name: path}`` of the files written (nothing when fewer than two runs have circuits and none has
    transfer results)."""
    circuits: list[Circuit | None] = []
    results: list[dict[str, Any]] = []
    for d in run_dirs:
        try:
            circuits.append(Circuit.load(Path(d) / "circuit.json"))
        except CircuitkitError:
            circuits.append(None)
        try:
            results.append(json.loads((Path(d) / "results.json").read_text(encoding="utf-8")))
        except (OSError, ValueError):
            results.append({})
    lines: list[str] = []
    files: dict[str, Path] = {}
    payload: dict[str, Any] = {"runs": list(labels)}
    have = [c for c in circuits if c is not None]
    if len(have) >= 2:
        mats, notes = overlap_matrices(circuits, labels)
        payload["overlap"] = mats
        lines.append("edge IoU of the runs' circuits:")
        lines.append(format_matrix(labels, [str(i + 1) for i in range(len(labels))],
                                   [[_cell(v) for v in row] for row in mats["edge_iou"]], corner="run"))  # fmt: skip
        lines.append("(columns: runs in the same order; precision/recall and node overlap in overlap.csv)")
        lines += [f"note: {n}" for n in notes]
        rows = []
        for i, a in enumerate(labels):
            for j, b in enumerate(labels):
                if mats["edge_iou"][i][j] is not None:
                    rows.append([a, b, *(mats[k][i][j] for k in OVERLAP_KEYS)])
        files["overlap.csv"] = out_dir / "overlap.csv"
        _write_csv(files["overlap.csv"], ["run", "reference_run", *OVERLAP_KEYS], rows)
        if plot:
            files["overlap.png"] = heatmap(
                mats["edge_iou"], labels, labels, "Edge IoU of the runs' circuits", out_dir / "overlap.png"
            )
    tm = transfer_matrix(results, labels)
    if tm is not None:
        payload["transfer"] = tm
        cells = [[_cell(tm["faithfulness"][i][j], tm["ci_low"][i][j], tm["ci_high"][i][j]) for j in range(len(tm["columns"]))]
                 for i in range(len(tm["rows"]))]  # fmt: skip
        lines.append("transfer: faithfulness of the row task's circuit on the column task's data [95% interval]:")
        lines.append(format_matrix(tm["rows"], tm["columns"], cells, corner="circuit of \\ on"))
        files["transfer.csv"] = out_dir / "transfer.csv"
        _write_csv(files["transfer.csv"], ["circuit_task", "evaluated_on", "faithfulness", "ci_low", "ci_high"],
                   [[r, c, tm["faithfulness"][i][j], tm["ci_low"][i][j], tm["ci_high"][i][j]]
                    for i, r in enumerate(tm["rows"]) for j, c in enumerate(tm["columns"])])  # fmt: skip
        if plot:
            files["transfer.png"] = heatmap(tm["faithfulness"], tm["rows"], tm["columns"], "Transfer: faithfulness on each task's data",
                                            out_dir / "transfer.png", vmin=None, vmax=None)  # fmt: skip
    if files:
        files["matrices.json"] = out_dir / "matrices.json"
        atomic_write_text(files["matrices.json"], json.dumps(payload, indent=1, allow_nan=False) + "\n")
    return lines, files


def log_wandb(files: dict[str, Path], project: str, name: str | None = None) -> str:
    """Log the written matrices (tables and heatmaps) to a W&B run of ``project`` (job type ``compare``);
    returns the run's URL or the offline directory."""
    from circuitkit_plugins.wandb_reporter import import_wandb

    wandb = import_wandb()
    run = wandb.init(project=project, name=name, job_type="compare")
    try:
        for path in files.values():
            if path.suffix == ".csv":
                with open(path, newline="", encoding="utf-8") as f:
                    rows = list(csv.reader(f))
                if rows:
                    run.log({path.stem: wandb.Table(columns=rows[0], data=rows[1:])})
            elif path.suffix == ".png":
                run.log({f"images/{path.stem}": wandb.Image(str(path))})
    finally:
        run.finish()
    return str(getattr(run, "url", None) or getattr(getattr(run, "settings", None), "sync_dir", "") or "")
