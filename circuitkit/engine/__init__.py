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

Modules, one per concept: :mod:`~circuitkit.engine.forward` (the runner, re-entry and the fast paths'
context managers), :mod:`~circuitkit.engine.fastpaths` (their checks against the plain forward),
:mod:`~circuitkit.engine.readout` (answer logits and metric), :mod:`~circuitkit.engine.wiring` (the
wiring plan: where each node is written and read, from which every pass builds its hooks),
:mod:`~circuitkit.engine.heads` (post-norm head shares), :mod:`~circuitkit.engine.sources` (source
recording), :mod:`~circuitkit.engine.memory` (the buffer estimate),
:mod:`~circuitkit.engine.gradient` (gradient passes), :mod:`~circuitkit.engine.routes` (information flow
routes), :mod:`~circuitkit.engine.masking` (circuit evaluation) and :mod:`~circuitkit.engine.patching`
(exact single-edge and single-unit patching). The names below are the ones the rest of circuitkit and
the plugins use.
"""

from __future__ import annotations

from circuitkit.engine.common import Metric
from circuitkit.engine.fastpaths import fast_paths_on
from circuitkit.engine.forward import attention_modes
from circuitkit.engine.gradient import Overrides, gradient_pass, source_groups, stacked_gradient_pass
from circuitkit.engine.heads import head_shares, share_dtype
from circuitkit.engine.masking import masked_forward, masked_metric
from circuitkit.engine.memory import available_bytes, buffer_bytes, check_fits
from circuitkit.engine.patching import single_edge_metric, single_unit_metric
from circuitkit.engine.readout import answer_logits, answer_metric
from circuitkit.engine.routes import information_flow_scores, route_importance
from circuitkit.engine.sources import SourceRun, input_embeddings, new_source_buffer, run_sources
from circuitkit.engine.wiring import Slot, Wiring, head_output_grad_hooks, head_output_hooks

__all__ = [
    "Metric",
    "Overrides",
    "Slot",
    "SourceRun",
    "Wiring",
    "answer_logits",
    "answer_metric",
    "attention_modes",
    "available_bytes",
    "buffer_bytes",
    "check_fits",
    "fast_paths_on",
    "gradient_pass",
    "head_output_grad_hooks",
    "head_output_hooks",
    "head_shares",
    "information_flow_scores",
    "input_embeddings",
    "masked_forward",
    "masked_metric",
    "new_source_buffer",
    "route_importance",
    "run_sources",
    "share_dtype",
    "single_edge_metric",
    "single_unit_metric",
    "source_groups",
    "stacked_gradient_pass",
]
