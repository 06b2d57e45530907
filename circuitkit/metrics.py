"""Task metrics: per-example numbers computed from the logits at the answer position.

Every metric maps ``logits [batch, vocab]`` and a :class:`~circuitkit.data.Batch` to ``[batch]``; larger
means more of the behaviour. Attribution and evaluation average them over examples.

Metrics are plugins (``circuitkit_register_metrics``): a :class:`Metric` subclass registered under a name,
chosen with ``task.metric=NAME``. The builtin ones (``logit_diff``, ``prob_diff``, ``logit``, ``logprob``,
``kl``) are registered by the ``metrics`` plugin exactly like a third party's. A metric declares what it
reads (:attr:`Metric.reads`), which lets the engine compute only that part of the logits.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch

from circuitkit.data import Batch
from circuitkit.errors import ConfigError, choices_hint

#: :attr:`Metric.reads`: only the logits of the batch's answer tokens (``batch.correct`` and ``batch.incorrect``)
ANSWER_LOGITS = "answer_logits"
#: :attr:`Metric.reads`: only the answer tokens' probabilities (their logits and the softmax normaliser)
ANSWER_PROBS = "answer_probs"
#: :attr:`Metric.reads`: anything in the logits of the whole vocabulary
FULL_LOGITS = "logits"
READS = (ANSWER_LOGITS, ANSWER_PROBS, FULL_LOGITS)


class Metric(ABC):
    """A task metric: ``metric(logits [batch, vocab], batch) -> [batch]``, larger = more of the behaviour.

    Registered with ``registry.add(name, cls)`` in ``circuitkit_register_metrics`` and built as ``cls()``.

    Attributes:
        reads: what the values depend on. :data:`ANSWER_LOGITS`: only ``logits`` at the batch's answer
            tokens (the engine may then pass only those columns, with the batch's ``correct`` and
            ``incorrect`` ids renumbered to index them). :data:`ANSWER_PROBS`: only the answer tokens'
            probabilities under the full softmax (the engine may pass the answer columns followed by one
            column holding the log of the probability mass of every other token, again renumbered).
            :data:`FULL_LOGITS` (the default): the logits of the whole vocabulary, always passed as they are.
            A declaration that does not hold gives wrong numbers; the contract suite
            (:class:`circuitkit.testing.MetricContract`) checks it.
    """

    reads: ClassVar[str] = FULL_LOGITS

    def bind(self, model: Any) -> Metric:
        """This metric for ``model``: itself, unless it needs the model (``kl`` compares each run with the
        clean model's output distribution and returns a :class:`~circuitkit.objectives.KLToClean`)."""
        return self

    @abstractmethod
    def __call__(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Per-example values ``[batch]`` from the logits at each example's answer position."""


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


class LogitDiff(Metric):
    """``logit_diff``: :func:`logit_diff`."""

    reads = ANSWER_LOGITS

    def __call__(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        return logit_diff(logits, batch)


class ProbDiff(Metric):
    """``prob_diff``: :func:`prob_diff`."""

    reads = ANSWER_PROBS

    def __call__(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        return prob_diff(logits, batch)


class CorrectLogit(Metric):
    """``logit``: :func:`correct_logit`."""

    reads = ANSWER_LOGITS

    def __call__(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        return correct_logit(logits, batch)


class CorrectLogprob(Metric):
    """``logprob``: :func:`correct_logprob`."""

    reads = ANSWER_PROBS

    def __call__(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        return correct_logprob(logits, batch)


def metric_names() -> list[str]:
    """The registered metrics' names."""
    from circuitkit.plugins import get_registry

    return get_registry().metrics.names()


def get_metric(name: str) -> Metric:
    """The registered metric ``name`` (a new instance), with a message listing the choices when there is none."""
    from circuitkit.plugins import get_registry

    metrics = get_registry().metrics
    entry = metrics.entries.get(name)
    if entry is None:
        raise ConfigError(f"Unknown metric: {choices_hint(name, metrics.names())}. Set task.metric to one of them.")
    return entry.cls()


def accuracy(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """1.0 where the best correct answer beats every incorrect answer, else 0.0 (per example)."""
    good = logits.gather(1, batch.correct).masked_fill(~batch.correct_mask, float("-inf")).max(1).values
    if batch.incorrect.shape[1] == 0:
        return (logits.argmax(-1)[:, None] == batch.correct).any(1).float()
    bad = logits.gather(1, batch.incorrect).masked_fill(~batch.incorrect_mask, float("-inf")).max(1).values
    return (good > bad).float()
