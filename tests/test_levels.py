"""Node- and neuron-level scores, selection and evaluation, against hand-written hooks on a tiny model."""

import pytest
import torch
from helpers import HAND_EXAMPLES, HandTask, capture, source_hook

import circuitkit as ck
from circuitkit.data import tokenize_examples
from circuitkit.evaluation import evaluate_keeps
from circuitkit.metrics import logit_diff
from circuitkit.nodes import node_circuit

EXAMPLES = HAND_EXAMPLES
TASK = HandTask(ck.TaskConfig(name="hand", metric="logit_diff"))


def ctx():
    return ck.RunContext(batch_size=3, progress=False)


@pytest.fixture(scope="module")
def data(tiny_model64):
    return tokenize_examples("hand", EXAMPLES, tiny_model64.tokenizer)


def source_patched_metric(model, batch, values):
    """Mean metric when each source in ``values`` has its output set, for every reader, by
    ``values[source](current_output)`` (hooks at the source outputs)."""
    by_hook = {}
    for s, f in values.items():
        hook, head = source_hook(model, s)
        by_hook.setdefault(hook, []).append((head, f))

    def make(hook_name):
        def run(t, hook):
            t = t.clone()
            for head, f in by_hook[hook_name]:
                if head is None:
                    t = f(t)
                else:
                    t[:, :, head] = f(t[:, :, head])
            return t

        return run

    with model.bridge.hooks(fwd_hooks=[(h, make(h)) for h in by_hook]):
        logits = model.bridge(batch.clean)
    return logit_diff(logits[torch.arange(len(batch)), batch.last], batch)


@pytest.mark.parametrize("method, options", [("eap", {}), ("eap_ig", {"ig_steps": 3})])
def test_node_and_neuron_scores_sum_to_the_outgoing_edge_scores(tiny_model64, data, method, options):
    model = tiny_model64
    edge = ck.build("methods", method, **options).attribute(model, TASK, data, ctx())
    node = ck.build("methods", method, level="node", **options).attribute(model, TASK, data, ctx())
    neuron = ck.build("methods", method, level="neuron", **options).attribute(model, TASK, data, ctx())
    out_sum = edge.dense().sum(1)
    assert node.level == "node" and neuron.level == "neuron" and edge.level == "edge"
    torch.testing.assert_close(node.values, edge.values, rtol=0, atol=0)
    torch.testing.assert_close(node.nodes, out_sum, rtol=1e-10, atol=1e-12)
    assert neuron.neurons.shape == (model.graph.n_sources, model.d_model)
    torch.testing.assert_close(neuron.neurons.sum(1), out_sum, rtol=1e-8, atol=1e-10)


def test_neuron_eap_equals_finite_differences_of_one_output_dimension(tiny_model64, data):
    model = tiny_model64
    scores = ck.build("methods", "eap", level="neuron").attribute(model, TASK, data, ctx())
    batch = next(data.batches(8))
    eps = 1e-5
    for node, dim in [("input", 3), ("a0.h1", 0), ("m0", 17), ("a1.h2", 23), ("m1", 5)]:
        hook, head = source_hook(model, node)
        diff = capture(model, batch.corrupted, hook, head)[..., dim] - capture(model, batch.clean, hook, head)[..., dim]

        def nudge(sign, node=node, dim=dim, diff=diff):
            def f(t):
                t = t.clone()
                t[..., dim] += sign * eps * diff
                return t

            return {node: f}

        rate = -(
            source_patched_metric(model, batch, nudge(1)).mean() - source_patched_metric(model, batch, nudge(-1)).mean()
        ).item() / (2 * eps)
        i = model.graph.source_names.index(node)
        assert scores.neurons[i, dim].item() == pytest.approx(rate, rel=1e-4, abs=1e-9), (node, dim)


def test_exact_node_and_neuron_patching_equal_hand_written_patches(tiny_model64, data):
    model = tiny_model64
    g = model.graph
    nodes = ck.build("methods", "patching", level="node", edges_per_pass=5).attribute(model, TASK, data, ctx())
    neurons = ck.build("methods", "patching", level="neuron", edges_per_pass=64).attribute(model, TASK, data, ctx())
    assert nodes.level == "node" and nodes.meta["edge_values"] == "source node score"
    batch = next(data.batches(8))
    clean = source_patched_metric(model, batch, {}).mean().item()
    for node in ("input", "a0.h2", "m0", "a1.h0", "m1"):
        hook, head = source_hook(model, node)
        corr = capture(model, batch.corrupted, hook, head)
        i = g.source_names.index(node)
        whole = source_patched_metric(model, batch, {node: lambda t, c=corr: c}).mean().item()
        assert nodes.nodes[i].item() == pytest.approx(clean - whole, rel=1e-7, abs=1e-9), node
        for dim in (0, 9):

            def one(t, c=corr, d=dim):
                t = t.clone()
                t[..., d] = c[..., d]
                return t

            patched = source_patched_metric(model, batch, {node: one}).mean().item()
            assert neurons.neurons[i, dim].item() == pytest.approx(clean - patched, rel=1e-7, abs=1e-9), (node, dim)


def test_node_circuit_selection_and_faithfulness_equal_corrupting_the_other_nodes(tiny_model64, data):
    model = tiny_model64
    g = model.graph
    scores = ck.build("methods", "eap", level="node").attribute(model, TASK, data, ctx())
    circuit = ck.build("selectors", "top_n", n_nodes=4).select(scores)
    kept = set(circuit.node_names) - {"logits"}
    top = [g.source_names[i] for i in torch.argsort(scores.nodes.abs(), descending=True)[:4].tolist()]
    assert circuit.level == "node" and kept <= set(top)
    # Every edge between kept nodes is in the circuit (after pruning dangling ones).
    assert circuit.n_edges == node_circuit(g, top).n_edges
    batch = next(data.batches(8))
    for names in (top, ["input", "a0.h1", "a1.h0", "m1"]):
        c = node_circuit(g, names)
        others = {
            s: (lambda t, c_=capture(model, batch.corrupted, *source_hook(model, s)): c_)
            for s in g.source_names
            if s not in names
        }
        expected = source_patched_metric(model, batch, others).mean().item()
        ev = evaluate_keeps(model, TASK, data, c.keep_dense()[None], ck.RunContext(batch_size=8, progress=False))
        assert ev.circuits[0] == pytest.approx(expected, rel=1e-9)


def test_neuron_circuit_selection_and_faithfulness_equal_corrupting_the_other_dimensions(tiny_model64, data):
    model = tiny_model64
    g = model.graph
    scores = ck.build("methods", "eap", level="neuron").attribute(model, TASK, data, ctx())
    circuit = ck.build("selectors", "top_n", n_neurons=100).select(scores)
    assert circuit.level == "neuron" and circuit.neurons.sum() == 100
    flat = scores.neurons.abs().reshape(-1)
    assert flat[torch.as_tensor(circuit.neurons.reshape(-1))].min() >= flat[torch.as_tensor(~circuit.neurons.reshape(-1))].max()
    batch = next(data.batches(8))
    mask = torch.as_tensor(circuit.neurons, dtype=torch.float64)
    keep_nodes = set(circuit.node_names)

    def mixed(s):
        corr = capture(model, batch.corrupted, *source_hook(model, s))
        m = mask[g.source_names.index(s)] if s in keep_nodes else torch.zeros(model.d_model, dtype=torch.float64)
        return lambda t: corr + m * (t - corr)

    expected = source_patched_metric(model, batch, {s: mixed(s) for s in g.source_names}).mean().item()
    res = ck.build("evaluators", "faithfulness").evaluate(model, TASK, data, circuit, ck.RunContext(batch_size=8, progress=False))
    assert res.values["circuit_metric"] == pytest.approx(expected, rel=1e-9)
    assert res.values["neurons_in_circuit"] == circuit.n_neurons


def test_level_files_round_trip_and_threshold_selects_units(tiny_model64, data, tmp_path):
    model = tiny_model64
    scores = ck.build("methods", "eap_ig", ig_steps=2, level="neuron").attribute(model, TASK, data, ctx())
    scores.save(tmp_path / "s.json")
    back = ck.Scores.load(tmp_path / "s.json")
    assert back.level == "neuron"
    torch.testing.assert_close(back.neurons, scores.neurons)
    t = float(scores.neurons.abs().reshape(-1).sort(descending=True).values[49])
    circuit = ck.build("selectors", "threshold", threshold=t).select(scores)
    assert circuit.neurons.sum() == 50
    circuit.d_model = model.d_model
    circuit.save(tmp_path / "c.json")
    again = ck.Circuit.load(tmp_path / "c.json")
    kept_nodes = again.graph.nodes_of(again.edges)[:-1]
    assert again.level == "neuron" and (again.neurons == (circuit.neurons & kept_nodes[:, None])).all()


def test_level_errors_are_clear(tiny_model64, data):
    with pytest.raises(ck.CircuitkitError, match="method.level must be one of edge, node, neuron"):
        ck.build("methods", "eap", level="head")
    node_scores = ck.build("methods", "eap", level="node").attribute(tiny_model64, TASK, data, ctx())
    with pytest.raises(ck.CircuitkitError, match="selector.n_nodes"):
        ck.build("selectors", "top_n").select(node_scores)
    with pytest.raises(ck.CircuitkitError, match="greedy selects edges"):
        ck.build("selectors", "greedy").select(node_scores)
    with pytest.raises(ck.CircuitkitError, match="n_neurons needs neuron-level scores"):
        ck.build("selectors", "top_n", n_neurons=3).select(node_scores)
    edge_scores = ck.build("methods", "eap").attribute(tiny_model64, TASK, data, ctx())
    with pytest.raises(ck.CircuitkitError, match="method.level=node"):
        ck.build("selectors", "top_n", n_nodes=3).select(edge_scores)


def test_faithfulness_curve_says_why_node_level_scores_have_no_curve(tiny_model64, data, caplog):
    scores = ck.build("methods", "eap", level="node").attribute(tiny_model64, TASK, data, ctx())
    circuit = ck.build("selectors", "top_n", n_nodes=3).select(scores)
    c = ctx()
    c.scores = scores
    with caplog.at_level("WARNING", logger="circuitkit"):
        res = ck.build("evaluators", "faithfulness_curve").evaluate(tiny_model64, TASK, data, circuit, c)
    assert res.values["cpr"] is None and res.values["edges_for_target"] is None and "curve" not in res.tables
    assert len(res.notes) == 1 and "ranks edges, but the scores are node-level" in res.notes[0]
    assert [r.message for r in caplog.records] == res.notes


def test_completeness_refuses_neuron_circuits_clearly(tiny_model64, data):
    scores = ck.build("methods", "eap", level="neuron").attribute(tiny_model64, TASK, data, ctx())
    circuit = ck.build("selectors", "top_n", n_neurons=10).select(scores)
    with pytest.raises(ck.CircuitkitError, match="no edge complement"):
        ck.build("evaluators", "completeness").evaluate(tiny_model64, TASK, data, circuit, ctx())
