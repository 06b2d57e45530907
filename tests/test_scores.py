"""Scores as a value: edge lookup, exact equality, files read back equal, and no Mapping left over."""

from __future__ import annotations

import copy
import dataclasses
import math
import pickle
from collections.abc import Mapping

import pytest
import torch

from circuitkit.graph import Graph
from circuitkit.results import Scores


@pytest.fixture(scope="module")
def graph():
    return Graph(2, 3)


def scores(graph, level="edge", seed=0):
    g = torch.Generator().manual_seed(seed)
    values = torch.randn(graph.n_edges, generator=g, dtype=torch.float64)
    stderr = torch.rand(graph.n_edges, generator=g, dtype=torch.float64)
    stderr[3] = math.nan  # an edge without a standard error
    meta = {"method": "test", "seed": seed}
    if level == "edge":
        return Scores(graph, values, meta, stderr=stderr)
    nodes = torch.randn(graph.n_sources, generator=g, dtype=torch.float64)
    neurons = torch.randn(graph.n_sources, 5, generator=g, dtype=torch.float64) if level == "neuron" else None
    return Scores(graph, values, meta, level, None if neurons is not None else nodes, neurons, stderr=stderr)


def test_edge_lookup(graph):
    s = scores(graph)
    names = graph.edge_names
    assert list(s) == list(s.keys()) == names and len(s) == graph.n_edges
    assert s.items() == list(zip(names, s.values.tolist()))
    assert s[names[5]] == float(s.values[5]) and dict(s)[names[5]] == s[names[5]]
    assert names[5] in s and "a9.h9->m9" not in s and 3 not in s


def test_not_a_mapping(graph):
    s = scores(graph)
    assert not isinstance(s, Mapping)
    with pytest.raises(AttributeError, match=r"Scores has no get\(\); index by edge name"):
        s.get(graph.edge_names[0])
    with pytest.raises(AttributeError, match="has no attribute 'no_such_thing'"):
        s.no_such_thing  # noqa: B018
    with pytest.raises(TypeError, match="unhashable"):
        hash(s)


@pytest.mark.parametrize("level", ["edge", "node", "neuron"])
def test_equality_is_exact(graph, level):
    a, b = scores(graph, level), scores(graph, level)
    assert a == b and not (a != b)  # NaN standard errors in the same place compare equal
    assert a != scores(graph, level, seed=1)
    assert a != dataclasses.replace(a, meta={**a.meta, "seed": 1})
    assert a != "not scores" and a != a.values
    for part in ("values", "nodes", "neurons", "stderr"):
        t = getattr(a, part)
        if t is None:
            continue
        t = t.clone()
        flat = t.view(-1)
        flat[-1] = torch.nextafter(flat[-1], torch.tensor(math.inf, dtype=t.dtype))  # one ulp apart
        # Neuron-level node scores are the neurons' sums: let them follow.
        changes = {part: t, **({"nodes": None} if part == "neurons" else {})}
        assert dataclasses.replace(a, **changes) != a, part
    no_stderr = dataclasses.replace(a, stderr=None)
    assert no_stderr != a and a != no_stderr
    # per_example is memory-only (never written), so it does not take part.
    assert dataclasses.replace(a, per_example=torch.zeros(2, graph.n_edges)) == a


def test_level_and_graph_take_part(graph):
    edge = scores(graph)
    node = Scores.for_nodes(graph, torch.ones(graph.n_sources))
    assert node != Scores(graph, node.values, node.meta)  # same edge scores, different level
    assert scores(Graph(2, 3, parallel_attn_mlp=True)) != edge  # another graph (and another number of edges)
    assert scores(Graph(3, 2)) != scores(Graph(2, 3))


@pytest.mark.parametrize("level", ["edge", "node", "neuron"])
def test_copies_and_pickles_are_equal(graph, level):
    s = scores(graph, level)
    assert copy.deepcopy(s) == s and copy.copy(s) == s and pickle.loads(pickle.dumps(s)) == s


@pytest.mark.parametrize("level", ["edge", "node", "neuron"])
def test_file_round_trip_is_equal(graph, level, tmp_path):
    s = scores(graph, level)
    s.save(tmp_path / "scores.json")
    assert Scores.load(tmp_path / "scores.json") == s
    assert Scores.load(tmp_path / "scores.json", graph=graph) == s
