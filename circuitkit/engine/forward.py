"""The forward runner: the bridge run with a pass's hooks up to the final residual stream, re-entry at a
later layer, and the fast paths' context managers (identity blocks, the answer-only last MLP, fused GELUs,
layers without per-head inputs or outputs), each used where :mod:`circuitkit.engine.fastpaths` checked it."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch

from circuitkit.engine.common import _on, _StopForward
from circuitkit.engine.fastpaths import (
    _fused_gelu_ok,
    _last_mlp_ok,
    _plain_attention_is_close,
    _reentry_is_exact,
    _run_checks,
    _skipping_is_exact,
)
from circuitkit.model import CircuitModel


def _forward(
    model: CircuitModel,
    tokens: torch.Tensor,
    hooks: list,
    final_hook: Callable | None = None,
    start_at_layer: int | None = None,
    skip_early: bool = True,
    answer_at: torch.Tensor | None = None,
    fused_gelu: bool = True,
    *,
    resid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Run the bridge with ``hooks`` up to the final residual stream and return it ``[batch, pos, d]``.

    ``tokens`` are the token ids ``[batch, pos]``. With ``start_at_layer``, ``resid`` is the residual
    stream entering that layer in this run (everything before it is taken as given), and the pass
    re-enters the model there (:func:`_reentry_mode`: the bridge's own re-entry where it was checked to
    give this model's plain forward, else the tokens run and ``resid`` replaces that layer's input).
    With ``answer_at`` (``[batch]`` positions), only those positions of the result are needed, and the
    last block's MLP runs there alone (:func:`_last_mlp_at`): the other positions of the result are then
    meaningless. With ``fused_gelu``, tanh-approximate GELUs run as PyTorch's fused kernel where that was
    checked to give this model's outputs (:func:`_fused_gelu_ok`)."""
    box: dict[str, torch.Tensor] = {}

    def stop(t: torch.Tensor, hook: object) -> torch.Tensor:
        if final_hook is not None:
            t = final_hook(t, hook)
        box["final"] = t
        raise _StopForward

    # Every check runs here, before this pass's hooks are on (a check inside them would see them).
    _run_checks(model)
    mode = None
    if start_at_layer is not None:
        if resid is None:
            raise ValueError("start_at_layer needs the residual stream entering that layer (resid=)")
        mode = _reentry_mode(model) if start_at_layer > 0 else "hook"
        if mode == "skip" and not skip_early:
            mode = "bridge"
    gelus = fused_gelu and _fused_gelu_ok(model)
    pre: list = []
    if mode == "hook":
        # The exact path: the tokens run as usual and the given residual replaces the layer's input (the
        # first hook there, before any of ``hooks``).
        def inject(t: torch.Tensor, hook: object) -> torch.Tensor:
            assert resid is not None
            return _on(resid, t).to(t.dtype)

        assert start_at_layer is not None
        pre = [(model.wiring.resid_pre[start_at_layer], inject)]
    try:
        with (
            model.bridge.hooks(fwd_hooks=[*pre, *hooks, (model.wiring.logits.hook, stop)]),
            _last_mlp_at(model, answer_at),
            _fused_tanh_gelus(_tanh_gelu_modules(model)) if gelus else contextlib.nullcontext(),
        ):
            if mode in (None, "hook"):
                model.bridge(tokens)
            else:
                assert resid is not None and start_at_layer is not None
                _bridge_reentry(model, resid, start_at_layer, identity=mode == "skip")
    except _StopForward:
        pass
    return box["final"]


def _bridge_reentry(model: CircuitModel, resid: torch.Tensor, layer: int, *, identity: bool) -> None:
    """The bridge's own re-entry at ``layer`` with ``resid``. The bridge's ``start_at_layer`` still runs the
    earlier blocks and discards their output, so starting late would save nothing: with ``identity`` those
    blocks return their input unchanged (:func:`_identity_blocks`)."""
    with _identity_blocks(model, layer) if identity else contextlib.nullcontext():
        model.bridge(resid, start_at_layer=layer)


def _reentry_mode(model: CircuitModel) -> str:
    """How a pass re-enters this model at a later layer from a given residual stream:

    - ``"skip"``: the bridge's ``start_at_layer`` with the earlier blocks made identities (fastest),
    - ``"bridge"``: the bridge's ``start_at_layer`` with the earlier blocks run and discarded,
    - ``"hook"``: the tokens run from the start and the residual replaces the layer's input (exact by
      construction; it costs the earlier layers).

    The first two are used only where they were checked, once per model, to give the plain forward's
    final residual stream from that forward's own residual at every layer (:func:`_skipping_is_exact`,
    :func:`_reentry_is_exact`). Bloom's bridge, for instance, ignores ``start_at_layer``."""
    if _skipping_is_exact(model):
        return "skip"
    if _reentry_is_exact(model):
        return "bridge"
    return "hook"


@contextlib.contextmanager
def _forwards_replaced(modules: list[torch.nn.Module], forward: Callable) -> Iterator[None]:
    """During the context each of ``modules`` runs ``forward`` instead of its own. A model dispatched by
    accelerate has its device-moving wrapper as the instance's ``forward``: it is put back afterwards, not
    deleted."""
    saved = [m.__dict__.get("forward") for m in modules]
    for m in modules:
        m.forward = forward
    try:
        yield
    finally:
        for m, f in zip(modules, saved):
            if f is None:
                del m.forward
            else:
                m.forward = f


def _identity_blocks(model: CircuitModel, n: int) -> contextlib.AbstractContextManager[None]:
    """Blocks ``0 .. n - 1`` return their input unchanged during the context."""

    def identity(hidden_states: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        return hidden_states

    return _forwards_replaced([model.bridge.blocks[i].original_component for i in range(n)], identity)


@contextlib.contextmanager
def _last_mlp_at(model: CircuitModel, last: torch.Tensor | None) -> Iterator[None]:
    """During the context the last block's MLP computes only at position ``last[i]`` of each row ``i`` (zero
    elsewhere). In a pass whose result is read only at the answer position that is the same result for
    less than half of the last block's cost (its MLP at every position is most of it). Used when this
    model's MLP allows it (checked once); otherwise nothing changes."""
    if last is None or not _last_mlp_ok(model):
        yield
        return
    with _answer_only_mlp(model, last):
        yield


def _answer_only_mlp(model: CircuitModel, last: torch.Tensor) -> contextlib.AbstractContextManager[None]:
    mlp = model.bridge.blocks[model.graph.n_layers - 1].mlp.original_component
    inner = mlp.forward

    def at_answer(hidden_states: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        rows = torch.arange(hidden_states.shape[0], device=hidden_states.device)
        at = last.to(hidden_states.device)
        small = inner(hidden_states[rows, at][:, None], *args, **kwargs)
        out = small.new_zeros((*hidden_states.shape[:-1], small.shape[-1]))
        out[rows, at] = small[:, 0]
        return out

    return _forwards_replaced([mlp], at_answer)


# transformers' tanh-approximate GELUs written as elementwise Python operations (GPT-2's ``gelu_new``,
# ``gelu_fast``): 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))), the formula of PyTorch's fused
# ``gelu(approximate="tanh")``.
_TANH_GELUS = ("NewGELUActivation", "FastGELUActivation")


def _tanh_gelu_modules(model: CircuitModel) -> list[torch.nn.Module]:
    """The model's tanh-approximate GELU modules (found once)."""
    caps = model.capabilities
    if caps.tanh_gelus is None:
        caps.tanh_gelus = [
            m
            for m in model.bridge.modules()
            if type(m).__name__ in _TANH_GELUS and type(m).__module__.startswith("transformers.")
        ]
    return caps.tanh_gelus


def _fused_tanh_gelu(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.gelu(x, approximate="tanh")


def _fused_tanh_gelus(mods: list[torch.nn.Module]) -> contextlib.AbstractContextManager[None]:
    """During the context the modules ``mods`` compute their GELU with PyTorch's fused kernel: one pass over
    the activations instead of eight (forward) and far fewer backward, the largest elementwise cost of a
    GPT-2 pass on a CPU. The result differs from the unfused operations by float rounding only."""
    return _forwards_replaced(mods, lambda x: _fused_tanh_gelu(x))


@contextlib.contextmanager
def attention_modes(model: CircuitModel, modes: dict[int, tuple[bool, bool]]) -> Iterator[None]:
    """Per layer ``{layer: (split_qkv_input, attn_result)}``: turn the bridge's per-head q/k/v inputs and
    per-head outputs off where a pass hooks neither (they cost about half of a forward pass).

    The values are the same either way (up to float rounding in the order of sums); whether that holds
    for this model is checked once, and if not, nothing is changed.
    """
    _run_checks(model)  # before any configuration changes: a check must see the model as configured
    if not modes or not _plain_attention_is_close(model):
        yield
        return
    with _attention_configs(model, modes):
        yield


@contextlib.contextmanager
def _attention_configs(model: CircuitModel, modes: dict[int, tuple[bool, bool]]) -> Iterator[None]:
    import copy

    changed = []
    for layer, (split, result) in modes.items():
        attn = model.bridge.blocks[layer].attn
        cfg = getattr(attn, "config", None)
        if cfg is None:
            continue
        new = copy.copy(cfg)
        object.__setattr__(new, "use_split_qkv_input", bool(split))
        object.__setattr__(new, "use_attn_result", bool(result))
        attn.config = new
        changed.append((attn, cfg))
    try:
        yield
    finally:
        for attn, cfg in changed:
            attn.config = cfg
