"""Checks of the fast paths.

Every fast path (re-entry at a later layer, skipped blocks, the answer-only last MLP, fused GELUs, layers
without per-head inputs or outputs, replaced q/k/v projections, answer-only unembedding columns) is used
only where a check, run once per model, found that it gives the result of the plain forward pass: the
bridge run from the tokens with nothing replaced and no other fast path on (never one fast path against
another). Where a check fails, the exact path is used. ``model.fast_paths = False`` (``model.fast_paths=
false`` in the config) turns them all off. Each outcome is logged (debug) and kept in the model's
:class:`Capabilities` record (``model.capabilities``).

The checks run passes of the other engine modules, and those modules ask the checks before taking a fast
path: the checks import what they run inside their bodies, so this module imports no other engine module
at load time.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Literal

import torch

from circuitkit.engine.common import _on
from circuitkit.model import CircuitModel

log = logging.getLogger(__name__)


def _rel_tol(dtype: torch.dtype) -> float:
    """Relative tolerance of a fast path against the plain forward: float rounding of a different order of
    operations, a few hundred units in the last place of float32 (1e-5), well under a million of float64
    (1e-10), a few of float16/bfloat16 (1e-2)."""
    if dtype == torch.float64:
        return 1e-10
    if dtype == torch.float32:
        return 1e-5
    return 1e-2


def _agrees(got: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, factor: float = 1.0) -> tuple[bool, str]:
    """Whether ``got`` equals ``ref`` within ``factor`` times :func:`_rel_tol` of ``ref``'s largest
    magnitude, and the error."""
    if got.shape != ref.shape:
        return False, f"shape {tuple(got.shape)} instead of {tuple(ref.shape)}"
    if not bool(torch.isfinite(got).all()):
        return False, "non-finite values"
    err = float((got.double() - _on(ref, got).double()).abs().max())
    scale = float(ref.abs().max()) or 1.0
    return err <= factor * _rel_tol(dtype) * scale, f"max error {err:.3g} of {scale:.3g}"


#: What a check may raise when its fast path does not run on a model: a component it replaces is missing or
#: is called with other arguments (AttributeError, TypeError), shapes or values that do not fit
#: (RuntimeError, ValueError, IndexError, KeyError), an operation the model's modules do not implement
#: (NotImplementedError). The fast path is then off for that model. Anything else (an assertion, a name
#: error) is a bug in circuitkit and propagates.
CHECK_ERRORS: tuple[type[Exception], ...] = (
    AttributeError,
    TypeError,
    RuntimeError,
    ValueError,
    IndexError,
    KeyError,
    NotImplementedError,
)

Status = Literal["unknown", "ok", "failed"]


@dataclass(frozen=True)
class Outcome:
    """A fast path's check on one model: ``unknown`` (not run: not needed yet, or fast paths are off),
    ``ok`` (used) or ``failed`` (the exact path is used), and why it failed (the error against the plain
    forward, or the exception the check raised)."""

    status: Status = "unknown"
    reason: str = ""


@dataclass
class _Reference:
    """The plain forward of a few random tokens: the residual entering every layer and the final one."""

    tokens: torch.Tensor  # [batch, pos]
    resid: list[torch.Tensor]
    final: torch.Tensor


@dataclass
class Capabilities:
    """What this model's fast paths were found to do, one field per fast path (``model.capabilities``).

    Attributes:
        fused_gelu: tanh-approximate GELUs run as PyTorch's fused kernel.
        last_mlp: the last block's MLP run at the answer positions only.
        plain_attention: layers run without per-head inputs and outputs where a pass hooks neither.
        skip_blocks: re-entry at a later layer with the earlier blocks made identities.
        reentry: the bridge's own re-entry at a later layer (checked when ``skip_blocks`` failed).
        projected_inputs: a head input's edit applied to its q/k/v projection directly.
        unembed_columns: only the answer tokens' columns of the unembedding (and the chunked softmax).
        checking: a check is running (every other fast path is off meanwhile).
        all_checked: every check has run (each runs once, before the first pass that may use it).
        reference: the plain forward every check compares with (computed once).
        tanh_gelus: the model's tanh-approximate GELU modules (found once).
        share_dtype: the precision of the post-attention norms (found once;
            :func:`circuitkit.engine.heads.share_dtype`).
    """

    fused_gelu: Outcome = Outcome()
    last_mlp: Outcome = Outcome()
    plain_attention: Outcome = Outcome()
    skip_blocks: Outcome = Outcome()
    reentry: Outcome = Outcome()
    projected_inputs: Outcome = Outcome()
    unembed_columns: Outcome = Outcome()
    checking: bool = False
    all_checked: bool = False
    reference: _Reference | None = field(default=None, repr=False)
    tanh_gelus: list[torch.nn.Module] | None = field(default=None, repr=False)
    share_dtype: torch.dtype | None = None

    def checked(self) -> dict[str, Outcome]:
        """The outcomes of the checks that have run, by fast path."""
        return {f.name: o for f in fields(self) if isinstance(o := getattr(self, f.name), Outcome) and o.status != "unknown"}


def fast_paths_on(model: CircuitModel) -> bool:
    """Whether fast paths may be used for ``model`` now: not turned off (``model.fast_paths``) and no check
    running (a check compares one fast path with the plain forward, every other one off)."""
    return bool(model.fast_paths) and not model.capabilities.checking


def _checked_once(model: CircuitModel, name: str, check: Callable[[], bool | tuple[bool, str]]) -> bool:
    """``check()`` (True/False, or with a description of the error) run once per model with every other
    fast path off, its outcome kept as ``model.capabilities.<name>``; False without running it when fast
    paths are off. A check that raises one of :data:`CHECK_ERRORS` counts as failed (the fast path does not
    work for this model): the exception is logged at debug level with its traceback. Every outcome is
    logged at debug level (logger ``circuitkit.engine.fastpaths``)."""
    if not fast_paths_on(model):
        return False
    caps = model.capabilities
    outcome: Outcome = getattr(caps, name)
    if outcome.status == "unknown":
        caps.checking = True
        try:
            with torch.no_grad():
                res = check()
            ok, reason = res if isinstance(res, tuple) else (bool(res), "")
        except CHECK_ERRORS as e:
            ok, reason = False, f"{type(e).__name__}: {e}"
            log.debug("fast path %s raised on %s", name, model.name, exc_info=True)
        finally:
            caps.checking = False
        outcome = Outcome("ok" if ok else "failed", reason)
        setattr(caps, name, outcome)
        log.debug(
            "fast path %s %s on %s%s",
            name,
            "used" if ok else "off (exact path instead)",
            model.name,
            f" ({reason})" if reason else "",
        )
    return outcome.status == "ok"


def _plain_reference(model: CircuitModel) -> _Reference:
    """The plain forward (from the tokens, nothing replaced, no fast path) of 3 random sequences of 6
    tokens, computed once per model: what every fast path is checked against."""
    from circuitkit.engine.sources import run_sources

    caps = model.capabilities
    if caps.reference is None:
        gen = torch.Generator().manual_seed(0)
        tokens = torch.randint(0, int(model.bridge.cfg.d_vocab), (3, 6), generator=gen).to(model.device)
        was, caps.checking = caps.checking, True
        try:
            run = run_sources(model, tokens, keep_resid=True)
        finally:
            caps.checking = was
        assert run.resid is not None
        caps.reference = _Reference(tokens, run.resid, run.final)
    return caps.reference


def _run_checks(model: CircuitModel) -> None:
    """Run every fast path's check not run yet (each once per model). Called before a pass puts its hooks on
    or changes the attention's configuration, so no check runs inside such a context."""
    from circuitkit.engine.forward import _reentry_mode

    caps = model.capabilities
    if not fast_paths_on(model) or caps.all_checked:
        return
    _fused_gelu_ok(model)
    _last_mlp_ok(model)
    _plain_attention_is_close(model)
    _reentry_mode(model)
    _projected_inputs_ok(model)
    _unembed_columns_ok(model)
    caps.all_checked = True


def _last_mlp_ok(model: CircuitModel) -> bool:
    """Whether the answer-only last MLP gives the plain forward's final residual at the answer positions
    (checked once)."""
    from circuitkit.engine.forward import _answer_only_mlp, _forward

    def check() -> tuple[bool, str]:
        ref = _plain_reference(model)
        b, p = ref.tokens.shape
        last = torch.tensor([p - 1, p // 2, 0][:b], device=model.device)
        rows = torch.arange(b, device=model.device)
        with _answer_only_mlp(model, last):
            part = _forward(model, ref.tokens, [])[rows, last]
        return _agrees(part, ref.final[rows, last], model.dtype)

    return _checked_once(model, "last_mlp", check)


def _fused_gelu_ok(model: CircuitModel) -> bool:
    """Whether this model has tanh-approximate GELU modules and gives the plain forward's outputs (within
    :func:`_rel_tol`) with them fused. Checked once."""
    from circuitkit.engine.forward import _forward, _fused_tanh_gelus, _tanh_gelu_modules

    if not _tanh_gelu_modules(model):
        return False

    def check() -> tuple[bool, str]:
        ref = _plain_reference(model)
        with _fused_tanh_gelus(_tanh_gelu_modules(model)):
            fused = _forward(model, ref.tokens, [], fused_gelu=False)
        return _agrees(fused, ref.final, model.dtype)

    return _checked_once(model, "fused_gelu", check)


def _plain_attention_is_close(model: CircuitModel) -> bool:
    """Whether layers run without per-head inputs and outputs give the plain forward's result (checked once)."""
    from circuitkit.engine.forward import _attention_configs, _forward

    def check() -> tuple[bool, str]:
        ref = _plain_reference(model)
        with _attention_configs(model, {layer: (False, False) for layer in range(model.graph.n_layers)}):
            plain = _forward(model, ref.tokens, [])
        return _agrees(plain, ref.final, model.dtype, factor=10)

    return _checked_once(model, "plain_attention", check)


def _reentry_check(model: CircuitModel, identity: bool) -> tuple[bool, str]:
    """The bridge's re-entry at every layer from 1 on, from the plain forward's own residual there, against
    that forward's final residual stream."""
    from circuitkit.engine.common import _StopForward
    from circuitkit.engine.forward import _bridge_reentry

    if model.graph.n_layers < 2:
        return False, "one layer: nothing to re-enter"
    ref = _plain_reference(model)
    for layer in range(1, model.graph.n_layers):
        box: dict[str, torch.Tensor] = {}

        def stop(t: torch.Tensor, hook: object, box: dict[str, torch.Tensor] = box) -> torch.Tensor:
            box["final"] = t
            raise _StopForward

        try:
            with model.bridge.hooks(fwd_hooks=[(model.wiring.logits.hook, stop)]):
                _bridge_reentry(model, ref.resid[layer], layer, identity=identity)
        except _StopForward:
            pass
        ok, detail = _agrees(box["final"], ref.final, model.dtype)
        if not ok:
            return False, f"layer {layer}: {detail}"
    return True, ""


def _reentry_is_exact(model: CircuitModel) -> bool:
    """Whether the bridge's ``start_at_layer`` re-entry gives the plain forward's result (checked once)."""
    return _checked_once(model, "reentry", lambda: _reentry_check(model, identity=False))


def _skipping_is_exact(model: CircuitModel) -> bool:
    """Whether the bridge's re-entry with the earlier blocks made identities gives the plain forward's
    result (checked once)."""
    return _checked_once(model, "skip_blocks", lambda: _reentry_check(model, identity=True))


def _unembed_columns_ok(model: CircuitModel) -> bool:
    """Whether the answer-column logits (:func:`_unembed_columns`, and the chunked normaliser built on the
    same columns) are the Hugging Face model's own logits: checked once, from the residual stream entering
    the final norm in a forward of the model itself, against that forward's logits (output transform
    included), within the rounding of a ``d_model``-term dot product."""
    from circuitkit.engine.readout import _unembed_columns

    def check() -> bool:
        from circuitkit.verify import reference_logits

        gen = torch.Generator().manual_seed(0)
        vocab = int(model.bridge.cfg.d_vocab)
        tokens = torch.randint(0, vocab, (3, 4), generator=gen).to(model.device)
        logits, final = reference_logits(model, tokens)
        ids = torch.tensor([0, 7 % vocab, vocab - 1], device=model.device)
        want = logits[:, -1][:, ids.to(logits.device)]
        part = _unembed_columns(model, final[:, -1], ids).to(want.device)
        tol = model.d_model * torch.finfo(model.dtype).eps * float(logits.abs().max())
        return part.shape == want.shape and float((part.double() - want.double()).abs().max()) <= tol

    return _checked_once(model, "unembed_columns", check)


def _projected_inputs_ok(model: CircuitModel) -> bool:
    """Whether :func:`_projected_head_hook` gives this model's own per-head-input results (checked once:
    random differences on every kind of head input of the last layer, against the plain forward from the
    tokens with the differences added to the per-head inputs)."""
    from circuitkit.engine.forward import _attention_configs, _forward
    from circuitkit.engine.patching import _head_input_hook, _projected_head_hook
    from circuitkit.engine.sources import run_sources

    def check() -> tuple[bool, str]:
        g = model.graph
        gen = torch.Generator().manual_seed(0)
        ref = _plain_reference(model)
        b, p = ref.tokens.shape
        clean = run_sources(model, ref.tokens, keep_resid=True)
        assert clean.sources is not None
        removed_minus_clean = (torch.randn(clean.sources.shape, generator=gen) * clean.sources.float().std()).to(clean.sources)
        layer = g.n_layers - 1
        dst = [first + min(1, width - 1) for _, first, width in g.head_inputs(layer)] + [g.dst_head(layer, "q", 0)]
        src = [0, int(g.n_upstream[dst[1]]) - 1, 0, 0]
        finals = []
        for make in (_head_input_hook, _projected_head_hook):
            hooks = []
            for k, v in enumerate(dst):
                slot = model.wiring.destination_slot(v)
                hooks.append(make(model, clean, removed_minus_clean, src, (len(dst), b, p), slot, [(k, v - slot.first)]))
            # The projections replace the per-head inputs: that layer runs without them.
            split_off = (
                _attention_configs(model, {layer: (False, True)}) if make is _projected_head_hook else contextlib.nullcontext()
            )
            with split_off:
                finals.append(_forward(model, ref.tokens.repeat(len(dst), 1), hooks))
        return _agrees(finals[1], finals[0], model.dtype, factor=10)

    return _checked_once(model, "projected_inputs", check)
