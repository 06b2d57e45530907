"""The plugin-author API: everything a circuitkit plugin needs, in one module.

A plugin imports from here (``from circuitkit.api import Attributor, gradient_attribution, hookimpl``) and
from nowhere else in circuitkit; circuitkit's builtin plugins do exactly that (a test checks it). The names
below are kept stable; the modules they come from (the engine's hook wiring, caches, fast paths) are
internals that may change between versions.

Groups:

- **the plugin contract**: :data:`hookimpl`, the interfaces (:class:`Attributor`, :class:`Task`,
  :class:`Selector`, :class:`Evaluator`, :class:`Reporter`, :class:`Metric`, :class:`Intervention`), their
  config bases and :class:`RunContext`; :func:`get_registry` for components that look up others;
- **data**: :class:`Example`, :class:`Rejected`, :class:`Batch`, :class:`TaskData`, tokenizing helpers;
- **results**: :class:`Graph`, :class:`Scores`, :class:`Circuit`, :class:`EvalResult`, :class:`RunResult`;
- **errors and validators**: :class:`ConfigError`, :class:`DataError`, :func:`check_level`,
  :func:`check_count`, :func:`check_intervention`;
- **attribution**: :func:`gradient_attribution` (EAP, EAP-IG), :func:`exact_patching`, and the passes
  methods are built from (:func:`run_sources`, :func:`stacked_gradient_pass`, :func:`masked_metric`,
  :func:`information_flow_scores`, :func:`removed_values`);
- **metrics and objectives**: the builtin metrics, :func:`bind_objective` (``task.metric=kl``);
- **evaluation and selection**: :func:`evaluate_keeps`, :func:`smallest_reaching`, node/neuron helpers;
- **uncertainty**: bootstrap intervals over examples;
- **reporting**: pictures and the interactive explorer.
"""

from __future__ import annotations

from circuitkit.analysis import MIB_PERCENTAGES, cmd, cpr
from circuitkit.attribution import check_level, exact_patching, gradient_attribution
from circuitkit.compare import curve_axes, table_columns
from circuitkit.data import Batch, Example, Rejected, TaskData, answer_id, encode, show_tokens, tokenize_examples
from circuitkit.engine import information_flow_scores, masked_metric, run_sources, source_groups, stacked_gradient_pass
from circuitkit.errors import CircuitkitError, ConfigError, DataError, PluginError, quote
from circuitkit.evaluation import UNDEFINED_NOTE, Evaluation, add_gap_check, evaluate_keeps
from circuitkit.explorer import for_run as explorer_for_run
from circuitkit.graph import Graph
from circuitkit.hookspecs import hookimpl
from circuitkit.interfaces import (
    Attributor,
    Evaluator,
    PluginConfig,
    Reporter,
    RunContext,
    Selector,
    Task,
    TaskConfig,
)
from circuitkit.interventions import (
    Intervention,
    MeanAblation,
    PositionalMeanAblation,
    ZeroAblation,
    build_intervention,
    check_intervention,
    removed_values,
)
from circuitkit.metrics import (
    ANSWER_LOGITS,
    ANSWER_PROBS,
    FULL_LOGITS,
    CorrectLogit,
    CorrectLogprob,
    LogitDiff,
    Metric,
    ProbDiff,
    accuracy,
    correct_logit,
    correct_logprob,
    get_metric,
    logit_diff,
    prob_diff,
)
from circuitkit.model import CircuitModel
from circuitkit.nodes import check_count, rank_key, select_units, top_mask
from circuitkit.objectives import BoundTask, KLToClean, UnboundKL, bind_objective, kl_task
from circuitkit.plot import INSTALL_HINT as PLOT_INSTALL_HINT
from circuitkit.plot import draw_circuit, plot_curves
from circuitkit.plugins import get_registry
from circuitkit.progress import progress
from circuitkit.registry import ComponentRegistry
from circuitkit.results import Circuit, EvalResult, RunResult, Scores
from circuitkit.search import GRID_PERCENTAGES, SearchesSize, smallest_reaching
from circuitkit.uncertainty import (
    add_circuit_uncertainty,
    area_samples,
    bootstrap_config,
    bootstrap_weights,
    evaluation_intervals,
    inclusion_frequency,
    interval_info,
)


def plots_available() -> bool:
    """Whether pictures can be drawn (matplotlib is installed; :func:`circuitkit.plot.available`)."""
    from circuitkit import plot

    return plot.available()


__all__ = [
    # the plugin contract
    "hookimpl",
    "Attributor",
    "Task",
    "Selector",
    "Evaluator",
    "Reporter",
    "Metric",
    "Intervention",
    "PluginConfig",
    "TaskConfig",
    "RunContext",
    "ComponentRegistry",
    "get_registry",
    "CircuitModel",
    # data
    "Batch",
    "Example",
    "Rejected",
    "TaskData",
    "answer_id",
    "encode",
    "show_tokens",
    "tokenize_examples",
    # results
    "Graph",
    "Scores",
    "Circuit",
    "EvalResult",
    "RunResult",
    # errors and validators
    "CircuitkitError",
    "ConfigError",
    "DataError",
    "PluginError",
    "quote",
    "check_level",
    "check_count",
    "check_intervention",
    # attribution
    "gradient_attribution",
    "exact_patching",
    "run_sources",
    "stacked_gradient_pass",
    "source_groups",
    "masked_metric",
    "information_flow_scores",
    "removed_values",
    "build_intervention",
    # metrics and objectives
    "ANSWER_LOGITS",
    "ANSWER_PROBS",
    "FULL_LOGITS",
    "LogitDiff",
    "ProbDiff",
    "CorrectLogit",
    "CorrectLogprob",
    "UnboundKL",
    "logit_diff",
    "prob_diff",
    "correct_logit",
    "correct_logprob",
    "accuracy",
    "get_metric",
    "bind_objective",
    "kl_task",
    "KLToClean",
    "BoundTask",
    # interventions
    "ZeroAblation",
    "MeanAblation",
    "PositionalMeanAblation",
    # evaluation and selection
    "evaluate_keeps",
    "Evaluation",
    "add_gap_check",
    "UNDEFINED_NOTE",
    "smallest_reaching",
    "SearchesSize",
    "GRID_PERCENTAGES",
    "rank_key",
    "select_units",
    "top_mask",
    "MIB_PERCENTAGES",
    "cmd",
    "cpr",
    # uncertainty
    "bootstrap_config",
    "bootstrap_weights",
    "evaluation_intervals",
    "interval_info",
    "add_circuit_uncertainty",
    "area_samples",
    "inclusion_frequency",
    # reporting
    "progress",
    "explorer_for_run",
    "draw_circuit",
    "plot_curves",
    "plots_available",
    "PLOT_INSTALL_HINT",
    "curve_axes",
    "table_columns",
]
