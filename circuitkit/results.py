"""Result types — measurement, decision and verdict kept apart — and their files.

- :class:`Scores`: one number per edge of a :class:`~circuitkit.graph.Graph`, with provenance.
- :class:`Circuit`: a set of edges (and the nodes they touch), pruned so nothing dangles.
- :class:`EvalResult`: the numbers one evaluator measured.
- :class:`RunResult`: everything a run produced, with the config and versions that produced it.

``scores.json`` is ``{"meta": {...}, "edges": {edge_name: score}}``. ``circuit.json`` is the EAP-IG
library's graph JSON (``Graph.to_json``/``Graph.from_json`` in hannamw/EAP-IG; the format of MIB circuit
files)::

    {"cfg": {"n_layers", "n_heads", "parallel_attn_mlp", "d_model"},
     "nodes": {"input": {"in_graph": bool}, "a0.h0": {...}, "m0": {...}, ..., "logits": {"in_graph": true}},
     "edges": {"input->a0.h0<q>": {"score": float, "in_graph": bool}, ...}}

A model with grouped-query attention adds ``"n_kv_heads"`` to ``cfg``, and its key/value edges are per
key/value head: ``input->a0.kv0<k>``, ``a0.h1->a1.kv1<v>`` (see :mod:`circuitkit.graph`).

Every node and every edge of the graph is listed; ``logits`` is always ``in_graph`` (as in EAP-IG). EAP-IG
builds its graph from ``cfg`` and needs ``d_model`` there, so it is written whenever it is known
(:attr:`Circuit.d_model`, or ``d_model`` in the scores' meta). EAP-IG needs a number for every edge's
``score``: a circuit without scores writes 0.0 and marks the file with ``"scored": false`` (a top-level key
EAP-IG ignores), so reading it back gives a circuit without scores again. Files are written atomically.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from circuitkit.errors import CircuitkitError, quote
from circuitkit.graph import Graph

#: Granularities of scores and circuits.
LEVELS = ("edge", "node", "neuron")


def node_scores(per_node: torch.Tensor) -> torch.Tensor:
    """``[..., n_sources]``: each source node's score, the sum of its outgoing edge scores (``per_node`` is
    ``[..., n_sources, n_destinations]``, dense) or of its neurons' scores (``[..., n_sources, d_model]``);
    an unscored entry (NaN) counts 0. For gradient attribution the two are the same number, and the node's
    own attribution: every reader's input contains the node's output."""
    return torch.nan_to_num(per_node, nan=0.0, posinf=math.inf, neginf=-math.inf).sum(-1)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and a rename: the file is complete or absent."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise CircuitkitError(
            f"Cannot write {path}: {e.strerror or e}. Choose a writable output directory (hydra.run.dir=...)."
        ) from e
    try:
        # mkstemp creates the file 0600; result files get the permissions any new file would (the umask).
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with _suppress():
            os.unlink(tmp)
        raise CircuitkitError(
            f"Writing {path} failed: {e.strerror or e} (is the disk full?). Nothing partial was left behind."
        ) from e


def _umask() -> int:
    from circuitkit.rundir import umask

    return umask()


class _suppress:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return True


def write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, allow_nan=False, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def read_json(path: str | os.PathLike, what: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise CircuitkitError(f"{what} file {path} does not exist.") from None
    except IsADirectoryError:
        raise CircuitkitError(f"{what} file {path} is a directory; give the path of the .json file in it.") from None
    except UnicodeDecodeError as e:
        raise CircuitkitError(
            f"{what} file {path} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); it is not a "
            "file circuitkit wrote, or it is damaged."
        ) from None
    except json.JSONDecodeError as e:
        raise CircuitkitError(f"{what} file {path} is not valid JSON ({e}); it may be truncated.") from None
    except RecursionError:
        raise CircuitkitError(f"{what} file {path} is nested too deeply to be a {what.lower()} file.") from None
    except OSError as e:
        raise CircuitkitError(f"{what} file {path} cannot be read: {e.strerror or e}.") from None


@dataclass(eq=False)
class Scores:
    """One score per edge: the estimated drop of the metric when that edge alone is corrupted.

    Index by edge name (``scores["a0.h0->m0"]``, ``"a0.h0->m0" in scores``); ``keys()``, ``items()``,
    iteration and ``len()`` go over the edges in the graph's order. ``values`` is the ``[n_edges]`` float64
    tensor in that order (an attribute, not a method: ``scores.values.tolist()`` for a list). Scores are a
    value: ``==`` compares the graph, the level, the meta and the edge, node, neuron scores and standard
    errors exactly (NaN equal to NaN in the same place); ``per_example`` is not compared. They are not
    hashable and not a :class:`~collections.abc.Mapping`.

    Node- and neuron-level scores (``level="node"`` / ``"neuron"``, from a method's ``level`` option) add
    ``nodes`` ``[n_sources]`` (the drop when every outgoing edge of a node is corrupted, in
    ``graph.source_names`` order) and, at neuron level, ``neurons`` ``[n_sources, d_model]`` (the drop
    when one output dimension of a node is corrupted for every reader). Selectors then choose nodes or
    neurons. ``values`` still holds edge scores where the method measured them (gradient methods);
    otherwise (exact node/neuron patching) each edge carries its source node's score and
    ``meta["edge_values"]`` says ``"source node score"``.

    ``stderr`` ``[n_edges]`` is each edge score's standard error over the examples (sample standard
    deviation of the per-example scores / sqrt(n); gradient methods and exact patching compute it in the
    same pass), written to ``scores.json`` as ``"stderr"`` parallel to ``"edges"``. ``per_example``
    ``[n_examples, n_edges]`` holds the per-example scores themselves, in memory only (not written), for
    resampling the examples (:mod:`circuitkit.uncertainty`).
    """

    graph: Graph
    values: torch.Tensor
    meta: dict[str, Any] = field(default_factory=dict)
    level: str = "edge"
    nodes: torch.Tensor | None = None
    neurons: torch.Tensor | None = None
    stderr: torch.Tensor | None = field(default=None, repr=False, compare=False)
    per_example: torch.Tensor | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.values = torch.as_tensor(self.values, dtype=torch.float64).detach().cpu()
        if self.values.shape != (self.graph.n_edges,):
            raise CircuitkitError(f"Scores have shape {tuple(self.values.shape)}, expected ({self.graph.n_edges},).")
        if self.level not in LEVELS:
            raise CircuitkitError(f"Scores level must be one of {', '.join(LEVELS)}, got {self.level!r}.")
        if self.neurons is not None:
            self.neurons = torch.as_tensor(self.neurons, dtype=torch.float64).detach().cpu()
            if self.nodes is None:
                self.nodes = node_scores(self.neurons)
        if self.nodes is not None:
            self.nodes = torch.as_tensor(self.nodes, dtype=torch.float64).detach().cpu()
            if self.nodes.shape != (self.graph.n_sources,):
                raise CircuitkitError(f"Node scores have shape {tuple(self.nodes.shape)}, expected ({self.graph.n_sources},).")
        if self.level != "edge" and self.nodes is None:
            raise CircuitkitError(f"{self.level}-level scores need node scores.")
        if self.level == "neuron" and self.neurons is None:
            raise CircuitkitError("neuron-level scores need neuron scores [n_sources, d_model].")
        if self.stderr is not None:
            self.stderr = torch.as_tensor(self.stderr, dtype=torch.float64).detach().cpu()
            if self.stderr.shape != (self.graph.n_edges,):
                raise CircuitkitError(
                    f"Score standard errors have shape {tuple(self.stderr.shape)}, expected ({self.graph.n_edges},)."
                )

    @classmethod
    def for_nodes(
        cls, graph: Graph, nodes: torch.Tensor, meta: dict[str, Any] | None = None, neurons: torch.Tensor | None = None
    ) -> Scores:
        """Node (or, with ``neurons``, neuron) scores without edge scores: each edge carries its source
        node's score."""
        nodes = torch.as_tensor(nodes, dtype=torch.float64)
        values = nodes[torch.as_tensor(graph.edge_src, dtype=torch.long)]
        level = "neuron" if neurons is not None else "node"
        return cls(graph, values, {**(meta or {}), "level": level, "edge_values": "source node score"}, level, nodes, neurons)

    @classmethod
    def from_dense(cls, graph: Graph, dense: torch.Tensor, meta: dict[str, Any] | None = None) -> Scores:
        return cls(graph, graph.to_flat(dense.detach().cpu().double()), dict(meta or {}))

    def __getitem__(self, edge: str) -> float:
        return float(self.values[self.graph.index_of(edge)])

    def __contains__(self, edge: object) -> bool:
        return edge in self.graph.edge_index

    def __iter__(self) -> Iterator[str]:
        return iter(self.graph.edge_names)

    def __len__(self) -> int:
        return self.graph.n_edges

    def keys(self) -> list[str]:
        """The edge names, in the graph's order."""
        return list(self.graph.edge_names)

    def items(self) -> list[tuple[str, float]]:
        """``(edge name, score)`` pairs, in the graph's order."""
        return list(zip(self.graph.edge_names, self.values.tolist()))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Scores):
            return NotImplemented
        return (
            self.level == other.level
            and self.graph == other.graph
            and all(
                _same(a, b)
                for a, b in (
                    (self.values, other.values),
                    (self.nodes, other.nodes),
                    (self.neurons, other.neurons),
                    (self.stderr, other.stderr),
                )
            )
            and self.meta == other.meta
        )

    __hash__ = None  # type: ignore[assignment]  # a mutable value: not hashable

    def __getattr__(self, name: str) -> Any:
        # Only reached for attributes that do not exist: name what replaced the Mapping methods.
        if name in _GONE:
            raise AttributeError(f"Scores has no {name}(); {_GONE[name]}")
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def dense(self) -> torch.Tensor:
        """``[n_sources, n_destinations]`` (0 where there is no edge)."""
        return self.graph.to_dense(self.values)

    def top(self, k: int, absolute: bool = True) -> list[tuple[str, float]]:
        key = self.values.abs() if absolute else self.values
        idx = torch.argsort(key, descending=True, stable=True)[:k]
        return [(self.graph.edge_names[i], float(self.values[i])) for i in idx]

    def node_scores(self) -> dict[str, float]:
        """``{node: score}`` over ``graph.source_names`` (node-level scores, else the sum of each node's
        outgoing edge scores)."""
        vals = self.nodes if self.nodes is not None else torch.nan_to_num(self.dense(), nan=0.0).sum(1)
        return dict(zip(self.graph.source_names, vals.tolist()))

    def check_finite(self) -> None:
        for what, t in (("node", self.nodes), ("neuron", self.neurons)):
            if t is not None and not bool(torch.isfinite(t).all()):
                raise CircuitkitError(
                    f"{int((~torch.isfinite(t)).sum())} {what} scores are NaN or infinite; check the task's answers, or use dtype=float32."
                )
        bad = ~torch.isfinite(self.values)
        if bool(bad.any()):
            names = [self.graph.edge_names[i] for i in bad.nonzero().squeeze(1)[:3].tolist()]
            raise CircuitkitError(
                f"{int(bad.sum())} edge scores are NaN or infinite (e.g. {', '.join(names)}). The metric is probably "
                "not finite on some example; check the task's answers, or use dtype=float32."
            )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "meta": {**self.meta, "graph": self.graph.to_dict()},
            "edges": dict(zip(self.graph.edge_names, self.values.tolist())),
        }
        if self.level != "edge":
            out["level"] = self.level
            out["nodes"] = dict(zip(self.graph.source_names, self.nodes.tolist()))  # type: ignore[union-attr]
        if self.neurons is not None:
            out["neurons"] = dict(zip(self.graph.source_names, self.neurons.tolist()))
        if self.stderr is not None:
            # NaN (fewer than two examples, or an edge not measured) is written as null.
            out["stderr"] = {n: (v if math.isfinite(v) else None) for n, v in zip(self.graph.edge_names, self.stderr.tolist())}
        return out

    def save(self, path: str | os.PathLike) -> None:
        write_json(path, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike, graph: Graph | None = None) -> Scores:
        obj = read_json(path, "Scores")
        meta = dict(obj.get("meta", {}))
        g = graph or Graph(**meta.pop("graph"))
        meta.pop("graph", None)
        edges = obj["edges"]
        missing = [n for n in g.edge_names if n not in edges]
        if missing:
            raise CircuitkitError(
                f"Scores file {path} does not match this graph: {len(missing)} edges missing (e.g. {missing[0]})."
            )
        level = obj.get("level", "edge")
        nodes = neurons = None
        try:
            if "nodes" in obj:
                nodes = torch.tensor([obj["nodes"][n] for n in g.source_names], dtype=torch.float64)
            if "neurons" in obj:
                neurons = torch.tensor([obj["neurons"][n] for n in g.source_names], dtype=torch.float64)
        except (KeyError, TypeError, ValueError) as e:
            raise CircuitkitError(f"Scores file {path}: node or neuron scores do not match this graph ({e}).") from None
        stderr = None
        if isinstance(obj.get("stderr"), dict):
            se = obj["stderr"]
            try:
                stderr = torch.tensor(
                    [math.nan if se.get(n) is None else float(se[n]) for n in g.edge_names], dtype=torch.float64
                )
            except (TypeError, ValueError) as e:
                raise CircuitkitError(f"Scores file {path}: 'stderr' must map edge names to numbers ({e}).") from None
        return cls(
            g, torch.tensor([edges[n] for n in g.edge_names], dtype=torch.float64), meta, level, nodes, neurons, stderr=stderr
        )


_GONE = {
    "get": "index by edge name (scores[edge], after checking edge in scores) or use scores.values, the tensor of all edge scores.",
}


def _same(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    """Both None, or the same shape and exactly the same numbers (NaN equal to NaN in the same place)."""
    if a is None or b is None:
        return a is None and b is None
    return a.shape == b.shape and bool(((a == b) | (a.isnan() & b.isnan())).all())


@dataclass
class Circuit:
    """A set of edges of a graph, with no dangling nodes.

    Attributes:
        graph: the graph.
        edges: ``[n_edges]`` bool mask.
        scores: the scores the circuit was selected from (optional; written to circuit files).
        d_model: the model's width, written to circuit files for EAP-IG/MIB tools (optional).
        level: ``edge``, ``node`` (selected as nodes: every edge between kept nodes) or ``neuron``.
        neurons: at neuron level, ``[n_sources, d_model]`` bool: the output dimensions of each node that
            are kept (the others carry their corrupted value for every reader).
        selection: how a selector that measures circuits chose this one (``target_faithfulness``: the
            target, whether it was reached, the sizes evaluated); ``selection`` in results.json.
    """

    graph: Graph
    edges: np.ndarray
    scores: Scores | None = None
    d_model: int | None = None
    level: str = "edge"
    neurons: np.ndarray | None = None
    selection: dict[str, Any] | None = None

    @classmethod
    def from_mask(
        cls, graph: Graph, mask: np.ndarray | torch.Tensor, scores: Scores | None = None, prune: bool = True
    ) -> Circuit:
        mask = np.asarray(mask, dtype=bool)
        return cls(graph, graph.prune(mask) if prune else mask.copy(), scores)

    @classmethod
    def full(cls, graph: Graph) -> Circuit:
        return cls(graph, np.ones(graph.n_edges, dtype=bool))

    @classmethod
    def empty(cls, graph: Graph) -> Circuit:
        return cls(graph, np.zeros(graph.n_edges, dtype=bool))

    @classmethod
    def from_edge_names(cls, graph: Graph, names: list[str], prune: bool = True) -> Circuit:
        mask = np.zeros(graph.n_edges, dtype=bool)
        for n in names:
            mask[graph.index_of(n)] = True
        return cls.from_mask(graph, mask, prune=prune)

    @property
    def n_edges(self) -> int:
        return int(self.edges.sum())

    @property
    def nodes(self) -> np.ndarray:
        return self.graph.nodes_of(self.edges)

    @property
    def edge_names(self) -> list[str]:
        return [n for n, k in zip(self.graph.edge_names, self.edges) if k]

    @property
    def node_names(self) -> list[str]:
        return [n for n, k in zip(self.graph.node_names, self.nodes) if k]

    @property
    def n_neurons(self) -> int | None:
        return None if self.neurons is None else int(self.neurons[self.graph.nodes_of(self.edges)[:-1]].sum())

    def neuron_keep(self) -> torch.Tensor | None:
        """``[n_sources, d_model]`` float mask of kept output dimensions (None: whole nodes)."""
        return None if self.neurons is None else torch.as_tensor(self.neurons, dtype=torch.float32)

    def keep_dense(self) -> torch.Tensor:
        """``[n_sources, n_destinations]`` float mask (1 = kept edge; non-edges count as kept)."""
        dense = self.graph.to_dense(torch.as_tensor(self.edges, dtype=torch.float32), fill=1.0)
        return dense

    # ----- EAP-IG / MIB graph JSON ---------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """The EAP-IG graph JSON of this circuit (see the module docstring)."""
        g = self.graph
        nodes = self.nodes
        nodes[-1] = True  # logits: always in the graph, as EAP-IG writes it
        scored = self.scores is not None
        score = self.scores.values.tolist() if self.scores is not None else [0.0] * g.n_edges
        cfg: dict[str, Any] = g.to_dict()  # n_layers, n_heads, parallel_attn_mlp (and n_kv_heads for GQA)
        d_model = (
            self.d_model if self.d_model is not None else (self.scores.meta.get("d_model") if self.scores is not None else None)
        )
        if d_model is not None:
            cfg["d_model"] = int(d_model)
        out: dict[str, Any] = {
            "cfg": cfg,
            "nodes": {n: {"in_graph": bool(k)} for n, k in zip(g.node_names, nodes, strict=True)},
            "edges": {
                n: {"score": float(s), "in_graph": bool(k)} for n, s, k in zip(g.edge_names, score, self.edges, strict=True)
            },
        }
        if not scored:
            out["scored"] = False
        if self.level != "edge":
            out["level"] = self.level
        if self.neurons is not None:
            # Kept output dimensions of each node in the circuit (a key EAP-IG does not read).
            out["neurons"] = {n: np.flatnonzero(self.neurons[i]).tolist() for i, n in enumerate(g.source_names) if nodes[i]}
        return out

    def save(self, path: str | os.PathLike) -> None:
        write_json(path, self.to_json())

    @classmethod
    def from_json(cls, obj: dict[str, Any], graph: Graph | None = None, source: str = "circuit") -> Circuit:
        """Read an EAP-IG graph JSON (ours or one written by EAP-IG/MIB tools).

        The circuit is the set of edges with ``in_graph`` true, as written (not pruned again). Edges the
        file does not list are not in the circuit. Scores are kept when every edge has one. Anything else
        is a :class:`CircuitkitError` naming the source.
        """
        try:
            return cls._from_json(obj, graph, source)
        except (TypeError, ValueError, AttributeError, IndexError, KeyError, OverflowError, MemoryError) as e:
            raise CircuitkitError(
                f"{source} is not a valid circuit file ({type(e).__name__}: {quote(str(e), 120)}). "
                "Expected the EAP-IG graph JSON: 'cfg' (n_layers, n_heads), 'nodes', and 'edges' mapping each edge "
                'name to {"score": number, "in_graph": true/false}.'
            ) from None

    @classmethod
    def _from_json(cls, obj: dict[str, Any], graph: Graph | None, source: str) -> Circuit:
        if not isinstance(obj, dict) or not isinstance(obj.get("cfg"), dict):
            raise CircuitkitError(
                f"{source} is not a circuit file: expected keys 'cfg' (n_layers, n_heads), 'nodes' and 'edges'."
            )
        try:
            cfg = obj["cfg"]
            n_kv = cfg.get("n_kv_heads")
            for key in ("n_layers", "n_heads") + (("n_kv_heads",) if n_kv is not None else ()):
                v = cfg.get(key)
                if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 4096:
                    raise CircuitkitError(
                        f"{source} is not a circuit file: cfg.{key} must be a whole number from 1 to 4096, got {v!r:.40}."
                    )
            if cfg["n_layers"] * cfg["n_heads"] > 65536:
                raise CircuitkitError(
                    f"{source} is not a circuit file: cfg describes {cfg['n_layers']} x {cfg['n_heads']} heads."
                )
            file_graph = Graph(
                int(cfg["n_layers"]),
                int(cfg["n_heads"]),
                bool(cfg.get("parallel_attn_mlp", False)),
                None if n_kv is None else int(n_kv),
            )
            edges = obj["edges"]
            if not isinstance(edges, dict):
                raise TypeError
        except (KeyError, TypeError, ValueError):
            raise CircuitkitError(
                f"{source} is not a circuit file: expected keys 'cfg' (n_layers, n_heads), 'nodes' and 'edges'."
            ) from None
        if graph is not None and (graph.n_layers, graph.n_heads, graph.n_kv) != (
            file_graph.n_layers,
            file_graph.n_heads,
            file_graph.n_kv,
        ):
            raise CircuitkitError(
                f"{source} is a circuit for a model with {file_graph.n_layers} layers and {_heads(file_graph)}, but this "
                f"model has {graph.n_layers} layers and {_heads(graph)}. Use a circuit file made for this model."
            )
        if graph is not None and graph.parallel_attn_mlp != file_graph.parallel_attn_mlp:
            kinds = {True: "parallel attention/MLP blocks", False: "sequential attention/MLP blocks"}
            raise CircuitkitError(
                f"{source} is a circuit for a model with {kinds[file_graph.parallel_attn_mlp]}, but this model has "
                f"{kinds[graph.parallel_attn_mlp]}. Use a circuit file made for this model."
            )
        g = graph or file_graph
        unknown = [n for n in edges if n not in g.edge_index]
        if unknown:
            raise CircuitkitError(f"{source} names {len(unknown)} edges this graph does not have (e.g. {quote(unknown[0], 60)}).")
        mask = np.zeros(g.n_edges, dtype=bool)
        vals = np.zeros(g.n_edges, dtype=np.float64)
        have_scores = obj.get("scored", True) is not False
        for n, e in edges.items():
            if not isinstance(e, dict):
                raise CircuitkitError(
                    f'{source}: edge {quote(n, 60)} must map to {{"score": ..., "in_graph": ...}}, got {quote(e, 60)}.'
                )
            i = g.edge_index[n]
            mask[i] = bool(e.get("in_graph", False))
            s = e.get("score")
            if s is None:
                have_scores = False
            else:
                vals[i] = float(s)
        scores = Scores(g, torch.from_numpy(vals)) if have_scores and len(edges) == g.n_edges else None
        d_model = cfg.get("d_model")
        level = obj.get("level", "edge")
        neurons = None
        if "neurons" in obj:
            if d_model is None:
                raise CircuitkitError(f"{source} lists neurons but its cfg has no d_model.")
            if isinstance(d_model, bool) or not isinstance(d_model, int) or not 1 <= d_model <= 1 << 17:
                raise CircuitkitError(f"{source}: cfg.d_model must be a whole number from 1 to {1 << 17}, got {d_model!r:.40}.")
            neurons = np.zeros((g.n_sources, int(d_model)), dtype=bool)
            index = {n: i for i, n in enumerate(g.source_names)}
            for n, dims in obj["neurons"].items():
                if n not in index:
                    raise CircuitkitError(f"{source}: neurons of unknown node {quote(n, 60)}.")
                neurons[index[n], dims] = True
        return cls(g, mask, scores, int(d_model) if d_model is not None else None, level, neurons)

    @classmethod
    def load(cls, path: str | os.PathLike, graph: Graph | None = None) -> Circuit:
        return cls.from_json(read_json(path, "Circuit"), graph, source=str(path))


def _heads(g: Graph) -> str:
    return f"{g.n_heads} query heads sharing {g.n_kv} key/value heads" if g.grouped else f"{g.n_heads} heads"


@dataclass
class EvalResult:
    """The numbers one evaluator measured.

    Attributes:
        name: the evaluator's name.
        values: scalar results (``faithfulness``, ``clean_metric``...); None where undefined.
        tables: named lists of rows (e.g. a faithfulness curve).
        notes: human-readable remarks (e.g. why a value is undefined).
        intervals: ``[low, high]`` bootstrap confidence interval of a value, by the value's name (None where
            undefined); ``interval_info`` says how (``level``, ``n_resamples``, ``method``).
        per_example: per-example values (``clean_metric``, ``corrupted_metric``, ``circuit_metric``: one
            number per example, in the task data's order).
    """

    name: str
    values: dict[str, float | int | None] = field(default_factory=dict)
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    intervals: dict[str, list[float] | None] = field(default_factory=dict)
    interval_info: dict[str, Any] = field(default_factory=dict)
    per_example: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in self.values.items()}
        out: dict[str, Any] = {"values": clean, "tables": self.tables, "notes": self.notes}
        if self.intervals:
            out["intervals"] = self.intervals
            out["interval_info"] = self.interval_info
        if self.per_example:
            out["per_example"] = self.per_example
        return out


@dataclass
class RunResult:
    """Everything one run produced."""

    meta: dict[str, Any]
    scores: Scores | None = None
    circuit: Circuit | None = None
    evals: dict[str, EvalResult] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    status: str = "complete"

    def results_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status, "meta": self.meta, "seconds": self.seconds}
        if self.circuit is not None:
            out["edges_in_circuit"] = self.circuit.n_edges
            out["edges_in_graph"] = self.circuit.graph.n_edges
            if self.circuit.level != "edge":
                out["level"] = self.circuit.level
                out["nodes_in_circuit"] = int(self.circuit.nodes[:-1].sum())
            if self.circuit.neurons is not None:
                out["neurons_in_circuit"] = self.circuit.n_neurons
            if self.circuit.selection is not None:
                out["selection"] = self.circuit.selection
        for name, ev in self.evals.items():
            out[name] = ev.to_json()
        return out
