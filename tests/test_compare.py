"""python -m circuitkit.compare: the curve plot (panels per task, colours per method, log fraction axis,
legend outside) and the table's edges_for_0.85 column."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("matplotlib")

from circuitkit.compare import curve_figure, load_run, main  # noqa: E402

TASKS = ["ioi", "greater_than"]
METHODS = ["eap", "eap_ig", "patching", "clean_corrupted", "acdc", "random", "information_flow_routes"]
TOTAL = 1519


@pytest.fixture
def sweep(tmp_path):
    """14 runs (7 methods x 2 tasks); half record the curve's fraction column, half only edge counts."""
    for t, task in enumerate(TASKS):
        for m, method in enumerate(METHODS):
            sizes = [5, 10, 20, 50, 100, 200, 500, 1000, TOTAL]
            rows = [{"n_edges": n, "faithfulness": min(1.0, (n / (10 + 15 * m + 5 * t)) ** 0.5)} for n in sizes]
            if m % 2:
                for r in rows:
                    r["fraction"] = r["n_edges"] / TOTAL
            res = {
                "status": "complete",
                "meta": {
                    "method": method,
                    "task": task,
                    "model": "bundled",
                    "config": {"evaluator": {"faithfulness_curve": {"target": 0.85}}},
                },
                "seconds": {"attribute": 1.0},
                "edges_in_circuit": 100,
                "edges_in_graph": TOTAL,
                "faithfulness": {"values": {"faithfulness": 0.9}},
                "faithfulness_curve": {"values": {"cpr": 0.8, "cmd": 0.1, "edges_for_target": 17 + m}, "tables": {"curve": rows}},
            }
            d = tmp_path / f"{t * len(METHODS) + m}"
            d.mkdir()
            (d / "results.json").write_text(json.dumps(res))
    return tmp_path


def test_plot_has_a_panel_per_task_a_colour_per_method_a_log_fraction_axis_and_the_legend_outside(sweep):
    import matplotlib.pyplot as plt

    runs = [load_run(d) for d in sorted(sweep.iterdir())]
    fig = curve_figure(runs)
    try:
        panels = [ax for ax in fig.axes if ax.get_visible()]
        assert sorted(ax.get_title() for ax in panels) == sorted(TASKS)
        for ax in panels:
            assert ax.get_xscale() == "log" and "fraction" in ax.get_xlabel()
            lines = [ln for ln in ax.get_lines() if ln.get_label() in METHODS]
            assert sorted(ln.get_label() for ln in lines) == sorted(METHODS)
            colours = {ln.get_label(): ln.get_color() for ln in lines}
            assert len(set(map(str, colours.values()))) == len(METHODS)  # 7 methods, 7 colours
            for ln in lines:  # every x is a fraction of the graph, from either column
                xs = ln.get_xdata()
                assert 0 < min(xs) and max(xs) == pytest.approx(1.0)
        # one colour per method across panels
        per_panel = [{ln.get_label(): str(ln.get_color()) for ln in ax.get_lines() if ln.get_label() in METHODS} for ax in panels]
        assert per_panel[0] == per_panel[1]
        (legend,) = fig.legends
        fig.canvas.draw()
        box = legend.get_window_extent().transformed(fig.transFigure.inverted())
        right_of_panels = max(ax.get_position().x1 for ax in panels)
        assert box.x0 >= right_of_panels  # outside the panels: it covers no curve
    finally:
        plt.close(fig)


def test_table_lists_edges_for_the_target(sweep, capsys):
    assert main([str(sweep), "--no-plot", "--sort", "edges_for_0.85"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines[0].split()
    assert header[:8] == ["run", "method", "task", "model", "status", "faithfulness", "edges", "edges_for_0.85"]
    values = [int(line.split()[7]) for line in lines[2:]]
    assert sorted(values) == sorted([17 + m for m in range(len(METHODS))] * 2)
    assert values == sorted(values)  # fewer edges first
