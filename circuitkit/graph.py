"""The computational graph of a transformer, as edge attribution sees it.

Nodes are ``input`` (token + positional embeddings), every attention head ``a{layer}.h{head}``, every MLP
``m{layer}`` and ``logits``. Because the residual stream is a sum of node outputs, every node that writes
to the residual stream before another node reads it is connected to it by an edge. Edges into a head are
split by the head's input: ``<q>``, ``<k>`` and ``<v>``. These are the names used by the EAP-IG library and
by MIB circuit files (``input->a0.h0<q>``, ``a0.h1->m0``, ``m1->logits``).

Grouped-query attention (``n_kv_heads < n_heads``): each key/value head reads one key input and one value
input, shared by its group of ``n_heads // n_kv_heads`` query heads, so those inputs are destinations per
key/value head: ``a{layer}.kv{g}<k>`` and ``a{layer}.kv{g}<v>`` (key/value head ``g`` serves query heads
``g * r .. g * r + r - 1``, ``r = n_heads // n_kv_heads``). Query inputs stay per head (``a0.h3<q>``), and
sources are unchanged. This is the model's own computational graph; no weights are ungrouped.

The graph is topology only: it is built from ``(n_layers, n_heads, parallel_attn_mlp, n_kv_heads)`` and
needs no weights. Internally edges live in a dense ``[n_sources, n_destinations]`` layout:

- sources: ``input``, then per layer the heads then the MLP (``1 + n_layers * (n_heads + 1)``);
- destinations: per layer the heads' q inputs (``n_heads``), k inputs and v inputs (``n_kv``
  each: ``n_heads`` for multi-head attention, ``n_kv_heads`` with grouped-query attention), then the MLP
  input; then ``logits``.

A source feeds a destination iff its index is below the destination's ``n_upstream``; the flat edge order
is row-major over that mask (by source, then destination).

A destination is an input of one node (a head, an MLP, ``logits``), except a grouped key/value input,
which is an input of every head of its group (:attr:`Graph.dst_nodes`); connectivity (:meth:`Graph.prune`,
:meth:`Graph.nodes_of`) follows that.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import torch

from circuitkit.errors import CircuitkitError

QKV = ("q", "k", "v")


@dataclass(frozen=True)
class Graph:
    """Nodes and edges of one architecture.

    Attributes:
        n_layers: number of transformer blocks.
        n_heads: attention heads per block (query heads for grouped-query attention).
        parallel_attn_mlp: True for GPT-J/NeoX-style blocks where the MLP reads the block input, not the
            attention output.
        n_kv_heads: key/value heads per block for grouped-query attention; None (or ``n_heads``) for
            multi-head attention, whose graph, names and edge order it leaves unchanged.
    """

    n_layers: int
    n_heads: int
    parallel_attn_mlp: bool = False
    n_kv_heads: int | None = None
    _cache: dict[str, Any] = field(default_factory=dict, compare=False, repr=False, hash=False)

    def __post_init__(self) -> None:
        kv = self.n_kv_heads
        if kv is None:
            return
        if isinstance(kv, bool) or int(kv) != kv or kv < 1 or self.n_heads % int(kv):
            raise CircuitkitError(
                f"n_kv_heads={kv!r} must be a positive divisor of n_heads={self.n_heads} (each key/value head "
                "serves the same number of query heads)."
            )
        # One spelling of multi-head attention, so that equal graphs compare equal.
        object.__setattr__(self, "n_kv_heads", None if int(kv) == self.n_heads else int(kv))

    # ----- construction -------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: Any) -> Graph:
        """Build from a TransformerLens config, a Hugging Face config or a dict.

        Reads ``n_layers``/``num_hidden_layers``/``n_layer`` and ``n_heads``/``num_attention_heads``/
        ``n_head``; ``parallel_attn_mlp`` (TransformerLens) or ``use_parallel_residual`` (NeoX) or
        model type ``gptj`` marks parallel blocks; ``n_key_value_heads`` (TransformerLens) or
        ``num_key_value_heads`` (Hugging Face) gives grouped-query attention.
        """
        get = (lambda k: config.get(k)) if isinstance(config, dict) else (lambda k: getattr(config, k, None))

        def first(*keys: str) -> Any:
            for k in keys:
                v = get(k)
                if v is not None:
                    return v
            return None

        n_layers = first("n_layers", "num_hidden_layers", "n_layer", "num_layers")
        n_heads = first("n_heads", "num_attention_heads", "n_head")
        if n_layers is None or n_heads is None:
            raise CircuitkitError(
                "Cannot build a graph from this config: it has no layer or head count "
                "(expected n_layers/num_hidden_layers and n_heads/num_attention_heads)."
            )
        parallel = bool(first("parallel_attn_mlp", "use_parallel_residual") or get("model_type") in ("gptj", "falcon", "phi"))
        n_kv = first("n_kv_heads", "n_key_value_heads", "num_key_value_heads")
        return cls(int(n_layers), int(n_heads), parallel, None if n_kv is None else int(n_kv))

    def to_dict(self) -> dict[str, Any]:
        """The constructor's arguments (``n_kv_heads`` only for grouped-query attention)."""
        out: dict[str, Any] = {"n_layers": self.n_layers, "n_heads": self.n_heads, "parallel_attn_mlp": self.parallel_attn_mlp}
        if self.n_kv_heads is not None:
            out["n_kv_heads"] = self.n_kv_heads
        return out

    # ----- heads and groups ---------------------------------------------------------------------
    @property
    def n_kv(self) -> int:
        """Key/value heads per layer (``n_heads`` for multi-head attention)."""
        return self.n_kv_heads or self.n_heads

    @property
    def grouped(self) -> bool:
        """True for grouped-query attention (fewer key/value heads than query heads)."""
        return self.n_kv_heads is not None

    @property
    def group_size(self) -> int:
        """Query heads per key/value head."""
        return self.n_heads // self.n_kv

    def kv_group(self, head: int) -> int:
        """The key/value head that query head ``head`` reads."""
        return head // self.group_size

    def group_heads(self, kv_head: int) -> range:
        """The query heads that key/value head ``kv_head`` serves."""
        r = self.group_size
        return range(kv_head * r, kv_head * r + r)

    def qkv_width(self, qkv: str) -> int:
        """Destinations per layer for one kind of head input: ``n_heads`` for q, ``n_kv`` for k and v."""
        return self.n_heads if qkv == "q" else self.n_kv

    def head_inputs(self, layer: int) -> list[tuple[str, int, int]]:
        """``[(qkv, first destination, width), ...]`` for the q, k and v inputs of ``layer``; the input hook
        of each has ``width`` head slots, destination ``first + i`` being slot ``i``."""
        return [(x, self.dst_head(layer, x, 0), self.qkv_width(x)) for x in QKV]

    # ----- indices ------------------------------------------------------------------------------
    @property
    def n_sources(self) -> int:
        return 1 + self.n_layers * (self.n_heads + 1)

    @property
    def dst_per_layer(self) -> int:
        """Destinations per layer: q inputs, k inputs, v inputs and the MLP input."""
        return self.n_heads + 2 * self.n_kv + 1

    @property
    def n_destinations(self) -> int:
        return self.n_layers * self.dst_per_layer + 1

    def src_head(self, layer: int, head: int) -> int:
        return 1 + layer * (self.n_heads + 1) + head

    def src_mlp(self, layer: int) -> int:
        return 1 + layer * (self.n_heads + 1) + self.n_heads

    def dst_head(self, layer: int, qkv: str, head: int) -> int:
        """The destination of a head input: ``head`` is the query head for q and, with grouped-query
        attention, the key/value head for k and v (:meth:`kv_group` of a query head)."""
        offset = {"q": 0, "k": self.n_heads, "v": self.n_heads + self.n_kv}[qkv]
        return layer * self.dst_per_layer + offset + head

    def dst_mlp(self, layer: int) -> int:
        return layer * self.dst_per_layer + self.dst_per_layer - 1

    def dst_layer(self, dst: int) -> int:
        """The layer a destination belongs to (``n_layers`` for the logits)."""
        return min(int(dst) // self.dst_per_layer, self.n_layers)

    def is_head_dst(self, dst: int) -> bool:
        """True when destination ``dst`` is a q, k or v input (not an MLP input or the logits)."""
        return int(dst) != self.dst_logits and int(dst) % self.dst_per_layer < self.dst_per_layer - 1

    @property
    def dst_logits(self) -> int:
        return self.n_destinations - 1

    def n_upstream_heads(self, layer: int) -> int:
        """Sources feeding the heads of ``layer``: input and every earlier head and MLP."""
        return 1 + layer * (self.n_heads + 1)

    def n_upstream_mlp(self, layer: int) -> int:
        """Sources feeding the MLP of ``layer`` (its own layer's heads too, unless blocks are parallel)."""
        return self.n_upstream_heads(layer) + (0 if self.parallel_attn_mlp else self.n_heads)

    @cached_property
    def n_upstream(self) -> np.ndarray:
        """``[n_destinations]``: how many sources (a prefix of the source order) feed each destination."""
        out = np.empty(self.n_destinations, dtype=np.int64)
        for layer in range(self.n_layers):
            base = layer * self.dst_per_layer
            out[base : self.dst_mlp(layer)] = self.n_upstream_heads(layer)
            out[self.dst_mlp(layer)] = self.n_upstream_mlp(layer)
        out[-1] = self.n_sources
        return out

    @cached_property
    def valid(self) -> torch.Tensor:
        """``[n_sources, n_destinations]`` bool: which (source, destination) pairs are edges."""
        src = torch.arange(self.n_sources)[:, None]
        return src < torch.as_tensor(self.n_upstream)[None, :]

    @cached_property
    def edge_src(self) -> np.ndarray:
        return self.valid.nonzero()[:, 0].numpy()

    @cached_property
    def edge_dst(self) -> np.ndarray:
        return self.valid.nonzero()[:, 1].numpy()

    @property
    def n_edges(self) -> int:
        return len(self.edge_src)

    # ----- names --------------------------------------------------------------------------------
    @cached_property
    def source_names(self) -> list[str]:
        names = ["input"]
        for layer in range(self.n_layers):
            names += [f"a{layer}.h{h}" for h in range(self.n_heads)] + [f"m{layer}"]
        return names

    @cached_property
    def destination_names(self) -> list[str]:
        """Destination names: ``a1.h0<q>``, ``m1``, ``logits`` (and ``a1.kv0<k>`` with grouped-query
        attention)."""
        names: list[str] = []
        for layer in range(self.n_layers):
            for x in QKV:
                if x == "q" or not self.grouped:
                    names += [f"a{layer}.h{h}<{x}>" for h in range(self.n_heads)]
                else:
                    names += [f"a{layer}.kv{g}<{x}>" for g in range(self.n_kv)]
            names.append(f"m{layer}")
        return names + ["logits"]

    @cached_property
    def node_names(self) -> list[str]:
        """Nodes in topological order: ``input``, heads and MLP of each layer, ``logits``."""
        return self.source_names + ["logits"]

    @cached_property
    def dst_nodes(self) -> list[np.ndarray]:
        """Per destination, the indices of the nodes it is an input of: one node (the q/k/v inputs of a
        head share it), or with grouped-query attention, for a k/v input, every head of its group."""
        out: list[np.ndarray] = []
        for layer in range(self.n_layers):
            for x in QKV:
                for i in range(self.qkv_width(x)):
                    heads = self.group_heads(i) if x != "q" and self.grouped else [i]
                    out.append(np.array([self.src_head(layer, h) for h in heads], dtype=np.int64))
            out.append(np.array([self.src_mlp(layer)], dtype=np.int64))
        out.append(np.array([len(self.node_names) - 1], dtype=np.int64))
        return out

    @cached_property
    def dst_node(self) -> np.ndarray:
        """``[n_destinations]``: the node index of each destination (q/k/v of a head share one).

        A grouped key/value input is the input of several heads and has no single node: use
        :attr:`dst_nodes`, :meth:`dst_mask` or :attr:`feeds` for graphs with grouped-query attention."""
        if self.grouped:
            raise CircuitkitError(
                "Graph.dst_node is undefined with grouped-query attention: a key/value input feeds every head of "
                "its group. Use Graph.dst_nodes, Graph.dst_mask or Graph.feeds."
            )
        return np.array([int(n[0]) for n in self.dst_nodes], dtype=np.int64)

    @cached_property
    def feeds(self) -> np.ndarray:
        """``[n_destinations, n_nodes]`` bool: destination ``d`` is an input of node ``n``."""
        out = np.zeros((self.n_destinations, len(self.node_names)), dtype=bool)
        for d, nodes in enumerate(self.dst_nodes):
            out[d, nodes] = True
        return out

    def dst_mask(self, node_mask: np.ndarray) -> np.ndarray:
        """``[n_destinations]`` bool: the destinations that are an input of at least one node of
        ``node_mask`` (``[n_nodes]`` bool)."""
        node_mask = np.asarray(node_mask, dtype=bool)
        if not self.grouped:
            return node_mask[self.dst_node]
        return (self.feeds & node_mask[None, :]).any(1)

    @cached_property
    def _edge_node_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """``(edges, nodes)``: one pair per edge and node its destination is an input of, sorted by node
        (stable: by edge within a node)."""
        counts = np.array([len(n) for n in self.dst_nodes], dtype=np.int64)[self.edge_dst]
        edges = np.repeat(np.arange(self.n_edges), counts)
        nodes = np.concatenate([self.dst_nodes[d] for d in self.edge_dst]) if self.n_edges else np.zeros(0, np.int64)
        order = np.argsort(nodes, kind="stable")
        return edges[order], nodes[order]

    @cached_property
    def edge_names(self) -> list[str]:
        s, d = self.source_names, self.destination_names
        return [f"{s[i]}->{d[j]}" for i, j in zip(self.edge_src, self.edge_dst)]

    @cached_property
    def edge_index(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self.edge_names)}

    def index_of(self, edge: str) -> int:
        """Flat index of an edge name; a clear error if the graph has no such edge."""
        try:
            return self.edge_index[edge]
        except KeyError:
            if self.grouped:
                raise CircuitkitError(
                    f"Edge '{edge}' is not in this graph ({self.n_layers} layers, {self.n_heads} query heads sharing "
                    f"{self.n_kv} key/value heads). Edges look like 'input->a0.h0<q>', 'input->a0.kv0<k>', "
                    "'a0.h1->a1.kv0<v>', 'a0.h1->m0' or 'm1->logits': key and value inputs are per key/value head."
                ) from None
            raise CircuitkitError(
                f"Edge '{edge}' is not in this graph ({self.n_layers} layers, {self.n_heads} heads). "
                "Edges look like 'input->a0.h0<q>', 'a0.h1->m0' or 'm1->logits'."
            ) from None

    # ----- dense <-> flat -----------------------------------------------------------------------
    def to_dense(self, flat: torch.Tensor, fill: float | bool = 0) -> torch.Tensor:
        """``[..., n_edges]`` -> ``[..., n_sources, n_destinations]`` (non-edges get ``fill``)."""
        out = torch.full((*flat.shape[:-1], self.n_sources, self.n_destinations), fill, dtype=flat.dtype, device=flat.device)
        out[..., self.valid.to(flat.device)] = flat
        return out

    def to_flat(self, dense: torch.Tensor) -> torch.Tensor:
        """``[..., n_sources, n_destinations]`` -> ``[..., n_edges]``."""
        return dense[..., self.valid.to(dense.device)]

    # ----- connectivity -------------------------------------------------------------------------
    def prune(self, edge_mask: torch.Tensor | np.ndarray) -> np.ndarray:
        """Remove dangling edges: keep an edge only if its source is reachable from ``input`` and its
        destination node reaches ``logits`` through kept edges (a grouped key/value input: one of its
        group's heads does). Returns the pruned bool ``[n_edges]``."""
        mask = np.asarray(edge_mask, dtype=bool).copy()
        if mask.shape != (self.n_edges,):
            raise CircuitkitError(f"Edge mask has shape {mask.shape}, expected ({self.n_edges},) for this graph.")
        n_nodes = len(self.node_names)
        src = self.edge_src
        edges, nodes = self._edge_node_pairs
        reach_in = np.zeros(n_nodes, dtype=bool)
        reach_in[0] = True
        # Sources come before their destinations in node order, so one sweep suffices.
        for e, n in zip(edges.tolist(), nodes.tolist()):
            if mask[e] and reach_in[src[e]]:
                reach_in[n] = True
        reach_out = np.zeros(n_nodes, dtype=bool)
        reach_out[-1] = True
        for e, n in zip(edges[::-1].tolist(), nodes[::-1].tolist()):
            if mask[e] and reach_out[n]:
                reach_out[src[e]] = True
        dst_out = np.zeros(self.n_edges, dtype=bool)
        np.logical_or.at(dst_out, edges, reach_out[nodes])
        return mask & reach_in[src] & dst_out

    def nodes_of(self, edge_mask: np.ndarray) -> np.ndarray:
        """``[n_nodes]`` bool: nodes touched by the kept edges.

        A grouped key/value input is an input of every head of its group; an edge into it touches the
        heads of the group that the kept edges touch otherwise (as sources or through their q input), or
        all of them when none is (so a pruned circuit lists exactly the heads whose output it uses)."""
        edge_mask = np.asarray(edge_mask, dtype=bool)
        nodes = np.zeros(len(self.node_names), dtype=bool)
        nodes[self.edge_src[edge_mask]] = True
        dsts = np.unique(self.edge_dst[edge_mask])
        shared = []
        for d in dsts.tolist():
            group = self.dst_nodes[d]
            if len(group) == 1:
                nodes[group[0]] = True
            else:
                shared.append(group)
        base = nodes.copy()
        for group in shared:
            hit = group[base[group]]
            nodes[hit if len(hit) else group] = True
        return nodes
