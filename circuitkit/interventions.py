"""Passes that set some source outputs to given values, and one-pass captures of the clean run.

These extend :mod:`circuitkit.engine` (same graph layout, same hook names) for methods that intervene on
intermediate activations rather than on the input:

- :func:`stacked_gradient_pass`: the batch is stacked ``copies`` times; in each copy some source outputs
  are replaced by given tensors (e.g. an interpolation between their corrupted and clean values), and one
  backward pass contracts the gradient at every destination input with ``delta`` (per-source output
  differences), as :func:`circuitkit.engine.gradient_pass` does, but with a per-copy weight for each
  source row. Used by EAP-IG-activations.
- :func:`route_importance` / :func:`information_flow_scores`: the proximity-based contribution of every
  source to every destination's input in one clean forward (information flow routes).

A replaced source output is a constant in the autograd graph: no gradient flows into the source through
it (its other uses are unaffected), exactly as when a hook returns a new tensor.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from circuitkit import engine
from circuitkit.data import Batch
from circuitkit.errors import CircuitkitError, ConfigError
from circuitkit.model import CircuitModel

#: One copy's replacements: ``[(source_index, value [batch, pos, d_model]), ...]``.
Overrides = Sequence[tuple[int, torch.Tensor]]


def source_groups(model: CircuitModel) -> list[list[int]]:
    """The source indices of each output hook, in forward order: ``[input]``, then per layer the heads of
    the attention layer and the MLP (the units the EAP-IG library interpolates together)."""
    g = model.graph
    groups = [[0]]
    for layer in range(g.n_layers):
        groups.append([g.src_head(layer, h) for h in range(g.n_heads)])
        groups.append([g.src_mlp(layer)])
    return groups


def stacked_gradient_pass(
    model: CircuitModel,
    batch: Batch,
    metric: Callable[[torch.Tensor, Batch], torch.Tensor],
    delta: torch.Tensor,
    scores: torch.Tensor,
    overrides: Sequence[Overrides],
    rows: torch.Tensor,
    *,
    weight: float = 1.0,
) -> torch.Tensor:
    """One forward/backward over ``copies = len(overrides)`` stacked copies of the clean batch.

    In copy ``c`` each ``(s, value)`` of ``overrides[c]`` replaces source ``s``'s output by ``value``.
    For every destination ``v`` and upstream source ``u`` this adds

        ``weight * sum_c rows[c, u] * delta[u] . d(sum of metric over copy c)/d(input of v in copy c)``

    to ``scores[u, v]``.

    Args:
        delta: ``[n_sources, batch, pos, d]`` (clean - corrupted outputs, or any per-source vectors).
        scores: ``[n_sources, n_destinations]`` float64 accumulator, updated in place.
        overrides: per copy, the source outputs to replace.
        rows: ``[copies, n_sources]`` weight of each copy's gradient for each source row.

    Returns:
        The per-example metric ``[copies, batch]`` (detached).
    """
    g = model.graph
    c = len(overrides)
    b, p = batch.clean.shape
    n_heads = g.n_heads
    flat_delta = delta.reshape(delta.shape[0], -1)
    rows = rows.to(device=delta.device, dtype=delta.dtype)
    if rows.shape != (c, g.n_sources):
        raise ValueError(f"rows must be [copies={c}, n_sources={g.n_sources}], got {tuple(rows.shape)}")

    by_source: dict[int, list[tuple[int, torch.Tensor]]] = {}
    for copy, items in enumerate(overrides):
        for s, value in items:
            by_source.setdefault(int(s), []).append((copy, value))

    def contract_heads(dst0: int, width: int, n_up: int) -> Callable:
        r = rows[:, :n_up]  # [c, S]

        def on_grad(grad: torch.Tensor) -> None:
            gh = grad.reshape(c, b, p, width, -1).permute(0, 3, 1, 2, 4).reshape(c * width, -1)
            gh = gh.to(device=flat_delta.device, dtype=flat_delta.dtype)
            full = (flat_delta[:n_up] @ gh.T).reshape(n_up, c, width)
            scores[:n_up, dst0 : dst0 + width] += weight * torch.einsum("sch,cs->sh", full, r).double()

        def hook(t: torch.Tensor, hook: object) -> torch.Tensor:
            if t.requires_grad:
                t.register_hook(on_grad)
            return t

        return hook

    def contract_one(dst: int, n_up: int) -> Callable:
        r = rows[:, :n_up]

        def on_grad(grad: torch.Tensor) -> None:
            gc = grad.reshape(c, -1).to(device=flat_delta.device, dtype=flat_delta.dtype)
            full = flat_delta[:n_up] @ gc.T  # [S, c]
            scores[:n_up, dst] += weight * (full * r.T).sum(1).double()

        def hook(t: torch.Tensor, hook: object) -> torch.Tensor:
            t = t.clone()  # the gradient of this destination's input alone (see engine.gradient_pass)
            if t.requires_grad:
                t.register_hook(on_grad)
            return t

        return hook

    def replace(t: torch.Tensor, base: int, width: int) -> torch.Tensor:
        """Apply the overrides of sources ``base .. base + width - 1`` to ``t`` (per head if width > 1)."""
        todo = [(s, item) for s in range(base, base + width) for item in by_source.get(s, ())]
        if not todo:
            return t
        t = t.clone()
        for s, (copy, value) in todo:
            rows_ = slice(copy * b, (copy + 1) * b)
            if width > 1:
                t[rows_, :, s - base] = value.to(device=t.device, dtype=t.dtype)
            else:
                t[rows_] = value.to(device=t.device, dtype=t.dtype)
        return t

    def input_hook(t: torch.Tensor, hook: object) -> torch.Tensor:
        return replace(t.detach(), 0, 1).detach().clone().requires_grad_(True)

    def heads_hook(layer: int) -> Callable:
        base = g.src_head(layer, 0)
        return lambda t, hook: replace(t, base, n_heads)

    def mlp_hook(layer: int) -> Callable:
        base = g.src_mlp(layer)
        return lambda t, hook: replace(t, base, 1)

    hooks: list = [(model.INPUT_HOOK, input_hook)]
    for layer in range(g.n_layers):
        n_up = g.n_upstream_heads(layer)
        for x, dst0, width in g.head_inputs(layer):
            hooks.append((model.head_in_hook(layer, x), contract_heads(dst0, width, n_up)))
        hooks += engine.head_output_hooks(model, layer, heads_hook(layer))
        hooks.append((model.mlp_in_hook(layer), contract_one(g.dst_mlp(layer), g.n_upstream_mlp(layer))))
        hooks.append((model.mlp_out_hook(layer), mlp_hook(layer)))
    rep = batch.repeat(c).to(model.device)
    with torch.enable_grad():
        final = engine._forward(model, rep.clean, hooks, final_hook=contract_one(g.dst_logits, g.n_sources))
        values = engine.answer_metric(model, final, rep, metric)
        values.sum().backward()
    return values.detach().reshape(c, b)


# ----- information flow routes ------------------------------------------------------------------------


def route_importance(dst_input: torch.Tensor, sources: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """Proximity importance of each source's contribution to one destination's input, averaged per example.

    For each example, position ``t <= last`` and source ``u`` (L1 norms)::

        proximity_u = max(0, ||x||_1 - ||x - c_u||_1)        x = dst_input[t], c_u = sources[u, t]
        importance_u = proximity_u / sum_u' proximity_u'     (0 where every proximity is 0)

    averaged over the positions ``0 .. last`` of the example.

    Args:
        dst_input: ``[batch, pos, d]`` or ``[batch, pos, heads, d]`` destination input(s).
        sources: ``[n_sources, batch, pos, d]`` contributions of the upstream sources.
        last: ``[batch]`` index of each example's last real position.

    Returns:
        ``[n_sources, batch]`` (or ``[n_sources, batch, heads]`` for per-head inputs).
    """
    per_head = dst_input.dim() == 4
    x = dst_input if per_head else dst_input.unsqueeze(2)  # [b, p, h, d]
    n_s, b, p, _ = sources.shape
    pos = torch.arange(p, device=x.device)
    valid = (pos[None, :] <= last.to(x.device)[:, None]).to(sources.dtype)  # [b, p]
    counts = valid.sum(1)  # [b]
    out = []
    for h in range(x.shape[2]):
        xh = x[:, :, h]  # [b, p, d]
        prox = (xh.abs().sum(-1)[None] - (xh[None] - sources).abs().sum(-1)).clamp(min=0)  # [S, b, p]
        total = prox.sum(0, keepdim=True)
        imp = torch.where(total > 0, prox / torch.where(total > 0, total, torch.ones_like(total)), torch.zeros_like(prox))
        out.append((imp * valid[None]).sum(-1) / counts[None])  # [S, b]
    res = torch.stack(out, -1)  # [S, b, h]
    return res if per_head else res[..., 0]


@torch.no_grad()
def information_flow_scores(model: CircuitModel, batch: Batch, scores: torch.Tensor) -> None:
    """Add the :func:`route_importance` of every edge, summed over the examples of ``batch``, to
    ``scores [n_sources, n_destinations]`` (float64), from one forward on ``batch.clean``."""
    g = model.graph
    tokens = batch.clean.to(model.device)
    last = batch.last.to(model.device)
    buf = engine.new_source_buffer(model, tokens)

    def put(index: int, per_head: bool) -> Callable:
        def hook(t: torch.Tensor, hook: object) -> torch.Tensor:
            if per_head:
                buf[index : index + g.n_heads] = t.detach().permute(2, 0, 1, 3)
            else:
                buf[index] = t.detach()
            return t

        return hook

    def read(dst0: int, n_up: int, per_head: bool) -> Callable:
        def hook(t: torch.Tensor, hook: object) -> torch.Tensor:
            # On the buffer's device (``t`` is on its layer's device when the model is split over several).
            imp = route_importance(t.detach().to(buf.device), buf[:n_up], last).sum(1)  # [S] or [S, h]
            if per_head:  # h: query heads for q inputs, key/value heads for k and v inputs
                scores[:n_up, dst0 : dst0 + imp.shape[1]] += imp.double()
            else:
                scores[:n_up, dst0] += imp.double()
            return t

        return hook

    hooks: list = [(model.INPUT_HOOK, put(0, False))]
    for layer in range(g.n_layers):
        n_up = g.n_upstream_heads(layer)
        for x, dst0, _ in g.head_inputs(layer):
            hooks.append((model.head_in_hook(layer, x), read(dst0, n_up, True)))
        hooks += engine.head_output_hooks(model, layer, put(g.src_head(layer, 0), True))
        hooks.append((model.mlp_in_hook(layer), read(g.dst_mlp(layer), g.n_upstream_mlp(layer), False)))
        hooks.append((model.mlp_out_hook(layer), put(g.src_mlp(layer), False)))
    engine._forward(model, tokens, hooks, final_hook=read(g.dst_logits, g.n_sources, False))


# ----- what a removed edge carries: patching, zero or mean ablation ----------------------------------------

INTERVENTIONS = ("patching", "zero", "mean", "mean_positional")


@torch.no_grad()
def mean_source_outputs(model: CircuitModel, data, batch_size: int = 16, *, per_position: bool = False) -> torch.Tensor:  # noqa: ANN001
    """Mean output of every source over the clean prompts of ``data`` (real positions only).

    Returns ``[n_sources, 1, 1, d]``, or with ``per_position`` ``[n_sources, 1, max_len, d]`` (the mean at
    each position over the examples that are that long).
    """
    g = model.graph
    width = max(len(ids) for ids in data.clean_ids)
    total = torch.zeros(g.n_sources, width, model.d_model, dtype=torch.float64, device=model.device)
    count = torch.zeros(width, dtype=torch.float64, device=model.device)
    for batch in data.batches(batch_size, model.pad_id):
        batch = batch.to(model.device)
        src = engine.run_sources(model, batch.clean).sources  # [S, b, p, d]
        p = src.shape[2]
        valid = (torch.arange(p, device=model.device)[None, :] <= batch.last[:, None]).double()  # [b, p]
        total[:, :p] += torch.einsum("sbpd,bp->spd", src.double(), valid)
        count[:p] += valid.sum(0)
    if per_position:
        return (total / count.clamp(min=1)[None, :, None]).unsqueeze(1).to(model.dtype)
    return (total.sum(1) / count.sum()).reshape(g.n_sources, 1, 1, -1).to(model.dtype)


def head_bias_shares(model: CircuitModel) -> torch.Tensor:
    """``[n_sources, d]``: each head's share ``b_O / n_heads`` of its layer's attention output bias (zero
    for the input and the MLPs).

    The bias ``b_O`` is added once per attention layer and belongs to no single head, so the graph's head
    outputs (``hook_result``) leave it out; an MLP's output includes its bias. Zero ablation counts a share
    of ``b_O`` as part of each head's output, so that zero-ablating every head of a layer zeroes the
    layer's whole attention output, as zero-ablating an MLP zeroes its output bias included.

    Where a norm follows the attention (:meth:`~circuitkit.model.CircuitModel.attn_post_norm`), a head's
    output is its share of the normed sum (:func:`circuitkit.engine.head_shares`), its part of the bias
    already included: zero ablation sets that share to zero (the share here is zero), so zero-ablating
    every head of the layer removes the layer's whole normed attention output.
    """
    g = model.graph
    out = torch.zeros(g.n_sources, model.d_model, dtype=model.dtype, device=model.device)
    for layer in range(g.n_layers):
        if model.attn_post_norm(layer) is not None:
            continue
        attn = model.bridge.blocks[layer].attn
        b_o = getattr(attn, "b_O", None)
        if b_o is None:  # measured: the attention output minus the sum of the head outputs
            b_o = _measured_b_o(model, layer)
        b_o = torch.as_tensor(b_o).detach().reshape(-1).to(device=model.device, dtype=model.dtype)
        base = g.src_head(layer, 0)
        out[base : base + g.n_heads] = b_o / g.n_heads
    return out


@torch.no_grad()
def _measured_b_o(model: CircuitModel, layer: int) -> torch.Tensor:
    box: dict[str, torch.Tensor] = {}
    hooks = [
        (model.head_out_hook(layer), lambda t, hook: (box.__setitem__("r", t.detach()), t)[1]),
        (f"blocks.{layer}.attn.hook_out", lambda t, hook: (box.__setitem__("o", t.detach()), t)[1]),
    ]
    tokens = torch.tensor([[model.pad_id]], device=model.device)
    engine._forward(model, tokens, hooks)
    return (box["o"] - box["r"].sum(2).to(box["o"].device))[0, 0]


@dataclass
class Intervention:
    """What a removed edge (or an ablated node or neuron) carries, for attribution and evaluation alike.

    - ``patching``: the source's output on the corrupted prompt (the default; Hanna et al. 2024).
    - ``zero``: zero. The input node is the token *and* positional embedding, so both are removed; a
      head's output includes its share of the attention output bias (:func:`head_bias_shares`).
    - ``mean``: the source's mean output over the reference prompts, averaged over positions.
    - ``mean_positional``: the source's mean output at the same position over the reference prompts
      (positions beyond the longest reference prompt are refused).

    The reference prompts for the means are the clean prompts of the run's task data.
    """

    kind: str = "patching"
    means: torch.Tensor | None = None  # [n_sources, 1, 1 or positions, d]
    bias_shares: torch.Tensor | None = None  # [n_sources, d] (zero ablation)

    @property
    def uses_corrupted(self) -> bool:
        return self.kind == "patching"

    def values(self, model: CircuitModel, batch: Batch, positions: slice | None = None) -> torch.Tensor:
        """``[n_sources, batch, pos, d]``: the value of every source's output on a removed edge (with
        ``positions``, at those positions only)."""
        if self.kind == "patching":
            out = engine.run_sources(model, batch.corrupted, positions=positions).sources
            assert out is not None
            return out
        return self._constant(model, batch, slice(None), positions)

    def input_values(self, model: CircuitModel, batch: Batch) -> torch.Tensor:
        """``[batch, pos, d]``: the input node's value on a removed edge, at every position (without
        running the model past its embeddings)."""
        if type(self).values is not Intervention.values:  # a subclass's own values
            return self.values(model, batch)[0]
        if self.kind == "patching":
            return engine.input_embeddings(model, batch.corrupted)
        return self._constant(model, batch, slice(0, 1), None)[0]

    def _constant(self, model: CircuitModel, batch: Batch, sources: slice, positions: slice | None) -> torch.Tensor:
        """The zero or mean values of the sources ``sources`` at ``positions``."""
        b, p = batch.clean.shape
        at = range(p)[positions] if positions is not None else range(p)
        shape = (len(range(model.graph.n_sources)[sources]), b, len(at), model.d_model)
        if self.kind == "zero":
            shares = self.bias_shares if self.bias_shares is not None else torch.zeros(model.graph.n_sources, shape[3])
            return (-shares[sources].to(device=model.device, dtype=model.dtype))[:, None, None, :].expand(shape).contiguous()
        if self.means is None:
            raise ValueError(f"{self.kind} ablation needs the means (mean_source_outputs)")
        m = self.means[sources]
        if m.shape[2] != 1:
            if m.shape[2] < p:
                raise CircuitkitError(
                    f"mean_positional ablation has means for {m.shape[2]} positions but this batch has {p}; "
                    "the reference prompts must be at least as long as the prompts evaluated."
                )
            m = m[:, :, at.start : at.stop]
        return m.to(device=model.device, dtype=model.dtype).expand(shape).contiguous()


def build_intervention(model: CircuitModel, data, kind: str, batch_size: int = 16) -> Intervention:  # noqa: ANN001
    """The :class:`Intervention` ``kind`` for ``model``, with its means computed over ``data``'s clean prompts."""
    check_intervention(kind)
    if kind == "zero":
        return Intervention("zero", bias_shares=head_bias_shares(model))
    if kind in ("mean", "mean_positional"):
        return Intervention(kind, means=mean_source_outputs(model, data, batch_size, per_position=kind == "mean_positional"))
    return Intervention("patching")


def check_intervention(kind: object, key: str = "intervention") -> None:
    if kind not in INTERVENTIONS:
        raise ConfigError(f"{key} must be one of {', '.join(INTERVENTIONS)}, got {kind!r}.")


def removed_values(
    model: CircuitModel, batch: Batch, intervention: Intervention | None, positions: slice | None = None
) -> torch.Tensor:
    """What removed edges carry for ``batch``: the corrupted run's source outputs unless ``intervention``
    says otherwise (see :class:`Intervention`); with ``positions``, at those positions only."""
    iv = intervention or Intervention()
    if positions is None:
        return iv.values(model, batch)  # an Intervention subclass may define values(model, batch) alone
    if "positions" not in inspect.signature(iv.values).parameters:
        raise ConfigError(
            f"positions_per_pass needs the intervention's values(model, batch, positions), but "
            f"{type(iv).__name__}.values takes no positions. Leave positions_per_pass unset for this intervention."
        )
    return iv.values(model, batch, positions)
