"""Task metrics: per-example numbers computed from the logits at the answer position.

Every metric maps ``logits [batch, vocab]`` and a :class:`~circuitkit.data.Batch` to ``[batch]``; larger
means more of the behaviour. Attribution and evaluation average them over examples.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from circuitkit.data import Batch
from circuitkit.errors import ConfigError, choices_hint

Metric = Callable[[torch.Tensor, Batch], torch.Tensor]


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    if values.shape[1] == 0:
        return torch.zeros(values.shape[0], dtype=values.dtype, device=values.device)
    m = mask.to(values.dtype)
    return (values * m).sum(1) / m.sum(1).clamp(min=1)


def _masked_sum(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    if values.shape[1] == 0:
        return torch.zeros(values.shape[0], dtype=values.dtype, device=values.device)
    return (values * mask.to(values.dtype)).sum(1)


def _at_least_float32(logits: torch.Tensor) -> torch.Tensor:
    """Float16/bfloat16 logits in float32 for a softmax; float32 and float64 unchanged."""
    return logits if logits.dtype in (torch.float32, torch.float64) else logits.float()


def logit_diff(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Mean logit of the correct answers minus mean logit of the incorrect ones."""
    good = logits.gather(1, batch.correct)
    bad = logits.gather(1, batch.incorrect)
    return _masked_mean(good, batch.correct_mask) - _masked_mean(bad, batch.incorrect_mask)


def prob_diff(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Summed probability of the correct answers minus summed probability of the incorrect ones."""
    probs = torch.softmax(_at_least_float32(logits), dim=-1)
    good = probs.gather(1, batch.correct)
    bad = probs.gather(1, batch.incorrect)
    return _masked_sum(good, batch.correct_mask) - _masked_sum(bad, batch.incorrect_mask)


def correct_logit(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Mean logit of the correct answers."""
    return _masked_mean(logits.gather(1, batch.correct), batch.correct_mask)


def correct_logprob(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Log of the summed probability of the correct answers."""
    logp = torch.log_softmax(_at_least_float32(logits), dim=-1).gather(1, batch.correct)
    return torch.logsumexp(logp.masked_fill(~batch.correct_mask, float("-inf")), dim=1)


METRICS: dict[str, Metric] = {
    "logit_diff": logit_diff,
    "prob_diff": prob_diff,
    "logit": correct_logit,
    "logprob": correct_logprob,
}


# Metrics that read only the logits of the batch's answer tokens (no softmax over the vocabulary): for these,
# the unembedding can be restricted to those tokens' columns (:func:`circuitkit.engine.answer_metric`).
ANSWER_LOGITS_ONLY: frozenset[str] = frozenset({"logit_diff", "logit"})

# Metrics that read the answer tokens' probabilities: the answer tokens' logits and the softmax normaliser over
# the whole vocabulary, nothing else. For these, the logits can be given as the answer tokens' columns plus
# one column holding the log of the probability mass of all other tokens (the same softmax over the answer
# tokens), which :func:`circuitkit.engine.answer_metric` computes without materialising the full logits.
ANSWER_PROBS_ONLY: frozenset[str] = frozenset({"prob_diff", "logprob"})


def get_metric(name: str) -> Metric:
    """Look a metric up by name, with a message listing the choices."""
    try:
        return METRICS[name]
    except KeyError:
        raise ConfigError(f"Unknown metric: {choices_hint(name, list(METRICS))}. Set task.metric to one of them.") from None


def accuracy(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """1.0 where the best correct answer beats every incorrect answer, else 0.0 (per example)."""
    good = logits.gather(1, batch.correct).masked_fill(~batch.correct_mask, float("-inf")).max(1).values
    if batch.incorrect.shape[1] == 0:
        return (logits.argmax(-1)[:, None] == batch.correct).any(1).float()
    bad = logits.gather(1, batch.incorrect).masked_fill(~batch.incorrect_mask, float("-inf")).max(1).values
    return (good > bad).float()
