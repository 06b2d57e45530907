"""Uncertainty: bootstrap intervals, per-edge standard errors, inclusion frequency, stability, transfer."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import circuitkit as ck
from circuitkit import uncertainty as unc
from circuitkit.data import tokenize_examples
from tests.helpers import HAND_EXAMPLES, HandTask, float_tol, plain_metric


@pytest.fixture(scope="module")
def hand(tiny_model64):
    task = HandTask(ck.TaskConfig(name="hand", metric="logit_diff"))
    data = tokenize_examples("hand", HAND_EXAMPLES, tiny_model64.tokenizer)
    return tiny_model64, task, data


# ----- per-edge standard errors ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "options", "settings"),
    [("eap", {}, {}), ("eap_ig", {"ig_steps": 2}, {"positions_per_pass": 3}), ("patching", {}, {})],
)
def test_stderr_equals_single_example_runs(hand, method, options, settings):
    """The standard errors from one batched pass equal sd/sqrt(n) of scores computed one example at a time
    (separate runs of batch size 1: scores do not depend on the batch, so these are the per-example scores)."""
    model, task, data = hand
    ctx = ck.RunContext(batch_size=3, progress=False, **settings)
    scores = ck.build("methods", method, **options).attribute(model, task, data, ctx)
    single = []
    for i in range(len(data)):
        one = ck.build("methods", method, **options).attribute(
            model, task, data.subset([i]), ck.RunContext(batch_size=1, progress=False)
        )
        single.append(one.values)
    per = torch.stack(single)  # [n, E]
    n = per.shape[0]
    expected = per.std(0, unbiased=True) / math.sqrt(n)
    assert scores.stderr is not None and scores.per_example is not None
    # Both are sums of the same products in another order: rounding of the metric's magnitude.
    batch = next(iter(data.batches(len(data), model.pad_id)))
    tol = float_tol(model, plain_metric(model, batch.clean, batch, task.metric).abs().max())
    assert torch.allclose(scores.per_example, per, atol=tol, rtol=0)
    assert torch.allclose(scores.stderr, expected, atol=tol, rtol=0)
    assert torch.allclose(scores.values, per.mean(0), atol=tol, rtol=0)
    assert float(scores.stderr.max()) > 100 * tol  # not trivially zero


def test_stderr_round_trips_scores_json(hand, tmp_path):
    model, task, data = hand
    scores = ck.build("methods", "eap").attribute(model, task, data, ck.RunContext(batch_size=4, progress=False))
    scores.save(tmp_path / "s.json")
    back = ck.Scores.load(tmp_path / "s.json", graph=model.graph)
    assert back.stderr is not None and torch.equal(back.stderr, scores.stderr)
    # a file without the field (older runs, other tools) still loads, without standard errors
    import json

    obj = json.loads((tmp_path / "s.json").read_text())
    del obj["stderr"]
    (tmp_path / "old.json").write_text(json.dumps(obj))
    assert ck.Scores.load(tmp_path / "old.json", graph=model.graph).stderr is None


# ----- bootstrap intervals ---------------------------------------------------------------------------


def test_interval_coverage_on_a_known_distribution():
    """Per-example values drawn from known distributions: the 95% intervals of the mean and of the
    faithfulness ratio (true value 0.8; numerator and denominator correlated through the shared examples)
    cover the true values in about 95% of 300 seeded repetitions. Tolerance: the percentile bootstrap
    under-covers by about 1-2 points at n = 40, and 300 repetitions add a binomial sd of 1.3 points, so
    the coverage must lie in [0.89, 0.985] (outside it is > 4 sd away from what a correct method gives)."""
    cfg = unc.BootstrapConfig(n_resamples=400, level=0.95)
    gen = torch.Generator().manual_seed(1234)
    reps, n = 300, 40
    hits_mean = hits_ratio = 0
    for r in range(reps):
        clean = 2.0 + torch.randn(n, generator=gen, dtype=torch.float64)
        corrupted = 0.5 * clean + torch.randn(n, generator=gen, dtype=torch.float64) - 1.0  # correlated with clean
        circuit = corrupted + 0.8 * (clean - corrupted) + 0.5 * torch.randn(n, generator=gen, dtype=torch.float64)
        mi = unc.metric_intervals(clean, corrupted, circuit[None], cfg, seed=r)
        lo, hi = mi.interval(mi.clean)
        hits_mean += lo <= 2.0 <= hi
        # E[clean] = 2, E[corrupted] = 0, E[circuit] = 0.8 * 2: faithfulness 0.8
        lo, hi = mi.interval(mi.faithfulness[0])
        hits_ratio += lo <= 0.8 <= hi
    assert 0.89 <= hits_mean / reps <= 0.985, hits_mean / reps
    assert 0.89 <= hits_ratio / reps <= 0.985, hits_ratio / reps


def test_interval_narrows_with_more_examples_and_is_seeded():
    cfg = unc.BootstrapConfig(n_resamples=500)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(400, generator=gen, dtype=torch.float64)
    a = unc.metric_intervals(x[:25], x[:25] * 0, x[:25][None], cfg, seed=3)
    b = unc.metric_intervals(x, x * 0, x[None], cfg, seed=3)
    wa, wb = (
        (lambda m: m.interval(m.clean)[1] - m.interval(m.clean)[0])(a),
        (lambda m: m.interval(m.clean)[1] - m.interval(m.clean)[0])(b),
    )
    assert wb < wa / 2.5  # sd/sqrt(n): 4x = sqrt(16) narrower, with slack for sampling
    again = unc.metric_intervals(x, x * 0, x[None], cfg, seed=3)
    assert again.interval(again.clean) == b.interval(b.clean)


def test_bootstrap_options_are_checked():
    from circuitkit.errors import ConfigError

    for bad in ({"n_resamples": -1}, {"level": 1.5}, {"levels": 0.9}):
        ctx = ck.RunContext()
        ctx.bootstrap = bad
        with pytest.raises(ConfigError, match="bootstrap"):
            unc.bootstrap_config(ctx)


def test_faithfulness_result_carries_per_example_values_and_intervals(hand):
    """The per-example values are the ones the means average, and an interval brackets its value."""
    model, task, data = hand
    ctx = ck.RunContext(batch_size=4, progress=False)
    ctx.scores = ck.build("methods", "eap").attribute(model, task, data, ctx)
    circuit = ck.build("selectors", "top_n", n_edges=20).select(ctx.scores)
    res = ck.build("evaluators", "faithfulness").evaluate(model, task, data, circuit, ctx)
    per = res.per_example
    assert len(per["clean_metric"]) == len(data)
    for key in ("clean_metric", "corrupted_metric", "circuit_metric"):
        assert np.mean(per[key]) == pytest.approx(res.values[key], rel=1e-12, abs=1e-12)
        lo, hi = res.intervals[key]
        assert lo <= res.values[key] <= hi
    lo, hi = res.intervals["faithfulness"]
    assert lo <= res.values["faithfulness"] <= hi and hi > lo
    assert res.interval_info["level"] == 0.95
    # per-example faithfulness from these values, recomputed independently of the evaluator
    f = (np.mean(per["circuit_metric"]) - np.mean(per["corrupted_metric"])) / (
        np.mean(per["clean_metric"]) - np.mean(per["corrupted_metric"])
    )
    assert f == pytest.approx(res.values["faithfulness"], rel=1e-9)


# ----- resampled circuits and stability -----------------------------------------------------------------


def test_resampled_scores_equal_attribution_on_the_resample(hand):
    """A resample's scores as the mean of per-example scores (what stability and inclusion frequency use)
    equal attributing again on the resampled examples (duplicates included)."""
    model, task, data = hand
    ctx = ck.RunContext(batch_size=4, progress=False)
    scores = ck.build("methods", "eap").attribute(model, task, data, ctx)
    w = unc.bootstrap_weights(len(data), 2, seed=7)
    batch = next(iter(data.batches(len(data), model.pad_id)))
    tol = float_tol(model, plain_metric(model, batch.clean, batch, task.metric).abs().max())
    for k in range(2):
        counts = torch.round(w[k] * len(data)).long().tolist()
        idx = [i for i, c in enumerate(counts) for _ in range(c)]
        again = ck.build("methods", "eap").attribute(model, task, data.subset(idx), ck.RunContext(batch_size=4, progress=False))
        assert torch.allclose(w[k] @ scores.per_example, again.values, atol=tol, rtol=0)


def test_inclusion_frequency_by_brute_force():
    gen = torch.Generator().manual_seed(5)
    pe = torch.randn(12, 30, generator=gen, dtype=torch.float64) + torch.linspace(-2, 2, 30, dtype=torch.float64)
    freq = unc.inclusion_frequency(pe, 5, 50, seed=9)
    w = unc.bootstrap_weights(12, 50, seed=9)
    counts = torch.zeros(30, dtype=torch.float64)
    for k in range(50):
        means = [(w[k] * pe[:, e]).sum().item() for e in range(30)]
        for e in sorted(range(30), key=lambda e: -abs(means[e]))[:5]:
            counts[e] += 1
    assert torch.allclose(freq, counts / 50)
    assert freq.sum().item() == pytest.approx(5.0)


def test_stability_of_a_deterministic_circuit_is_one(hand):
    """method=random ignores the examples: every resample, seed and split finds the same circuit."""
    model, task, data = hand
    ctx = ck.RunContext(batch_size=4, progress=False, seed=3)
    ctx.attributor = ck.build("methods", "random")
    ctx.scores = ctx.attributor.attribute(model, task, data, ctx)
    circuit = ck.build("selectors", "top_n", n_edges=15).select(ctx.scores)
    res = ck.build("evaluators", "stability", resamples=3, seeds=1).evaluate(model, task, data, circuit, ctx)
    assert res.values["resample_variants"] == 3 and res.values["seed_variants"] == 1
    assert res.values["jaccard_resample_mean"] == 1.0 and res.values["jaccard_resample_min"] == 1.0
    assert res.values["jaccard_seed_min"] == 1.0
    assert res.values["faithfulness_resample_sd"] == 0.0
    assert all(r["faithfulness"] == pytest.approx(res.values["faithfulness"], abs=1e-12) for r in res.tables["variants"])


def test_stability_of_eap_from_per_example_scores(hand):
    model, task, data = hand
    ctx = ck.RunContext(batch_size=4, progress=False)
    ctx.attributor = ck.build("methods", "eap")
    ctx.scores = ctx.attributor.attribute(model, task, data, ctx)
    circuit = ck.build("selectors", "top_n", n_edges=15).select(ctx.scores)
    res = ck.build("evaluators", "stability", resamples=5, seeds=0, inclusion_resamples=100).evaluate(
        model, task, data, circuit, ctx
    )
    assert 0.0 <= res.values["jaccard_resample_min"] <= res.values["jaccard_resample_mean"] <= 1.0
    rows = res.tables["inclusion"]
    assert len(rows) == circuit.n_edges and all(0.0 <= r["inclusion_frequency"] <= 1.0 for r in rows)
    assert any("exact means" in n for n in res.notes)


# ----- transfer and matrices across runs ----------------------------------------------------------------


@pytest.fixture(scope="module")
def transfer_setup(tiny_model):
    task = ck.build("tasks", "greater_than", n_examples=8)
    data = task.build(tiny_model.tokenizer)
    ctx = ck.RunContext(batch_size=8, progress=False)
    ctx.scores = ck.build("methods", "eap").attribute(tiny_model, task, data, ctx)
    circuit = ck.build("selectors", "top_n", n_edges=40).select(ctx.scores)
    res = ck.build("evaluators", "transfer", tasks=["greater_than", "sva"]).evaluate(tiny_model, task, data, circuit, ctx)
    return tiny_model, task, data, ctx, circuit, res


def test_transfer_to_its_own_task_equals_its_faithfulness(transfer_setup):
    model, task, data, ctx, circuit, res = transfer_setup
    own = ck.build("evaluators", "faithfulness").evaluate(model, task, data, circuit, ck.RunContext(batch_size=3, progress=False))
    rows = {r["task"]: r for r in res.tables["transfer"]}
    tol = float_tol(model, abs(own.values["clean_metric"]) + abs(own.values["corrupted_metric"]))
    assert rows["greater_than"]["faithfulness"] == pytest.approx(
        own.values["faithfulness"], abs=tol / abs(own.values["clean_metric"] - own.values["corrupted_metric"])
    )
    assert res.values["faithfulness_on_greater_than"] == rows["greater_than"]["faithfulness"]


def test_transfer_to_another_task_is_that_tasks_faithfulness(transfer_setup):
    """The sva cell equals the faithfulness evaluator run on sva's own examples (built separately)."""
    model, _, _, _, circuit, res = transfer_setup
    sva = ck.build("tasks", "sva", n_examples=8)
    sva_data = sva.build(model.tokenizer)
    ref = ck.build("evaluators", "faithfulness").evaluate(
        model, sva, sva_data, circuit, ck.RunContext(batch_size=5, progress=False)
    )
    row = next(r for r in res.tables["transfer"] if r["task"] == "sva")
    assert row["n_examples"] == len(sva_data) and row["metric"] == sva.config.metric
    scale = abs(ref.values["clean_metric"]) + abs(ref.values["corrupted_metric"])
    assert row["circuit_metric"] == pytest.approx(ref.values["circuit_metric"], abs=float_tol(model, scale))
    assert row["clean_metric"] == pytest.approx(ref.values["clean_metric"], abs=float_tol(model, scale))


def test_transfer_rejects_an_unknown_task():
    from circuitkit.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown task 'iio'"):
        ck.build("evaluators", "transfer", tasks=["iio"])


def test_compare_matrices_from_run_directories(transfer_setup, tmp_path):
    """Overlap matrices against set arithmetic on the circuit files; the transfer matrix from results.json."""
    import json

    from circuitkit import matrices
    from circuitkit.results import RunResult, write_json

    model, task, data, ctx, circuit, res = transfer_setup
    dirs, sets = [], []
    for i, n in enumerate((40, 25)):
        c = ck.build("selectors", "top_n", n_edges=n).select(ctx.scores)
        d = tmp_path / f"run{i}"
        d.mkdir()
        c.save(d / "circuit.json")
        run = RunResult(meta={"method": "eap", "task": "greater_than"}, circuit=c, evals={"transfer": res})
        write_json(d / "results.json", run.results_json())
        dirs.append(d)
        sets.append({k for k, v in json.loads((d / "circuit.json").read_text())["edges"].items() if v["in_graph"]})
    lines, files = matrices.write_matrices(dirs, ["a", "b"], tmp_path / "out", plot=False)
    m = json.loads(files["matrices.json"].read_text())
    a, b = sets
    assert m["overlap"]["edge_iou"][0][1] == pytest.approx(len(a & b) / len(a | b))
    assert m["overlap"]["edge_precision"][0][1] == pytest.approx(len(a & b) / len(a))
    assert m["overlap"]["edge_recall"][0][1] == pytest.approx(len(a & b) / len(b))
    assert m["overlap"]["edge_iou"][0][0] == 1.0
    t = m["transfer"]
    assert t["columns"] == ["greater_than", "sva"] and len(t["rows"]) == 2
    assert t["faithfulness"][0][1] == res.values["faithfulness_on_sva"]
    assert (tmp_path / "out" / "overlap.csv").is_file() and (tmp_path / "out" / "transfer.csv").is_file()
    assert any("transfer" in line for line in lines)


def test_cli_run_prints_intervals_and_writes_stderr_and_stability(tmp_path):
    """On the bundled model (a random tiny model shows no behaviour, so its faithfulness has no interval)."""
    import json
    import re

    from tests.test_cli import cli

    out = tmp_path / "run"
    p = cli(
        "method=eap", "task=greater_than", "task.n_examples=8", "selector.n_edges=300",
        "evaluator=[faithfulness,stability]", "evaluator.stability.resamples=3", "evaluator.stability.seeds=1",
        "bootstrap.n_resamples=200", "bootstrap.level=0.9", "progress=false", "pictures=false", f"hydra.run.dir={out}",
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert re.search(r"faithfulness=-?[\d.e+-]+ \[-?[\d.e+-]+, -?[\d.e+-]+\]", p.stdout), p.stdout
    results = json.loads((out / "results.json").read_text())
    f = results["faithfulness"]
    assert f["interval_info"] == {"level": 0.9, "n_resamples": 200, "method": "percentile bootstrap over examples"}
    assert len(f["per_example"]["circuit_metric"]) == 8
    assert results["stability"]["values"]["resample_variants"] == 3
    scores = json.loads((out / "scores.json").read_text())
    assert set(scores["stderr"]) == set(scores["edges"])
    bad = cli("bootstrap.level=2", "progress=false", f"hydra.run.dir={tmp_path / 'bad'}")
    assert bad.returncode == 1 and "circuitkit: error: bootstrap.level" in bad.stderr
