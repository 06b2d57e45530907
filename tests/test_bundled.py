"""End-to-end runs of every builtin task on the bundled model (``model=bundled``, the default).

Each run goes through ``pipeline.run`` as ``python -m circuitkit`` does: held-out examples, EAP-IG(5),
top-n selection and faithfulness. The numbers checked are the model card's claims at a small ``n``: the
model does the task (clean metric above corrupted), and a circuit of at most 5% of the graph's edges is
faithful (>= 0.85), with every kept edge connected from input to logits.
"""

import json

import pytest

import circuitkit as ck
from circuitkit.pipeline import run
from circuitkit.zoo import train

TASKS = ["ioi", "greater_than", "gender_pronoun", "sva", "hypernymy", "country_capital", "induction"]
FIVE_PERCENT = 76  # of the bundled model's 1,519 edges


@pytest.fixture(scope="module")
def bundled():
    return ck.load_model("bundled", device="cpu")


def config(task: str, **selector):
    return {
        "model": {"name": "bundled", "device": "cpu"},
        "method": {"name": "eap_ig", "ig_steps": 5},
        "task": {"name": task, "n_examples": 16, "split": "test"},
        "selector": {"name": "top_n", "n_edges": FIVE_PERCENT, **selector},
        "evaluator": {"faithfulness": {}},
        "progress": False,
        "cache": False,
    }


@pytest.mark.parametrize("task", TASKS)
def test_eap_ig_finds_a_faithful_circuit_within_five_percent_of_the_edges(task, bundled, tmp_path):
    result = run(config(task), tmp_path, model=bundled)
    f = result.evals["faithfulness"].values
    assert result.status == "complete" and bundled.graph.n_edges == 1519
    assert f["clean_metric"] > f["corrupted_metric"]
    assert 0 < result.circuit.n_edges <= FIVE_PERCENT and f["faithfulness"] >= 0.85, f
    # connected: every kept edge's source is reached from the input and its destination reaches the logits
    assert (bundled.graph.prune(result.circuit.edges) == result.circuit.edges).all()
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["faithfulness"]["values"]["faithfulness"] == pytest.approx(f["faithfulness"])
    assert {p.name for p in tmp_path.iterdir()} >= {"scores.json", "circuit.json", "results.json"}


def test_eap_ig_puts_the_built_in_induction_circuit_at_the_top(bundled, tmp_path):
    """The bundled model starts training with a previous-token head (layer 0, head 0) whose output the
    induction heads (layer 1, heads 0..k-1) read as keys (``circuitkit.zoo.train.init_induction_circuit``):
    a known circuit. On induction, EAP-IG's 20 strongest edges should be that circuit's: the previous-token
    head's value input, the key edges from it into the induction heads, their value inputs and their outputs
    to the logits; the same head's edges into their queries (not part of the mechanism) should not be there."""
    heads = range(train.INDUCTION_INIT["heads"])
    result = run(config("induction", n_edges=20), tmp_path, model=bundled)
    top = {name for name, _ in result.scores.top(20)}
    assert "input->a0.h0<v>" in top, top
    for kind in ("a0.h0->a1.h{}<k>", "input->a1.h{}<v>", "a1.h{}->logits"):
        found = [h for h in heads if kind.format(h) in top]
        assert len(found) >= len(heads) - 2, (kind, sorted(top))
    assert not any(f"a0.h0->a1.h{h}<q>" in top for h in heads), sorted(top)
