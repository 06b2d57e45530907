"""Choices that would print confident nonsense: a threshold selector without a threshold is refused, and a
threshold keeping (nearly) every edge, or none, is warned about with the scale of the scores."""

from __future__ import annotations

import logging

import pytest
import torch

import circuitkit as ck
from circuitkit.errors import ConfigError
from circuitkit.graph import Graph
from circuitkit.pipeline import run
from circuitkit.results import Scores


def scores(level="edge"):
    g = Graph(2, 3)
    values = torch.linspace(-1.0, 1.0, g.n_edges, dtype=torch.float64)  # |score| spread over [0, 1]
    if level == "edge":
        return Scores(g, values)
    nodes = torch.linspace(1.0, 0.1, g.n_sources, dtype=torch.float64)  # input first: a connected circuit
    return Scores(g, values, {}, "node", nodes)


def test_threshold_is_required(tiny_model, tmp_path):
    with pytest.raises(ConfigError, match=r"selector=threshold needs selector.threshold=<value>.*selector=top_n"):
        ck.build("selectors", "threshold").validate(Graph(1, 1))
    cfg = {
        "seed": 0,
        "progress": False,
        "method": {"name": "eap"},
        "task": {"name": "greater_than", "n_examples": 4},
        "selector": {"name": "threshold"},
        "evaluator": {"faithfulness": {}},
    }
    with pytest.raises(ConfigError, match="needs selector.threshold"):
        run(cfg, tmp_path / "run", model=tiny_model)
    assert not (tmp_path / "run" / "scores.json").exists()  # refused before any attribution


@pytest.mark.parametrize(
    ("level", "threshold", "warned"),
    [("edge", 0.0, "all"), ("edge", 0.05, "nearly all"), ("edge", 1.5, "none"), ("edge", 0.5, None), ("node", 0.0, "all"), ("node", 0.5, None)],
)
def test_a_threshold_keeping_nearly_everything_or_nothing_is_warned_about(caplog, level, threshold, warned):
    s = scores(level)
    units = s.values.abs() if level == "edge" else s.nodes.abs()
    total, kept = len(units), int((units >= threshold).sum())
    unit = "edges" if level == "edge" else "nodes"
    with caplog.at_level(logging.WARNING, logger="circuitkit"):
        circuit = ck.build("selectors", "threshold", threshold=threshold).select(s)
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    if warned is None:
        assert messages == [] and 0 < circuit.n_edges < s.graph.n_edges
        return
    (msg,) = messages
    assert f"selector.threshold={threshold:g}" in msg
    if warned == "none":
        assert kept == 0 and f"keeps none of the {total} {unit}" in msg
    else:
        assert kept >= 0.9 * total and (warned == "all") == (kept == total)
        assert f"keeps {kept} of the {total} {unit} ({round(100 * kept / total)}%)" in msg
    assert f"Scores range up to {float(units.max()):.3g}" in msg  # the scale, to choose a better threshold from
    if total >= 10:
        assert f"the 10th largest is {float(units.sort(descending=True).values[9]):.3g}" in msg
