"""The memory estimate: bytes of a source buffer, free memory on a device (at most ``$CIRCUITKIT_MEMORY_LIMIT``),
attribution's working memory (buffers, the forward pass's activations kept for the backward pass, the
backward's temporaries, accumulators), and a clear error before any work, naming the settings that would fit,
when it will not fit."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from circuitkit.model import CircuitModel


def buffer_bytes(model: CircuitModel, batch: int, positions: int, dtype: torch.dtype | None = None, copies: int = 1) -> int:
    """Bytes of one source buffer ``[n_sources, copies * batch, positions, d_model]``."""
    itemsize = torch.empty((), dtype=dtype or model.dtype).element_size()
    return model.graph.n_sources * copies * batch * positions * model.d_model * itemsize


#: Environment variable: the memory (bytes; or with a unit, ``512MiB``, ``2GiB``, ``1.5GB``) the checks treat as
#: free on the model's device when it is less than what the device reports (to keep a run within a share of a
#: machine, or to try the out-of-memory advice on a small machine).
MEMORY_LIMIT_ENV = "CIRCUITKIT_MEMORY_LIMIT"

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def memory_limit() -> int | None:
    """``$CIRCUITKIT_MEMORY_LIMIT`` in bytes, or None when unset."""
    import os
    import re

    raw = os.environ.get(MEMORY_LIMIT_ENV, "").strip()
    if not raw:
        return None
    m = re.fullmatch(r"([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)", raw)
    if m is None or m.group(2).lower() not in _UNITS:
        from circuitkit.errors import ConfigError

        raise ConfigError(
            f"{MEMORY_LIMIT_ENV}={raw!r} is not a memory size: give bytes or a number with a unit (512MiB, 2GiB, 1.5GB)."
        )
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def available_bytes(device: torch.device) -> int | None:
    """Free memory on ``device`` (CUDA: free device memory; CPU: MemAvailable), or None if unknown; at most
    ``$CIRCUITKIT_MEMORY_LIMIT`` when that is set."""
    limit = memory_limit()
    free = _device_free(device)
    if limit is None:
        return free
    return limit if free is None else min(free, limit)


def _device_free(device: torch.device) -> int | None:
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


@dataclass(frozen=True)
class PassMemory:
    """The estimated working memory of attribution on the model's device, above the loaded model and data.

    Attributes:
        buffers: the source-output buffers (corrupted outputs and differences) and integrated gradients'
            input endpoints.
        activations: what the forward pass keeps for the backward pass (measured once per model on short
            probes and scaled to the batch, see :func:`activation_bytes`).
        transient: the backward pass's largest temporaries: gradients of one layer's activations and the
            contraction's reshaped gradients.
        accumulators: the float64 scores, per-example scores and neuron scores.
    """

    buffers: int
    activations: int
    transient: int
    accumulators: int

    @property
    def total(self) -> int:
        return self.buffers + self.activations + self.transient + self.accumulators


def _probe_saved(model: CircuitModel, positions: int) -> tuple[int, int]:
    """Bytes the forward pass keeps for its backward pass on one example of ``positions`` tokens (weights
    excluded), and the largest single such tensor."""
    from circuitkit.engine.forward import _forward

    params = {p.untyped_storage().data_ptr() for p in model.bridge.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in params and t.device.type != "meta":
            seen[s.data_ptr()] = s.nbytes()
        return t

    def leaf(t: torch.Tensor, hook: object) -> torch.Tensor:
        return t.detach().clone().requires_grad_(True)

    def copy(t: torch.Tensor, hook: object) -> torch.Tensor:
        return t.clone()  # as the gradient pass's MLP-input hooks do

    g = model.graph
    hooks = [(model.INPUT_HOOK, leaf)] + [(model.mlp_in_hook(layer), copy) for layer in range(g.n_layers)]
    tokens = torch.randint(0, int(model.bridge.cfg.d_vocab), (1, positions), generator=torch.Generator().manual_seed(0))
    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        final = _forward(model, tokens.to(model.device), hooks)
        final[:, -1].float().sum()
    return sum(seen.values()), max(seen.values(), default=0)


def activation_bytes(model: CircuitModel, batch: int, positions: int) -> tuple[int, int]:
    """Bytes the forward pass keeps for the backward pass with ``batch`` examples of ``positions`` tokens, and
    the largest single such tensor: measured once per model on one example of 8 and of 16 tokens and fitted
    as ``batch * (a * positions + b * positions**2)`` (the attention's weights grow with the square)."""
    probe = model.__dict__.get("_activation_probe")
    if probe is None:
        (s8, m8), (s16, m16) = _probe_saved(model, 8), _probe_saved(model, 16)
        # s(p) = a p + b p^2 through both points
        b2 = max((s16 - 2 * s8) / (16 * 16 - 2 * 8 * 8), 0.0)
        a = max((s8 - b2 * 64) / 8, 0.0)
        mb2 = max((m16 - 2 * m8) / (256 - 128), 0.0)
        ma = max((m8 - mb2 * 64) / 8, 0.0)
        probe = (a, b2, ma, mb2)
        model.__dict__["_activation_probe"] = probe
    a, b2, ma, mb2 = probe
    p = positions
    return int(batch * (a * p + b2 * p * p)), int(batch * (ma * p + mb2 * p * p))


def attribution_memory(
    model: CircuitModel,
    batch: int,
    tokens: int,
    *,
    positions: int | None = None,
    buffer_dtype: torch.dtype | None = None,
    interpolates: bool = False,
    per_example: bool = False,
    neurons: bool = False,
) -> PassMemory:
    """The working memory of :func:`circuitkit.attribution.gradient_attribution` for batches of ``batch``
    examples of up to ``tokens`` tokens, ``positions`` of them per pass (None: all), differences stored in
    ``buffer_dtype`` (None: the model's), with integrated gradients' interpolated inputs
    (``interpolates``), per-example scores (``per_example``) and neuron scores (``neurons``)."""
    g = model.graph
    span = tokens if positions is None else min(positions, tokens)
    dtype = buffer_dtype or model.dtype
    shared = dtype == model.dtype
    buffers = buffer_bytes(model, batch, span) + (0 if shared else buffer_bytes(model, batch, span, dtype))
    item = torch.empty((), dtype=model.dtype).element_size()
    if interpolates:
        buffers += 2 * batch * tokens * model.d_model * item  # the interpolation's start and difference
    saved, largest = activation_bytes(model, batch, tokens)
    per_layer = saved // max(g.n_layers, 1)
    # Backward: one layer's activation gradients and the contraction's reshaped gradient are alive at once.
    transient = per_layer + largest
    acc = g.n_sources * g.n_destinations * 8
    if per_example:
        acc += g.n_sources * g.n_destinations * batch * 8
    if neurons:
        acc += g.n_sources * model.d_model * 8
    return PassMemory(buffers, saved, transient, acc)


GENERAL_ADVICE = (
    "Lower batch_size (scores do not depend on it), use buffer_dtype=bfloat16, positions_per_pass=<k> (k positions "
    "per pass; more passes), a device map over several GPUs (model.device_map=auto or model.n_devices=N), or shorter prompts."
)


def check_fits(model: CircuitModel, needed: int, what: str, advice: Callable[[int], str] | None = None) -> None:
    """Raise a clear error, before any work, when ``needed`` bytes will not fit on the model's device.
    ``advice(free)`` names the settings that would fit in ``free`` bytes; the general options follow."""
    from circuitkit.errors import CircuitkitError

    free = available_bytes(model.device)
    if free is not None and needed > free:
        limit = memory_limit()
        by = f" (the limit {MEMORY_LIMIT_ENV} sets)" if limit is not None and limit == free else ""
        specific = advice(free) if advice is not None else ""
        raise CircuitkitError(
            f"{what} needs about {needed / 2**30:.2f} GiB of working memory on {model.device}, but only "
            f"{free / 2**30:.2f} GiB is free{by}. " + (specific + " " if specific else "") + GENERAL_ADVICE
        )


def check_attribution_fits(model: CircuitModel, batch: int, tokens: int, what: str, **kw: Any) -> PassMemory:
    """:func:`attribution_memory` of these settings (``kw``: its keyword arguments), and a clear error before
    any work, naming the settings that would fit, when it will not fit on the model's device."""
    need = attribution_memory(model, batch, tokens, **kw)
    check_fits(model, need.total, what, lambda free: attribution_advice(model, free, batch, tokens, **kw))
    return need


def attribution_advice(model: CircuitModel, free: int, batch: int, tokens: int, **kw: Any) -> str:
    """The settings that cut attribution's memory and would each fit in ``free`` bytes, with their estimates
    (:func:`attribution_memory`); empty when none does alone."""
    fits = []
    dtype = kw.get("buffer_dtype") or model.dtype
    if torch.empty((), dtype=dtype).element_size() > 2:
        m = attribution_memory(model, batch, tokens, **{**kw, "buffer_dtype": torch.bfloat16})
        if m.total <= free:
            fits.append(f"buffer_dtype=bfloat16 (about {m.total / 2**30:.2f} GiB)")
    span = kw.get("positions") or tokens
    for k in sorted({k for k in (64, 32, 16, 8, 4, 2, 1) if k < span}, reverse=True):
        m = attribution_memory(model, batch, tokens, **{**kw, "positions": k})
        if m.total <= free:
            fits.append(f"positions_per_pass={k} (about {m.total / 2**30:.2f} GiB; {-(-tokens // k)} groups of passes)")
            break
    for b in sorted({batch // 2, batch // 4, 1} - {0}, reverse=True):
        if b < batch:
            m = attribution_memory(model, b, tokens, **kw)
            if m.total <= free:
                fits.append(f"batch_size={b} (about {m.total / 2**30:.2f} GiB)")
                break
    return ("Each of these would fit: " + "; ".join(fits) + ".") if fits else ""
