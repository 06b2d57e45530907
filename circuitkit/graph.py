"""The computational graph of a transformer, as edge attribution sees it.

Nodes are ``input`` (token + positional embeddings), every attention head ``a{layer}.h{head}``, every MLP
``m{layer}`` and ``logits``. Because the residual stream is a sum of node outputs, every node that writes
to the residual stream before another node reads it is connected to it by an edge. Edges into a head are
split by the head's input: ``<q>``, ``<k>`` and ``<v>``. These are the names used by the EAP-IG library and
by MIB circuit files (``input->a0.h0<q>``, ``a0.h1->m0``, ``m1->logits``).

The graph is topology only: it is built from ``(n_layers, n_heads, parallel_attn_mlp)`` and needs no
weights. Internally edges live in a dense ``[n_sources, n_destinations]`` layout:

- sources: ``input``, then per layer the heads then the MLP (``1 + n_layers * (n_heads + 1)``);
- destinations: per layer the heads' q inputs, k inputs, v inputs, then the MLP input; then ``logits``.

A source feeds a destination iff its index is below the destination's ``n_upstream``; the flat edge order
is row-major over that mask (by source, then destination).
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
    """

    n_layers: int
    n_heads: int
    parallel_attn_mlp: bool = False
    _cache: dict[str, Any] = field(default_factory=dict, compare=False, repr=False, hash=False)

    # ----- construction -------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: Any) -> Graph:
        """Build from a TransformerLens config, a Hugging Face config or a dict.

        Reads ``n_layers``/``num_hidden_layers``/``n_layer`` and ``n_heads``/``num_attention_heads``/
        ``n_head``; ``parallel_attn_mlp`` (TransformerLens) or ``use_parallel_residual`` (NeoX) or
        model type ``gptj`` marks parallel blocks.
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
        parallel = bool(
            first("parallel_attn_mlp", "use_parallel_residual")
            or get("model_type") in ("gptj", "falcon", "phi")
        )
        return cls(int(n_layers), int(n_heads), parallel)

    def to_dict(self) -> dict[str, Any]:
        return {"n_layers": self.n_layers, "n_heads": self.n_heads, "parallel_attn_mlp": self.parallel_attn_mlp}

    # ----- indices ------------------------------------------------------------------------------
    @property
    def n_sources(self) -> int:
        return 1 + self.n_layers * (self.n_heads + 1)

    @property
    def n_destinations(self) -> int:
        return self.n_layers * (3 * self.n_heads + 1) + 1

    def src_head(self, layer: int, head: int) -> int:
        return 1 + layer * (self.n_heads + 1) + head

    def src_mlp(self, layer: int) -> int:
        return 1 + layer * (self.n_heads + 1) + self.n_heads

    def dst_head(self, layer: int, qkv: str, head: int) -> int:
        return layer * (3 * self.n_heads + 1) + QKV.index(qkv) * self.n_heads + head

    def dst_mlp(self, layer: int) -> int:
        return layer * (3 * self.n_heads + 1) + 3 * self.n_heads

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
            base = layer * (3 * self.n_heads + 1)
            out[base : base + 3 * self.n_heads] = self.n_upstream_heads(layer)
            out[base + 3 * self.n_heads] = self.n_upstream_mlp(layer)
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
        """Destination names: ``a1.h0<q>``, ``m1``, ``logits``."""
        names: list[str] = []
        for layer in range(self.n_layers):
            for x in QKV:
                names += [f"a{layer}.h{h}<{x}>" for h in range(self.n_heads)]
            names.append(f"m{layer}")
        return names + ["logits"]

    @cached_property
    def node_names(self) -> list[str]:
        """Nodes in topological order: ``input``, heads and MLP of each layer, ``logits``."""
        return self.source_names + ["logits"]

    @cached_property
    def dst_node(self) -> np.ndarray:
        """``[n_destinations]``: the node index of each destination (q/k/v of a head share one)."""
        index = {n: i for i, n in enumerate(self.node_names)}
        return np.array([index[d.split("<")[0]] for d in self.destination_names], dtype=np.int64)

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
        destination node reaches ``logits`` through kept edges. Returns the pruned bool ``[n_edges]``."""
        mask = np.asarray(edge_mask, dtype=bool).copy()
        if mask.shape != (self.n_edges,):
            raise CircuitkitError(f"Edge mask has shape {mask.shape}, expected ({self.n_edges},) for this graph.")
        n_nodes = len(self.node_names)
        src, dstn = self.edge_src, self.dst_node[self.edge_dst]
        reach_in = np.zeros(n_nodes, dtype=bool)
        reach_in[0] = True
        # Sources come before their destinations in node order, so one sweep suffices.
        order = np.argsort(dstn, kind="stable")
        for e in order:
            if mask[e] and reach_in[src[e]]:
                reach_in[dstn[e]] = True
        reach_out = np.zeros(n_nodes, dtype=bool)
        reach_out[-1] = True
        for e in order[::-1]:
            if mask[e] and reach_out[dstn[e]]:
                reach_out[src[e]] = True
        return mask & reach_in[src] & reach_out[dstn]

    def nodes_of(self, edge_mask: np.ndarray) -> np.ndarray:
        """``[n_nodes]`` bool: nodes touched by the kept edges."""
        nodes = np.zeros(len(self.node_names), dtype=bool)
        nodes[self.edge_src[edge_mask]] = True
        nodes[self.dst_node[self.edge_dst[edge_mask]]] = True
        return nodes
