"""What a removed edge (or ablated node or neuron) carries: the corrupted run's source outputs, zero or mean
values (:class:`Intervention` and its subclasses), and the mean source outputs over reference prompts.

Interventions are plugins (``circuitkit_register_interventions``), chosen with ``intervention=NAME``: a
subclass of :class:`Intervention` registered under a name (``registry.add(name, cls)``). The builtin ones
(``patching``, ``zero``, ``mean``, ``mean_positional``) are registered by the ``interventions`` plugin
exactly like a third party's. The passes that use these values are in :mod:`circuitkit.engine`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from circuitkit import engine
from circuitkit.data import Batch
from circuitkit.engine.forward import _forward
from circuitkit.errors import CircuitkitError, ConfigError
from circuitkit.model import CircuitModel


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
        assert src is not None
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

    def grab(key: str) -> Callable[[torch.Tensor, object], torch.Tensor]:
        def hook(t: torch.Tensor, hook: object) -> torch.Tensor:
            box[key] = t.detach()
            return t

        return hook

    hooks = [
        (model.head_out_hook(layer), grab("r")),
        (model.attn_out_hook(layer), grab("o")),
    ]  # no norm after the attention output here
    tokens = torch.tensor([[model.pad_id]], device=model.device)
    _forward(model, tokens, hooks)
    return (box["o"] - box["r"].sum(2).to(box["o"].device))[0, 0]


@dataclass
class Intervention:
    """What a removed edge (or an ablated node or neuron) carries, for attribution and evaluation alike; the
    base of every intervention, and itself ``patching``: the source's output on the corrupted prompt (the
    default; Hanna et al. 2024).

    A plugin's intervention subclasses it and overrides :meth:`values` (and :meth:`prepare` when it needs
    the model or the run's data, e.g. means over the reference prompts). The builtin subclasses:

    - ``zero`` (:class:`ZeroAblation`): zero. The input node is the token *and* positional embedding, so
      both are removed; a head's output includes its share of the attention output bias
      (:func:`head_bias_shares`).
    - ``mean`` (:class:`MeanAblation`): the source's mean output over the reference prompts, averaged over
      positions.
    - ``mean_positional`` (:class:`MeanAblation` with ``per_position``): the source's mean output at the same
      position over the reference prompts (positions beyond the longest reference prompt are refused).

    The reference prompts for the means are the clean prompts of the run's task data.

    Attributes:
        kind: the registered name (``results.json``'s ``meta.intervention``).
        uses_corrupted: True when :meth:`values` are the corrupted run's source outputs, so that the
            corrupted run itself is the baseline of an evaluation (the empty circuit); a subclass that
            overrides :meth:`values` is False unless it says otherwise.
        takes_positions: :meth:`values` accepts ``positions`` (needed by ``positions_per_pass``); a subclass
            whose ``values(model, batch)`` has no such argument sets it to False.
    """

    kind: str = "patching"
    uses_corrupted: ClassVar[bool] = True
    takes_positions: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "values" in cls.__dict__ and "uses_corrupted" not in cls.__dict__:
            cls.uses_corrupted = False

    @classmethod
    def prepare(cls, model: CircuitModel, data: Any, batch_size: int = 16) -> Intervention:
        """This intervention for a run on ``model`` whose task data is ``data`` (the reference prompts), with
        forward passes of ``batch_size`` examples. The default: ``cls()``."""
        return cls()

    def values(self, model: CircuitModel, batch: Batch, positions: slice | None = None) -> torch.Tensor:
        """``[n_sources, batch, pos, d]``: the value of every source's output on a removed edge (with
        ``positions``, at those positions only)."""
        out = engine.run_sources(model, batch.corrupted, positions=positions).sources
        assert out is not None
        return out

    def input_values(self, model: CircuitModel, batch: Batch) -> torch.Tensor:
        """``[batch, pos, d]``: the input node's value on a removed edge, at every position (here without
        running the model past its embeddings; by default ``values(model, batch)[0]``)."""
        if type(self).values is not Intervention.values:  # a subclass's own values
            return self.values(model, batch)[0]
        return engine.input_embeddings(model, batch.corrupted)


@dataclass
class _ConstantAblation(Intervention):
    """Values that do not depend on the prompt: the same vector at every position (or per position)."""

    def values(self, model: CircuitModel, batch: Batch, positions: slice | None = None) -> torch.Tensor:
        return self._constant(model, batch, slice(None), positions)

    def input_values(self, model: CircuitModel, batch: Batch) -> torch.Tensor:
        return self._constant(model, batch, slice(0, 1), None)[0]

    def _shape(self, model: CircuitModel, batch: Batch, sources: slice, positions: slice | None) -> tuple[tuple[int, ...], range]:
        b, p = batch.clean.shape
        at = range(p)[positions] if positions is not None else range(p)
        return (len(range(model.graph.n_sources)[sources]), b, len(at), model.d_model), at

    def _constant(self, model: CircuitModel, batch: Batch, sources: slice, positions: slice | None) -> torch.Tensor:
        """The values of ``sources`` at ``positions``: each subclass (zero, mean ablation) gives its own."""
        raise NotImplementedError(f"{type(self).__name__} does not define its constant values")


@dataclass
class ZeroAblation(_ConstantAblation):
    """``zero``: a removed edge carries zero (see :class:`Intervention`).

    Attributes:
        bias_shares: ``[n_sources, d]`` each head's share of its layer's attention output bias
            (:func:`head_bias_shares`); None: zero shares.
    """

    kind: str = "zero"
    bias_shares: torch.Tensor | None = None

    @classmethod
    def prepare(cls, model: CircuitModel, data: Any, batch_size: int = 16) -> Intervention:
        return cls(bias_shares=head_bias_shares(model))

    def _constant(self, model: CircuitModel, batch: Batch, sources: slice, positions: slice | None) -> torch.Tensor:
        shape, _ = self._shape(model, batch, sources, positions)
        shares = self.bias_shares if self.bias_shares is not None else torch.zeros(model.graph.n_sources, shape[3])
        return (-shares[sources].to(device=model.device, dtype=model.dtype))[:, None, None, :].expand(shape).contiguous()


@dataclass
class MeanAblation(_ConstantAblation):
    """``mean`` and ``mean_positional``: a removed edge carries the source's mean output over the reference
    prompts, averaged over positions or (``per_position``) at the same position (see :class:`Intervention`).

    Attributes:
        means: ``[n_sources, 1, 1 or positions, d]`` (:func:`mean_source_outputs`).
    """

    kind: str = "mean"
    means: torch.Tensor | None = None
    per_position: ClassVar[bool] = False

    @classmethod
    def prepare(cls, model: CircuitModel, data: Any, batch_size: int = 16) -> Intervention:
        return cls(means=mean_source_outputs(model, data, batch_size, per_position=cls.per_position))

    def _constant(self, model: CircuitModel, batch: Batch, sources: slice, positions: slice | None) -> torch.Tensor:
        shape, at = self._shape(model, batch, sources, positions)
        p = batch.clean.shape[1]
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


@dataclass
class PositionalMeanAblation(MeanAblation):
    """``mean_positional``: :class:`MeanAblation` with the means taken per position."""

    kind: str = "mean_positional"
    per_position: ClassVar[bool] = True


def intervention_names() -> list[str]:
    """The registered interventions' names, in registration order (the builtin ones first)."""
    from circuitkit.plugins import get_registry

    return list(get_registry().interventions.entries)


def build_intervention(model: CircuitModel, data, kind: str, batch_size: int = 16) -> Intervention:  # noqa: ANN001
    """The registered intervention ``kind`` prepared for ``model`` (:meth:`Intervention.prepare`; the means
    of ``mean`` ablation are computed over ``data``'s clean prompts)."""
    check_intervention(kind)
    from circuitkit.plugins import get_registry

    cls: type[Intervention] = get_registry().interventions.entries[kind].cls
    iv = cls.prepare(model, data, batch_size)
    iv.kind = kind
    return iv


def check_intervention(kind: object, key: str = "intervention") -> None:
    """Raise a :class:`~circuitkit.errors.ConfigError` listing the registered interventions unless ``kind``
    is one of them."""
    names = intervention_names()
    if kind not in names:
        raise ConfigError(f"{key} must be one of {', '.join(names)}, got {kind!r}.")


def removed_values(
    model: CircuitModel, batch: Batch, intervention: Intervention | None, positions: slice | None = None
) -> torch.Tensor:
    """What removed edges carry for ``batch``: the corrupted run's source outputs unless ``intervention``
    says otherwise (see :class:`Intervention`); with ``positions``, at those positions only."""
    iv = intervention or Intervention()
    if positions is None:
        return iv.values(model, batch)  # an Intervention subclass may define values(model, batch) alone
    if not iv.takes_positions:
        raise ConfigError(
            f"positions_per_pass needs the intervention's values(model, batch, positions), but "
            f"{type(iv).__name__}.values takes no positions (takes_positions = False). Leave positions_per_pass "
            "unset for this intervention."
        )
    return iv.values(model, batch, positions)
