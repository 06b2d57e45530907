"""Objectives that need the model: KL divergence to the clean output distribution (metric ``kl``).

Every task metric maps ``(logits at the answer position, batch) -> [batch]`` and needs nothing else. The
KL objective of Hanna et al. (2024, "Have Faith in Faithfulness", EAP-IG-KL) and of ACDC (Conmy et al.
2023) also needs the clean model's output distribution for each example. It is implemented as a metric
*object* bound to a model, :class:`KLToClean`, with the same call signature as every other metric, so
every method and evaluator can use it unchanged:

``task.metric = "kl"`` is a registered metric name (so task configs accept it), and
:func:`bind_objective` turns a task whose metric is ``kl`` into a task whose ``metric`` is a
:class:`KLToClean` for the model. Methods call ``bind_objective(task, model)`` (the ones in this package's
plugins do it themselves); anything that receives the bound task, including the builtin EAP, EAP-IG,
patching and the evaluators, then optimises KL. Calling the unbound ``kl`` metric raises an error that
says to bind it.

Definition, per example, with ``p`` the clean model's next-token distribution at the answer position and
``q`` the distribution of the run being measured (a gradient pass, an interpolation, a circuit)::

    metric_kl = -KL(p || q) = -sum_v p(v) (log p(v) - log q(v))

The sign makes larger mean "more of the behaviour" like every other metric: the clean run scores 0 and
any change scores below 0. Attribution scores (drops of the metric) are then increases of KL, and the
faithfulness of a circuit is ``1 - KL(circuit) / KL(corrupted)``. Gradients are those of ``-KL`` with
``p`` held fixed.

The clean log-probabilities are computed once per batch: the first call on a batch runs one clean forward
(without hooks or autograd) for the rows it has not seen and caches them by token content, so the stacked
copies of a batch (``Batch.repeat``) and the many passes of integrated gradients reuse them. The cache is
bounded by memory (``max_bytes``); :meth:`KLToClean.prepare` fills it explicitly, which is needed before
calling the metric inside a ``bridge.hooks`` context (the clean forward would otherwise see those hooks).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch

from circuitkit.data import Batch
from circuitkit.errors import ConfigError
from circuitkit.interfaces import Task
from circuitkit.metrics import Metric

KL_METRIC = "kl"


class UnboundKL(Metric):
    """The metric registered as ``kl`` (so task configs accept ``metric: kl``): calling it only explains
    how to bind it to a model (:func:`bind_objective`, or :meth:`bind`)."""

    def bind(self, model: Any) -> Metric:
        return KLToClean(model)

    def __call__(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        raise ConfigError(
            "task.metric=kl compares each run with the clean model's output distribution, so it needs the model: "
            "bind it with circuitkit.objectives.bind_objective(task, model) before attribution or evaluation "
            "(the methods eap_ig_activations, acdc and information_flow_routes do this themselves)."
        )


def _float_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


class KLToClean(Metric):
    """The metric ``-KL(p_clean || q)`` at the answer position, bound to a model (see the module docstring).

    Args:
        model: the :class:`~circuitkit.model.CircuitModel` whose clean runs define ``p_clean``.
        max_bytes: memory for cached clean log-probabilities (rows of ``vocab`` numbers); the least
            recently used rows are dropped beyond it, but never the rows of the current call.
    """

    def __init__(self, model: Any, max_bytes: int = 256 * 2**20) -> None:
        self.model = model
        self.max_bytes = int(max_bytes)
        self._cache: OrderedDict[tuple[int, ...], torch.Tensor] = OrderedDict()
        self.clean_forwards = 0  # how many clean forward passes were run (for tests and diagnostics)
        self._last: tuple[tuple[tuple[int, ...], ...], torch.Tensor] | None = None  # the last call's rows

    @staticmethod
    def _keys(batch: Batch) -> list[tuple[int, ...]]:
        clean = batch.clean.detach().cpu()
        last = batch.last.detach().cpu().tolist()
        return [tuple(clean[i, : last[i] + 1].tolist()) for i in range(len(last))]

    def prepare(self, batch: Batch) -> torch.Tensor:
        """Clean log-probabilities ``[batch, vocab]`` at each example's answer position (cached)."""
        from circuitkit import engine
        from circuitkit.engine.forward import _forward

        keys = self._keys(batch)
        if not keys:
            vocab = int(self.model.bridge.cfg.d_vocab)
            return torch.zeros(0, vocab, dtype=self.model.dtype, device=self.model.device)
        missing = list(dict.fromkeys(k for k in keys if k not in self._cache))
        if missing:
            model = self.model
            width = max(len(k) for k in missing)
            tokens = torch.full((len(missing), width), model.pad_id, dtype=torch.long)
            for r, k in enumerate(missing):
                tokens[r, : len(k)] = torch.tensor(k, dtype=torch.long)
            last = torch.tensor([len(k) - 1 for k in missing], dtype=torch.long)
            with torch.no_grad():
                final = _forward(model, tokens.to(model.device), [])
                logits = engine.answer_logits(model, final, last)
                logp = torch.log_softmax(logits.to(_float_dtype(logits)), dim=-1)
            self.clean_forwards += 1
            for r, k in enumerate(missing):
                self._cache[k] = logp[r].detach().clone()
        unique = tuple(dict.fromkeys(keys))
        if self._last is not None and self._last[0] == unique:
            rows = self._last[1]
        else:
            for k in unique:
                self._cache.move_to_end(k)
            self._evict(keep=set(unique))
            rows = torch.stack([self._cache[k] for k in unique])
            self._last = (unique, rows)
        if len(unique) == len(keys):
            return rows
        where = {k: i for i, k in enumerate(unique)}
        return rows[torch.tensor([where[k] for k in keys], device=rows.device)]

    def _evict(self, keep: set[tuple[int, ...]]) -> None:
        if not self._cache:
            return
        row = next(iter(self._cache.values()))
        limit = max(1, self.max_bytes // max(1, row.numel() * row.element_size()))
        while len(self._cache) > limit:
            k = next(iter(self._cache))
            if k in keep:
                break
            del self._cache[k]

    def __call__(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        ref = self.prepare(batch).to(logits.device)
        logq = torch.log_softmax(logits.to(_float_dtype(logits)), dim=-1)
        ref = ref.to(logq.dtype)
        return -(ref.exp() * (ref - logq)).sum(-1)

    def kl(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        """``KL(p_clean || q)`` per example (the positive divergence)."""
        return -self(logits, batch)


class BoundTask(Task):
    """A task whose metric is bound to a model; everything else is the wrapped task's.

    Built by :func:`bind_objective`. ``metric`` is the bound metric object; ``generate``, ``build`` and
    any other attribute come from the wrapped task.
    """

    def __init__(self, task: Task, metric: Any) -> None:
        super().__init__(task.config)
        self.wrapped = task
        self.bound_metric = metric
        self.metric = metric  # what every pass calls (a Metric object: the engine reads its declaration)

    def generate(self, tokenizer: Any, split: str):  # noqa: ANN201
        return self.wrapped.generate(tokenizer, split)

    def build(self, tokenizer: Any, *, prepend_bos: bool = True):  # noqa: ANN201
        return self.wrapped.build(tokenizer, prepend_bos=prepend_bos)

    def __getattr__(self, name: str) -> Any:
        # Only called for attributes not found on the proxy itself.
        if name == "wrapped":
            raise AttributeError(name)
        return getattr(self.wrapped, name)


def uses_kl(task: Task) -> bool:
    return getattr(getattr(task, "config", None), "metric", None) == KL_METRIC


def bind_objective(task: Task, model: Any) -> Task:
    """``task`` itself, or, if its metric is ``kl``, a :class:`BoundTask` whose metric is
    :class:`KLToClean` for ``model``. Binding an already bound task to the same model is a no-op."""
    if not uses_kl(task):
        return task
    if isinstance(task, BoundTask) and isinstance(task.bound_metric, KLToClean) and task.bound_metric.model is model:
        return task
    base = task.wrapped if isinstance(task, BoundTask) else task
    return BoundTask(base, KLToClean(model))


def kl_task(task: Task, model: Any) -> BoundTask:
    """A task like ``task`` whose metric is ``-KL(p_clean || q)`` for ``model``, whatever ``task.config.metric``
    says (used by ACDC, whose default objective is KL)."""
    if isinstance(task, BoundTask) and isinstance(task.bound_metric, KLToClean) and task.bound_metric.model is model:
        return task
    base = task.wrapped if isinstance(task, BoundTask) else task
    return BoundTask(base, KLToClean(model))
