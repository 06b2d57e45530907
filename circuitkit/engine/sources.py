"""Source recording: every source's output (what each node adds to the residual stream) kept from one
forward, and the input node's output alone."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from circuitkit.engine.common import _StopForward
from circuitkit.engine.forward import _forward
from circuitkit.engine.wiring import HookFn, Hooks, Slot
from circuitkit.model import CircuitModel


@dataclass
class SourceRun:
    """What a source-recording forward pass (:func:`run_sources`) returns: the final residual stream and, if
    collected, the source outputs and the residual stream entering each layer."""

    final: torch.Tensor  # [batch, pos, d_model]
    sources: torch.Tensor | None = None  # [n_sources, batch, pos, d_model]
    resid: list[torch.Tensor] | None = None  # the residual stream entering each layer


def _source_writers(model: CircuitModel, buf: torch.Tensor, positions: slice | None = None, start_layer: int = 0) -> Hooks:
    """Hooks that copy every source's output into ``buf [n_sources, batch, pos, d]`` (from whatever device
    the hook's layer is on); with ``positions``, only those positions (``buf`` is then that wide); with
    ``start_layer``, only the sources of that layer and later."""
    at = positions or slice(None)

    def put(slot: Slot) -> HookFn:
        def hook(t: torch.Tensor, hook: object) -> torch.Tensor:
            if slot.per_head:
                buf[slot.index] = t.detach()[:, at].permute(2, 0, 1, 3)
            else:
                buf[slot.first] = t.detach()[:, at]
            return t

        return hook

    return model.wiring.hooks(model, write=put, start_layer=start_layer)


def new_source_buffer(
    model: CircuitModel, tokens: torch.Tensor, dtype: torch.dtype | None = None, positions: slice | None = None
) -> torch.Tensor:
    b, p = tokens.shape
    p = len(range(p)[positions]) if positions is not None else p
    return torch.zeros(model.graph.n_sources, b, p, model.d_model, dtype=dtype or model.dtype, device=model.device)


@torch.no_grad()
def run_sources(
    model: CircuitModel, tokens: torch.Tensor, *, keep_resid: bool = False, positions: slice | None = None
) -> SourceRun:
    """Forward without autograd, keeping every source's output ``[n_sources, batch, pos, d]`` (and, with
    ``keep_resid``, the residual stream entering every layer), all on ``model.device``. With ``positions``
    the source outputs are kept at those positions only."""
    tokens = tokens.to(model.device)
    buf = new_source_buffer(model, tokens, positions=positions)
    hooks = _source_writers(model, buf, positions)
    resid: list[torch.Tensor] = []
    home = model.device
    if keep_resid:

        def keep(t: torch.Tensor, hook: object) -> torch.Tensor:
            resid.append(t.detach().to(home))
            return t

        hooks += [(name, keep) for name in model.wiring.resid_pre]
    final = _forward(model, tokens, hooks)
    return SourceRun(final=final, sources=buf, resid=resid if keep_resid else None)


@torch.no_grad()
def input_embeddings(model: CircuitModel, tokens: torch.Tensor) -> torch.Tensor:
    """The input node's output (token and position embeddings) ``[batch, pos, d]`` for ``tokens``; the rest
    of the model does not run."""
    box: dict[str, torch.Tensor] = {}

    def grab(t: torch.Tensor, hook: object) -> torch.Tensor:
        box["x"] = t.detach().to(model.device)
        raise _StopForward

    try:
        with model.bridge.hooks(fwd_hooks=[(model.wiring.input.hook, grab)]):
            model.bridge(tokens.to(model.device))
    except _StopForward:
        pass
    return box["x"]
