"""Evaluating circuits: the metric with every edge outside a circuit carrying its corrupted value.

:func:`evaluate_keeps` evaluates many circuits in one sweep over the data: the clean and corrupted runs are
done once per batch and the circuits are stacked along the batch dimension (``circuits_per_pass`` at a
time), so a faithfulness curve costs little more than its masked passes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from circuitkit import engine
from circuitkit.data import TaskData
from circuitkit.errors import CircuitkitError
from circuitkit.interfaces import RunContext, Task
from circuitkit.interventions import Intervention
from circuitkit.model import CircuitModel
from circuitkit.progress import progress


@dataclass
class Evaluation:
    """Mean metrics over the examples: ``clean``, ``corrupted`` and one value per circuit.

    ``corrupted`` is the metric with every edge removed: the corrupted run under patching, the fully
    ablated model under zero/mean ablation."""

    clean: float
    corrupted: float
    circuits: list[float]
    n_examples: int

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
    ``neurons [n_circuits, n_sources, d_model]`` (1 = kept) for neuron-level circuits."""
    n_c = keeps.shape[0]
    sums = torch.zeros(n_c, dtype=torch.float64)
    clean_sum = corrupted_sum = 0.0
    n = 0
    batches = (len(data) + ctx.batch_size - 1) // ctx.batch_size
    for batch in progress(data.batches(ctx.batch_size, model.pad_id), ctx, total=batches, desc=desc):
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
                none = torch.zeros(1, *keeps.shape[1:], dtype=removed.dtype, device=model.device)
                corrupted_metric = engine.masked_metric(model, batch, task.metric, removed, none)[0]
            clean_final = engine._forward(model, batch.clean, [])
            corrupted_sum += float(corrupted_metric.double().sum())
            clean_sum += float(engine.answer_metric(model, clean_final, batch, task.metric).double().sum())
        for start in range(0, n_c, circuits_per_pass):
            chunk = keeps[start : start + circuits_per_pass].to(device=model.device, dtype=removed.dtype)
            dims = (
                None
                if neurons is None
                else neurons[start : start + circuits_per_pass].to(device=model.device, dtype=removed.dtype)
            )
            vals = engine.masked_metric(model, batch, task.metric, removed, chunk, neurons=dims)
            sums[start : start + len(chunk)] += vals.double().sum(1).cpu()
        n += len(batch)
    ev = Evaluation(clean_sum / n, corrupted_sum / n, (sums / n).tolist(), n)
    bad = [v for v in (ev.clean, ev.corrupted, *ev.circuits) if not math.isfinite(v)]
    if bad:
        raise CircuitkitError(
            f"The task metric is NaN or infinite during evaluation (clean={ev.clean}, corrupted={ev.corrupted}). "
            "Check the task's answers and the model's dtype (float32 is safest)."
        )
    return ev
