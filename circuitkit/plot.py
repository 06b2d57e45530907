"""Pictures of circuits and faithfulness curves, with matplotlib only (optional extra ``plots``).

- :func:`draw_circuit`: the circuit as a graph, nodes placed by layer (``input`` at the bottom, ``logits`` at
  the top, each layer's heads on one row and its MLP on the row above; edges run upward). Edge width grows with ``|score|``,
  colour gives the sign (blue positive, red negative), and line style the destination's input: solid into
  MLPs and logits, dashed into a head's query, dotted into its key, dash-dotted into its value. With
  grouped-query attention an edge into a key/value head's input is drawn into each head of its group that
  is in the circuit.
- :func:`plot_curves`: faithfulness against the percentage of edges kept, several methods overlaid (the
  comparison of many runs, a panel per task, is :func:`circuitkit.compare.curve_figure`).

Both write every path they are given; the format follows the suffix (``.svg``, ``.png``, ``.pdf``).
Neither touches pyplot's global state, so they are safe in scripts, tests and threads.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from circuitkit.errors import CircuitkitError
from circuitkit.results import Circuit

log = logging.getLogger("circuitkit")

INSTALL_HINT = "matplotlib cannot be imported (pip install matplotlib)"

#: line style of an edge by its destination input
LINESTYLES: dict[str, Any] = {"q": (0, (5, 2)), "k": (0, (1, 1.5)), "v": (0, (6, 2, 1, 2)), "": "solid"}
POSITIVE = "#1f5fbf"
NEGATIVE = "#c62828"
UNSCORED = "#555555"


def available() -> bool:
    """Whether matplotlib can be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _figure(width: float, height: float) -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise CircuitkitError(f"Cannot draw pictures: {INSTALL_HINT}.") from None
    return Figure(figsize=(width, height))


def save_figure(fig: Any, paths: Iterable[str | Path], dpi: int) -> list[Path]:
    """Write ``fig`` to every path (the format follows the suffix), creating directories; the paths written."""
    out = []
    for p in paths:
        p = Path(p)
        p.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(p, dpi=dpi, bbox_inches="tight")
        out.append(p)
    return out


def node_positions(circuit: Circuit) -> dict[str, tuple[float, float]]:
    """``name -> (x, y)``: y grows with depth, heads of a layer side by side, the MLP above them."""
    g = circuit.graph
    pos = {"input": (0.0, 0.0)}
    for layer in range(g.n_layers):
        for h in range(g.n_heads):
            pos[f"a{layer}.h{h}"] = (h - (g.n_heads - 1) / 2.0, 2.0 * layer + 1)
        pos[f"m{layer}"] = (0.0, 2.0 * layer + 2)
    pos["logits"] = (0.0, 2.0 * g.n_layers + 1)
    return pos


def _edge_parts(name: str) -> tuple[str, str, str]:
    src, dst = name.split("->")
    qkv = ""
    if dst.endswith(">"):
        dst, qkv = dst[:-1].split("<")
    return src, dst, qkv


def _edge_targets(g: Any, edge: int, node_mask: np.ndarray) -> list[str]:
    """The node names edge ``edge`` is drawn into: its destination node, or for a grouped key/value input the
    heads of its group in the circuit (all of them if none is)."""
    nodes = g.dst_nodes[int(g.edge_dst[edge])]
    if len(nodes) > 1 and node_mask[nodes].any():
        nodes = nodes[node_mask[nodes]]
    return [g.node_names[int(n)] for n in nodes]


def draw_circuit(
    circuit: Circuit,
    *paths: str | Path,
    max_edges: int = 300,
    title: str | None = None,
    dpi: int = 150,
    show_all_nodes: bool = False,
) -> list[Path]:
    """Draw ``circuit`` to each of ``paths`` (e.g. ``"circuit.svg", "circuit.png"``).

    Args:
        circuit: the circuit; its ``scores`` (if any) set the edges' widths and colours.
        paths: output files; the format follows each suffix.
        max_edges: draw at most this many edges (the largest ``|score|`` first); the title says when
            some were left out.
        title: figure title (default: the edge and node counts).
        dpi: resolution of raster formats.
        show_all_nodes: also draw the nodes outside the circuit, faded.

    Returns:
        The written paths.
    """
    if not paths:
        raise CircuitkitError("draw_circuit needs at least one output path (e.g. 'circuit.svg').")
    g = circuit.graph
    idx = np.flatnonzero(np.asarray(circuit.edges, dtype=bool))
    vals = circuit.scores.values.numpy()[idx] if circuit.scores is not None else np.ones(len(idx))
    order = np.argsort(-np.abs(vals), kind="stable")
    shown = idx[order[:max_edges]]
    shown_vals = vals[order[:max_edges]]
    pos = node_positions(circuit)
    width = max(6.0, 1.0 * g.n_heads + 2)
    height = max(4.0, 0.75 * (2 * g.n_layers + 2))
    fig = _figure(width, height)
    from matplotlib.collections import PathCollection
    from matplotlib.lines import Line2D
    from matplotlib.path import Path as MplPath

    ax = fig.add_subplot(1, 1, 1)
    ax.set_axis_off()

    node_mask = circuit.nodes
    in_circuit = dict(zip(g.node_names, node_mask, strict=True))
    vmax = float(np.abs(shown_vals).max()) if len(shown_vals) else 1.0
    vmax = vmax if vmax > 0 else 1.0
    rads = {"q": 0.12, "k": 0.22, "v": 0.32, "": 0.18}
    # One collection of quadratic Bezier curves (edges run upward, from source to destination): much
    # faster to draw and save than one arrow patch per edge.
    curves, colors, widths, styles = [], [], [], []
    for e, v in zip(shown.tolist(), shown_vals.tolist(), strict=True):
        src, _, qkv = _edge_parts(g.edge_names[e])
        if circuit.scores is None:
            color, lw = UNSCORED, 1.2
        else:
            color = POSITIVE if v >= 0 else NEGATIVE
            lw = 0.4 + 3.6 * abs(v) / vmax
        for dst in _edge_targets(g, e, node_mask):
            (x0, y0), (x1, y1) = pos[src], pos[dst]
            # Edges stacked in the middle column (input, MLPs, logits) would hide each other: bend them more.
            rad = rads[qkv] + (0.25 if x0 == x1 else 0.0)
            cx, cy = (x0 + x1) / 2 + rad * (y1 - y0), (y0 + y1) / 2 - rad * (x1 - x0)
            curves.append(MplPath([(x0, y0), (cx, cy), (x1, y1)], [MplPath.MOVETO, MplPath.CURVE3, MplPath.CURVE3]))
            colors.append(color)
            widths.append(lw)
            styles.append(LINESTYLES[qkv])
    if curves:
        ax.add_collection(
            PathCollection(
                curves, facecolors="none", edgecolors=colors, linewidths=widths, linestyles=styles, alpha=0.75, zorder=1
            )
        )
    for name, (x, y) in pos.items():
        on = bool(in_circuit[name])
        if not on and not show_all_nodes:
            continue
        face = "#e0e0e0" if name in ("input", "logits") else ("#ffe0b2" if name.startswith("a") else "#c8e6c9")
        ax.text(
            x,
            y,
            name,
            ha="center",
            va="center",
            fontsize=7,
            zorder=3,
            alpha=1.0 if on else 0.35,
            bbox={
                "boxstyle": "round,pad=0.3",
                "facecolor": face if on else "white",
                "edgecolor": "black" if on else "#bbbbbb",
                "linewidth": 0.6,
            },
        )
    xs = [p[0] for p in pos.values()]
    ys = [p[1] for p in pos.values()]
    ax.set_xlim(min(xs) - 1.0, max(xs) + 1.0)
    ax.set_ylim(min(ys) - 0.7, max(ys) + 0.7)
    handles = [
        Line2D([], [], color="black", linestyle=LINESTYLES[""], label="into MLP / logits"),
        Line2D([], [], color="black", linestyle=LINESTYLES["q"], label="into query"),
        Line2D([], [], color="black", linestyle=LINESTYLES["k"], label="into key"),
        Line2D([], [], color="black", linestyle=LINESTYLES["v"], label="into value"),
    ]
    if circuit.scores is not None:
        handles += [
            Line2D([], [], color=POSITIVE, lw=2, label="positive score"),
            Line2D([], [], color=NEGATIVE, lw=2, label="negative score"),
        ]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, frameon=False)
    if title is None:
        title = f"{circuit.n_edges} edges, {int(circuit.nodes.sum())} nodes"
        if len(idx) > len(shown):
            title += f" (the {len(shown)} largest |score| drawn)"
    ax.set_title(title, fontsize=9)
    return save_figure(fig, paths, dpi)


def _curve_xy(curve: Any) -> tuple[list[float], list[float]]:
    """(percent of edges, faithfulness) from table rows or an ``(x_percent, y)`` pair; undefined points dropped."""
    if isinstance(curve, tuple) and len(curve) == 2:
        xs, ys = list(curve[0]), list(curve[1])
    else:
        xs = [100.0 * float(r["fraction"]) for r in curve]
        ys = [r["faithfulness"] for r in curve]
    pts = [(float(x), float(y)) for x, y in zip(xs, ys, strict=True) if y is not None and math.isfinite(float(y))]
    pts.sort()
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_curves(
    curves: Mapping[str, Sequence[Mapping[str, Any]] | tuple[Sequence[float], Sequence[float]]],
    *paths: str | Path,
    target: float | None = None,
    log_x: bool = True,
    title: str | None = None,
    dpi: int = 150,
) -> list[Path]:
    """Faithfulness against the percentage of edges, one line per entry of ``curves``.

    Args:
        curves: ``label -> rows`` of a ``faithfulness_curve`` table (``fraction``, ``faithfulness``), or
            ``label -> (percent_of_edges, faithfulness)``.
        paths: output files (e.g. ``"curve.png"``).
        target: draw a horizontal line at this faithfulness (e.g. 0.85).
        log_x: logarithmic x axis (MIB's budgets span three decades; the areas are computed on a linear axis).
        title: figure title.
        dpi: resolution of raster formats.
    """
    if not paths:
        raise CircuitkitError("plot_curves needs at least one output path (e.g. 'curve.png').")
    fig = _figure(6.0, 4.0)
    ax = fig.add_subplot(1, 1, 1)
    markers = "osD^v<>ph*"
    for i, (label, curve) in enumerate(curves.items()):
        xs, ys = _curve_xy(curve)
        if xs:
            ax.plot(xs, ys, marker=markers[i % len(markers)], markersize=4, linewidth=1.4, label=label)
    ax.axhline(1.0, color="#888888", linewidth=0.8, linestyle="--")
    ax.axhline(0.0, color="#888888", linewidth=0.6, linestyle=":")
    if target is not None:
        ax.axhline(target, color="#2e7d32", linewidth=0.8, linestyle="-.", label=f"target {target:g}")
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel("edges kept (% of the graph)")
    ax.set_ylabel("faithfulness")
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, paths, dpi)


__all__ = ["available", "draw_circuit", "node_positions", "plot_curves", "save_figure"]
