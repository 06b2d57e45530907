"""circuitkit: find and verify circuits in transformer language models.

The Python API uses the same objects as the CLI::

    import circuitkit as ck

    model = ck.load_model("bundled")
    task = ck.build("tasks", "greater_than", n_examples=32)
    data = task.build(model.tokenizer)
    scores = ck.build("methods", "eap_ig", ig_steps=5).attribute(model, task, data, ck.RunContext())
    circuit = ck.build("selectors", "top_n", n_edges=200).select(scores)
    result = ck.build("evaluators", "faithfulness").evaluate(model, task, data, circuit, ck.RunContext())

Plugins import what they need from :mod:`circuitkit.api`.
"""

from __future__ import annotations

from typing import Any

from circuitkit.data import Batch, Example, TaskData, tokenize_examples
from circuitkit.errors import CircuitkitError
from circuitkit.graph import Graph
from circuitkit.hookspecs import hookimpl
from circuitkit.interfaces import Attributor, Evaluator, PluginConfig, Reporter, RunContext, Selector, Task, TaskConfig
from circuitkit.model import CircuitModel, bridge_model, load_model
from circuitkit.results import Circuit, EvalResult, RunResult, Scores

__version__ = "0.1.0"


def build(kind: str, name: str, **options: Any) -> Any:
    """Build a registered component: ``build("methods", "eap_ig", ig_steps=5)``.

    ``kind`` is one of ``methods``, ``tasks``, ``selectors``, ``evaluators``, ``reporters`` (and
    ``metrics``, which have no options).
    """
    from circuitkit.plugins import get_registry

    registry = get_registry()
    if kind not in registry.kinds:
        raise CircuitkitError(f"Unknown component kind '{kind}'; use one of {', '.join(registry.kinds)}.")
    return registry.kinds[kind].build(name, options)


__all__ = [
    "Attributor",
    "Batch",
    "Circuit",
    "CircuitModel",
    "CircuitkitError",
    "EvalResult",
    "Evaluator",
    "Example",
    "Graph",
    "PluginConfig",
    "Reporter",
    "RunContext",
    "RunResult",
    "Scores",
    "Selector",
    "Task",
    "TaskConfig",
    "TaskData",
    "bridge_model",
    "build",
    "hookimpl",
    "load_model",
    "tokenize_examples",
]
