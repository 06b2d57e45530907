"""The four interfaces of circuitkit, one fixed signature each, and their config base classes.

A run is ``Task -> Attributor -> Selector -> Evaluator(s) -> Reporter(s)``:

- :class:`Task` builds clean/corrupted examples for a tokenizer and defines the metric.
- :class:`Attributor` scores every edge of the model's graph (:class:`~circuitkit.results.Scores`).
- :class:`Selector` turns scores into a connected :class:`~circuitkit.results.Circuit`.
- :class:`Evaluator` measures a circuit (:class:`~circuitkit.results.EvalResult`).
- :class:`Reporter` sends a finished run somewhere (W&B, ...); the result files are always written.

Each implementation is registered with a config dataclass (a subclass of :class:`PluginConfig`); the
instance is built as ``cls(config)``. Method knobs live in the config, never in extra call arguments.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from circuitkit.data import Batch, Example, Rejected, TaskData, tokenize_examples
from circuitkit.metrics import ANSWER_LOGITS, ANSWER_PROBS, FULL_LOGITS, get_metric

if TYPE_CHECKING:
    from collections.abc import Iterable

    from circuitkit.graph import Graph
    from circuitkit.model import CircuitModel
    from circuitkit.results import Circuit, EvalResult, RunResult, Scores


@dataclass
class PluginConfig:
    """Base of every plugin's config. ``name`` is the registered name (filled in by the registry)."""

    name: str = ""


@dataclass
class TaskConfig(PluginConfig):
    """Common task options.

    Attributes:
        n_examples: how many examples to use (after filtering).
        seed: generator seed; the same seed gives the same examples.
        split: ``"test"`` (held out from the bundled model's training data) or ``"train"``.
        metric: a registered metric (``logit_diff``, ``prob_diff``, ``logit``, ``logprob``, ``kl``, or a plugin's).
        min_examples: fewer valid examples than this is an error.
    """

    n_examples: int = 64
    seed: int = 0
    split: str = "test"
    metric: str = "logit_diff"
    min_examples: int = 4


@dataclass
class RunContext:
    """Run-level settings shared by every component of a run.

    Attributes:
        batch_size: examples per forward pass; results do not depend on it.
        progress: show progress bars.
        seed: the run's seed.
        scores: the attribution scores of this run (set before evaluation).
        cache_dir: where components may cache work (None: no caching).
        intervention: what a removed edge carries in attribution and evaluation
            (:class:`circuitkit.interventions.Intervention`; None: the corrupted run, i.e. patching).
        buffer_dtype: precision of the activation-difference buffer of gradient methods (``bfloat16``...;
            None: the model's dtype). Part of the attribution cache key.
        positions_per_pass: positions of that buffer per gradient pass (None: all). Part of the
            attribution cache key.
        evaluations: evaluation work shared within the run
            (:class:`circuitkit.evaluation.EvaluationCache`; None: every evaluation starts afresh). The
            pipeline gives each run its own.
        bootstrap: options of the bootstrap intervals over examples (the run's ``bootstrap:`` block, a
            mapping or :class:`circuitkit.uncertainty.BootstrapConfig`; None: 1000 resamples, level 0.95).
        attributor: the run's method (set by the pipeline), for evaluators that attribute again on other
            data (``stability``); None outside a run.
    """

    batch_size: int = 16
    progress: bool = True
    seed: int = 0
    scores: Scores | None = None
    cache_dir: str | None = None
    intervention: Any = None
    buffer_dtype: str | None = None
    positions_per_pass: int | None = None
    evaluations: Any = None
    bootstrap: Any = None
    attributor: Any = None


class _RegisteredMetric:
    """``Task.metric``: the registered metric named by the task's ``config.metric``, looked up on each access.
    A non-data descriptor, so a subclass's ``metric`` method or a callable assigned to an instance wins."""

    def __get__(self, task: Task | None, owner: type | None = None) -> Any:
        if task is None:
            return self
        return get_metric(task.config.metric)


class Task(ABC):
    """A behaviour to find a circuit for: examples plus a metric.

    Subclasses implement :meth:`generate`; the default :meth:`build` tokenizes and filters what it yields
    and :attr:`metric` is the registered metric ``config.metric``.
    """

    #: What to do with generated examples that do not fit the tokenizer ("drop" for generators that
    #: over-generate, "error" for user files where every row matters).
    on_invalid: ClassVar[str] = "drop"

    def __init__(self, config: TaskConfig) -> None:
        self.config = config

    @abstractmethod
    def generate(self, tokenizer: Any, split: str) -> Iterable[Example | Rejected]:
        """Yield candidate examples for ``split``, deterministically from ``config.seed`` (a candidate the
        task turns down may be yielded as a :class:`~circuitkit.data.Rejected`, counted in the run's report).

        May yield more than ``n_examples``; the first ``n_examples`` that tokenize well are kept.
        """

    def build(self, tokenizer: Any, *, prepend_bos: bool = True) -> TaskData:
        """Generate, tokenize and check ``config.n_examples`` examples for ``tokenizer``."""
        from circuitkit.errors import ConfigError, DataError

        cfg = self.config
        if cfg.n_examples < 1:
            raise ConfigError(f"task.n_examples must be at least 1, got {cfg.n_examples}.")
        get_metric(cfg.metric)  # fail early on an unknown metric
        data = tokenize_examples(
            cfg.name,
            self.generate(tokenizer, cfg.split),
            tokenizer,
            prepend_bos=prepend_bos,
            on_invalid=self.on_invalid,  # type: ignore[arg-type]
            limit=cfg.n_examples,
        )
        data.info = dict(self.describe_data(tokenizer))
        need = max(1, min(cfg.min_examples, cfg.n_examples))  # a run on no examples has no metric
        if len(data) < need:
            if data.n_dropped:
                why = f"{data.n_dropped} were dropped because of: {data.drop_summary()}."
            else:
                why = f"the task generated no candidates for task.split={cfg.split!r}."
            todo = "Use a model whose tokenizer has the task's words as single tokens"
            todo += ", or lower task.min_examples." if len(data) else "."
            raise DataError(
                f"Task '{cfg.name}': only {len(data)} usable examples for this tokenizer (need at least {need}); {why} {todo}"
            )
        return data

    def describe_data(self, tokenizer: Any) -> dict[str, Any]:
        """What this task's data means for ``tokenizer``, where that depends on the tokenizer (greater_than:
        how it splits a year and what the answers and the metric become); stored in ``TaskData.info`` and
        written to ``results.json`` (``meta.task_info``). Default: nothing."""
        return {}

    #: The task's metric, called as ``task.metric(logits [batch, vocab], batch) -> [batch]``: the registered
    #: metric ``config.metric`` (a :class:`~circuitkit.metrics.Metric`, which declares what it reads, so the
    #: engine can compute only that part of the logits). A task may define its own metric instead, as a
    #: method ``def metric(self, logits, batch)`` (or assign a callable to ``task.metric``); it then always
    #: gets the logits of the whole vocabulary.
    metric: Callable[[torch.Tensor, Batch], torch.Tensor] = _RegisteredMetric()  # type: ignore[assignment]

    def answer_logits_metric(self) -> Callable[[torch.Tensor, Batch], torch.Tensor] | None:
        """The metric when it reads only the logits of the batch's answer tokens (``Metric.reads ==
        "answer_logits"``: ``logit_diff``, ``logit``); None otherwise, e.g. for a task with its own metric."""
        return self._metric_reading(ANSWER_LOGITS)

    def answer_probs_metric(self) -> Callable[[torch.Tensor, Batch], torch.Tensor] | None:
        """The metric when it reads only the answer tokens' probabilities (``Metric.reads ==
        "answer_probs"``: ``prob_diff``, ``logprob``); None otherwise."""
        return self._metric_reading(ANSWER_PROBS)

    def _metric_reading(self, reads: str) -> Callable[[torch.Tensor, Batch], torch.Tensor] | None:
        metric = self.metric
        return metric if getattr(metric, "reads", FULL_LOGITS) == reads else None


class Attributor(ABC):
    """Scores every edge of a model's graph for a task."""

    def __init__(self, config: PluginConfig) -> None:
        self.config = config

    @abstractmethod
    def attribute(self, model: CircuitModel, task: Task, data: TaskData, ctx: RunContext) -> Scores:
        """Return one score per edge: the estimated drop of the task metric when that edge alone is
        corrupted, averaged over the examples of ``data`` (positive = the edge carries the behaviour)."""


class Selector(ABC):
    """Turns scores into a circuit."""

    def __init__(self, config: PluginConfig) -> None:
        self.config = config

    @abstractmethod
    def select(self, scores: Scores) -> Circuit:
        """Return a circuit over ``scores.graph`` with no dangling nodes."""

    def select_in_run(self, scores: Scores, model: CircuitModel, task: Task, data: TaskData, ctx: RunContext) -> Circuit:
        """The circuit of a run: what the pipeline calls, with the model and the task's data, so a selector
        can measure candidate circuits before choosing one (``target_faithfulness``). A selector that
        measures records how it chose in ``Circuit.selection``. The default is :meth:`select`."""
        return self.select(scores)

    def measures_circuits(self) -> bool:
        """True when, with its options, this selector measures circuits (:meth:`select_in_run` needs the
        model and data; :meth:`select` alone cannot choose)."""
        return False

    def validate(self, graph: Graph) -> None:  # noqa: B027 - optional hook
        """Raise a :class:`~circuitkit.errors.ConfigError` if the options cannot work for ``graph``.

        Called before attribution, so a bad option fails before any computation.
        """

    def check_level(self, level: str) -> None:  # noqa: B027 - optional hook
        """Raise a :class:`~circuitkit.errors.ConfigError` if this selector cannot select from scores of
        ``level`` (``edge``, ``node`` or ``neuron``: the method's ``level`` option). Called before
        attribution when the method has a ``level`` option."""


class Evaluator(ABC):
    """Measures a circuit."""

    def __init__(self, config: PluginConfig) -> None:
        self.config = config

    @abstractmethod
    def evaluate(self, model: CircuitModel, task: Task, data: TaskData, circuit: Circuit, ctx: RunContext) -> EvalResult:
        """Return the evaluation of ``circuit`` on ``data`` (``ctx.scores`` holds the run's scores)."""


class Reporter(ABC):
    """Sends a finished (or partly finished) run somewhere. Must never lose the local result files.

    Reporters that add files to the run directory (pictures) run before those that publish it elsewhere
    (``publishes = True``, e.g. W&B), whatever their order in ``reporter=[...]``.
    """

    #: True for a reporter that sends the run directory's files elsewhere: it runs after the others.
    publishes: ClassVar[bool] = False

    def __init__(self, config: PluginConfig) -> None:
        self.config = config

    @abstractmethod
    def report(self, run: RunResult, run_dir: str) -> None:
        """Report ``run``, whose files are already written to ``run_dir``."""
