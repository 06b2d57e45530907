"""Answer readout: logits at the answer position, the per-example metric from the final residual stream,
and the answer-column and chunked-softmax shortcuts for metrics that read only the answer tokens."""

from __future__ import annotations

import torch

from circuitkit.data import Batch
from circuitkit.engine.common import Metric
from circuitkit.engine.fastpaths import _unembed_columns_ok
from circuitkit.metrics import ANSWER_LOGITS, ANSWER_PROBS, FULL_LOGITS
from circuitkit.model import CircuitModel, to_module


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

    What is computed follows what the metric declares it reads (``metric.reads``,
    :class:`~circuitkit.metrics.Metric`; a plain callable reads the full logits). A metric that reads only
    the answer tokens' logits (``answer_logits``) gets only those tokens' columns of the unembedding, with
    the batch's answer ids renumbered accordingly: the same values for a fraction of the cost (the full
    unembedding of a 50k vocabulary costs as much as a transformer block when many copies of a batch are
    evaluated). For one that reads only the answer tokens' probabilities (``answer_probs``), when no
    gradient is wanted, the softmax normaliser is accumulated over chunks of the vocabulary instead of
    writing out the full logits (:func:`_answer_and_rest_logits`). Both are used when this model's
    unembedding is a plain linear map after the final norm (checked once)."""
    home = model.device
    reads = getattr(metric, "reads", FULL_LOGITS)
    logits_fn = metric if reads == ANSWER_LOGITS else None
    probs_fn = metric if reads == ANSWER_PROBS and not (torch.is_grad_enabled() and final.requires_grad) else None
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
    assert probs_fn is not None
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
