"""An empty circuit's EAP-IG graph JSON: ``logits`` stays ``in_graph`` (EAP-IG's LogitNode is always in the
graph: its ``in_graph`` property returns True and its setter refuses any value), every other node and
every edge is out, and the file reads back as the empty circuit and writes the same JSON again."""

import json

import pytest

from circuitkit.graph import Graph
from circuitkit.results import Circuit


@pytest.mark.parametrize("graph", [Graph(2, 3), Graph(2, 4, n_kv_heads=2), Graph(1, 2, parallel_attn_mlp=True)])
def test_empty_circuit_json_keeps_logits_in_graph_and_round_trips(graph, tmp_path):
    empty = Circuit.empty(graph)
    obj = empty.to_json()
    assert obj["nodes"]["logits"] == {"in_graph": True}
    assert [n for n, v in obj["nodes"].items() if v["in_graph"]] == ["logits"]
    assert not any(e["in_graph"] for e in obj["edges"].values()) and len(obj["edges"]) == graph.n_edges
    assert not empty.nodes.any()  # writing the file did not add logits to the circuit itself

    empty.save(tmp_path / "empty.json")
    back = Circuit.load(tmp_path / "empty.json", graph)
    assert back.n_edges == 0 and back.to_json() == obj
    assert json.loads((tmp_path / "empty.json").read_text())["nodes"]["logits"] == {"in_graph": True}


def test_a_file_without_edges_in_the_graph_reads_as_the_empty_circuit(tmp_path):
    g = Graph(1, 1)
    obj = Circuit.full(g).to_json()
    for e in obj["edges"].values():
        e["in_graph"] = False
    obj["nodes"] = {n: {"in_graph": n == "logits"} for n in obj["nodes"]}
    (tmp_path / "c.json").write_text(json.dumps(obj))
    c = Circuit.load(tmp_path / "c.json")
    assert c.n_edges == 0 and c.to_json()["nodes"]["logits"] == {"in_graph": True}
