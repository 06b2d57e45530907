import numpy as np
import pytest

from circuitkit.errors import CircuitkitError
from circuitkit.graph import Graph
from circuitkit.results import Circuit


def test_gpt2_small_edge_count_from_hf_config_without_weights():
    from transformers import GPT2Config

    g = Graph.from_config(GPT2Config())  # 12 layers, 12 heads: no download, no weights
    assert (g.n_layers, g.n_heads) == (12, 12)
    assert g.n_edges == 32491
    assert len(set(g.edge_names)) == 32491


def test_edge_and_node_names_follow_eap_ig_conventions():
    g = Graph(2, 2)
    names = set(g.edge_names)
    for e in ["input->a0.h0<q>", "input->a0.h1<k>", "a0.h1->m0", "m0->a1.h0<v>", "m1->logits", "input->logits", "a1.h1->m1"]:
        assert e in names
    assert "a1.h0->a0.h0<q>" not in names  # no edges backwards
    assert "a0.h0->a0.h1<q>" not in names  # heads of one layer do not read each other
    assert g.node_names == ["input", "a0.h0", "a0.h1", "m0", "a1.h0", "a1.h1", "m1", "logits"]


def test_parallel_attention_mlp_topology():
    seq, par = Graph(3, 4), Graph(3, 4, parallel_attn_mlp=True)
    assert "a0.h0->m0" in seq.edge_index and "a0.h0->m0" not in par.edge_index
    assert "a0.h0->m1" in par.edge_index
    assert seq.n_edges - par.n_edges == 3 * 4  # one edge per head into its own layer's MLP
    from transformers import GPTJConfig

    assert Graph.from_config(GPTJConfig(n_layer=2, n_head=4, n_embd=32)).parallel_attn_mlp


def test_dense_flat_round_trip():
    import torch

    g = Graph(3, 2)
    flat = torch.arange(g.n_edges, dtype=torch.float64)
    assert torch.equal(g.to_flat(g.to_dense(flat)), flat)


def test_unknown_edge_name_is_clear():
    with pytest.raises(CircuitkitError, match="not in this graph"):
        Graph(2, 2).index_of("a5.h0->logits")


@pytest.mark.parametrize("seed", range(20))
def test_prune_leaves_no_dangling_edges(seed):
    g = Graph(3, 3)
    rng = np.random.default_rng(seed)
    mask = rng.random(g.n_edges) < rng.uniform(0.02, 0.5)
    kept = g.prune(mask)
    assert not (kept & ~mask).any()
    # Every kept edge lies on a path input -> ... -> logits through kept edges.
    src, dstn = g.edge_src, g.dst_node[g.edge_dst]
    n = len(g.node_names)
    fwd = np.zeros(n, bool)
    fwd[0] = True
    for _ in range(n):
        for e in np.nonzero(kept)[0]:
            if fwd[src[e]]:
                fwd[dstn[e]] = True
    bwd = np.zeros(n, bool)
    bwd[-1] = True
    for _ in range(n):
        for e in np.nonzero(kept)[0]:
            if bwd[dstn[e]]:
                bwd[src[e]] = True
    for e in np.nonzero(kept)[0]:
        assert fwd[src[e]] and bwd[dstn[e]], g.edge_names[e]
    # Pruning is idempotent, and a dropped edge really was dangling.
    assert (g.prune(kept) == kept).all()


def test_circuit_nodes_and_names():
    g = Graph(2, 2)
    c = Circuit.from_edge_names(g, ["input->a0.h0<q>", "a0.h0->logits", "a1.h1->logits"])
    assert c.edge_names == ["input->a0.h0<q>", "a0.h0->logits"]  # a1.h1 has no input: pruned
    assert c.node_names == ["input", "a0.h0", "logits"]
