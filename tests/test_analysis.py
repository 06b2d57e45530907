"""Evaluation and analysis: CPR/CMD, selectors, circuit files, completeness, overlap, correlations, pictures."""

import json
import math
from collections import deque

import numpy as np
import pytest
import torch

import circuitkit as ck
from circuitkit import analysis
from circuitkit.data import Example, tokenize_examples
from circuitkit.errors import CircuitkitError, ConfigError
from circuitkit.evaluation import Evaluation
from circuitkit.graph import Graph
from circuitkit.results import Circuit, Scores

EXAMPLES = [
    Example(
        "When Mary and John went to the store, John gave a drink to",
        "When Mary and John went to the store, Anne gave a drink to",
        (" Mary",),
        (" John",),
    ),
    Example("After Tom and Anna left, Tom said to", "After Tom and Anna left, Paul said to", (" Anna",), (" Tom",)),
    Example("Paris, the capital of", "London, the capital of", (" France",), (" England",)),
    Example("The nurse said that", "The pilot said that", (" she",), (" he",)),
]


class _Task(ck.Task):
    def generate(self, tokenizer, split):
        return iter(EXAMPLES)


@pytest.fixture(scope="module")
def setup(tiny_model64):
    """(model, task, data, ctx with EAP scores) on a float64 tiny model."""
    task = _Task(ck.TaskConfig(name="hand", metric="logit_diff"))
    data = tokenize_examples("hand", EXAMPLES, tiny_model64.tokenizer)
    ctx = ck.RunContext(batch_size=8, progress=False)
    ctx.scores = ck.build("methods", "eap").attribute(tiny_model64, task, data, ctx)
    return tiny_model64, task, data, ctx


# ----- CPR and CMD ---------------------------------------------------------------------------------


def test_cpr_cmd_on_hand_made_curves():
    # f = 1 at every MIB budget: CPR is the x-range 1 - 0.001, CMD is 0.
    x = [p / 100 for p in analysis.MIB_PERCENTAGES]
    assert analysis.cpr(x, [1.0] * 10) == pytest.approx(0.999)
    assert analysis.cmd(x, [1.0] * 10) == pytest.approx(0.0)
    # Three points by hand: trapezoids 0.4 * (0 + 0.5) / 2 + 0.5 * (0.5 + 1) / 2.
    assert analysis.cpr([0.1, 0.5, 1.0], [0.0, 0.5, 1.0]) == pytest.approx(0.1 + 0.375)
    assert analysis.cmd([0.1, 0.5, 1.0], [0.0, 0.5, 1.0]) == pytest.approx(0.4 * 1.5 / 2 + 0.5 * 0.5 / 2)
    # Over- and under-shooting both count in CMD; points are sorted by x first.
    assert analysis.cpr([1.0, 0.0], [-1.0, 2.0]) == pytest.approx(0.5)
    assert analysis.cmd([1.0, 0.0], [-1.0, 2.0]) == pytest.approx((2.0 + 1.0) / 2)
    # MIB's budgets with a step curve: 0 up to 1 %, then 1.
    f = [0, 0, 0, 0, 1, 1, 1, 1, 1, 1]
    expected = (0.02 - 0.01) / 2 + (1.0 - 0.02)
    assert analysis.cpr(x, f) == pytest.approx(expected)
    assert analysis.cmd(x, f) == pytest.approx(0.999 - expected)
    with pytest.raises(CircuitkitError):
        analysis.cpr([0.5], [1.0])


# ----- selectors ---------------------------------------------------------------------------------


def _on_input_logits_path(graph: Graph, mask: np.ndarray) -> bool:
    """Independent check: every kept edge's source is reachable from input and its destination reaches
    logits, through kept edges (breadth-first searches over an adjacency list)."""
    names = graph.edge_names
    fwd, bwd = {}, {}
    kept = [n for n, k in zip(names, mask, strict=True) if k]
    for n in kept:
        s, d = n.split("->")
        d = d.split("<")[0]
        fwd.setdefault(s, set()).add(d)
        bwd.setdefault(d, set()).add(s)

    def reach(start, adj):
        seen, todo = {start}, deque([start])
        while todo:
            for v in adj.get(todo.popleft(), ()):
                if v not in seen:
                    seen.add(v)
                    todo.append(v)
        return seen

    from_input, to_logits = reach("input", fwd), reach("logits", bwd)
    return all(n.split("->")[0] in from_input and n.split("->")[1].split("<")[0] in to_logits for n in kept)


def _random_scores(graph: Graph, rng: np.random.Generator) -> Scores:
    v = rng.standard_normal(graph.n_edges) * rng.exponential(1.0, graph.n_edges)
    v[rng.random(graph.n_edges) < 0.1] = 0.0  # ties
    v = np.round(v, 2)  # more ties
    return Scores(graph, torch.from_numpy(v))


GRAPHS = [Graph(1, 1), Graph(2, 3), Graph(3, 2, True), Graph(2, 4)]


@pytest.mark.parametrize("absolute", [True, False])
def test_selectors_return_connected_circuits_on_random_scores(absolute):
    rng = np.random.default_rng(0)
    for seed in range(60):
        g = GRAPHS[seed % len(GRAPHS)]
        scores = _random_scores(g, rng)
        n = int(rng.integers(0, g.n_edges + 1))
        t = float(rng.choice([0.0, 0.3, 1.0, 2.0]))
        greedy = ck.build("selectors", "greedy", n_edges=n, absolute=absolute).select(scores)
        thresh = ck.build("selectors", "threshold", threshold=t, absolute=absolute).select(scores)
        for c in (greedy, thresh):
            assert _on_input_logits_path(g, c.edges), (seed, c.edge_names)
            assert c.scores is scores
        assert greedy.n_edges <= n
        key = scores.values.abs() if absolute else scores.values
        passing = (key >= t).numpy()
        assert not (thresh.edges & ~passing).any()
        # Nothing that passes and lies on an input -> logits path of passing edges is dropped.
        assert (thresh.edges == g.prune(passing)).all()
        if n == g.n_edges:
            assert greedy.n_edges == g.n_edges


@pytest.mark.parametrize("absolute", [True, False])
def test_greedy_adds_edges_in_score_order_subject_to_the_frontier(absolute):
    from circuitkit_plugins.greedy import greedy_order

    rng = np.random.default_rng(1)
    for seed in range(30):
        g = GRAPHS[seed % len(GRAPHS)]
        scores = _random_scores(g, rng)
        key = (scores.values.abs() if absolute else scores.values).numpy()
        order = greedy_order(scores, g.n_edges, absolute)
        assert sorted(order) == list(range(g.n_edges))
        nodes = {"logits"}
        chosen: set[int] = set()
        for e in order:
            frontier = [i for i in range(g.n_edges) if i not in chosen and g.edge_names[i].split("->")[1].split("<")[0] in nodes]
            assert e in frontier
            best = max(key[i] for i in frontier)
            assert key[e] == best
            assert e == min(i for i in frontier if key[i] == best)  # ties: graph order
            chosen.add(e)
            nodes.add(g.edge_names[e].split("->")[0])


def test_greedy_takes_the_logits_edges_first():
    g = Graph(2, 2)
    v = torch.zeros(g.n_edges, dtype=torch.float64)
    v[g.index_of("input->a0.h0<q>")] = 10.0  # large, but a0.h0 is not in the circuit yet
    v[g.index_of("a0.h0->logits")] = 1.0
    v[g.index_of("m1->logits")] = 2.0
    v[g.index_of("input->m1")] = 0.5
    c = ck.build("selectors", "greedy", n_edges=3).select(Scores(g, v))
    from circuitkit_plugins.greedy import greedy_order

    assert [g.edge_names[i] for i in greedy_order(Scores(g, v), 3)] == ["m1->logits", "a0.h0->logits", "input->a0.h0<q>"]
    assert set(c.edge_names) == {"a0.h0->logits", "input->a0.h0<q>"}  # m1 has no input: pruned


@pytest.mark.parametrize(
    "name, options, message",
    [
        ("greedy", {"n_edges": -1}, "non-negative integer"),
        ("greedy", {"n_edges": 10**6}, "larger than the graph"),
        ("threshold", {"threshold": float("nan")}, "finite number"),
    ],
)
def test_selector_validation_messages(name, options, message):
    """Options alone are checked when the selector is built (its config); a size against the graph by validate."""
    with pytest.raises(ConfigError, match=message):
        ck.build("selectors", name, **options).validate(Graph(2, 2))


# ----- circuit files -----------------------------------------------------------------------------


def test_circuit_json_round_trip_and_eap_ig_layout(tmp_path):
    g = Graph(2, 3)
    rng = np.random.default_rng(0)
    scores = Scores(g, torch.from_numpy(rng.standard_normal(g.n_edges) / 7))
    circuit = ck.build("selectors", "greedy", n_edges=25).select(scores)
    circuit.d_model = 48
    path = tmp_path / "circuit.json"
    circuit.save(path)
    back = Circuit.load(path, g)
    assert back.graph == g and (back.edges == circuit.edges).all() and back.d_model == 48
    assert torch.equal(back.scores.values, scores.values)  # exact: float64 through JSON
    obj = json.loads(path.read_text())
    # The EAP-IG graph JSON: cfg with the TransformerLens keys, every node and edge listed.
    assert set(obj) == {"cfg", "nodes", "edges"}
    assert obj["cfg"] == {"n_layers": 2, "n_heads": 3, "parallel_attn_mlp": False, "d_model": 48}
    assert list(obj["nodes"]) == g.node_names and obj["nodes"]["logits"] == {"in_graph": True}
    assert set(obj["edges"]) == set(g.edge_names)
    assert all(
        set(v) == {"score", "in_graph"} and isinstance(v["score"], float) and isinstance(v["in_graph"], bool)
        for v in obj["edges"].values()
    )
    assert [n for n, v in obj["nodes"].items() if v["in_graph"] and n != "logits"] == [
        n for n in circuit.node_names if n != "logits"
    ]


def test_circuit_json_without_scores_and_parallel_blocks(tmp_path):
    g = Graph(3, 2, parallel_attn_mlp=True)
    circuit = Circuit.from_edge_names(g, ["input->a0.h1<k>", "a0.h1->m1", "m1->logits", "input->m2", "m2->logits"])
    path = tmp_path / "c.json"
    circuit.save(path)
    obj = json.loads(path.read_text())
    assert obj["scored"] is False and all(v["score"] == 0.0 for v in obj["edges"].values())
    back = Circuit.load(path)
    assert back.graph == g and back.scores is None and back.d_model is None
    assert back.edge_names == circuit.edge_names


def test_circuit_file_in_eap_ig_edge_order_and_without_unlisted_edges():
    """A file written by EAP-IG lists edges layer by layer (not our order); MIB files may omit edges."""
    g = Graph(1, 1)
    edges = {
        "input->a0.h0<q>": {"score": 0.5, "in_graph": True},
        "input->a0.h0<k>": {"score": -0.1, "in_graph": False},
        "input->a0.h0<v>": {"score": 0.2, "in_graph": False},
        "input->m0": {"score": 0.0, "in_graph": False},
        "a0.h0->m0": {"score": 0.3, "in_graph": False},
        "input->logits": {"score": 0.1, "in_graph": False},
        "a0.h0->logits": {"score": 0.9, "in_graph": True},
        "m0->logits": {"score": 0.0, "in_graph": False},
    }
    obj = {"cfg": {"n_layers": 1, "n_heads": 1, "parallel_attn_mlp": False, "d_model": 8}, "nodes": {}, "edges": edges}
    c = Circuit.from_json(obj, g)
    assert set(c.edge_names) == {"input->a0.h0<q>", "a0.h0->logits"} and c.d_model == 8
    assert c.scores["a0.h0->m0"] == 0.3
    del edges["m0->logits"]
    assert Circuit.from_json(obj, g).scores is None  # not every edge has a score


def test_circuit_file_for_another_architecture_is_rejected(tmp_path):
    path = tmp_path / "c.json"
    Circuit.full(Graph(2, 4)).save(path)
    with pytest.raises(CircuitkitError, match="2 layers and 4 heads, but this model has 3 layers and 4 heads"):
        Circuit.load(path, Graph(3, 4))
    with pytest.raises(CircuitkitError, match="parallel attention/MLP blocks, but this model has sequential"):
        Circuit.full(Graph(2, 4, True)).save(path)
        Circuit.load(path, Graph(2, 4))
    path.write_text(json.dumps({"edges": {}}))
    with pytest.raises(CircuitkitError, match="is not a circuit file"):
        Circuit.load(path)
    path.write_text(
        json.dumps(
            {"cfg": {"n_layers": 1, "n_heads": 1}, "nodes": {}, "edges": {"input->a5.h0<q>": {"score": 1, "in_graph": True}}}
        )
    )
    with pytest.raises(CircuitkitError, match="does not have"):
        Circuit.load(path)


# ----- correlations and overlap ------------------------------------------------------------------


def test_spearman_and_pearson_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for _ in range(20):
        x = np.round(rng.standard_normal(57), 1)  # many ties
        y = np.round(x * rng.uniform(-1, 1) + rng.standard_normal(57), 1)
        assert analysis.pearson(x, y) == pytest.approx(stats.pearsonr(x, y)[0], abs=1e-12)
        assert analysis.spearman(x, y) == pytest.approx(stats.spearmanr(x, y)[0], abs=1e-12)
        assert np.array_equal(analysis.rankdata(x), stats.rankdata(x))
    assert analysis.pearson([1, 1, 1], [1, 2, 3]) is None


def test_score_agreement_uses_absolute_scores():
    g = Graph(1, 2)
    v = torch.linspace(-1, 1, g.n_edges, dtype=torch.float64)
    a, b = Scores(g, v), Scores(g, -v)
    assert analysis.score_agreement(a, b)["spearman"] == pytest.approx(1.0)
    assert analysis.score_agreement(a, b, absolute=False)["pearson"] == pytest.approx(-1.0)
    with pytest.raises(CircuitkitError):
        analysis.score_agreement(a, Scores(Graph(1, 1), torch.zeros(Graph(1, 1).n_edges)))


def test_overlap_on_hand_made_circuits():
    g = Graph(1, 1)
    a = Circuit.from_edge_names(g, ["input->logits", "input->m0", "m0->logits"])
    b = Circuit.from_edge_names(g, ["input->logits", "input->a0.h0<q>", "a0.h0->logits"])
    ov = analysis.overlap(a, b)
    assert ov["edge_intersection"] == 1 and ov["edge_iou"] == pytest.approx(1 / 5)
    assert ov["edge_precision"] == pytest.approx(1 / 3) and ov["edge_recall"] == pytest.approx(1 / 3)
    # nodes: {input, m0, logits} vs {input, a0.h0, logits}
    assert ov["node_iou"] == pytest.approx(2 / 4) and ov["node_precision"] == pytest.approx(2 / 3)
    c = Circuit.from_edge_names(g, ["input->logits"])
    ov = analysis.overlap(c, a)
    assert (ov["edge_iou"], ov["edge_precision"], ov["edge_recall"]) == pytest.approx((1 / 3, 1.0, 1 / 3))
    empty = Circuit.empty(g)
    assert analysis.overlap(empty, empty)["edge_iou"] is None


def test_overlap_vs_faithfulness_rows(setup):
    model, task, data, ctx = setup
    a = ctx.scores
    b = Scores(a.graph, a.values.flip(0))
    rows = analysis.overlap_vs_faithfulness(model, task, data, a, b, [10, 40], ctx, labels=("eap", "flipped"))
    assert [r["n_edges"] for r in rows] == [10, 40]
    assert {"edges_eap", "edges_flipped", "edge_iou", "node_iou", "faithfulness_eap", "faithfulness_flipped"} <= set(rows[0])
    same = analysis.overlap_vs_faithfulness(model, task, data, a, a, [40], ctx, labels=("x", "y"))[0]
    assert same["edge_iou"] == 1.0 and same["faithfulness_x"] == pytest.approx(same["faithfulness_y"])
    assert same["faithfulness_x"] == pytest.approx(rows[1]["faithfulness_eap"])


# ----- evaluators --------------------------------------------------------------------------------


def test_completeness_endpoints(setup):
    model, task, data, ctx = setup
    g = model.graph
    ev = ck.build("evaluators", "completeness")
    empty = ev.evaluate(model, task, data, Circuit.empty(g), ctx).values
    assert empty["complement_metric"] == pytest.approx(empty["clean_metric"], abs=1e-10)
    assert empty["complement_faithfulness"] == pytest.approx(1.0, abs=1e-6) and empty["completeness"] == pytest.approx(
        0.0, abs=1e-6
    )
    assert empty["faithfulness"] == pytest.approx(0.0, abs=1e-6)
    full = ev.evaluate(model, task, data, Circuit.full(g), ctx).values
    assert full["complement_metric"] == pytest.approx(full["corrupted_metric"], abs=1e-10)
    assert full["completeness"] == pytest.approx(1.0, abs=1e-6) and full["faithfulness"] == pytest.approx(1.0, abs=1e-6)


def test_faithfulness_curve_on_a_model(setup):
    model, task, data, ctx = setup
    n = model.graph.n_edges
    ev = ck.build("evaluators", "faithfulness_curve", cpr_signed=True)
    res = ev.evaluate(model, task, data, Circuit.empty(model.graph), ctx)
    curve = res.tables["curve"]
    assert [r["budget"] for r in curve] == list(analysis.MIB_PERCENTAGES)
    assert [r["requested_edges"] for r in curve] == [int(p / 100 * n) for p in analysis.MIB_PERCENTAGES]
    assert curve[-1]["n_edges"] == n and curve[-1]["faithfulness"] == pytest.approx(1.0, abs=1e-6)
    assert curve[0]["faithfulness"] == pytest.approx(0.0, abs=1e-6)  # 0 edges: the corrupted run
    assert (
        res.values["faithfulness"] == pytest.approx(0.0, abs=1e-6) and res.values["edges_in_circuit"] == 0
    )  # the circuit handed in
    x = [r["fraction"] for r in curve]
    assert res.values["cmd"] == pytest.approx(analysis.cmd(x, [r["faithfulness"] for r in curve]))
    assert res.values["cpr"] == pytest.approx(analysis.cpr(x, [r["faithfulness"] for r in res.tables["curve_signed"]]))
    # Each row's circuit is the configured selector's circuit at that size.
    single = ck.build("evaluators", "faithfulness").evaluate(
        model, task, data, ck.build("selectors", "top_n", n_edges=curve[6]["requested_edges"]).select(ctx.scores), ctx
    )
    assert single.values["faithfulness"] == pytest.approx(curve[6]["faithfulness"], abs=1e-9)
    if res.values["edges_for_target"] is not None:
        assert res.values["faithfulness_at_target"] >= 0.85
    with pytest.raises(ConfigError, match="edge counts"):
        ck.build("evaluators", "faithfulness_curve", unit="edges", budgets=[1, n + 1]).evaluate(
            model, task, data, Circuit.empty(model.graph), ctx
        )
    # Options that cannot work fail when the evaluator is built, before any computation.
    with pytest.raises(ConfigError, match="does not take n_edges"):
        ck.build("evaluators", "faithfulness_curve", selector="threshold")
    with pytest.raises(ConfigError, match=r"percentages in \(0, 100\]"):
        ck.build("evaluators", "faithfulness_curve", budgets=[0.5, 150])
    with pytest.raises(ConfigError, match="unit must be one of"):
        ck.build("evaluators", "faithfulness_curve", unit="fraction")


def test_edges_for_target_bisection_between_budgets(monkeypatch):
    """Faithfulness n / 50 for a circuit of n edges: 0.85 is first reached at 43 edges."""
    g = Graph(3, 4)
    scores = Scores(g, torch.zeros(g.n_edges))
    calls = []

    def circuit_at(self, s, n, absolute=None):
        m = np.zeros(g.n_edges, dtype=bool)
        m[:n] = True
        return Circuit(g, m)

    def run(self, model, task, data, circuits, ctx, desc):
        calls.append([c.n_edges for c in circuits])
        return Evaluation(1.0, 0.0, [c.n_edges / 50 for c in circuits], 1)

    from circuitkit_plugins.faithfulness_curve import FaithfulnessCurve

    monkeypatch.setattr(FaithfulnessCurve, "circuit_at", circuit_at)
    monkeypatch.setattr(FaithfulnessCurve, "_run", run)
    ctx = ck.RunContext(progress=False, scores=scores)
    ev = ck.build("evaluators", "faithfulness_curve", unit="edges", budgets=[10, 20, 50, 100], refine_steps=3, refine_points=3)
    res = ev.evaluate(None, None, None, Circuit.empty(g), ctx)
    assert res.values["edges_for_target"] == 43 and res.values["faithfulness_at_target"] == pytest.approx(0.86)
    assert len(calls) == 4 and all(len(c) <= 3 for c in calls[1:])  # one sweep for the budgets, then <= 3 per round
    # Budgets are edge counts here: the x-axis is count / n_edges.
    assert res.values["cpr"] == pytest.approx(analysis.cpr([v / g.n_edges for v in (10, 20, 50, 100)], [0.2, 0.4, 1.0, 2.0]))
    # Without refinement the answer is the first budget that reaches the target.
    calls.clear()
    res = ck.build("evaluators", "faithfulness_curve", unit="edges", budgets=[10, 20, 50, 100], refine_steps=0).evaluate(
        None, None, None, Circuit.empty(g), ctx
    )
    assert res.values["edges_for_target"] == 50 and len(calls) == 1
    res = ck.build("evaluators", "faithfulness_curve", unit="edges", budgets=[10, 20], target=2.0).evaluate(
        None, None, None, Circuit.empty(g), ctx
    )
    assert res.values["edges_for_target"] is None and any("No budget reaches" in n for n in res.notes)


# ----- the pipeline, config composition and pictures -----------------------------------------------


def test_combined_evaluators_compose_and_land_in_results_json(setup, tmp_path):
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from circuitkit.__main__ import _store_configs
    from circuitkit.pipeline import run

    model, _, _, _ = setup
    _store_configs()
    GlobalHydra.instance().clear()
    with initialize_config_module("circuitkit.conf", version_base="1.3"):
        cfg = compose(
            "config",
            overrides=[
                "method=eap",
                "task=custom",
                f"task.path={tmp_path / 'data.jsonl'}",
                "selector=greedy",
                "selector.n_edges=20",
                "progress=false",
                "evaluator=[faithfulness,faithfulness_curve,completeness]",
                "evaluator.faithfulness_curve.budgets=[5,20,100]",
                "reporter=[pictures]",
                "reporter.pictures.formats=[png]",
            ],
        )
    GlobalHydra.instance().clear()
    cfg = OmegaConf.to_container(cfg, resolve=True)
    cfg["cache"] = False  # no attribution cache outside tmp_path
    (tmp_path / "data.jsonl").write_text(
        "\n".join(
            json.dumps({"clean": e.clean, "corrupted": e.corrupted, "correct": e.correct[0], "incorrect": e.incorrect[0]})
            for e in EXAMPLES
        )
    )
    out = tmp_path / "run"
    run(cfg, out, model=model)
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "complete"
    assert {"faithfulness", "faithfulness_curve", "completeness"} <= set(results)
    fc = results["faithfulness_curve"]
    assert {"cpr", "cmd", "edges_for_target"} <= set(fc["values"]) and [r["budget"] for r in fc["tables"]["curve"]] == [
        5,
        20,
        100,
    ]
    assert results["completeness"]["values"]["faithfulness"] == pytest.approx(results["faithfulness"]["values"]["faithfulness"])
    assert math.isfinite(results["completeness"]["values"]["completeness"])
    if pytest.importorskip("matplotlib"):
        assert (out / "circuit.png").stat().st_size > 0 and (out / "curve.png").stat().st_size > 0


def test_pictures(tmp_path):
    pytest.importorskip("matplotlib")
    from circuitkit import plot

    g = Graph(2, 3)
    rng = np.random.default_rng(0)
    c = ck.build("selectors", "greedy", n_edges=30).select(Scores(g, torch.from_numpy(rng.standard_normal(g.n_edges))))
    paths = plot.draw_circuit(c, tmp_path / "c.svg", tmp_path / "c.png", max_edges=10)
    assert all(p.stat().st_size > 0 for p in paths)
    svg = (tmp_path / "c.svg").read_text()
    assert "a0.h0" in svg or "m1" in svg
    rows = [{"fraction": f, "faithfulness": v} for f, v in [(0.01, 0.1), (0.1, 0.7), (1.0, 1.0)]]
    plot.plot_curves({"eap": rows, "eap_ig": ([1, 10, 100], [0.3, 0.9, 1.0])}, tmp_path / "curve.png", target=0.85)
    assert (tmp_path / "curve.png").stat().st_size > 0


def test_pictures_without_matplotlib_log_one_line(monkeypatch, caplog, tmp_path):
    from circuitkit import plot

    monkeypatch.setattr(plot, "available", lambda: False)
    rep = ck.build("reporters", "pictures")
    g = Graph(1, 1)
    with caplog.at_level("INFO", logger="circuitkit"):
        rep.report(ck.RunResult(meta={}, circuit=Circuit.full(g)), str(tmp_path))
    warnings = [r.message for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [f"pictures: {plot.INSTALL_HINT}; no circuit.svg/png or curve.png drawn (the result files are complete)."]
    assert [p.name for p in tmp_path.iterdir()] == ["circuit.html"]  # the explorer needs no matplotlib
    with pytest.raises(ConfigError, match="formats"):
        ck.build("reporters", "pictures", formats=["gif"])
