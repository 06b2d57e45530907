"""The default selection: the smallest top-n circuit reaching a target faithfulness (circuitkit.search), and
the evaluation cache it shares with the curve and the faithfulness of the chosen circuit."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import float_tol

import circuitkit as ck
from circuitkit import engine
from circuitkit.errors import ConfigError
from circuitkit.evaluation import EvaluationCache, evaluate_keeps
from circuitkit.search import GRID_PERCENTAGES, grid_sizes, smallest_reaching
from circuitkit.testing import TINY_EXAMPLES, TinyTask

# ----- the search on a known faithfulness function ------------------------------------------------


def recording(f):
    calls = []

    def measure(sizes):
        calls.append(list(sizes))
        return [f(n) for n in sizes]

    return measure, calls


@pytest.mark.parametrize("answer", [1, 2, 7, 8, 9, 14, 15, 16, 100, 151, 152, 757, 760, 1519])
def test_smallest_reaching_is_exact_for_a_monotone_curve(answer):
    total = 1519
    grid = grid_sizes(GRID_PERCENTAGES, total)

    def f(n):  # crosses 0.85 exactly at `answer`
        return 0.85 * n / answer if n < answer else 0.85 + 0.15 * (n - answer) / (total - answer + 1)

    measure, calls = recording(f)
    found = smallest_reaching(measure, grid, 0.85, refine_points=3)
    brute = next(n for n in range(total + 1) if f(n) >= 0.85)
    assert found.reached and found.n == brute == answer and found.faithfulness == f(answer)
    assert found.below == answer - 1 or (answer in grid and found.below in [0, *grid])  # bracketed to one edge
    assert f(found.below) < 0.85 if found.below else True
    assert calls[0] == grid and all(len(c) <= 3 for c in calls[1:])  # one batched call per round
    width = max(b - a for a, b in zip([0, *grid], grid, strict=False))
    assert len(calls) - 1 <= math.ceil(math.log(width, 4)) + 1  # k-ary bisection: log_{k+1} rounds
    evaluated = [n for c in calls for n in c]
    assert len(evaluated) == len(set(evaluated))  # no size evaluated twice


def test_smallest_reaching_stops_after_refine_steps_and_reports_an_upper_bound():
    measure, calls = recording(lambda n: n / 100)
    found = smallest_reaching(measure, [10, 100], 0.85, refine_points=1, refine_steps=1)
    assert found.reached and found.n == 100 and found.below == 55 and found.rounds == 1 and len(calls) == 2


def test_smallest_reaching_when_no_size_reaches_or_faithfulness_is_undefined():
    measure, _ = recording(lambda n: {1: 0.2, 5: 0.6, 9: 0.6, 20: 0.5}[n])
    found = smallest_reaching(measure, [1, 5, 9, 20], 0.85)
    assert not found.reached and found.n == 9 and found.faithfulness == 0.6  # the largest faithfulness (largest size on ties)
    measure, _ = recording(lambda n: None)
    found = smallest_reaching(measure, [1, 5], 0.85)
    assert not found.reached and found.n is None


def test_non_monotone_curve_gives_the_first_crossing_of_the_search():
    values = {1: 0.0, 10: 0.9, 100: 1.0, 4: 0.9, 7: 0.5, 2: 0.1, 3: 0.2, 5: 0.95, 6: 0.3}
    measure, _ = recording(lambda n: values.get(n, 0.0))
    found = smallest_reaching(measure, [1, 10, 100], 0.85, refine_points=2)
    # Round 1 evaluates 4 and 7 inside (1, 10): 4 reaches; round 2 inside (1, 4): 2 and 3 do not.
    assert found.n == 4 and found.below == 3


# ----- on a model ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def setup(tiny_model):
    task = TinyTask(ck.TaskConfig(name="tiny", n_examples=len(TINY_EXAMPLES)))
    data = task.build(tiny_model.tokenizer)
    ctx = ck.RunContext(batch_size=3, progress=False)
    scores = ck.build("methods", "eap").attribute(tiny_model, task, data, ctx)
    return tiny_model, task, data, scores


def fresh_faithfulness(model, task, data, circuits):
    """Faithfulness of each circuit, evaluated without any cache, in one sweep."""
    ev = evaluate_keeps(
        model, task, data, torch.stack([c.keep_dense() for c in circuits]), ck.RunContext(batch_size=5, progress=False)
    )
    return [ev.faithfulness(m) for m in ev.circuits]


@pytest.mark.parametrize("selector", ["top_n", "greedy"])
def test_selector_without_n_edges_finds_the_smallest_circuit_reaching_the_target(setup, selector):
    model, task, data, scores = setup
    sel = ck.build("selectors", selector, target=0.6)
    assert sel.measures_circuits()
    ctx = ck.RunContext(batch_size=3, progress=False, scores=scores, evaluations=EvaluationCache())
    circuit = sel.select_in_run(scores, model, task, data, ctx)
    rec = circuit.selection
    assert rec["reached"] and rec["exact"] and rec["selector"] == selector and rec["target"] == 0.6
    n = rec["requested_edges"]
    assert rec["largest_not_reaching"] == n - 1 and circuit.n_edges == rec["edges_in_circuit"]
    assert rec["fraction_of_graph"] == pytest.approx(circuit.n_edges / model.graph.n_edges)
    # The circuit is the fixed-size selector's circuit at n; at n and n - 1, measured afresh, the target is
    # reached and missed.
    at_n = ck.build("selectors", selector, n_edges=n).select(scores)
    below = ck.build("selectors", selector, n_edges=n - 1).select(scores)
    assert (at_n.edges == circuit.edges).all()
    f_n, f_below = fresh_faithfulness(model, task, data, [at_n, below])
    tol = float_tol(model, 1.0)  # faithfulness is a ratio of order one
    assert f_n == pytest.approx(rec["faithfulness"], abs=tol) and f_n >= 0.6 - tol and f_below < 0.6 + tol
    # Every evaluated size is in the record, with the faithfulness a fresh evaluation gives.
    rows = rec["evaluated"]
    sizes = [r["requested_edges"] for r in rows]
    assert sizes == sorted(set(sizes)) and set(grid_sizes(GRID_PERCENTAGES, model.graph.n_edges)) <= set(sizes)
    fresh = fresh_faithfulness(model, task, data, [ck.build("selectors", selector, n_edges=k).select(scores) for k in sizes])
    assert [r["faithfulness"] for r in rows] == pytest.approx(fresh, abs=tol)


def test_unreachable_target_keeps_the_most_faithful_circuit_and_says_so(setup, caplog):
    model, task, data, scores = setup
    ctx = ck.RunContext(batch_size=4, progress=False, scores=scores)
    with caplog.at_level("WARNING", logger="circuitkit"):
        circuit = ck.build("selectors", "top_n", target=5.0, search_budgets=[10, 50]).select_in_run(
            scores, model, task, data, ctx
        )
    rec = circuit.selection
    best = max(rec["evaluated"], key=lambda r: r["faithfulness"])
    assert (
        not rec["reached"] and rec["requested_edges"] == best["requested_edges"] and rec["faithfulness"] == best["faithfulness"]
    )
    assert "no evaluated size reaches faithfulness 5" in rec["note"] and f"n={best['requested_edges']}" in rec["note"]
    assert [r.getMessage() for r in caplog.records] == [f"selector top_n: {rec['note']}"]


def test_select_without_the_model_and_bad_options_are_clear(setup):
    _, _, _, scores = setup
    with pytest.raises(ConfigError, match="selector.n_edges is null: top_n then searches .* give n_edges"):
        ck.build("selectors", "top_n").select(scores)
    assert not ck.build("selectors", "top_n", n_edges=10).measures_circuits()
    assert not ck.build("selectors", "top_n", n_nodes=3).measures_circuits()
    g = scores.graph
    for opts, msg in (
        ({"target": float("nan")}, "selector.target must be a finite number"),
        ({"search_budgets": [0, 10]}, r"percentages in \(0, 100\]"),
        ({"search_budgets": []}, "non-empty list"),
        ({"refine_points": 0}, "refine_points must be at least 1"),
        ({"refine_steps": -1}, "refine_steps must be >= 0"),
        ({"circuits_per_pass": 0}, "circuits_per_pass must be at least 1"),
    ):
        with pytest.raises(ConfigError, match=msg):
            ck.build("selectors", "top_n", **opts).validate(g)


# ----- the evaluation cache ------------------------------------------------------------------------


def test_evaluation_cache_gives_the_uncached_numbers_and_runs_each_circuit_once(setup, monkeypatch):
    model, task, data, scores = setup
    g = model.graph
    circuits = [ck.build("selectors", "top_n", n_edges=k).select(scores) for k in (5, 20, 60, g.n_edges)]
    keeps = torch.stack([c.keep_dense() for c in circuits])
    plain = evaluate_keeps(model, task, data, keeps, ck.RunContext(batch_size=3, progress=False))

    runs, masked = [], []
    real_sources, real_masked = engine.run_sources, engine.masked_metric
    monkeypatch.setattr(engine, "run_sources", lambda *a, **k: runs.append(1) or real_sources(*a, **k))
    monkeypatch.setattr(
        engine, "masked_metric", lambda m, b, f, r, keep, **k: masked.append(keep.shape[0]) or real_masked(m, b, f, r, keep, **k)
    )
    cache = EvaluationCache()
    ctx = ck.RunContext(batch_size=3, progress=False, evaluations=cache)
    batches = math.ceil(len(data) / 3)
    first = evaluate_keeps(model, task, data, keeps[:2], ctx)
    assert len(runs) == batches and sum(masked) == 2 * batches
    # Two new circuits, one seen, one repeated: only the two new ones are evaluated, and no corrupted run again;
    # the full circuit (keeps[3]) is the clean run: no masked pass.
    second = evaluate_keeps(model, task, data, torch.stack([keeps[2], keeps[1], keeps[3], keeps[3]]), ctx)
    assert len(runs) == batches and sum(masked) == 3 * batches and cache.evaluated == 4 and cache.reused == 2
    third = evaluate_keeps(model, task, data, keeps, ctx)
    assert sum(masked) == 3 * batches and cache.reused == 6
    # Per-example sums in another order: float64 rounding of float32 metrics.
    tol = 8 * torch.finfo(torch.float64).eps * max(1.0, abs(plain.clean), abs(plain.corrupted))
    assert third.clean == pytest.approx(plain.clean, abs=tol) and third.corrupted == pytest.approx(plain.corrupted, abs=tol)
    assert third.circuits == pytest.approx(plain.circuits, abs=tol)
    assert first.circuits == pytest.approx(plain.circuits[:2], abs=tol)
    assert second.circuits == pytest.approx([plain.circuits[2], plain.circuits[1], plain.circuits[3], plain.circuits[3]], abs=tol)
    # Another batch size or data is another entry: nothing is shared with it.
    other = evaluate_keeps(model, task, data, keeps[:1], ck.RunContext(batch_size=4, progress=False, evaluations=cache))
    assert len(runs) == batches + math.ceil(len(data) / 4)
    assert other.circuits[0] == pytest.approx(
        plain.circuits[0], abs=float_tol(model, max(abs(plain.clean), abs(plain.corrupted)))
    )


def test_evaluation_cache_over_its_memory_limit_recomputes_the_batches(setup, monkeypatch):
    model, task, data, scores = setup
    runs = []
    real_sources = engine.run_sources
    monkeypatch.setattr(engine, "run_sources", lambda *a, **k: runs.append(1) or real_sources(*a, **k))
    keeps = torch.stack([ck.build("selectors", "top_n", n_edges=k).select(scores).keep_dense() for k in (5, 30)])
    ctx = ck.RunContext(batch_size=3, progress=False, evaluations=EvaluationCache(max_bytes=0))
    a = evaluate_keeps(model, task, data, keeps[:1], ctx)
    b = evaluate_keeps(model, task, data, keeps, ctx)
    assert len(runs) == 2 * math.ceil(len(data) / 3) and b.circuits[0] == a.circuits[0]


# ----- the default run -----------------------------------------------------------------------------


def cli(*args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    return subprocess.run([sys.executable, "-m", "circuitkit", *args], capture_output=True, text=True, env=env, timeout=300)


def test_default_run_reports_the_smallest_circuit_the_curve_and_cpr(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    p = cli(f"model.name={tiny_model_dir}", "task.n_examples=8", "progress=false", "selector.target=0.5", f"hydra.run.dir={out}")
    assert p.returncode == 0, p.stderr
    results = json.loads((out / "results.json").read_text())
    sel = results["selection"]
    assert sel["selector"] == "top_n" and sel["target"] == 0.5 and sel["reached"] and sel["exact"]
    assert results["edges_in_circuit"] == sel["edges_in_circuit"] and sel["edges_in_graph"] == results["edges_in_graph"]
    f = results["faithfulness"]["values"]
    assert f["faithfulness"] == pytest.approx(sel["faithfulness"]) and f["faithfulness"] >= 0.5
    curve = results["faithfulness_curve"]
    assert [r["budget"] for r in curve["tables"]["curve"]] == list(GRID_PERCENTAGES)
    assert curve["values"]["edges_for_target"] is not None and curve["values"]["cpr"] is not None
    lines = [line for line in p.stdout.splitlines() if line.startswith("circuitkit: ")]
    pct = 100 * sel["fraction_of_graph"]
    assert (
        f"circuitkit: smallest circuit reaching faithfulness 0.5: {sel['edges_in_circuit']:,} of {sel['edges_in_graph']:,} edges ({pct:.2g}% of the graph; top_n n_edges={sel['requested_edges']})"
        in p.stdout
    )
    assert any(
        line.startswith("circuitkit: faithfulness curve (edge budget: faithfulness) 0.1%:") and "CPR " in line and "CMD " in line
        for line in lines
    )
    # A fixed size stays available, without a search.
    out2 = tmp_path / "fixed"
    p = cli(
        f"model.name={tiny_model_dir}",
        "task.n_examples=8",
        "progress=false",
        "selector=top_n",
        "selector.n_edges=20",
        "evaluator=[faithfulness]",
        f"hydra.run.dir={out2}",
    )
    assert p.returncode == 0, p.stderr
    results = json.loads((out2 / "results.json").read_text())
    assert "selection" not in results and 0 < results["edges_in_circuit"] <= 20 and "smallest circuit" not in p.stdout


def test_the_search_is_reached_through_the_registry():
    from importlib.metadata import entry_points

    from circuitkit.plugins import get_registry

    eps = {e.name: e.value for e in entry_points(group="circuitkit")}
    assert eps["top_n"] == "circuitkit_plugins.top_n" and eps["greedy"] == "circuitkit_plugins.greedy"
    cfg = get_registry().selectors.get("top_n").config(name="top_n")
    assert cfg.n_edges is None and cfg.target == 0.85 and list(cfg.search_budgets) == list(GRID_PERCENTAGES)
    assert np.isclose(cfg.target, 0.85)
