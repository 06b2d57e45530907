"""Transfer: the faithfulness of this run's circuit on other tasks' data.

``evaluator=[faithfulness,transfer] transfer.tasks=[ioi,sva]`` evaluates the run's circuit on the clean and
corrupted examples of each listed task, with that task's own metric: every edge outside the circuit
carries its corrupted value *for that task* and
``faithfulness = (m(circuit) - m(corrupted)) / (m(clean) - m(corrupted))`` is measured on its examples.
Each task is built with its defaults, the run's ``task.split`` and ``n_examples`` (``n_examples`` here
overrides it) and ``task.seed``. The run's own task, when listed, is evaluated on the run's own data, so
its row equals the ``faithfulness`` evaluator's value.

One row per task (table ``transfer``) with the bootstrap interval of the faithfulness. Runs of one method
on several tasks, each with ``transfer``, give a task x task matrix in ``python -m circuitkit.compare``
(rows: the task the circuit was found on; columns: the task it is evaluated on).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from circuitkit.api import (
    BoundTask,
    Circuit,
    ConfigError,
    EvalResult,
    Evaluator,
    PluginConfig,
    RunContext,
    Task,
    bind_objective,
    bootstrap_config,
    evaluate_keeps,
    evaluation_intervals,
    get_registry,
    hookimpl,
    interval_info,
)


@dataclass
class TransferConfig(PluginConfig):
    """Options of the transfer evaluator.

    Attributes:
        tasks: registered task names to evaluate the circuit on (empty: the run's task only).
        n_examples: examples per task (null: the run's ``task.n_examples``).
    """

    tasks: list[str] = field(default_factory=list)
    n_examples: int | None = None

    def __post_init__(self) -> None:
        # The task names are checked when the evaluator is built: they need the plugin registry.
        if self.n_examples is not None and (isinstance(self.n_examples, bool) or self.n_examples < 1):
            raise ConfigError(
                f"evaluator.{self.name or 'transfer'}.n_examples must be a positive number or null, got {self.n_examples!r}."
            )


class Transfer(Evaluator):
    config: TransferConfig

    def __init__(self, config: TransferConfig) -> None:
        super().__init__(config)
        names = get_registry().tasks.names()
        for t in config.tasks:
            if t not in names:
                raise ConfigError(
                    f"evaluator.{config.name or 'transfer'}.tasks: unknown task '{t}'; choices: {', '.join(sorted(names))}."
                )

    def evaluate(self, model, task: Task, data, circuit: Circuit, ctx: RunContext) -> EvalResult:  # noqa: ANN001
        name = self.config.name or "transfer"
        base = task.wrapped if isinstance(task, BoundTask) else task
        own = base.config.name
        targets = list(self.config.tasks) or [own]
        res = EvalResult(name)
        keep = circuit.keep_dense()[None]
        dims = circuit.neuron_keep()
        rows = []
        for t in targets:
            if t == own and (self.config.n_examples is None or self.config.n_examples == len(data)):
                other, other_data = task, data
            else:
                opts: dict[str, Any] = {
                    "n_examples": self.config.n_examples or getattr(base.config, "n_examples", len(data)),
                    "seed": getattr(base.config, "seed", 0),
                    "split": getattr(base.config, "split", "test"),
                }
                entry = get_registry().tasks.get(t)
                fields = {f.name for f in dataclasses.fields(entry.options)}
                other = bind_objective(get_registry().tasks.build(t, {k: v for k, v in opts.items() if k in fields}), model)
                other_data = other.build(model.tokenizer, prepend_bos=model.prepend_bos)
            ev = evaluate_keeps(
                model, other, other_data, keep, ctx, desc=f"transfer to {t}", neurons=None if dims is None else dims[None]
            )
            f = ev.faithfulness(ev.circuits[0])
            mi = evaluation_intervals(ev, ctx)
            ci = None if mi is None or f is None else mi.interval(mi.faithfulness[0])
            rows.append(
                {
                    "task": t,
                    "faithfulness": f,
                    "faithfulness_ci_low": None if ci is None else ci[0],
                    "faithfulness_ci_high": None if ci is None else ci[1],
                    "clean_metric": ev.clean,
                    "corrupted_metric": ev.corrupted,
                    "circuit_metric": ev.circuits[0],
                    "metric": other.config.metric,
                    "n_examples": ev.n_examples,
                }
            )
            res.values[f"faithfulness_on_{t}"] = f
            if mi is not None:
                res.intervals[f"faithfulness_on_{t}"] = ci
                res.interval_info = interval_info(bootstrap_config(ctx))
            if f is None:
                res.notes.append(f"{t}: faithfulness undefined (clean and corrupted metrics are equal on its examples).")
        res.tables["transfer"] = rows
        return res


@hookimpl
def circuitkit_register_evaluators(registry) -> None:  # noqa: ANN001
    registry.add("transfer", Transfer, TransferConfig)
