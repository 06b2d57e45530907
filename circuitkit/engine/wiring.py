"""The wiring plan: where each node of the graph is written and read in the bridge, built once per model.

A source *writes* its output into the residual stream: the input node (token and position embeddings) at
the residual stream entering the first layer, each layer's heads at the attention's per-head result
(behind a post-attention norm, each head's share of the normed output, :func:`head_output_hooks`), each
MLP at its output. A destination *reads* the sum of its upstream sources: each head's q, k and v input,
each MLP's input, and the final residual stream before the unembedding (the logits).

Each :class:`Slot` is one such place: its role, layer and hook, the graph indices it holds (consecutive
source or destination indices, one per head slot of a per-head hook), and for a destination the number of
sources that feed it (always a prefix of the source order). A pass says what to do at each slot, and
:meth:`Wiring.hooks` turns that into the hook list of one forward::

    plan = model.wiring
    hooks = plan.hooks(model, write=lambda slot: ..., read=lambda slot: ...)
    final = _forward(model, tokens, hooks, final_hook=read(plan.logits))

The logits slot is read through the runner's ``final_hook``: the pass ends there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, cast

import torch

from circuitkit.engine.common import _on
from circuitkit.engine.heads import head_shares
from circuitkit.model import CircuitModel

#: A forward hook of the bridge: ``fn(tensor, hook) -> tensor`` (the tensor itself, or its replacement).
HookFn = Callable[[torch.Tensor, Any], torch.Tensor]
#: The hooks of one pass: ``[(hook name, fn), ...]``.
Hooks = list[tuple[str, HookFn]]

#: Where a slot is: a source's output (``input``, ``heads``, ``mlp_out``) or a destination's input (``q``,
#: ``k``, ``v``, ``mlp_in``, ``logits``).
Role = Literal["input", "heads", "mlp_out", "q", "k", "v", "mlp_in", "logits"]
SOURCE_ROLES = ("input", "heads", "mlp_out")
PER_HEAD_ROLES = ("heads", "q", "k", "v")


@dataclass(frozen=True)
class Slot:
    """One place where the graph meets the bridge.

    Attributes:
        role: what is there (see :data:`Role`).
        layer: the layer (0 for the input node, which enters layer 0; ``n_layers`` for the logits).
        hook: the hook whose tensor holds the slot's values: ``[batch, pos, d]``, or with a heads axis
            ``[batch, pos, width, d]`` for per-head slots (for ``heads`` behind a post-attention norm, the
            per-head results the shares are computed from: :func:`head_output_hooks`).
        first: the first graph index: a source index for a source slot, a destination index otherwise.
        width: how many consecutive indices (``n_heads`` for heads and q inputs, ``n_kv_heads`` for k and
            v inputs, 1 otherwise).
        n_up: for a destination slot, the sources that feed it (indices ``0 .. n_up - 1``); 0 for a
            source slot.
        proj_hook: for a q, k or v slot, the hook of the per-head projection that reads this input.
        post_norm: for a heads slot, whether a norm follows the attention (the head outputs are then
            shares of the normed output).
    """

    role: Role
    layer: int
    hook: str
    first: int
    width: int = 1
    n_up: int = 0
    proj_hook: str | None = None
    post_norm: bool = False

    @property
    def index(self) -> slice:
        """The graph indices of this slot: ``first .. first + width - 1``."""
        return slice(self.first, self.first + self.width)

    @property
    def per_head(self) -> bool:
        """Whether the hook's tensor has a heads axis (heads, q, k and v slots)."""
        return self.role in PER_HEAD_ROLES

    @property
    def is_source(self) -> bool:
        return self.role in SOURCE_ROLES


@dataclass(frozen=True)
class Wiring:
    """Every slot of a model's graph, in forward order (built once per model: :attr:`CircuitModel.wiring`).

    Attributes:
        sources: the input, then per layer its heads and its MLP output.
        destinations: per layer the q, k and v inputs and the MLP input, then the logits.
        resid_pre: per layer, the hook of the residual stream entering it.
    """

    sources: tuple[Slot, ...]
    destinations: tuple[Slot, ...]
    resid_pre: tuple[str, ...]

    @classmethod
    def build(cls, model: CircuitModel) -> Wiring:
        g = model.graph
        sources = [Slot("input", 0, model.INPUT_HOOK, 0)]
        destinations: list[Slot] = []
        for layer in range(g.n_layers):
            post = model.attn_post_norm(layer) is not None
            sources.append(Slot("heads", layer, model.head_out_hook(layer), g.src_head(layer, 0), g.n_heads, post_norm=post))
            sources.append(Slot("mlp_out", layer, model.mlp_out_hook(layer), g.src_mlp(layer)))
            n_up = g.n_upstream_heads(layer)
            for x, first, width in g.head_inputs(layer):
                role = cast(Role, x)  # "q", "k" or "v"
                hook, proj = model.head_in_hook(layer, x), model.head_proj_hook(layer, x)
                destinations.append(Slot(role, layer, hook, first, width, n_up, proj_hook=proj))
            destinations.append(Slot("mlp_in", layer, model.mlp_in_hook(layer), g.dst_mlp(layer), 1, g.n_upstream_mlp(layer)))
        destinations.append(Slot("logits", g.n_layers, model.LOGITS_HOOK, g.dst_logits, 1, g.n_sources))
        resid_pre = tuple(model.resid_pre_hook(layer) for layer in range(g.n_layers))
        return cls(tuple(sources), tuple(destinations), resid_pre)

    @property
    def input(self) -> Slot:
        return self.sources[0]

    @property
    def logits(self) -> Slot:
        return self.destinations[-1]

    def source_slots(self, start_layer: int = 0) -> Iterator[Slot]:
        """The source slots a pass starting at ``start_layer`` runs through (the input only from layer 0)."""
        return (s for s in self.sources if s.layer >= start_layer and (s.role != "input" or start_layer == 0))

    def destination_slots(self, start_layer: int = 0) -> Iterator[Slot]:
        """The destination slots of layers ``start_layer`` and later, without the logits (:attr:`logits`)."""
        return (s for s in self.destinations[:-1] if s.layer >= start_layer)

    def source_slot(self, index: int) -> Slot:
        """The slot holding source ``index``."""
        return next(s for s in self.sources if s.first <= index < s.first + s.width)

    def destination_slot(self, index: int) -> Slot:
        """The slot holding destination ``index``."""
        return next(s for s in self.destinations if s.first <= index < s.first + s.width)

    def hooks(
        self,
        model: CircuitModel,
        *,
        write: Callable[[Slot], HookFn | None] | None = None,
        grad: Callable[[Slot], Callable[[torch.Tensor], None] | None] | None = None,
        read: Callable[[Slot], HookFn | None] | None = None,
        start_layer: int = 0,
    ) -> Hooks:
        """The hooks of one pass from layer ``start_layer`` on.

        Args:
            write: per source slot, a hook on the slot's outputs as the graph defines them (``[batch, pos,
                d]``, or ``[batch, pos, heads, d]`` for heads, which may be post-norm shares): it may read
                them or return a replacement (:func:`head_output_hooks`).
            grad: per source slot, a callback given the gradient with respect to the slot's outputs in the
                backward pass (:func:`head_output_grad_hooks`). Not for the input slot, whose gradient
                only exists where the pass makes the embeddings a leaf (its ``write`` hook does).
            read: per destination slot (not the logits, read by the runner's ``final_hook``), a hook on
                the destination's input.

        Each may return None for a slot: no hook there. Where a slot gets a ``write`` and a ``grad``
        hook, the ``write`` hook runs first.
        """
        out: Hooks = []
        for slot in self.source_slots(start_layer):
            fn = write(slot) if write is not None else None
            if fn is not None:
                out += head_output_hooks(model, slot.layer, fn) if slot.role == "heads" else [(slot.hook, fn)]
            on_grad = grad(slot) if grad is not None else None
            if on_grad is not None:
                if slot.role == "input":
                    raise ValueError("the input's gradient is read where the pass makes the embeddings a leaf")
                out += (
                    head_output_grad_hooks(model, slot.layer, on_grad)
                    if slot.role == "heads"
                    else [(slot.hook, _on_grad(on_grad))]
                )
        if read is not None:
            for slot in self.destination_slots(start_layer):
                fn = read(slot)
                if fn is not None:
                    out.append((slot.hook, fn))
        return out


def _on_grad(on_grad: Callable[[torch.Tensor], None]) -> HookFn:
    """A hook that calls ``on_grad`` with the gradient of its tensor in the backward pass."""

    def hook(t: torch.Tensor, hook: object) -> torch.Tensor:
        if t.requires_grad:
            t.register_hook(on_grad)
        return t

    return hook


def head_output_hooks(model: CircuitModel, layer: int, fn: Callable) -> list:
    """Hooks that show ``fn(t, hook)`` layer ``layer``'s head outputs ``t [batch, pos, heads, d]`` as the
    graph defines them: what each head adds to the residual stream. ``fn`` may return ``t`` (read only)
    or a tensor of the same shape that replaces them.

    Without a norm after the attention that is the bridge's per-head result (``hook_result``). With
    one (:meth:`~circuitkit.model.CircuitModel.attn_post_norm`) it is each head's share of the normed
    attention output (:func:`~circuitkit.engine.heads.head_shares`), and a replacement changes the normed
    output by the replaced shares' differences: the other heads keep their shares of this pass."""
    if model.attn_post_norm(layer) is None:
        return [(model.head_out_hook(layer), fn)]
    box: dict[str, torch.Tensor] = {}

    def grab(key: str) -> Callable:
        def hook(t: torch.Tensor, hook: object) -> torch.Tensor:
            box[key] = t
            return t

        return hook

    def at_output(t: torch.Tensor, hook: object) -> torch.Tensor:
        if "result" not in box:
            raise RuntimeError(f"layer {layer}'s per-head results were not computed in this pass (use_attn_result is off)")
        shares = head_shares(model, layer, box.pop("result"), box.pop("normed_in"))
        new = fn(shares, hook)
        if new is shares:
            return t
        return t + _on((new - shares).sum(-2), t).to(t.dtype)

    return [
        (model.head_out_hook(layer), grab("result")),
        (model.post_norm_in_hook(layer), grab("normed_in")),
        (model.attn_out_hook(layer), at_output),
    ]


def head_output_grad_hooks(model: CircuitModel, layer: int, on_grad: Callable[[torch.Tensor], None]) -> list:
    """Hooks that call ``on_grad(g)`` in the backward pass with ``g [batch, pos, heads, d]``, the gradient
    with respect to each of layer ``layer``'s head outputs as the graph defines them (see
    :func:`head_output_hooks`). Behind a norm after the attention every head's share is added to the
    residual stream as it is, so each head's gradient is the gradient at the normed output."""
    n_heads = model.graph.n_heads
    post = model.attn_post_norm(layer) is not None

    def hook(t: torch.Tensor, hook: object) -> torch.Tensor:
        if t.requires_grad:
            t.register_hook(lambda g: on_grad(g.unsqueeze(2).expand(-1, -1, n_heads, -1)) if post else on_grad(g))
        return t

    return [(model.attn_out_hook(layer) if post else model.head_out_hook(layer), hook)]
