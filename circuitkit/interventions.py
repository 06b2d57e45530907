"""What a removed edge (or ablated node or neuron) carries: the corrupted run's source outputs, zero or mean
values (:class:`Intervention`), and the mean source outputs over reference prompts.

The passes that use these values are in :mod:`circuitkit.engine`.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch

from circuitkit import engine
from circuitkit.data import Batch
from circuitkit.engine.forward import _forward
from circuitkit.errors import CircuitkitError, ConfigError
from circuitkit.model import CircuitModel

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
    _forward(model, tokens, hooks)
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
