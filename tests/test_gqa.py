"""Grouped-query attention: the graph has one k and one v input per key/value head, shared by the query
heads of its group. Checked on the topology alone and on a tiny random Llama (4 query heads, 2 key/value
heads) against hand-written hooks, finite differences and exact patching."""

import json
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
import torch
from helpers import HAND_EXAMPLES, HandTask, capture, patched_metric, plain_metric

import circuitkit as ck
from circuitkit import engine
from circuitkit.attribution import exact_patching
from circuitkit.data import tokenize_examples
from circuitkit.errors import CircuitkitError
from circuitkit.evaluation import evaluate_keeps
from circuitkit.graph import Graph
from circuitkit.interventions import Intervention, build_intervention, head_bias_shares
from circuitkit.metrics import logit_diff
from circuitkit.nodes import node_circuit
from circuitkit.results import Circuit, Scores

TASK = HandTask(ck.TaskConfig(name="hand", metric="logit_diff"))
# Edges of every kind: into q, k and v inputs (first and second layer), MLPs and the logits.
NAMED = [
    "input->a0.h0<q>",
    "input->a0.kv0<k>",
    "input->a0.kv1<v>",
    "a0.h1->a1.kv0<k>",
    "m0->a1.kv1<v>",
    "a0.h3->a1.kv0<v>",
    "m0->a1.h3<q>",
    "a0.h2->m1",
    "a1.h0->logits",
    "input->logits",
]


def ctx(batch_size=3, intervention=None):
    return ck.RunContext(batch_size=batch_size, progress=False, intervention=intervention)


# ----- topology -------------------------------------------------------------------------------------


def test_gqa_graph_layout_names_and_edge_count():
    g = Graph(2, 4, n_kv_heads=2)
    assert (g.n_kv, g.group_size, g.grouped) == (2, 2, True)
    assert g.destination_names[:9] == [
        "a0.h0<q>",
        "a0.h1<q>",
        "a0.h2<q>",
        "a0.h3<q>",
        "a0.kv0<k>",
        "a0.kv1<k>",
        "a0.kv0<v>",
        "a0.kv1<v>",
        "m0",
    ]
    assert g.destination_names[-1] == "logits" and g.dst_per_layer == 9 and g.n_destinations == 19
    # layer 0: 8 head inputs x 1 source + MLP 5; layer 1: 8 x 6 + MLP 10; logits 11
    assert g.n_edges == 8 + 5 + 48 + 10 + 11 == len(set(g.edge_names))
    assert g.source_names == Graph(2, 4).source_names and g.node_names == Graph(2, 4).node_names
    for e in ["input->a0.kv1<v>", "a0.h3->a1.kv0<k>", "m0->a1.h2<q>", "a1.h3->logits"]:
        assert e in g.edge_index
    assert "input->a0.h0<k>" not in g.edge_index and "a1.h0->a1.kv0<k>" not in g.edge_index
    assert [g.kv_group(h) for h in range(4)] == [0, 0, 1, 1] and list(g.group_heads(1)) == [2, 3]
    assert g.destination_names[g.dst_head(1, "k", 1)] == "a1.kv1<k>"
    assert g.destination_names[g.dst_head(1, "v", 0)] == "a1.kv0<v>"
    assert g.destination_names[g.dst_head(1, "q", 3)] == "a1.h3<q>"
    assert g.destination_names[g.dst_mlp(1)] == "m1"
    assert [g.dst_layer(d) for d in (0, 8, 9, 17, 18)] == [0, 0, 1, 1, 2]
    assert [g.is_head_dst(d) for d in (7, 8, 16, 18)] == [True, False, True, False]
    assert g.head_inputs(1) == [("q", 9, 4), ("k", 13, 2), ("v", 15, 2)]
    with pytest.raises(CircuitkitError, match=r"a0\.kv0<k>.*per key/value head"):
        g.index_of("input->a0.h0<k>")
    with pytest.raises(CircuitkitError, match="dst_nodes"):
        g.dst_node  # noqa: B018 - a k/v input has no single node


def test_gqa_graph_from_configs_and_dict_round_trip():
    from transformers import LlamaConfig

    g = Graph.from_config(LlamaConfig(num_hidden_layers=3, num_attention_heads=8, num_key_value_heads=2))
    assert g == Graph(3, 8, n_kv_heads=2)
    assert Graph.from_config({"n_layers": 3, "n_heads": 8, "n_key_value_heads": 2}) == g
    assert g.to_dict() == {"n_layers": 3, "n_heads": 8, "parallel_attn_mlp": False, "n_kv_heads": 2}
    assert Graph(**g.to_dict()) == g
    # n_kv_heads equal to n_heads is multi-head attention: the same graph, and the same saved dict as before.
    assert Graph(3, 8, n_kv_heads=8) == Graph(3, 8) and Graph(3, 8, n_kv_heads=8).n_kv_heads is None
    assert Graph.from_config(LlamaConfig(num_hidden_layers=3, num_attention_heads=8, num_key_value_heads=8)) == Graph(3, 8)
    with pytest.raises(CircuitkitError, match="positive divisor"):
        Graph(2, 4, n_kv_heads=3)


def test_multi_head_graph_is_unchanged():
    """Names, order and saved form of multi-head graphs are those of EAP-IG/MIB and of earlier results."""
    g = Graph(1, 2)
    assert g.destination_names == ["a0.h0<q>", "a0.h1<q>", "a0.h0<k>", "a0.h1<k>", "a0.h0<v>", "a0.h1<v>", "m0", "logits"]
    assert g.edge_names == [
        "input->a0.h0<q>",
        "input->a0.h1<q>",
        "input->a0.h0<k>",
        "input->a0.h1<k>",
        "input->a0.h0<v>",
        "input->a0.h1<v>",
        "input->m0",
        "input->logits",
        "a0.h0->m0",
        "a0.h0->logits",
        "a0.h1->m0",
        "a0.h1->logits",
        "m0->logits",
    ]
    assert g.to_dict() == {"n_layers": 1, "n_heads": 2, "parallel_attn_mlp": False}
    assert g.dst_node.tolist() == [1, 2, 1, 2, 1, 2, 3, 4] and not g.grouped
    assert [g.dst_head(0, x, 1) for x in "qkv"] == [1, 3, 5] and g.dst_mlp(0) == 6 and g.dst_per_layer == 7
    big = Graph(12, 12)
    assert big.n_edges == 32491 and big.edge_names[:2] == ["input->a0.h0<q>", "input->a0.h1<q>"]


def _paths_ok(g, kept):
    """Every kept edge on a path input -> ... -> logits, a k/v input feeding every head of its group."""
    n = len(g.node_names)
    pairs = [(e, int(node)) for e in np.nonzero(kept)[0] for node in g.dst_nodes[g.edge_dst[e]]]
    fwd = np.zeros(n, bool)
    fwd[0] = True
    bwd = np.zeros(n, bool)
    bwd[-1] = True
    for _ in range(n):
        for e, node in pairs:
            fwd[node] |= fwd[g.edge_src[e]]
            bwd[g.edge_src[e]] |= bwd[node]
    return all(fwd[g.edge_src[e]] and any(bwd[node] for node in g.dst_nodes[g.edge_dst[e]]) for e in np.nonzero(kept)[0])


@pytest.mark.parametrize("seed", range(10))
def test_gqa_prune_leaves_no_dangling_edges(seed):
    g = Graph(3, 6, n_kv_heads=2)
    rng = np.random.default_rng(seed)
    mask = rng.random(g.n_edges) < rng.uniform(0.02, 0.4)
    kept = g.prune(mask)
    assert not (kept & ~mask).any() and _paths_ok(g, kept)
    assert (g.prune(kept) == kept).all()
    # A dropped edge really was dangling: adding it back to the pruned circuit leaves it dangling.
    for e in np.nonzero(mask & ~kept)[0][:5]:
        again = kept.copy()
        again[e] = True
        assert not g.prune(again)[e]


def test_kv_edges_connect_the_heads_of_their_group():
    g = Graph(2, 4, n_kv_heads=2)
    # input reaches a0.h1 through the shared key input of group 0, and a0.h1 is read by the logits.
    c = Circuit.from_edge_names(g, ["input->a0.kv0<k>", "a0.h1->logits", "a0.h2->logits"])
    assert c.edge_names == ["input->a0.kv0<k>", "a0.h1->logits"]  # a0.h2 (group 1) has no input: pruned
    assert c.node_names == ["input", "a0.h1", "logits"]  # a0.h0 reads the key input but is not used
    # A k/v input read by no head that reaches the logits dangles.
    assert Circuit.from_edge_names(g, ["input->a0.kv1<v>", "a0.h1->logits"]).n_edges == 0
    # Unpruned, a lone k/v edge touches its whole group.
    lone = np.zeros(g.n_edges, bool)
    lone[g.index_of("input->a0.kv1<v>")] = True
    assert [g.node_names[i] for i in np.flatnonzero(g.nodes_of(lone))] == ["input", "a0.h2", "a0.h3"]


def test_node_circuit_keeps_the_kv_inputs_of_kept_heads():
    g = Graph(2, 4, n_kv_heads=2)
    c = node_circuit(g, ["input", "a0.h1", "m0"])
    names = set(c.edge_names)
    assert {"input->a0.h1<q>", "input->a0.kv0<k>", "input->a0.kv0<v>", "a0.h1->m0", "a0.h1->logits", "m0->logits"} <= names
    assert not any("kv1" in n or "a0.h0" in n or "a1." in n for n in names)
    assert c.node_names == ["input", "a0.h1", "m0", "logits"]


def test_greedy_on_a_gqa_graph_adds_each_edge_once():
    from circuitkit_plugins.greedy import greedy_order

    g = Graph(3, 6, n_kv_heads=2)
    scores = Scores(g, torch.randn(g.n_edges, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    order = greedy_order(scores, g.n_edges)
    assert len(order) == len(set(order)) == g.n_edges  # every edge is reachable from the logits, once
    c = ck.build("selectors", "greedy", n_edges=40).select(scores)
    assert 0 < c.n_edges <= 40 and (g.prune(c.edges) == c.edges).all()


# ----- a tiny Llama ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def float64_numerics():
    """Hugging Face's Llama RMSNorm and the bridge's attention softmax compute in float32 even in a float64
    model, which limits finite differences to about 1e-2 relative accuracy. For checks at float64 precision
    both keep the input's dtype here (the same function, computed in float64)."""
    from transformers.models.llama import modeling_llama

    softmax = torch.nn.functional.softmax

    def softmax_same_dtype(input, dim=None, _stacklevel=3, dtype=None):  # noqa: A002 - torch's signature
        return softmax(input, dim=dim, dtype=None if input.dtype == torch.float64 else dtype)

    def rms_norm(self, hidden_states):
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.nn.functional, "softmax", softmax_same_dtype)
        mp.setattr(modeling_llama.LlamaRMSNorm, "forward", rms_norm)
        yield


@pytest.fixture(scope="module")
def llama(tokenizer, float64_numerics):
    from circuitkit.testing_models import tiny_llama

    return tiny_llama(n_layers=2, n_heads=4, n_kv_heads=2, d_model=32, dtype=torch.float64, tokenizer=tokenizer)


@pytest.fixture(scope="module")
def data(llama):
    return tokenize_examples("hand", HAND_EXAMPLES, llama.tokenizer)


def test_tiny_llama_has_a_grouped_graph_and_kv_hooks_per_kv_head(llama, data):
    g = llama.graph
    assert g == Graph(2, 4, n_kv_heads=2) and llama.bridge.cfg.n_key_value_heads == 2
    batch = next(data.batches(8))
    assert capture(llama, batch.clean, "blocks.1.attn.hook_k_input", None).shape[2] == 2
    assert capture(llama, batch.clean, "blocks.1.attn.hook_v_input", None).shape[2] == 2
    assert capture(llama, batch.clean, "blocks.1.attn.hook_q_input", None).shape[2] == 4
    # The graph's sources add up to the final residual stream (Llama has no attention output bias).
    run = engine.run_sources(llama, batch.clean)
    torch.testing.assert_close(run.sources.sum(0), run.final, rtol=1e-10, atol=1e-10)
    assert not head_bias_shares(llama).any()


def test_masked_evaluation_endpoints(llama, data):
    g = llama.graph
    ev = evaluate_keeps(llama, TASK, data, torch.stack([Circuit.empty(g).keep_dense(), Circuit.full(g).keep_dense()]), ctx())
    batch = next(data.batches(8))
    clean = plain_metric(llama, batch.clean, batch, logit_diff).mean().item()
    corrupted = plain_metric(llama, batch.corrupted, batch, logit_diff).mean().item()
    assert abs(clean - corrupted) > 1e-3  # the check below means something
    assert ev.circuits[0] == pytest.approx(corrupted, abs=1e-9)
    assert ev.circuits[1] == pytest.approx(clean, abs=1e-9)


def test_eap_equals_finite_differences_of_single_edge_patches(llama, data):
    """EAP's score of an edge is the derivative of the metric along that edge's corruption: against a
    central finite difference of a hand-written single-edge hook (k/v edges included)."""
    scores = ck.build("methods", "eap").attribute(llama, TASK, data, ctx(batch_size=8))
    batch = next(data.batches(8))
    rng = np.random.default_rng(0)
    picks = NAMED + [llama.graph.edge_names[i] for i in rng.choice(llama.graph.n_edges, 15, replace=False)]
    eps = 1e-5
    for edge in picks:
        up = patched_metric(llama, batch, logit_diff, edge, eps).mean()
        down = patched_metric(llama, batch, logit_diff, edge, -eps).mean()
        assert scores[edge] == pytest.approx(-(up - down).item() / (2 * eps), rel=1e-4, abs=1e-9), edge


@dataclass
class _Toward(Intervention):
    """A removed edge carries ``clean + eps * (corrupted - clean)``: a corruption scaled down by ``eps``."""

    eps: float = 1.0
    takes_positions: ClassVar[bool] = False

    def values(self, model, batch):
        clean = engine.run_sources(model, batch.clean).sources
        return clean + self.eps * (engine.run_sources(model, batch.corrupted).sources - clean)


def test_eap_is_the_derivative_of_exact_patching(llama, data):
    """Exact patching (``exact_patching``: one edge per stacked copy) of a corruption scaled by +-eps,
    central difference, against EAP of the same scaled corruption, for every edge."""
    eps = 1e-4
    up = exact_patching(llama, TASK, data, ctx(intervention=_Toward(eps=eps)), edges_per_pass=32).values
    down = exact_patching(llama, TASK, data, ctx(intervention=_Toward(eps=-eps)), edges_per_pass=32).values
    eap = ck.build("methods", "eap").attribute(llama, TASK, data, ctx(intervention=_Toward(eps=eps))).values
    torch.testing.assert_close(eap, (up - down) / 2, rtol=1e-4, atol=1e-12)


def test_an_intervention_without_positions_refuses_position_groups_clearly(llama, data):
    c = ctx(intervention=_Toward(eps=0.5))
    c.positions_per_pass = 2
    with pytest.raises(
        ck.CircuitkitError, match=r"positions_per_pass needs the intervention's values\(model, batch, positions\)"
    ):
        ck.build("methods", "eap").attribute(llama, TASK, data, c)


def test_exact_patching_of_kv_edges_equals_masked_evaluation_and_hand_written_patches(llama, data):
    g = llama.graph
    picks = [g.index_of(e) for e in NAMED]
    s = exact_patching(llama, TASK, data, ctx(), edges_per_pass=4, edges=torch.tensor(picks))
    keeps = []
    for i in picks:
        mask = np.ones(g.n_edges, bool)
        mask[i] = False
        keeps.append(Circuit(g, mask).keep_dense())
    ev = evaluate_keeps(llama, TASK, data, torch.stack(keeps), ctx())
    batch = next(data.batches(8))
    clean = plain_metric(llama, batch.clean, batch, logit_diff)
    for k, edge in enumerate(NAMED):
        assert s[edge] == pytest.approx(ev.clean - ev.circuits[k], rel=1e-7, abs=1e-10), edge
        hand = (clean - patched_metric(llama, batch, logit_diff, edge)).mean().item()
        assert s[edge] == pytest.approx(hand, rel=1e-7, abs=1e-10), edge
    assert abs(s["input->a0.kv0<k>"]) > 1e-4  # a key edge that matters


def test_zero_and_mean_ablation(llama, data):
    """Llama has no attention output bias: zero ablation carries exactly zero; a k/v edge patched to its
    mean or to zero matches a hand-written patch."""
    g = llama.graph
    batch = next(data.batches(8))
    zero = build_intervention(llama, data, "zero")
    empty = evaluate_keeps(llama, TASK, data, Circuit.empty(g).keep_dense()[None], ctx(intervention=zero))
    assert empty.circuits[0] == 0.0  # every input of the final norm is zero
    mean = build_intervention(llama, data, "mean")
    edges = ["a0.h1->a1.kv0<k>", "input->a1.kv1<v>", "m0->a1.h2<q>"]
    picks = torch.tensor([g.index_of(e) for e in edges])
    for iv in (zero, mean):
        s = exact_patching(llama, TASK, data, ctx(batch_size=8, intervention=iv), edges=picks)
        removed = iv.values(llama, batch)
        for edge in edges:
            src = g.source_names.index(edge.split("->")[0])
            hand = (
                plain_metric(llama, batch.clean, batch, logit_diff)
                - patched_metric(llama, batch, logit_diff, edge, removed=removed[src])
            ).mean()
            assert s[edge] == pytest.approx(hand.item(), rel=1e-7, abs=1e-10), (iv.kind, edge)


def test_node_patching_equals_removing_every_outgoing_edge(llama, data):
    g = llama.graph
    nodes = ck.build("methods", "patching", level="node", edges_per_pass=4).attribute(llama, TASK, data, ctx())
    eap_nodes = ck.build("methods", "eap", level="node").attribute(llama, TASK, data, ctx())
    eap = ck.build("methods", "eap").attribute(llama, TASK, data, ctx())
    torch.testing.assert_close(eap_nodes.nodes, eap.dense().sum(1), rtol=1e-10, atol=1e-12)
    keeps = []
    for u in ("a0.h1", "a1.h2", "m0"):
        mask = g.edge_src != g.source_names.index(u)
        keeps.append(Circuit(g, mask).keep_dense())
    ev = evaluate_keeps(llama, TASK, data, torch.stack(keeps), ctx())
    for k, u in enumerate(("a0.h1", "a1.h2", "m0")):
        assert nodes.node_scores()[u] == pytest.approx(ev.clean - ev.circuits[k], rel=1e-7, abs=1e-10), u


@pytest.mark.parametrize(
    "method, options",
    [
        ("eap_ig", {"ig_steps": 2}),
        ("clean_corrupted", {}),
        ("eap_ig_activations", {"ig_steps": 2}),
        ("eap_ig_activations", {"ig_steps": 2, "interpolate": "layer"}),
        ("information_flow_routes", {}),
        ("acdc", {"tau": 0.001}),
    ],
)
def test_every_method_scores_every_edge_of_a_gqa_model(llama, data, method, options):
    s = ck.build("methods", method, **options).attribute(llama, TASK, data, ctx())
    assert s.graph == llama.graph and len(s) == llama.graph.n_edges
    assert torch.isfinite(s.values).all()
    kv = [i for i, n in enumerate(llama.graph.edge_names) if ".kv" in n]
    assert s.values[kv].abs().max() > 0, "the k/v edges got no scores"


def test_pipeline_on_a_saved_llama_and_circuit_json_round_trip(tmp_path, tokenizer):
    from circuitkit.pipeline import run
    from circuitkit.testing_models import tiny_llama

    model_dir = tmp_path / "tiny-llama"
    tiny_llama(tokenizer=tokenizer, save_to=model_dir)
    cfg = {
        "model": {"name": str(model_dir), "device": "cpu"},
        "method": {"name": "eap_ig", "ig_steps": 2},
        "task": {"name": "greater_than", "n_examples": 8},
        "selector": {"name": "greedy", "n_edges": 30},
        "evaluator": {"faithfulness": {}},
        "progress": False,
        "cache": False,
    }
    out = tmp_path / "run"
    result = run(cfg, out)
    g = result.circuit.graph
    assert g == Graph(2, 4, n_kv_heads=2)
    obj = json.loads((out / "circuit.json").read_text())
    assert obj["cfg"]["n_kv_heads"] == 2 and obj["cfg"]["n_heads"] == 4
    assert "input->a0.kv1<k>" in obj["edges"] and "a0.h2->a1.kv0<v>" in obj["edges"]
    assert not any(".h" in e.split("->")[1] and "<k>" in e for e in obj["edges"])
    loaded = Circuit.load(out / "circuit.json")
    assert loaded.graph == g and (loaded.edges == result.circuit.edges).all()
    assert loaded.to_json() == obj
    scores = Scores.load(out / "scores.json")
    assert scores.graph == g and torch.equal(scores.values, result.scores.values)
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "complete" and results["edges_in_graph"] == g.n_edges
    assert results["faithfulness"]["values"]["faithfulness"] is not None
    with pytest.raises(CircuitkitError, match="4 query heads sharing 2 key/value heads"):
        Circuit.load(out / "circuit.json", Graph(2, 4))


def test_drawing_a_gqa_circuit(tmp_path):
    pytest.importorskip("matplotlib")
    from circuitkit.plot import draw_circuit

    g = Graph(2, 4, n_kv_heads=2)
    c = Circuit.from_edge_names(g, ["input->a0.kv0<k>", "input->a0.h1<q>", "a0.h1->a1.kv1<v>", "a0.h1->logits", "a1.h3->logits"])
    assert "a0.h1->a1.kv1<v>" in c.edge_names
    paths = draw_circuit(c, tmp_path / "c.png")
    assert paths[0].stat().st_size > 0
