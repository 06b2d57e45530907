"""Choices that would print confident nonsense: a threshold selector without a threshold is refused, a
threshold keeping (nearly) every edge, or none, is warned about with the scale of the scores, and a
faithfulness over a clean-corrupted gap that is noise is flagged (faithfulness_meaningful)."""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch
from helpers import plain_metric

import circuitkit as ck
from circuitkit.errors import ConfigError
from circuitkit.evaluation import GAP_MIN_RELATIVE, GAP_SE_FACTOR, Evaluation, gap_check
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
    [
        ("edge", 0.0, "all"),
        ("edge", 0.05, "nearly all"),
        ("edge", 1.5, "none"),
        ("edge", 0.5, None),
        ("node", 0.0, "all"),
        ("node", 0.5, None),
    ],
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


# ----- a faithfulness over a gap that is noise ------------------------------------------------------


def evaluation(clean, corrupted):
    clean, corrupted = torch.tensor(clean, dtype=torch.float64), torch.tensor(corrupted, dtype=torch.float64)
    n = len(clean)
    return Evaluation(float(clean.mean()), float(corrupted.mean()), [], n, clean, corrupted, torch.zeros(0, n))


def test_gap_check_formula():
    assert (GAP_SE_FACTOR, GAP_MIN_RELATIVE) == (3.0, 1e-3)  # the documented criterion
    # gaps 1, -1, 1, -1, 2: mean 0.4, sd sqrt(1.8) -> se 0.6: 0.4 < 3 * 0.6
    ok, why = gap_check(evaluation([1.0, -1.0, 1.0, -1.0, 2.0], [0.0] * 5))
    assert ok is False and "mean 0.4 over 5 examples" in why and "standard error 0.6" in why and "standard deviation 1.34" in why
    # gaps 2, 2.2, 1.8, 2, 2: se = sqrt(0.02) / sqrt(5) = 0.063; 2 >= 3 * 0.063 and 2 >= 1e-3 * size
    assert gap_check(evaluation([3.0, 3.2, 2.8, 3.0, 3.0], [1.0] * 5)) == (True, "")
    # identical gaps: no spread, a gap of any size above the relative floor is meaningful
    assert gap_check(evaluation([5.0, 5.0], [4.0, 4.0])) == (True, "")
    # consistent but a sliver of the metric's size: 1e-4 on values around 100
    ok, why = gap_check(evaluation([100.0001, 100.0001, 100.0001], [100.0, 100.0, 100.0]))
    assert ok is False and "under 0.001 of the metric's own size (mean |metric| 100)" in why
    assert gap_check(evaluation([1.0], [0.0]))[0] is None  # one example: no spread to compare with
    assert gap_check(Evaluation(1.0, 0.0, [], 3))[0] is None  # no per-example values


def test_a_random_model_run_says_faithfulness_is_not_meaningful(tiny_model, tmp_path, caplog):
    """The tiny random model shows no behaviour on greater_than: every faithfulness evaluator records
    faithfulness_meaningful false with the reason, and the run warns once."""
    cfg = {
        "seed": 0,
        "progress": False,
        "method": {"name": "eap"},
        "task": {"name": "greater_than", "n_examples": 16, "min_examples": 1},
        "selector": {"name": "top_n", "n_edges": 10},
        "evaluator": {"faithfulness": {}, "completeness": {}, "faithfulness_curve": {"budgets": [10, 50]}},
    }
    with caplog.at_level(logging.WARNING, logger="circuitkit"):
        run(cfg, tmp_path / "run", model=tiny_model)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    for name in ("faithfulness", "completeness", "faithfulness_curve"):
        values, notes = results[name]["values"], results[name]["notes"]
        assert values["faithfulness_meaningful"] is False, name
        assert any(n.startswith("faithfulness is not meaningful here") for n in notes), name
    warned = [r.getMessage() for r in caplog.records if "faithfulness is not meaningful" in r.getMessage()]
    assert len(warned) == 1

    # The recorded standard error and the verdict, from per-example metrics of plain bridge forwards.
    task = ck.build("tasks", "greater_than", n_examples=16, min_examples=1)
    data = task.build(tiny_model.tokenizer)
    batches = list(data.batches(8))
    clean = torch.cat([plain_metric(tiny_model, b.clean, b, task.metric) for b in batches]).double()
    corrupted = torch.cat([plain_metric(tiny_model, b.corrupted, b, task.metric) for b in batches]).double()
    gaps = clean - corrupted
    se = float(gaps.std()) / math.sqrt(len(gaps))
    size = float(((clean.abs() + corrupted.abs()) / 2).mean())
    eps = torch.finfo(tiny_model.dtype).eps
    with torch.no_grad():  # each gap is a difference of four float32 logits, each rounded relative to its size
        logits = max(float(tiny_model.bridge(t).abs().max()) for b in batches for t in (b.clean, b.corrupted))
    assert abs(results["faithfulness"]["values"]["gap_stderr"] - se) <= 8 * eps * logits
    assert abs(float(gaps.mean())) < GAP_SE_FACTOR * se or abs(float(gaps.mean())) < GAP_MIN_RELATIVE * size
