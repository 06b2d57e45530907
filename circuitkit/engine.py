"""The hook machinery shared by every method: source outputs, gradient contraction, masked evaluation.

Why one backward pass scores every edge: the residual stream is a sum of node outputs, so the input of a
destination ``v`` is ``sum_u out_u`` over its upstream sources. Corrupting only ``u -> v`` changes that
input by ``out_u(corrupted) - out_u(clean)``; to first order the metric changes by that difference dotted
with ``d metric / d input_v``. So one backward pass, with a hook on every destination input that contracts
the incoming gradient with the stored differences of all upstream sources, scores every edge at once.

Evaluating a circuit is one forward pass: at every destination input add, for each edge into it that is
*not* in the circuit, ``out_u(corrupted) - out_u(this run)``. The empty circuit reproduces the corrupted
run and the full circuit the clean run.

Buffers are source-major, ``[n_sources, batch, pos, d_model]``, so each contraction is one matrix product.
Logits are computed only at the answer position (the final norm and unembedding of the bridge).

Devices: a model may be split over several GPUs (a Hugging Face device map); then layer ``l``'s hook
tensors live on that layer's device while every buffer here (source outputs, differences, clean
residuals, masks, scores) lives on ``model.device``, the input embedding's. A hook that combines a stored
tensor with its hook tensor ``t`` brings the stored one to ``t.device`` (:func:`_on`); writes into a
buffer and gradients contracted with stored differences go to the buffer's device. Per-example metric
values are returned on ``model.device``. On one device every such move is a no-op.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from circuitkit.data import Batch
from circuitkit.model import CircuitModel, to_module

Metric = Callable[[torch.Tensor, Batch], torch.Tensor]
log = logging.getLogger(__name__)


def _on(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``x`` on ``t``'s device (``x`` itself when it is already there)."""
    return x if x.device == t.device else x.to(t.device)


class _StopForward(Exception):
    """Raised at the final residual stream: the rest of the model is not needed."""


@dataclass
class Run:
    """What a forward pass returns: the final residual stream and, if collected, the source outputs."""

    final: torch.Tensor  # [batch, pos, d_model]
    sources: torch.Tensor | None = None  # [n_sources, batch, pos, d_model]
    resid: list[torch.Tensor] | None = None  # the residual stream entering each layer


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

        pre = [(f"blocks.{start_at_layer}.hook_resid_pre", inject)]
    try:
        with (
            model.bridge.hooks(fwd_hooks=[*pre, *hooks, (model.LOGITS_HOOK, stop)]),
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


def _last_mlp_ok(model: CircuitModel) -> bool:
    """Whether the answer-only last MLP gives the plain forward's final residual at the answer positions
    (checked once)."""

    def check() -> tuple[bool, str]:
        ref = _plain_reference(model)
        b, p = ref.tokens.shape
        last = torch.tensor([p - 1, p // 2, 0][:b], device=model.device)
        rows = torch.arange(b, device=model.device)
        with _answer_only_mlp(model, last):
            part = _forward(model, ref.tokens, [])[rows, last]
        return _agrees(part, ref.final[rows, last], model.dtype)

    return _checked_once(model, "_last_mlp_ok", check)


# transformers' tanh-approximate GELUs written as elementwise Python operations (GPT-2's ``gelu_new``,
# ``gelu_fast``): 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))), the formula of PyTorch's fused
# ``gelu(approximate="tanh")``.
_TANH_GELUS = ("NewGELUActivation", "FastGELUActivation")


def _tanh_gelu_modules(model: CircuitModel) -> list[torch.nn.Module]:
    mods = getattr(model, "_tanh_gelus", None)
    if mods is None:
        mods = [
            m
            for m in model.bridge.modules()
            if type(m).__name__ in _TANH_GELUS and type(m).__module__.startswith("transformers.")
        ]
        model._tanh_gelus = mods
    return mods


def _fused_tanh_gelu(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.gelu(x, approximate="tanh")


def _fused_tanh_gelus(mods: list[torch.nn.Module]) -> contextlib.AbstractContextManager[None]:
    """During the context the modules ``mods`` compute their GELU with PyTorch's fused kernel: one pass over
    the activations instead of eight (forward) and far fewer backward, the largest elementwise cost of a
    GPT-2 pass on a CPU. The result differs from the unfused operations by float rounding only."""
    return _forwards_replaced(mods, lambda x: _fused_tanh_gelu(x))


def _fused_gelu_ok(model: CircuitModel) -> bool:
    """Whether this model has tanh-approximate GELU modules and gives the plain forward's outputs (within
    :func:`_rel_tol`) with them fused. Checked once."""
    if not _tanh_gelu_modules(model):
        return False

    def check() -> tuple[bool, str]:
        ref = _plain_reference(model)
        with _fused_tanh_gelus(_tanh_gelu_modules(model)):
            fused = _forward(model, ref.tokens, [], fused_gelu=False)
        return _agrees(fused, ref.final, model.dtype)

    return _checked_once(model, "_fused_gelu_ok", check)


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


# ----- checks of the fast paths ---------------------------------------------------------------------------
#
# Every fast path (re-entry at a later layer, skipped blocks, the answer-only last MLP, fused GELUs, layers
# without per-head inputs or outputs, replaced q/k/v projections, answer-only unembedding columns) is used
# only where a check, run once per model, found that it gives the result of the plain forward pass: the
# bridge run from the tokens with nothing replaced and no other fast path on (never one fast path against
# another). Where a check fails, the exact path is used. ``model.fast_paths = False`` (``model.fast_paths=
# false`` in the config) turns them all off. Each outcome is logged (debug) and kept in
# ``model.fast_path_checks``.


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


def fast_paths_on(model: CircuitModel) -> bool:
    """Whether fast paths may be used for ``model`` now: not turned off (``model.fast_paths``) and no check
    running (a check compares one fast path with the plain forward, every other one off)."""
    return bool(getattr(model, "fast_paths", True)) and not model.__dict__.get("_checking", False)


def _checked_once(model: CircuitModel, attr: str, check: Callable[[], bool | tuple[bool, str]]) -> bool:
    """``check()`` (True/False, or with a description of the error) run once per model with every other
    fast path off and remembered as ``model.<attr>``; False without running it when fast paths are off.
    A check that raises counts as failed (the fast path does not work for this model): the exception is
    logged at debug level with its traceback, as every outcome is, and kept in ``model.fast_path_checks``."""
    if not fast_paths_on(model):
        return False
    ok = getattr(model, attr, None)
    if ok is None:
        model.__dict__["_checking"] = True
        try:
            with torch.no_grad():
                res = check()
            ok, detail = res if isinstance(res, tuple) else (bool(res), "")
        except Exception as e:  # noqa: BLE001 - the fast path does not run on this model: use the exact path
            ok, detail = False, f"{type(e).__name__}: {e}"
            log.debug("fast path %s raised on %s", attr.strip("_"), model.name, exc_info=True)
        finally:
            model.__dict__["_checking"] = False
        ok = bool(ok)
        setattr(model, attr, ok)
        model.__dict__.setdefault("fast_path_checks", {})[attr.strip("_")] = (ok, detail)
        log.debug(
            "fast path %s %s on %s%s",
            attr.strip("_"),
            "used" if ok else "off (exact path instead)",
            model.name,
            f" ({detail})" if detail else "",
        )
    return bool(ok)


@dataclass
class _Reference:
    """The plain forward of a few random tokens: the residual entering every layer and the final one."""

    tokens: torch.Tensor  # [batch, pos]
    resid: list[torch.Tensor]
    final: torch.Tensor


def _plain_reference(model: CircuitModel) -> _Reference:
    """The plain forward (from the tokens, nothing replaced, no fast path) of 3 random sequences of 6
    tokens, computed once per model: what every fast path is checked against."""
    ref = model.__dict__.get("_plain_reference")
    if ref is None:
        gen = torch.Generator().manual_seed(0)
        tokens = torch.randint(0, int(model.bridge.cfg.d_vocab), (3, 6), generator=gen).to(model.device)
        was = model.__dict__.get("_checking", False)
        model.__dict__["_checking"] = True
        try:
            run = run_sources(model, tokens, keep_resid=True)
        finally:
            model.__dict__["_checking"] = was
        assert run.resid is not None
        ref = _Reference(tokens, run.resid, run.final)
        model.__dict__["_plain_reference"] = ref
    return ref


def _run_checks(model: CircuitModel) -> None:
    """Run every fast path's check not run yet (each once per model). Called before a pass puts its hooks on
    or changes the attention's configuration, so no check runs inside such a context."""
    if not fast_paths_on(model) or model.__dict__.get("_checks_done"):
        return
    _fused_gelu_ok(model)
    _last_mlp_ok(model)
    _plain_attention_is_close(model)
    _reentry_mode(model)
    _projected_inputs_ok(model)
    _unembed_columns_ok(model)
    model.__dict__["_checks_done"] = True


def _plain_attention_is_close(model: CircuitModel) -> bool:
    """Whether layers run without per-head inputs and outputs give the plain forward's result (checked once)."""

    def check() -> tuple[bool, str]:
        ref = _plain_reference(model)
        with _attention_configs(model, {layer: (False, False) for layer in range(model.graph.n_layers)}):
            plain = _forward(model, ref.tokens, [])
        return _agrees(plain, ref.final, model.dtype, factor=10)

    return _checked_once(model, "_plain_attention_ok", check)


def _reentry_check(model: CircuitModel, identity: bool) -> tuple[bool, str]:
    """The bridge's re-entry at every layer from 1 on, from the plain forward's own residual there, against
    that forward's final residual stream."""
    if model.graph.n_layers < 2:
        return False, "one layer: nothing to re-enter"
    ref = _plain_reference(model)
    for layer in range(1, model.graph.n_layers):
        box: dict[str, torch.Tensor] = {}

        def stop(t: torch.Tensor, hook: object, box: dict[str, torch.Tensor] = box) -> torch.Tensor:
            box["final"] = t
            raise _StopForward

        try:
            with model.bridge.hooks(fwd_hooks=[(model.LOGITS_HOOK, stop)]):
                _bridge_reentry(model, ref.resid[layer], layer, identity=identity)
        except _StopForward:
            pass
        ok, detail = _agrees(box["final"], ref.final, model.dtype)
        if not ok:
            return False, f"layer {layer}: {detail}"
    return True, ""


def _reentry_is_exact(model: CircuitModel) -> bool:
    """Whether the bridge's ``start_at_layer`` re-entry gives the plain forward's result (checked once)."""
    return _checked_once(model, "_reentry_ok", lambda: _reentry_check(model, identity=False))


def _skipping_is_exact(model: CircuitModel) -> bool:
    """Whether the bridge's re-entry with the earlier blocks made identities gives the plain forward's
    result (checked once)."""
    return _checked_once(model, "_skip_blocks_ok", lambda: _reentry_check(model, identity=True))


def answer_logits(model: CircuitModel, final: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """Logits ``[batch, vocab]`` at each example's answer position."""
    rows = torch.arange(final.shape[0], device=final.device)
    return model.unembed(final[rows, last.to(final.device)])


def _metric_on(metric: Metric, logits: torch.Tensor, batch: Batch, home: torch.device) -> torch.Tensor:
    """``metric(logits, batch)`` with the batch on the logits' device, returned on ``home``."""
    values = metric(logits, batch if batch.clean.device == logits.device else batch.to(logits.device))
    return values if values.device == home else values.to(home)


def answer_metric(model: CircuitModel, final: torch.Tensor, batch: Batch, metric: Metric) -> torch.Tensor:
    """``metric(answer_logits(...), batch)``, the per-example metric ``[batch]`` (on ``model.device``) from
    the final residual stream.

    When ``metric`` is a task's metric that reads only the answer tokens' logits
    (:meth:`~circuitkit.interfaces.Task.answer_logits_metric`), only those tokens' columns of the
    unembedding are computed, with the batch's answer ids renumbered accordingly: the same values for a
    fraction of the cost (the full unembedding of a 50k vocabulary costs as much as a transformer block
    when many copies of a batch are evaluated). When it reads only the answer tokens' probabilities
    (:meth:`~circuitkit.interfaces.Task.answer_probs_metric`) and no gradient is wanted, the softmax
    normaliser is accumulated over chunks of the vocabulary instead of writing out the full logits
    (:func:`_answer_and_rest_logits`). Both are used when this model's unembedding is a plain linear map
    after the final norm (checked once)."""
    owner = getattr(metric, "__self__", None)
    home = model.device
    on_logits, on_probs = (getattr(owner, name, None) for name in ("answer_logits_metric", "answer_probs_metric"))
    logits_fn = on_logits() if callable(on_logits) else None
    probs_fn = on_probs() if callable(on_probs) and not (torch.is_grad_enabled() and final.requires_grad) else None
    if (logits_fn is None and probs_fn is None) or not _unembed_columns_ok(model):
        return _metric_on(metric, answer_logits(model, final, batch.last), batch, home)
    k = batch.correct.numel()
    ids, inverse = torch.unique(torch.cat([batch.correct.flatten(), batch.incorrect.flatten()]), return_inverse=True)
    renumbered = Batch(
        **{**batch.__dict__, "correct": inverse[:k].view_as(batch.correct), "incorrect": inverse[k:].view_as(batch.incorrect)}
    )
    rows = torch.arange(final.shape[0], device=final.device)
    resid = final[rows, batch.last.to(final.device)]
    if logits_fn is not None:
        return _metric_on(logits_fn, _unembed_columns(model, resid, ids), renumbered, home)
    return _metric_on(probs_fn, _answer_and_rest_logits(model, resid, ids), renumbered, home)


VOCAB_CHUNK = 1024  # vocabulary rows of the unembedding per step of :func:`_answer_and_rest_logits`


def _answer_and_rest_logits(model: CircuitModel, resid: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``[batch, len(ids) + 1]``: the logits of the tokens ``ids`` (distinct), then the log of the summed
    exponentials of every other token's logit. A softmax over these columns gives the ``ids`` tokens their
    probabilities under the full vocabulary.

    The normaliser is accumulated over chunks of :data:`VOCAB_CHUNK` tokens (running maximum and sum), so
    the ``[batch, vocab]`` logits are never written out: with many copies of a batch and a 50k vocabulary
    that costs about half of the full logits and their softmax, which are bound by memory traffic. Float16
    and bfloat16 logits are accumulated in float32, as the builtin metrics' softmax does."""
    normed, w, bias = _final_norm_and_unembedding(model, resid)

    def logits(rows: torch.Tensor | slice) -> torch.Tensor:
        out = model.logit_transform(torch.nn.functional.linear(normed, w[rows], None if bias is None else bias[rows]))
        return out.float() if out.dtype in (torch.float16, torch.bfloat16) else out

    answer = logits(ids.to(w.device))
    top = torch.full_like(answer[:, 0], float("-inf"))
    total = torch.zeros_like(top)
    for start in range(0, w.shape[0], VOCAB_CHUNK):
        part = logits(slice(start, start + VOCAB_CHUNK))
        new = torch.maximum(top, part.amax(-1))
        total = total * (top - new).exp() + part.sub_(new[:, None]).exp_().sum(-1)
        top = new
    log_norm = top + total.log()
    # The other tokens' share of the probability mass (0 when the answers hold all of it, to rounding).
    rest = (1 - (answer - log_norm[:, None]).exp().sum(-1)).clamp(min=0)
    return torch.cat([answer, (log_norm + rest.log())[:, None]], dim=1)


def _final_norm_and_unembedding(
    model: CircuitModel, resid: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The final norm of ``resid`` (on the unembedding's device) and the unembedding's weight and bias,
    for computing chosen columns of the logits (valid where :func:`_unembed_columns_ok`); the model's
    output transform (:meth:`~circuitkit.model.CircuitModel.logit_transform`, elementwise) is applied to
    the columns afterwards."""
    linear = model.bridge.unembed.original_component
    w = linear.weight
    normed = model.bridge.ln_final(to_module(resid, model.bridge.ln_final)).to(w.device)
    return normed, w, getattr(linear, "bias", None)


def _unembed_columns(model: CircuitModel, resid: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Logits of the tokens ``ids`` only: ``[batch, len(ids)]`` (on the unembedding's device)."""
    normed, w, bias = _final_norm_and_unembedding(model, resid)
    ids = ids.to(w.device)
    return model.logit_transform(torch.nn.functional.linear(normed, w[ids], None if bias is None else bias[ids]))


def _unembed_columns_ok(model: CircuitModel) -> bool:
    """Whether the answer-column logits (:func:`_unembed_columns`, and the chunked normaliser built on the
    same columns) are the Hugging Face model's own logits: checked once, from the residual stream entering
    the final norm in a forward of the model itself, against that forward's logits (output transform
    included), within the rounding of a ``d_model``-term dot product."""

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

    return _checked_once(model, "_unembed_columns_ok", check)


# ----- head outputs: what each head adds to the residual stream ----------------------------------------


def head_shares(model: CircuitModel, layer: int, result: torch.Tensor, normed_in: torch.Tensor) -> torch.Tensor:
    """``[batch, pos, heads, d]``: each head's share of what layer ``layer``'s attention adds to the residual
    stream when a norm follows the attention (:meth:`~circuitkit.model.CircuitModel.attn_post_norm`).

    The norm sees ``X = sum_h result_h + b_O`` (``normed_in``, the tensor the norm received) and adds
    ``N(X) = X / rms(X) * w`` (RMSNorm; ``1 + w`` for Gemma's offset scales). ``N`` is linear once its
    normaliser ``1 / rms(X)`` is fixed, so head ``h``'s share is ``(result_h + b_O / n_heads) / rms(X) * w``:
    the shares sum to ``N(X)`` in every run, and the output bias's normed part is split equally between
    the heads (as zero ablation splits ``b_O``). The normaliser is the one of this forward pass, so the
    shares of all heads change together when one head's output does (the norm couples them).
    Computed in the precision the norm itself computes in (:func:`share_dtype`), and returned in
    ``result``'s dtype."""
    norm = model.attn_post_norm(layer)
    assert norm is not None
    hf_norm = norm.original_component
    work = share_dtype(model)
    x = normed_in.to(work)
    eps = getattr(hf_norm, "variance_epsilon", None)
    eps = getattr(hf_norm, "eps", 1e-6) if eps is None else eps
    inv = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)  # [b, p, 1]
    w = hf_norm.weight.to(device=x.device, dtype=work)
    if getattr(norm, "uses_weight_offset", False):
        w = 1.0 + w
    r = _on(result, x).to(work)
    bias = getattr(model.bridge.blocks[layer].attn.o.original_component, "bias", None)
    if bias is not None:
        r = r + bias.to(device=x.device, dtype=work) / r.shape[-2]
    return (r * (inv * w).unsqueeze(-2)).to(result.dtype)


def share_dtype(model: CircuitModel) -> torch.dtype:
    """The precision the model's post-attention norms compute in: float32, or float64 where a float64
    model's norm keeps float64 (Gemma's and OLMo-2's RMSNorms compute in float32 whatever the model's
    dtype). Found once by comparing the norm's output on a float64 probe with both precisions."""
    got = model.__dict__.get("_share_dtype")
    if got is None:
        got = torch.float32
        norm = model.attn_post_norm(0) if model.graph.n_layers else None
        if norm is not None and model.dtype == torch.float64:
            hf_norm = norm.original_component
            x = torch.randn(4, model.d_model, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
            x = x.to(hf_norm.weight.device)
            with torch.no_grad():
                out = hf_norm(x)
            eps = getattr(hf_norm, "variance_epsilon", None)
            eps = getattr(hf_norm, "eps", 1e-6) if eps is None else eps
            w = hf_norm.weight.double() + (1.0 if getattr(norm, "uses_weight_offset", False) else 0.0)
            exact = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w
            if float((out - exact).abs().max()) <= 64 * torch.finfo(torch.float64).eps * float(exact.abs().max()):
                got = torch.float64
        model.__dict__["_share_dtype"] = got
    return got


def head_output_hooks(model: CircuitModel, layer: int, fn: Callable) -> list:
    """Hooks that show ``fn(t, hook)`` layer ``layer``'s head outputs ``t [batch, pos, heads, d]`` as the
    graph defines them: what each head adds to the residual stream. ``fn`` may return ``t`` (read only)
    or a tensor of the same shape that replaces them.

    Without a norm after the attention that is the bridge's per-head result (``hook_result``). With
    one (:meth:`~circuitkit.model.CircuitModel.attn_post_norm`) it is each head's share of the normed
    attention output (:func:`head_shares`), and a replacement changes the normed output by the
    replaced shares' differences: the other heads keep their shares of this pass."""
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
        (f"blocks.{layer}.ln1_post.hook_in", grab("normed_in")),
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


def _source_writers(model: CircuitModel, buf: torch.Tensor, positions: slice | None = None) -> list:
    """Hooks that copy every source's output into ``buf [n_sources, batch, pos, d]`` (from whatever device
    the hook's layer is on); with ``positions``, only those positions (``buf`` is then that wide)."""
    g = model.graph
    at = positions or slice(None)

    def put(index: int, per_head: bool) -> Callable:
        def hook(t: torch.Tensor, hook: object) -> torch.Tensor:
            if per_head:
                buf[index : index + g.n_heads] = t.detach()[:, at].permute(2, 0, 1, 3)
            else:
                buf[index] = t.detach()[:, at]
            return t

        return hook

    hooks = [(model.INPUT_HOOK, put(0, False))]
    for layer in range(g.n_layers):
        hooks += head_output_hooks(model, layer, put(g.src_head(layer, 0), True))
        hooks.append((model.mlp_out_hook(layer), put(g.src_mlp(layer), False)))
    return hooks


def new_source_buffer(
    model: CircuitModel, tokens: torch.Tensor, dtype: torch.dtype | None = None, positions: slice | None = None
) -> torch.Tensor:
    b, p = tokens.shape
    p = len(range(p)[positions]) if positions is not None else p
    return torch.zeros(model.graph.n_sources, b, p, model.d_model, dtype=dtype or model.dtype, device=model.device)


@torch.no_grad()
def run_sources(model: CircuitModel, tokens: torch.Tensor, *, keep_resid: bool = False, positions: slice | None = None) -> Run:
    """Forward without autograd, keeping every source's output ``[n_sources, batch, pos, d]`` (and, with
    ``keep_resid``, the residual stream entering every layer), all on ``model.device``. With ``positions``
    the source outputs are kept at those positions only."""
    tokens = tokens.to(model.device)
    buf = new_source_buffer(model, tokens, positions=positions)
    hooks = _source_writers(model, buf, positions)
    resid: list[torch.Tensor] = []
    home = model.device
    if keep_resid:
        hooks += [
            (f"blocks.{layer}.hook_resid_pre", lambda t, hook: (resid.append(t.detach().to(home)), t)[1])
            for layer in range(model.graph.n_layers)
        ]
    final = _forward(model, tokens, hooks)
    return Run(final=final, sources=buf, resid=resid if keep_resid else None)


@torch.no_grad()
def input_embeddings(model: CircuitModel, tokens: torch.Tensor) -> torch.Tensor:
    """The input node's output (token and position embeddings) ``[batch, pos, d]`` for ``tokens``; the rest
    of the model does not run."""
    box: dict[str, torch.Tensor] = {}

    def grab(t: torch.Tensor, hook: object) -> torch.Tensor:
        box["x"] = t.detach().to(model.device)
        raise _StopForward

    try:
        with model.bridge.hooks(fwd_hooks=[(model.INPUT_HOOK, grab)]):
            model.bridge(tokens.to(model.device))
    except _StopForward:
        pass
    return box["x"]


#: Sources converted at a time when the difference buffer is stored in a lower precision.
CONTRACT_CHUNK = 16


def _contract(flat_delta: torch.Tensor, n_up: int, grad: torch.Tensor) -> torch.Tensor:
    """``flat_delta[:n_up] @ grad`` as float64 ``[n_up, k]``. A bf16/fp16 buffer is converted to the
    gradient's precision a few sources at a time, so the products accumulate in full precision."""
    if flat_delta.dtype == grad.dtype:
        return (flat_delta[:n_up] @ grad).double()
    out = torch.empty(n_up, grad.shape[1], dtype=torch.float64, device=grad.device)
    for s in range(0, n_up, CONTRACT_CHUNK):
        e = min(s + CONTRACT_CHUNK, n_up)
        out[s:e] = (flat_delta[s:e].to(grad.dtype) @ grad).double()
    return out


def _contract_per_example(delta: torch.Tensor, n_up: int, grad: torch.Tensor) -> torch.Tensor:
    """Per-example contraction: ``delta [S, b, k]`` (sources, examples, positions*width) with ``grad
    [b, w, k]`` as float64 ``[n_up, w, b]`` (summed over positions only). Several outputs (a layer's heads):
    one batched product over the examples on a strided view of the buffer; one output (an MLP or the
    logits, where a batched matrix-vector product is slow): one product per example. A bf16/fp16 buffer is
    converted a few sources at a time."""
    b = grad.shape[0]
    if grad.shape[1] > 1 and delta.dtype == grad.dtype:
        return torch.bmm(delta[:n_up].transpose(0, 1), grad.transpose(1, 2)).double().permute(1, 2, 0)
    out = torch.empty(n_up, grad.shape[1], b, dtype=torch.float64, device=grad.device)
    for i in range(b):
        g = grad[i].T  # [k, w]
        if delta.dtype == grad.dtype:
            out[:, :, i] = (delta[:n_up, i] @ g).double()
        else:
            for s in range(0, n_up, CONTRACT_CHUNK):
                e = min(s + CONTRACT_CHUNK, n_up)
                out[s:e, :, i] = (delta[s:e, i].to(grad.dtype) @ g).double()
    return out


def buffer_bytes(model: CircuitModel, batch: int, positions: int, dtype: torch.dtype | None = None, copies: int = 1) -> int:
    """Bytes of one source buffer ``[n_sources, copies * batch, positions, d_model]``."""
    itemsize = torch.empty((), dtype=dtype or model.dtype).element_size()
    return model.graph.n_sources * copies * batch * positions * model.d_model * itemsize


def available_bytes(device: torch.device) -> int | None:
    """Free memory on ``device`` (CUDA: free device memory; CPU: MemAvailable), or None if unknown."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def check_fits(model: CircuitModel, needed: int, what: str) -> None:
    """Raise a clear error, before any work, when ``needed`` bytes will not fit on the model's device."""
    from circuitkit.errors import CircuitkitError

    free = available_bytes(model.device)
    if free is not None and needed > free:
        raise CircuitkitError(
            f"{what} needs about {needed / 2**30:.2f} GiB of activation buffers on {model.device}, but only "
            f"{free / 2**30:.2f} GiB is free. Lower batch_size (scores do not depend on it), use "
            "buffer_dtype=bfloat16, positions_per_pass=<k> (k positions per pass; more passes), or shorter prompts."
        )


def gradient_pass(
    model: CircuitModel,
    batch: Batch,
    metric: Metric,
    delta: torch.Tensor,
    scores: torch.Tensor,
    *,
    input_override: torch.Tensor | None = None,
    weight: float = 1.0,
    fill_from: torch.Tensor | None = None,
    neuron_scores: torch.Tensor | None = None,
    positions: slice | None = None,
    per_example: torch.Tensor | None = None,
) -> torch.Tensor:
    """One forward/backward that adds ``weight * delta . d(sum of metric)/d(input of dst)`` to ``scores``.

    Args:
        model: the model.
        batch: the batch; the forward runs on ``batch.clean`` tokens.
        metric: per-example metric.
        delta: ``[n_sources, batch, pos, d]`` source output differences (clean - corrupted).
        scores: ``[n_sources, n_destinations]`` float64 accumulator, updated in place.
        input_override: ``[batch, pos, d]`` replaces the input node's output (the embeddings) for this
            pass, as integrated gradients does; the stored ``delta`` is unchanged.
        weight: factor applied to this pass's contribution.
        fill_from: the corrupted source outputs ``[n_sources, batch, pos, d]``: this (clean) pass writes
            ``clean - corrupted`` into ``delta`` during the forward, so the contraction in the backward
            sees the full difference (rounded once to ``delta``'s dtype).
            This saves a separate clean forward. Only valid without ``input_override``. ``fill_from`` may
            be ``delta`` itself: each output is then overwritten in place by its difference.
        neuron_scores: ``[n_sources, d]`` float64 accumulator: when given, also adds
            ``weight * sum over batch and positions of delta[u] * d(sum of metric)/d(out_u)`` per output
            dimension of every source ``u`` (neuron-level scores; their sum over dimensions is the sum of
            ``u``'s outgoing edge scores, since every reader's input contains ``out_u``).
        positions: ``delta`` (and ``fill_from``) hold these positions only, and only they contribute: the
            scores of all positions are the sum over a partition of them into such passes.
        per_example: ``[n_sources, n_destinations, batch]`` float64 accumulator: when given, the
            contraction is done per example (summed over positions only) and ``weight`` times each
            example's contribution is added here as well as (summed over the batch) to ``scores`` — the
            per-example scores behind the standard errors, from the same pass.

    Returns:
        The per-example metric of this pass ``[batch]`` (detached).
    """
    g = model.graph
    n_heads = g.n_heads
    at = positions or slice(None)
    flat_delta = delta.reshape(delta.shape[0], -1)  # [S, b*p*d]

    def contract_heads(dst0: int, width: int, n_up: int) -> Callable:
        def on_grad(grad: torch.Tensor) -> None:
            # grad [b, p, h, d] -> [h, b*p*d] (h: query heads for q, key/value heads for k and v)
            if per_example is not None:
                b = grad.shape[0]
                gb = grad[:, at].permute(0, 2, 1, 3).reshape(b, width, -1).to(flat_delta.device)
                pe = _contract_per_example(delta.reshape(delta.shape[0], b, -1), n_up, gb)
                per_example[:n_up, dst0 : dst0 + width] += weight * pe
                scores[:n_up, dst0 : dst0 + width] += weight * pe.sum(-1)
                return
            gh = grad[:, at].permute(2, 0, 1, 3).reshape(width, -1).to(flat_delta.device)
            scores[:n_up, dst0 : dst0 + width] += weight * _contract(flat_delta, n_up, gh.T)

        def hook(t: torch.Tensor, hook: object) -> torch.Tensor:
            if t.requires_grad:
                t.register_hook(on_grad)
            return t

        return hook

    def contract_one(dst: int, n_up: int) -> Callable:
        def on_grad(grad: torch.Tensor) -> None:
            if per_example is not None:
                b = grad.shape[0]
                gb = grad[:, at].reshape(b, 1, -1).to(flat_delta.device)
                pe = _contract_per_example(delta.reshape(delta.shape[0], b, -1), n_up, gb)[:, 0]
                per_example[:n_up, dst] += weight * pe
                scores[:n_up, dst] += weight * pe.sum(-1)
                return
            scores[:n_up, dst] += weight * _contract(flat_delta, n_up, grad[:, at].reshape(-1, 1).to(flat_delta.device))[:, 0]

        def hook(t: torch.Tensor, hook: object) -> torch.Tensor:
            # The MLP-input hook sees the residual tensor itself; a copy makes the gradient we read the
            # gradient of the destination's input alone, not of the residual stream around it.
            t = t.clone()
            if t.requires_grad:
                t.register_hook(on_grad)
            return t

        return hook

    def per_neuron(index: int, per_head: bool) -> Callable:
        def on_grad(grad: torch.Tensor) -> None:
            assert neuron_scores is not None
            grad = grad[:, at].to(delta.device)
            if per_head:  # grad [b, p, h, d]
                width = grad.shape[2]
                d = delta[index : index + width].to(grad.dtype)  # [h, b, p, d]
                neuron_scores[index : index + width] += weight * torch.einsum("hbpd,bphd->hd", d, grad).double()
            else:
                neuron_scores[index] += weight * (delta[index].to(grad.dtype) * grad).sum((0, 1)).double()

        return on_grad

    def embed_hook(t: torch.Tensor, hook: object) -> torch.Tensor:
        if fill_from is not None:
            delta[0] = t.detach()[:, at].to(delta.device) - fill_from[0]
        x = _on(input_override, t) if input_override is not None else t
        x = x.detach().clone().requires_grad_(True)
        if neuron_scores is not None:
            x.register_hook(per_neuron(0, False))
        return x

    def grad_at_source(index: int, per_head: bool) -> Callable:
        def hook(t: torch.Tensor, hook: object) -> torch.Tensor:
            if t.requires_grad:
                t.register_hook(per_neuron(index, per_head))
            return t

        return hook

    def add_source(index: int, per_head: bool) -> Callable:
        def hook(t: torch.Tensor, hook: object) -> torch.Tensor:
            x = t.detach()[:, at].to(delta.device)
            if per_head:
                delta[index : index + n_heads] = x.permute(2, 0, 1, 3) - fill_from[index : index + n_heads]
            else:
                delta[index] = x - fill_from[index]
            return t

        return hook

    if fill_from is not None and input_override is not None:
        raise ValueError("fill_from needs the clean input: do not combine it with input_override")
    hooks: list = [(model.INPUT_HOOK, embed_hook)]
    if fill_from is not None:
        for layer in range(g.n_layers):
            hooks += head_output_hooks(model, layer, add_source(g.src_head(layer, 0), True))
            hooks.append((model.mlp_out_hook(layer), add_source(g.src_mlp(layer), False)))
    if neuron_scores is not None:
        for layer in range(g.n_layers):
            hooks += head_output_grad_hooks(model, layer, per_neuron(g.src_head(layer, 0), True))
            hooks.append((model.mlp_out_hook(layer), grad_at_source(g.src_mlp(layer), False)))
    for layer in range(g.n_layers):
        n_up = g.n_upstream_heads(layer)
        for x, dst0, width in g.head_inputs(layer):
            hooks.append((model.head_in_hook(layer, x), contract_heads(dst0, width, n_up)))
        hooks.append((model.mlp_in_hook(layer), contract_one(g.dst_mlp(layer), g.n_upstream_mlp(layer))))
    final_contract = contract_one(g.dst_logits, g.n_sources)
    with torch.enable_grad():
        final = _forward(model, batch.clean.to(model.device), hooks, final_hook=final_contract)
        values = answer_metric(model, final, batch.to(model.device), metric)
        values.sum().backward()
    return values.detach()


def masked_forward(
    model: CircuitModel,
    tokens: torch.Tensor,
    corrupted: torch.Tensor,
    keep: torch.Tensor,
    *,
    start_layer: int = 0,
    clean: Run | None = None,
    neurons: torch.Tensor | None = None,
) -> torch.Tensor:
    """Run the clean tokens with every edge *not* kept carrying its corrupted value.

    Args:
        model: the model.
        tokens: ``[batch, pos]`` clean tokens.
        corrupted: ``[n_sources, batch, pos, d]`` source outputs of the corrupted run.
        keep: ``[copies, n_sources, n_destinations]`` (1 = edge kept, 0 = corrupted); several circuits
            are evaluated at once by stacking ``copies`` of the batch.
        start_layer: when every removed edge goes into layer ``start_layer`` or later, everything before
            that layer equals the clean run: start there from ``clean.resid`` (a
            :func:`run_sources` result with ``keep_resid=True``). ``n_layers`` means only edges into the
            logits are removed: no layer is run at all.
        clean: the clean run (needed when ``start_layer > 0``).
        neurons: ``[copies, n_sources, d]`` (1 = kept): output dimensions of each source that carry
            their corrupted value on *every* edge, kept or not (neuron-level circuits). An edge then
            carries, per dimension, its clean value only where it is kept and the dimension is kept.

    Returns:
        The final residual stream ``[copies * batch, pos, d]`` (copy-major).
    """
    g = model.graph
    c = keep.shape[0]
    b, p = tokens.shape
    d = model.d_model
    dev = model.device
    remove = 1 - keep.to(device=dev, dtype=corrupted.dtype)  # [c, S, D]
    if neurons is not None:
        if start_layer > 0:
            raise ValueError("neuron masks are only supported with start_layer=0")
        kept_dims = neurons.to(device=dev, dtype=corrupted.dtype)  # [c, S, d]
        if kept_dims.shape != (c, g.n_sources, d):
            raise ValueError(f"neurons must be [copies={c}, n_sources={g.n_sources}, d_model={d}], got {tuple(kept_dims.shape)}")
    if start_layer > 0:
        if clean is None or clean.resid is None or clean.sources is None:
            raise ValueError("start_layer > 0 needs the clean run with keep_resid=True")
        if bool(remove[:, :, : g.dst_mlp(start_layer - 1) + 1].any()):
            raise ValueError(f"an edge into a layer before {start_layer} is removed; start earlier")
    if start_layer >= g.n_layers:
        assert clean is not None and clean.sources is not None
        w = remove[:, :, g.dst_logits]  # [c, S]
        add = torch.einsum("sbpd,cs->cbpd", corrupted - clean.sources, w)
        return (clean.final.unsqueeze(0) + _on(add, clean.final)).reshape(c * b, p, d)
    run = torch.zeros(g.n_sources, c, b, p, d, dtype=corrupted.dtype, device=dev)
    if start_layer > 0:
        assert clean is not None and clean.sources is not None
        n_pre = g.n_upstream_heads(start_layer)
        run[:n_pre] = clean.sources[:n_pre].unsqueeze(1)

    def put(index: int, per_head: bool) -> Callable:
        def hook(t: torch.Tensor, hook: object) -> torch.Tensor:
            if per_head:
                run[index : index + g.n_heads] = t.reshape(c, b, p, g.n_heads, d).permute(3, 0, 1, 2, 4)
            else:
                run[index] = t.reshape(c, b, p, d)
            return t

        return hook

    def patch_neurons(dst0: int, width: int, n_up: int, per_head: bool) -> Callable:
        kept = keep.to(device=dev, dtype=corrupted.dtype)[:, :n_up, dst0 : dst0 + width]  # [c, S, width]
        dims = kept_dims[:, :n_up]  # [c, S, d]

        def hook(t: torch.Tensor, hook: object) -> torch.Tensor:
            diff = corrupted[:n_up].unsqueeze(1) - run[:n_up]  # [S, c, b, p, d]
            # per dimension, an edge is removed unless the edge and the dimension are both kept
            add = diff.sum(0)[:, :, :, None, :] - torch.einsum("scbpd,csd,csh->cbphd", diff, dims, kept)
            add = _on(add, t)
            if per_head:
                return t + add.reshape(c * b, p, width, d)
            return t + add.reshape(c * b, p, d)

        return hook

    def patch(dst0: int, width: int, n_up: int, per_head: bool) -> Callable:
        if neurons is not None:
            return patch_neurons(dst0, width, n_up, per_head)
        w = remove[:, :n_up, dst0 : dst0 + width]  # [c, S, width]
        if not bool(w.any()):
            return lambda t, hook: t
        # Sources whose edges into this destination are all kept contribute nothing.
        used = w.any(0).any(1).nonzero().squeeze(1)
        w = w[:, used]

        def hook(t: torch.Tensor, hook: object) -> torch.Tensor:
            diff = corrupted[used].unsqueeze(1) - run[used]  # [s, c, b, p, d]
            add = torch.einsum("scbpd,csh->cbphd", diff, w)
            add = _on(add, t)
            if per_head:
                return t + add.reshape(c * b, p, width, d)
            return t + add.reshape(c * b, p, d)

        return hook

    hooks: list = [(model.INPUT_HOOK, put(0, False))] if start_layer == 0 else []
    for layer in range(start_layer, g.n_layers):
        n_up = g.n_upstream_heads(layer)
        for x, dst0, width in g.head_inputs(layer):
            hooks.append((model.head_in_hook(layer, x), patch(dst0, width, n_up, True)))
        hooks += head_output_hooks(model, layer, put(g.src_head(layer, 0), True))
        hooks.append((model.mlp_in_hook(layer), patch(g.dst_mlp(layer), 1, g.n_upstream_mlp(layer), False)))
        hooks.append((model.mlp_out_hook(layer), put(g.src_mlp(layer), False)))
    final_patch = patch(g.dst_logits, 1, g.n_sources, False)
    with torch.no_grad():
        if start_layer == 0:
            return _forward(model, tokens.to(dev).repeat(c, 1), hooks, final_hook=final_patch)
        assert clean is not None and clean.resid is not None
        start = clean.resid[start_layer].repeat(c, 1, 1)
        return _forward(
            model, tokens.to(dev).repeat(c, 1), hooks, final_hook=final_patch, start_at_layer=start_layer, resid=start
        )


def masked_metric(
    model: CircuitModel,
    batch: Batch,
    metric: Metric,
    corrupted: torch.Tensor,
    keep: torch.Tensor,
    *,
    start_layer: int = 0,
    clean: Run | None = None,
    neurons: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-example metric ``[copies, batch]`` with the non-kept edges corrupted (see :func:`masked_forward`)."""
    c = keep.shape[0]
    final = masked_forward(model, batch.clean, corrupted, keep, start_layer=start_layer, clean=clean, neurons=neurons)
    rep = batch.repeat(c).to(model.device)
    with torch.no_grad():
        return answer_metric(model, final, rep, metric).reshape(c, len(batch))


def _per_copy_hook(
    shape: tuple[int, ...], edits: list[tuple[int, int | None]], apply: Callable, *, reuse_fresh: bool = False
) -> Callable | None:
    """A hook that edits single copies of a stacked pass: the tensor is seen as ``shape``
    (``[copies, batch, pos, (heads,) d]``) and ``apply(view, k)`` is called on copy ``k`` (head ``h``
    when given) for each ``(k, h)`` of ``edits`` and returned in its own shape. The tensor is copied first
    unless ``reuse_fresh`` and it is contiguous and not a view. None when there is nothing to edit."""
    if not edits:
        return None

    def hook(t: torch.Tensor, hook: object) -> torch.Tensor:
        x = (t if reuse_fresh and t._base is None and t.is_contiguous() else t.clone()).reshape(shape)
        for k, h in edits:
            apply(x[k] if h is None else x[k, :, :, h], k)
        return x.reshape(t.shape)

    return hook


def single_edge_metric(
    model: CircuitModel,
    batch: Batch,
    metric: Metric,
    delta: torch.Tensor,
    src: torch.Tensor,
    dst: torch.Tensor,
    *,
    start_layer: int,
    clean: Run,
) -> torch.Tensor:
    """Per-example metric ``[copies, batch]`` where copy ``c`` has the single edge ``src[c] -> dst[c]``
    carrying its removed value, every other edge clean.

    The sparse form of :func:`masked_metric` for exact patching: the source of a removed edge is upstream
    of its destination, so in that copy it still has its clean value, and the edge changes the
    destination's input by exactly ``delta[src[c]]`` (removed minus clean output). No source outputs are
    recorded; each destination hook adds one ``[batch, pos, d]`` tensor per copy that enters it.

    Args:
        delta: ``[n_sources, batch, pos, d]`` removed-minus-clean source outputs.
        src, dst: ``[copies]`` source and destination indices of each copy's edge; every destination
            must be in layer ``start_layer`` or later (or the logits).
        start_layer: where the stacked forward starts from the clean residual stream (``clean.resid``).
        clean: the clean run with ``keep_resid=True``.
    """
    g = model.graph
    c = len(src)
    b, p = batch.clean.shape
    d = model.d_model
    src_l, dst_l = src.tolist(), dst.tolist()
    first = g.dst_head(start_layer, "q", 0) if start_layer < g.n_layers else g.dst_logits
    if min(dst_l) < first:
        raise ValueError(f"an edge enters a layer before {start_layer}; start earlier")
    rep = batch.repeat(c).to(model.device)
    if start_layer >= g.n_layers:  # edges into the logits: no layer to run
        final = clean.final.unsqueeze(0).repeat(c, 1, 1, 1)
        for k in range(c):
            final[k] += _on(delta[src_l[k]], final)
        with torch.no_grad():
            return answer_metric(model, final.reshape(c * b, p, d), rep, metric).reshape(c, b)
    by_dst: dict[int, list[int]] = {}
    for k, v in enumerate(dst_l):
        by_dst.setdefault(v, []).append(k)

    def add(view: torch.Tensor, k: int) -> None:
        view += _on(delta[src_l[k]], view)

    def add_one(dst_: int) -> Callable | None:
        return _per_copy_hook((c, b, p, d), [(k, None) for k in by_dst.get(dst_, ())], add)

    assert clean.resid is not None
    projected = _projected_inputs_ok(model)
    hooks: list = []
    for layer in range(start_layer, g.n_layers):
        for x, dst0, width in g.head_inputs(layer):
            edits = [(k, v - dst0) for v in range(dst0, dst0 + width) for k in by_dst.get(v, ())]
            if edits:
                make = _projected_head_hook if projected else _head_input_hook
                with torch.no_grad():
                    hooks.append(make(model, clean, delta, src_l, (c, b, p), layer, x, width, edits))
        hooks.append((model.mlp_in_hook(layer), add_one(g.dst_mlp(layer))))
    hooks = [(name, h) for name, h in hooks if h is not None]
    final_add = add_one(g.dst_logits)
    # Per-head q/k/v inputs only where a copy's edge enters a head and its projections are not replaced
    # directly; per-head outputs nowhere.
    head_dst = set() if projected else {g.dst_layer(v) for v in dst_l if g.is_head_dst(v)}
    modes = {layer: (layer in head_dst, False) for layer in range(g.n_layers)}
    with torch.no_grad(), attention_modes(model, modes):
        start = clean.resid[start_layer].repeat(c, 1, 1)
        final = _forward(
            model, rep.clean, hooks, final_hook=final_add, start_at_layer=start_layer, answer_at=rep.last, resid=start
        )
        return answer_metric(model, final, rep, metric).reshape(c, b)


def _head_input_hook(
    model: CircuitModel,
    clean: Run,
    delta: torch.Tensor,
    src: list[int],
    cbp: tuple[int, int, int],
    layer: int,
    qkv: str,
    width: int,
    edits: list[tuple[int, int]],
) -> tuple[str, Callable | None]:
    """Copy ``k`` of ``edits`` adds its source's difference to slot ``h`` of the per-head ``qkv`` input
    (the bridge's split q/k/v inputs must be on in ``layer``)."""

    def add(view: torch.Tensor, k: int) -> None:
        view += _on(delta[src[k]], view)

    # The per-head copy of the residual is the bridge's own fresh tensor when it is contiguous and not a
    # view: added to in place then.
    return model.head_in_hook(layer, qkv), _per_copy_hook((*cbp, width, model.d_model), edits, add, reuse_fresh=True)


def _projected_head_hook(
    model: CircuitModel,
    clean: Run,
    delta: torch.Tensor,
    src: list[int],
    cbp: tuple[int, int, int],
    layer: int,
    qkv: str,
    width: int,
    edits: list[tuple[int, int]],
) -> tuple[str, Callable | None]:
    """The same edit as :func:`_head_input_hook` without per-head inputs: in copy ``k`` only head slot
    ``h`` reads the changed input, and everything upstream of it is clean, so its projection is
    ``proj(norm(clean residual + difference))``, computed here for all edited copies in one batch and
    written into slot ``h`` of the projection's output. The layer then runs with one shared input, which
    saves the per-head normalisations and copies."""
    c, b, p = cbp
    block = model.bridge.blocks[layer]
    assert clean.resid is not None
    rows = torch.tensor([src[k] for k, _ in edits], device=delta.device)
    # On this layer's device (the model may be split over several).
    x = to_module(clean.resid[layer][None] + delta[rows], block.ln1)
    project = getattr(block.attn, qkv)
    proj = project(to_module(block.ln1(x), project).reshape(len(edits) * b, p, -1))
    proj = proj.reshape(len(edits), b, p, width, -1)
    row_of = {k: i for i, (k, _) in enumerate(edits)}
    slot = {k: h for k, h in edits}

    def put(view: torch.Tensor, k: int) -> None:
        view.copy_(proj[row_of[k], :, :, slot[k]])

    return model.head_proj_hook(layer, qkv), _per_copy_hook((c, b, p, width, proj.shape[-1]), edits, put, reuse_fresh=True)


def _projected_inputs_ok(model: CircuitModel) -> bool:
    """Whether :func:`_projected_head_hook` gives this model's own per-head-input results (checked once:
    random differences on every kind of head input of the last layer, against the plain forward from the
    tokens with the differences added to the per-head inputs)."""

    def check() -> tuple[bool, str]:
        g = model.graph
        gen = torch.Generator().manual_seed(0)
        ref = _plain_reference(model)
        b, p = ref.tokens.shape
        clean = run_sources(model, ref.tokens, keep_resid=True)
        assert clean.sources is not None
        delta = (torch.randn(clean.sources.shape, generator=gen) * clean.sources.float().std()).to(clean.sources)
        layer = g.n_layers - 1
        dst = [first + min(1, width - 1) for _, first, width in g.head_inputs(layer)] + [g.dst_head(layer, "q", 0)]
        src = [0, int(g.n_upstream[dst[1]]) - 1, 0, 0]
        finals = []
        for make in (_head_input_hook, _projected_head_hook):
            hooks = []
            for k, v in enumerate(dst):
                x, first, width = next(h for h in g.head_inputs(layer) if h[1] <= v < h[1] + h[2])
                hooks.append(make(model, clean, delta, src, (len(dst), b, p), layer, x, width, [(k, v - first)]))
            # The projections replace the per-head inputs: that layer runs without them.
            split_off = (
                _attention_configs(model, {layer: (False, True)}) if make is _projected_head_hook else contextlib.nullcontext()
            )
            with split_off:
                finals.append(_forward(model, ref.tokens.repeat(len(dst), 1), hooks))
        return _agrees(finals[1], finals[0], model.dtype, factor=10)

    return _checked_once(model, "_projected_ok", check)


def single_unit_metric(
    model: CircuitModel,
    batch: Batch,
    metric: Metric,
    removed: torch.Tensor,
    units: torch.Tensor,
    dims: torch.Tensor | None = None,
    *,
    start_layer: int = 0,
    clean: Run | None = None,
) -> torch.Tensor:
    """Per-example metric ``[copies, batch]`` where copy ``c`` replaces the output of source
    ``units[c]`` by its removed value for every reader (node-level patching), or only output dimension
    ``dims[c]`` of it (neuron-level patching).

    Args:
        removed: ``[n_sources, batch, pos, d]`` what a removed source carries.
        start_layer: every unit is in layer ``start_layer`` or later (the input node: 0); the stacked
            forward starts there from ``clean.resid``.
    """
    g = model.graph
    c = len(units)
    b, p = batch.clean.shape
    d = model.d_model
    unit_l = units.tolist()
    dim_l = dims.tolist() if dims is not None else [None] * c
    by_unit: dict[int, list[int]] = {}
    for k, u in enumerate(unit_l):
        by_unit.setdefault(u, []).append(k)

    def replace(view: torch.Tensor, k: int) -> None:
        u = unit_l[k]
        if dim_l[k] is None:
            view.copy_(removed[u])
        else:
            view[..., dim_l[k]].copy_(removed[u][..., dim_l[k]])

    def at_heads(base: int) -> Callable | None:
        edits = [(k, u - base) for u in range(base, base + g.n_heads) for k in by_unit.get(u, ())]
        return _per_copy_hook((c, b, p, g.n_heads, d), edits, replace)

    def at_one(u: int) -> Callable | None:
        return _per_copy_hook((c, b, p, d), [(k, None) for k in by_unit.get(u, ())], replace)

    hooks: list = [(model.INPUT_HOOK, at_one(0))] if start_layer == 0 else []
    for layer in range(start_layer, g.n_layers):
        heads = at_heads(g.src_head(layer, 0))
        if heads is not None:
            hooks += head_output_hooks(model, layer, heads)
        hooks.append((model.mlp_out_hook(layer), at_one(g.src_mlp(layer))))
    hooks = [(name, h) for name, h in hooks if h is not None]
    rep = batch.repeat(c).to(model.device)
    unit_layers = {(u - 1) // (g.n_heads + 1) for u in unit_l if u != 0 and (u - 1) % (g.n_heads + 1) < g.n_heads}
    modes = {layer: (False, layer in unit_layers) for layer in range(g.n_layers)}
    with torch.no_grad(), attention_modes(model, modes):
        if start_layer == 0:
            final = _forward(model, batch.clean.to(model.device).repeat(c, 1), hooks)
        else:
            assert clean is not None and clean.resid is not None
            start = clean.resid[start_layer].repeat(c, 1, 1)
            final = _forward(model, rep.clean, hooks, start_at_layer=start_layer, resid=start)
        return answer_metric(model, final, rep, metric).reshape(c, b)
