"""``circuit.html``: an interactive circuit explorer in one self-contained file.

The page (template ``explorer.html`` beside this module: vanilla JavaScript and SVG, scripts and styles
inline, no network access — its Content-Security-Policy forbids any) holds, per run:

- the ranking of edges the top-n selector uses (``rank_key``: ``|score|`` or the signed score, ties by edge
  order), stored compactly as base64 arrays: the first ``max_stored`` edge indices in rank order (uint16, or
  uint32 above 65,535 edges) and their float64 scores (and per-edge standard errors when given). GPT-2
  small's 32,491 edges fit entirely (about 0.45 MB); larger graphs keep the strongest ``max_stored``;
- the run's circuit (edge indices; edges outside the stored ranking are stored with their scores);
- node scores (the sum of each node's outgoing edge scores), and the faithfulness measured at top-n sizes
  when the run measured any (``faithfulness_curve``'s ``curve`` and ``refine`` tables, the sizes the
  top-n selector's target search evaluated): requested edges -> faithfulness.

The page rebuilds the graph's names and edge order from ``cfg`` exactly as :class:`circuitkit.graph.Graph`
does, and re-selects top-n in the browser with :meth:`Graph.prune`'s rule (an edge stays only if its source
is reachable from ``input`` and its destination reaches ``logits`` through kept edges), so the slider shows
exactly the circuit ``selector=top_n selector.n_edges=n`` would give.

Size budget (checked by the tests): under 150 KB for the bundled model, under 700 KB for a GPT-2-small
graph with every edge stored. At most ``max_draw`` edges (the strongest) are drawn at once.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Mapping, Sequence
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
import torch

from circuitkit.errors import CircuitkitError
from circuitkit.graph import Graph
from circuitkit.nodes import rank_key
from circuitkit.results import Circuit, RunResult, Scores, atomic_write_text

#: Ranked edges stored per run by default (all of GPT-2 small's 32,491).
MAX_STORED = 50_000
#: Edges drawn at once by default (the strongest of the selection).
MAX_DRAW = 1500
#: The strongest edges outside the selection drawn for context (thin, grey).
CONTEXT = 50


def _b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a).tobytes()).decode("ascii")


def _finite(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def ranking(scores: Scores, absolute: bool = True) -> np.ndarray:
    """Edge indices in the order top-n selection takes them (:func:`circuitkit.nodes.top_mask`)."""
    return torch.argsort(rank_key(scores.values, absolute), descending=True, stable=True).numpy()


def initial_n(graph: Graph, order: np.ndarray, circuit: np.ndarray, hint: int | None = None) -> int:
    """A top-n size whose pruned selection is ``circuit``: ``hint`` (the selector's ``n_edges``) when it
    gives the circuit, else the rank of the circuit's weakest edge; that rank when none matches."""
    circuit = np.asarray(circuit, dtype=bool)

    def gives(n: int) -> bool:
        mask = np.zeros(graph.n_edges, dtype=bool)
        mask[order[:n]] = True
        return bool(np.array_equal(graph.prune(mask), circuit))

    if hint is not None and 0 <= int(hint) <= len(order) and gives(int(hint)):
        return int(hint)
    pos = np.empty(graph.n_edges, dtype=np.int64)
    pos[order] = np.arange(len(order))
    idx = np.flatnonzero(circuit)
    return int(pos[idx].max()) + 1 if len(idx) else 0


def curve_points(
    evals: Mapping[str, Any],
    absolute: bool = True,
    configs: Mapping[str, Any] | None = None,
    selection: Mapping[str, Any] | None = None,
) -> dict[str, Any] | None:
    """The faithfulness measured at top-n sizes, from a run's evaluator results (``results.json`` entries or
    :class:`~circuitkit.results.EvalResult`): every table row with ``requested_edges`` and ``faithfulness``
    (``faithfulness_curve``'s ``curve`` and its ``refine`` rows), from evaluators ranking edges the same way
    (``absolute``; the signed ``curve_signed`` table is left out), and the sizes the top-n selector's
    search evaluated (``selection``: its ``evaluated`` rows and ``target``). ``{"points": [{"n", "edges",
    "faithfulness"}], "target"}`` or None."""
    points: dict[int, dict[str, Any]] = {}
    target = None
    if isinstance(selection, Mapping):
        for row in selection.get("evaluated") or []:
            n, f = row.get("requested_edges"), _finite(row.get("faithfulness"))
            if isinstance(n, (int, float)) and f is not None:
                points[int(n)] = {"n": int(n), "edges": row.get("n_edges"), "faithfulness": f}
        target = _finite(selection.get("target")) if points else None
    for name, ev in evals.items():
        tables = getattr(ev, "tables", None) if not isinstance(ev, Mapping) else ev.get("tables")
        values = getattr(ev, "values", None) if not isinstance(ev, Mapping) else ev.get("values")
        if not isinstance(tables, Mapping):
            continue
        opts = (configs or {}).get(name) or {}
        if bool(opts.get("absolute", True)) != bool(absolute) or opts.get("selector", "top_n") != "top_n":
            continue
        found = False
        for tname, rows in tables.items():
            if tname == "curve_signed" or not isinstance(rows, list):
                continue
            for row in rows:
                if not isinstance(row, Mapping) or "requested_edges" not in row or "faithfulness" not in row:
                    continue
                n, f = row.get("requested_edges"), _finite(row.get("faithfulness"))
                if not isinstance(n, (int, float)) or f is None:
                    continue
                points[int(n)] = {"n": int(n), "edges": row.get("n_edges"), "faithfulness": f}
                found = True
        if found and isinstance(values, Mapping) and target is None:
            target = _finite(values.get("target"))
    if not points:
        return None
    return {"points": [points[k] for k in sorted(points)], "target": target}


def run_view(
    scores: Scores | None,
    circuit: Circuit,
    label: str,
    *,
    absolute: bool = True,
    n_hint: int | None = None,
    curve: dict[str, Any] | None = None,
    stderr: Sequence[float] | torch.Tensor | np.ndarray | None = None,
    max_stored: int = MAX_STORED,
) -> dict[str, Any]:
    """One run's data for the page: ranking, scores, circuit, node scores and curve."""
    g = circuit.graph
    if scores is None:
        scores = circuit.scores
    if max_stored < 1:
        raise CircuitkitError(f"The explorer needs to store at least one ranked edge, got max_stored={max_stored}.")
    k = min(g.n_edges, int(max_stored))
    mask = np.asarray(circuit.edges, dtype=bool)
    if scores is None:  # no ranking: only the circuit, unscored
        order = np.flatnonzero(mask)[:0]
        values = np.zeros(g.n_edges)
        node_scores = None
    else:
        if scores.graph != g:
            raise CircuitkitError("The scores and the circuit given to the explorer belong to different graphs.")
        order = ranking(scores, absolute)[:k]
        values = np.nan_to_num(scores.values.numpy(), nan=0.0)
        node_scores = [_finite(v) for v in scores.node_scores().values()]
    err = None if stderr is None else np.asarray(torch.as_tensor(stderr, dtype=torch.float64).cpu(), dtype=np.float64)
    if err is not None and err.shape != (g.n_edges,):
        raise CircuitkitError(f"Per-edge uncertainties have shape {err.shape}, expected ({g.n_edges},).")
    stored = np.zeros(g.n_edges, dtype=bool)
    stored[order] = True
    extra = [
        [int(e), float(values[e]) if scores is not None else None, None if err is None else _finite(err[e])]
        for e in np.flatnonzero(mask & ~stored).tolist()
    ]
    dtype = "<u2" if g.n_edges <= 65535 else "<u4"
    return {
        "label": label,
        "absolute": bool(absolute),
        "order_dtype": "u16" if dtype == "<u2" else "u32",
        "order": _b64(order.astype(dtype)),
        "scores": _b64(values[order].astype("<f8")),
        "stderr": None
        if err is None
        else _b64(np.nan_to_num(err[order], nan=0.0).astype("<f4")),  # float32: enough for an error bar
        "extra": extra,
        "circuit": np.flatnonzero(mask).tolist(),
        "init_n": initial_n(g, order, mask, n_hint) if len(order) else 0,
        "node_scores": node_scores,
        "curve": curve,
    }


def render(
    graph: Graph,
    views: Sequence[dict[str, Any]],
    *,
    title: str,
    summary: str = "",
    d_model: int | None = None,
    max_draw: int = MAX_DRAW,
    context: int = CONTEXT,
) -> str:
    """The page's HTML text for ``views`` (:func:`run_view`; two or more make a comparison). ``context``:
    how many of the strongest edges outside the selection are drawn thin and grey (a checkbox hides them)."""
    if not views:
        raise CircuitkitError("The explorer needs at least one run.")
    data = {
        "title": title,
        "summary": summary,
        "graph": {**graph.to_dict(), "n_kv_heads": graph.n_kv_heads},
        "d_model": d_model,
        "max_draw": int(max_draw),
        "context": int(context),
        "runs": list(views),
    }
    # '<' escaped so no string in the data can close the script element.
    text = json.dumps(data, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")
    template = files("circuitkit").joinpath("explorer.html").read_text(encoding="utf-8")
    return template.replace("/*CK_TITLE*/", html.escape(title)).replace("/*CK_DATA*/", text)


def write(path: str | Path, graph: Graph, views: Sequence[dict[str, Any]], **kwargs: Any) -> Path:
    """Write the explorer page atomically; returns the path."""
    path = Path(path)
    atomic_write_text(path, render(graph, views, **kwargs))
    return path


def _run_label(meta: Mapping[str, Any]) -> str:
    return f"{meta.get('method', '?')} on {meta.get('task', '?')}"


def _summary(meta: Mapping[str, Any], circuit: Circuit, evals: Mapping[str, Any]) -> str:
    g = circuit.graph
    parts = [
        f"model {Path(str(meta.get('model', '?'))).name}",
        f"{circuit.n_edges} of {g.n_edges} edges ({100.0 * circuit.n_edges / g.n_edges:.2f}%)",
    ]
    for name, ev in evals.items():
        values = ev.get("values") if isinstance(ev, Mapping) else getattr(ev, "values", None)
        f = _finite((values or {}).get("faithfulness"))
        if f is not None:
            parts.append(f"faithfulness {f:.3f} ({name})")
            break
    return " · ".join(parts)


def for_run(
    run: RunResult,
    path: str | Path,
    *,
    max_stored: int = MAX_STORED,
    max_draw: int = MAX_DRAW,
    stderr: Sequence[float] | torch.Tensor | np.ndarray | None = None,
) -> Path | None:
    """Write ``circuit.html`` for a finished run (None when the run has no circuit)."""
    if run.circuit is None:
        return None
    meta = run.meta
    cfg = meta.get("config") or {}
    sel = cfg.get("selector") or {}
    absolute = bool(sel.get("absolute", True))
    hint = sel.get("n_edges") if sel.get("name", meta.get("selector")) == "top_n" else None
    configs = cfg.get("evaluator") if isinstance(cfg.get("evaluator"), Mapping) else None
    curve = curve_points(run.evals, absolute, configs, getattr(run.circuit, "selection", None))
    if stderr is None and run.scores is not None:
        stderr = getattr(run.scores, "stderr", None)
    view = run_view(
        run.scores,
        run.circuit,
        _run_label(meta),
        absolute=absolute,
        n_hint=hint,
        curve=curve,
        stderr=stderr,
        max_stored=max_stored,
    )
    return write(
        path,
        run.circuit.graph,
        [view],
        title=f"{_run_label(meta)}: {run.circuit.n_edges} edges",
        summary=_summary(meta, run.circuit, run.evals),
        d_model=run.circuit.d_model,
        max_draw=max_draw,
    )


def for_run_dirs(
    dirs: Sequence[str | Path],
    path: str | Path,
    labels: Sequence[str] | None = None,
    *,
    max_stored: int = MAX_STORED,
    max_draw: int = MAX_DRAW,
) -> Path:
    """Write one explorer for finished run directories (``circuit.json``, ``scores.json``,
    ``results.json``): one run's, or with two or more a comparison (shared and unique edges of any two of
    them, and their overlap)."""
    from circuitkit.results import read_json

    if not dirs:
        raise CircuitkitError("The explorer needs at least one run directory.")
    views = []
    graph: Graph | None = None
    d_model = None
    parts = []
    for i, d in enumerate(dirs):
        d = Path(d)
        if not (d / "circuit.json").is_file():
            raise CircuitkitError(f"{d} has no circuit.json; the comparison explorer needs finished runs with a circuit.")
        circuit = Circuit.load(d / "circuit.json")
        if graph is not None and circuit.graph != graph:
            raise CircuitkitError(
                f"{d} holds a circuit of a different architecture ({circuit.graph.n_layers} layers, {circuit.graph.n_heads} heads) "
                f"than the first run ({graph.n_layers} layers, {graph.n_heads} heads); compare circuits of one model."
            )
        graph = circuit.graph
        d_model = d_model if d_model is not None else circuit.d_model
        scores = Scores.load(d / "scores.json", graph) if (d / "scores.json").is_file() else circuit.scores
        res = read_json(d / "results.json", "Results") if (d / "results.json").is_file() else {}
        meta = res.get("meta", {}) if isinstance(res, dict) else {}
        cfg = meta.get("config") or {}
        sel = cfg.get("selector") or {}
        absolute = bool(sel.get("absolute", True))
        hint = sel.get("n_edges") if sel.get("name") == "top_n" else None
        evals = {k: v for k, v in res.items() if isinstance(v, dict) and "values" in v}
        configs = cfg.get("evaluator") if isinstance(cfg.get("evaluator"), Mapping) else None
        label = labels[i] if labels else (_run_label(meta) if len(dirs) == 1 else f"{_run_label(meta)} ({d.name})")
        one = (meta, circuit, evals)
        curve = curve_points(evals, absolute, configs, res.get("selection") if isinstance(res, dict) else None)
        stderr = getattr(scores, "stderr", None) if scores is not None else None
        views.append(
            run_view(scores, circuit, label, absolute=absolute, n_hint=hint, curve=curve, stderr=stderr, max_stored=max_stored)
        )
        parts.append(f"{label}: {circuit.n_edges} edges")
    assert graph is not None
    if len(views) == 1:
        meta, circuit, evals = one
        title, summary = f"{views[0]['label']}: {circuit.n_edges} edges", _summary(meta, circuit, evals)
    else:
        title = "Circuits compared: " + " vs ".join(v["label"] for v in views[:2]) + (" ..." if len(views) > 2 else "")
        summary = "; ".join(parts)
    return write(path, graph, views, title=title, summary=summary, d_model=d_model, max_draw=max_draw)


__all__ = [
    "MAX_DRAW",
    "MAX_STORED",
    "curve_points",
    "for_run",
    "for_run_dirs",
    "initial_n",
    "ranking",
    "render",
    "run_view",
    "write",
]
