"""Evaluating circuits: the metric with every edge outside a circuit carrying its corrupted value.

:func:`evaluate_keeps` evaluates many circuits in one sweep over the data: the clean and corrupted runs are
done once per batch and the circuits are stacked along the batch dimension (``circuits_per_pass`` at a
time; on a CPU at most as many as fit :data:`CPU_PASS_BYTES`), so a faithfulness curve costs little more
than its masked passes. A circuit that keeps every edge is the clean run and one that keeps none the fully
removed run: they take those runs' metrics and need no masked pass.

:class:`EvaluationCache` (``ctx.evaluations``, set by the pipeline for each run) shares that work between
the calls of one run: per batch the clean and corrupted metrics and the values removed edges carry (while
they fit in its memory limit), and the metric of every circuit already evaluated. A selector that
searches over circuit sizes, a faithfulness curve and the faithfulness of the chosen circuit then run each
distinct circuit once, and a later sweep runs only the masked passes of circuits not seen yet.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from circuitkit import engine
from circuitkit.data import TaskData
from circuitkit.engine.forward import _forward
from circuitkit.errors import CircuitkitError
from circuitkit.interfaces import RunContext, Task
from circuitkit.interventions import Intervention
from circuitkit.model import CircuitModel
from circuitkit.progress import progress

log = logging.getLogger("circuitkit")


@dataclass
class Evaluation:
    """Mean metrics over the examples: ``clean``, ``corrupted`` and one value per circuit.

    ``corrupted`` is the metric with every edge removed: the corrupted run under patching, the fully
    ablated model under zero/mean ablation."""

    clean: float
    corrupted: float
    circuits: list[float]
    n_examples: int
    #: per-example metrics (float64, CPU): ``clean_values``/``corrupted_values`` ``[n_examples]``,
    #: ``circuit_values`` ``[n_circuits, n_examples]`` — the values the means above average (the bootstrap
    #: intervals of :mod:`circuitkit.uncertainty` resample them)
    clean_values: torch.Tensor | None = None
    corrupted_values: torch.Tensor | None = None
    circuit_values: torch.Tensor | None = None

    def faithfulness(self, value: float) -> float | None:
        """``(value - corrupted) / (clean - corrupted)``; None when clean and corrupted are (nearly) equal."""
        gap = self.clean - self.corrupted
        if not math.isfinite(gap) or abs(gap) < 1e-9 * max(1.0, abs(self.clean)):
            return None
        return (value - self.corrupted) / gap


UNDEFINED_NOTE = (
    "faithfulness is undefined: the clean and corrupted metrics are equal, so the model shows no behaviour "
    "to explain on these examples (check the task and the model)."
)

#: Faithfulness is flagged as not meaningful when the mean clean-corrupted gap is smaller than this many
#: standard errors of that mean (see :func:`gap_check`).
GAP_SE_FACTOR = 3.0
#: ... or smaller than this fraction of the metric's own size (the mean of ``(|clean| + |corrupted|) / 2``).
GAP_MIN_RELATIVE = 1e-3

_warned: set[tuple[int, str]] = set()


def gap_check(ev: Evaluation, factor: float = GAP_SE_FACTOR, min_relative: float = GAP_MIN_RELATIVE) -> tuple[bool | None, str]:
    """Whether faithfulness, a ratio over the gap ``metric(clean) - metric(corrupted)``, means anything here.

    With ``g_i`` the gap of example ``i`` (``ev.clean_values - ev.corrupted_values``), ``mean`` their mean and
    ``se = sd(g) / sqrt(n)`` its standard error (sample standard deviation, ``n - 1``), faithfulness is
    meaningful when both

    - ``|mean| >= factor * se``: the examples agree that the clean prompt shows more (or less) of the
      behaviour than the corrupted one; below it (a random or untrained model: gaps of either sign that
      cancel out) the denominator is noise and any faithfulness value (0.3, 1.3, ...) is an accident;
    - ``|mean| >= min_relative * size``, ``size`` the mean of ``(|clean_i| + |corrupted_i|) / 2``: the
      prompts change the metric by more than a sliver of its own size (a random model can tell them apart
      consistently but by a millionth of a logit).

    Returns ``(meaningful, reason)``: ``(None, reason)`` when it cannot be told (fewer than two examples, or
    no per-example values), ``(True, "")`` or ``(False, reason)``.
    """
    if ev.clean_values is None or ev.corrupted_values is None:
        return None, "the per-example metrics were not kept, so the spread of the clean-corrupted gap is unknown"
    clean, corrupted = ev.clean_values.double().flatten(), ev.corrupted_values.double().flatten()
    gaps = clean - corrupted
    n = int(gaps.numel())
    if n < 2:
        return None, f"{n} example: the spread of the clean-corrupted gap over examples is unknown"
    mean = float(gaps.mean())
    sd = float(gaps.std(unbiased=True))
    se = sd / math.sqrt(n)
    size = float(((clean.abs() + corrupted.abs()) / 2).mean())
    if not (math.isfinite(mean) and math.isfinite(se) and math.isfinite(size)):
        return (
            False,
            f"faithfulness is not meaningful here: the clean-corrupted gap is not finite (mean {mean}, standard error {se})",
        )
    what = f"the clean-corrupted gap (mean {mean:.3g} over {n} examples)"
    advice = "Check the task and the model (a random or untrained model shows no behaviour), or use more examples."
    if not abs(mean) >= factor * se or mean == 0.0:
        return False, (
            f"faithfulness is not meaningful here: {what} is smaller than {factor:g} standard errors of its mean "
            f"(standard error {se:.3g}; the examples' gaps spread with standard deviation {sd:.3g}), so the examples "
            f"do not agree that the model shows the behaviour and faithfulness, a ratio over this gap, is noise. {advice}"
        )
    if abs(mean) < min_relative * size:
        return False, (
            f"faithfulness is not meaningful here: {what} is under {min_relative:g} of the metric's own size "
            f"(mean |metric| {size:.3g}): the model barely tells the clean prompts from the corrupted ones, so "
            f"faithfulness, a ratio over this gap, measures a negligible effect. {advice}"
        )
    return True, ""


def add_gap_check(res: Any, ev: Evaluation, ctx: Any = None) -> None:
    """Record :func:`gap_check` in an evaluator's result: ``values["faithfulness_meaningful"]`` (true, false or
    null), ``values["gap_stderr"]`` and, when not meaningful, the reason as a note and a warning (once per
    run context and reason)."""
    meaningful, reason = gap_check(ev)
    res.values["faithfulness_meaningful"] = meaningful
    if ev.clean_values is not None and ev.corrupted_values is not None and ev.clean_values.numel() >= 2:
        gaps = ev.clean_values.double() - ev.corrupted_values.double()
        res.values["gap_stderr"] = float(gaps.std(unbiased=True)) / math.sqrt(gaps.numel())
    if meaningful is False:
        res.notes.append(reason)
        key = (id(ctx), reason)
        if key not in _warned:
            _warned.add(key)
            log.warning("%s", reason)


@dataclass
class _BatchState:
    """One batch's share of every evaluation: the values removed edges carry and the endpoint metrics."""

    batch: Any
    removed: torch.Tensor
    clean: torch.Tensor  # [batch] float64, on the CPU
    corrupted: torch.Tensor  # [batch] float64, on the CPU


@dataclass
class _Entry:
    """What an :class:`EvaluationCache` holds for one (model, task, data, batch size, intervention)."""

    owners: tuple[Any, ...]
    states: dict[int, _BatchState] = field(default_factory=dict)
    clean: torch.Tensor | None = None  # [n_examples] float64
    corrupted: torch.Tensor | None = None
    circuits: dict[bytes, torch.Tensor] = field(default_factory=dict)  # circuit key -> [n_examples] float64
    state_bytes: int = 0


class EvaluationCache:
    """Evaluation work shared by the calls of one run (``ctx.evaluations``; see the module's docstring).

    Entries are keyed by the *identity* of the model, task, data and intervention (held here, so the
    identities stay unique): only use one while none of them changes, e.g. for one run. Per-batch values
    of removed edges are kept while their total stays under ``max_bytes`` (default: a quarter of the
    device's free memory, at most 2 GiB); the batches beyond are recomputed in each sweep.
    """

    def __init__(self, max_bytes: int | None = None) -> None:
        self.max_bytes = max_bytes
        self._entries: list[_Entry] = []
        #: circuits measured by masked passes, and answered from the cache, since creation
        self.evaluated = 0
        self.reused = 0

    def entry(self, model: CircuitModel, task: Task, data: TaskData, ctx: RunContext) -> _Entry:
        owners = (model, task, data, ctx.batch_size, ctx.intervention)
        for e in self._entries:
            if len(e.owners) == len(owners) and all(a is b for a, b in zip(e.owners, owners, strict=True)):
                return e
        e = _Entry(owners)
        self._entries.append(e)
        return e

    def limit(self, device: torch.device) -> int:
        if self.max_bytes is None:
            free = engine.available_bytes(device)
            self.max_bytes = min(2 * 2**30, (free or 0) // 4)
        return self.max_bytes


def _circuit_key(keep: torch.Tensor, neurons: torch.Tensor | None) -> bytes:
    h = hashlib.blake2b(digest_size=20)
    h.update(str(tuple(keep.shape)).encode())
    h.update(keep.detach().to("cpu", torch.bool).contiguous().numpy().tobytes())
    if neurons is not None:
        h.update(b"neurons" + str(tuple(neurons.shape)).encode())
        h.update(neurons.detach().to("cpu", torch.bool).contiguous().numpy().tobytes())
    return h.digest()


def _batch_state(model: CircuitModel, task: Task, batch: Any, ctx: RunContext, keep_shape: tuple[int, ...]) -> _BatchState:
    batch = batch.to(model.device)
    iv = ctx.intervention or Intervention()
    with torch.no_grad():
        if iv.uses_corrupted:
            corr = engine.run_sources(model, batch.corrupted)
            removed = corr.sources
            assert removed is not None
            corrupted_metric = engine.answer_metric(model, corr.final, batch, task.metric)
        else:
            # Zero/mean ablation: the baseline is the model with every edge ablated (the empty circuit).
            removed = iv.values(model, batch)
            none = torch.zeros(1, *keep_shape, dtype=removed.dtype, device=model.device)
            corrupted_metric = engine.masked_metric(model, batch, task.metric, removed, none)[0]
        clean_final = _forward(model, batch.clean, [])
        clean_metric = engine.answer_metric(model, clean_final, batch, task.metric)
    return _BatchState(batch, removed, clean_metric.double().cpu(), corrupted_metric.double().cpu())


#: On a CPU, the most bytes one stacked masked pass's per-head tensors (``[copies * batch, pos, heads,
#: d_model]``) take. Stacking more circuits buys a CPU nothing (the matrix products of one batch already fill
#: it), and a larger buffer is memory fresh from the operating system each time it is allocated (glibc maps
#: allocations above 32 MiB anew, and every first touch of a page faults). On a GPU, where stacking fills the
#: device, ``circuits_per_pass`` alone decides.
CPU_PASS_BYTES = 32 * 2**20


def copies_per_pass(model: CircuitModel, batch: Any) -> int:
    """How many circuits a stacked masked pass of ``batch`` takes at most on ``model``'s device (see
    :data:`CPU_PASS_BYTES`; unlimited off the CPU)."""
    if model.device.type != "cpu":
        return 2**62
    b, p = batch.clean.shape
    itemsize = torch.empty(0, dtype=model.dtype).element_size()
    per_copy = b * p * model.graph.n_heads * model.d_model * itemsize
    return max(1, CPU_PASS_BYTES // max(per_copy, 1))


def _endpoints(model: CircuitModel, keeps: torch.Tensor, neurons: torch.Tensor | None) -> list[str | None]:
    """Per circuit: ``"full"`` when it keeps every edge of the graph (and, with ``neurons``, every
    dimension), ``"empty"`` when it keeps none, else None."""
    valid = model.graph.valid.to(keeps.device)
    out: list[str | None] = []
    for i in range(keeps.shape[0]):
        k = keeps[i][valid]
        if bool((k == 0).all()):
            out.append("empty")
        elif bool((k == 1).all()) and (neurons is None or bool((neurons[i] == 1).all())):
            out.append("full")
        else:
            out.append(None)
    return out


def evaluate_keeps(
    model: CircuitModel,
    task: Task,
    data: TaskData,
    keeps: torch.Tensor,
    ctx: RunContext,
    *,
    circuits_per_pass: int = 8,
    desc: str = "evaluation",
    neurons: torch.Tensor | None = None,
) -> Evaluation:
    """Mean metric of each circuit in ``keeps [n_circuits, n_sources, n_destinations]`` (1 = kept);
    ``neurons [n_circuits, n_sources, d_model]`` (1 = kept) for neuron-level circuits.

    With an :class:`EvaluationCache` in ``ctx.evaluations``, circuits evaluated before in the run are not
    run again, and neither are the clean and corrupted runs of the batches it holds."""
    n_c = keeps.shape[0]
    cache: EvaluationCache | None = getattr(ctx, "evaluations", None)
    entry = cache.entry(model, task, data, ctx) if cache is not None else None
    keys = [_circuit_key(keeps[i], None if neurons is None else neurons[i]) for i in range(n_c)] if entry is not None else []
    # The circuits to run: every one without a cache, else each distinct circuit not evaluated yet.
    todo: list[int] = []
    if entry is None:
        todo = list(range(n_c))
    else:
        pending: set[bytes] = set()
        for i, k in enumerate(keys):
            if k not in entry.circuits and k not in pending:
                pending.add(k)
                todo.append(i)
    per_circuit = torch.zeros(len(todo), len(data), dtype=torch.float64)
    if todo or entry is None or entry.clean is None:
        clean = torch.zeros(len(data), dtype=torch.float64)
        corrupted = torch.zeros(len(data), dtype=torch.float64)
        # A circuit that keeps every edge is the clean run and one that keeps none the fully removed one: their
        # values are the clean and corrupted metrics of each batch, no masked pass is run for them.
        ends = _endpoints(model, keeps[todo], None if neurons is None else neurons[todo])
        run = [j for j, end in enumerate(ends) if end is None]
        sel_keeps = keeps[[todo[j] for j in run]]
        sel_neurons = None if neurons is None else neurons[[todo[j] for j in run]]
        batches = (len(data) + ctx.batch_size - 1) // ctx.batch_size
        limit = cache.limit(model.device) if cache is not None else 0
        buffers: dict = {}  # the masked passes' working memory, reused from one pass to the next
        start_ex = 0
        for b, batch in enumerate(progress(data.batches(ctx.batch_size, model.pad_id), ctx, total=batches, desc=desc)):
            state = entry.states.get(b) if entry is not None else None
            if state is None:
                state = _batch_state(model, task, batch, ctx, tuple(keeps.shape[1:]))
                size = state.removed.numel() * state.removed.element_size()
                if entry is not None and entry.state_bytes + size <= limit:
                    entry.states[b] = state
                    entry.state_bytes += size
            nb = len(state.clean)
            rows = slice(start_ex, start_ex + nb)
            clean[rows], corrupted[rows] = state.clean, state.corrupted
            for j, end in enumerate(ends):
                if end is not None:
                    per_circuit[j, rows] = state.clean if end == "full" else state.corrupted
            removed = state.removed
            step = min(circuits_per_pass, copies_per_pass(model, state.batch))
            for start in range(0, len(run), step):
                chunk = sel_keeps[start : start + step].to(device=model.device, dtype=removed.dtype)
                dims = (
                    None
                    if sel_neurons is None
                    else sel_neurons[start : start + step].to(device=model.device, dtype=removed.dtype)
                )
                vals = engine.masked_metric(model, state.batch, task.metric, removed, chunk, neurons=dims, buffers=buffers)
                per_circuit[run[start : start + len(chunk)], rows] = vals.double().cpu()
            start_ex += nb
        if entry is not None:
            entry.clean, entry.corrupted = clean, corrupted
    else:
        assert entry.clean is not None and entry.corrupted is not None
        clean, corrupted = entry.clean, entry.corrupted
    if entry is None:
        values = per_circuit
    else:
        for j, i in enumerate(todo):
            entry.circuits[keys[i]] = per_circuit[j]
        values = torch.stack([entry.circuits[k] for k in keys]) if keys else torch.zeros(0, len(data), dtype=torch.float64)
        cache.evaluated += len(todo)  # type: ignore[union-attr]
        cache.reused += n_c - len(todo)  # type: ignore[union-attr]
    n = len(data)
    assert clean is not None and corrupted is not None
    ev = Evaluation(float(clean.sum()) / n, float(corrupted.sum()) / n, (values.sum(1) / n).tolist(), n, clean, corrupted, values)
    bad = [v for v in (ev.clean, ev.corrupted, *ev.circuits) if not math.isfinite(v)]
    if bad:
        raise CircuitkitError(
            f"The task metric is NaN or infinite during evaluation (clean={ev.clean}, corrupted={ev.corrupted}). "
            "Check the task's answers and the model's dtype (float32 is safest)."
        )
    return ev
