"""Faithfulness of one circuit.

Every edge outside the circuit carries its corrupted value (the run's ``intervention``: zero or mean
ablation instead when chosen; for a neuron-level circuit, also every dimension of a node outside its
kept neurons); the circuit's metric is normalised as
``(metric(circuit) - metric(corrupted)) / (metric(clean) - metric(corrupted))`` (Hanna et al. 2024; MIB's
circuit performance). 1 means the circuit alone recovers the clean behaviour, 0 the corrupted one.

Each example's clean, corrupted and circuit metric are kept (``per_example`` in results.json) and every
value comes with a percentile-bootstrap interval over the examples (``intervals``; the run's ``bootstrap``
options; :mod:`circuitkit.uncertainty`).
"""

from __future__ import annotations

from dataclasses import dataclass

from circuitkit.api import (
    UNDEFINED_NOTE,
    Circuit,
    EvalResult,
    Evaluator,
    PluginConfig,
    RunContext,
    Task,
    add_circuit_uncertainty,
    add_gap_check,
    evaluate_keeps,
    evaluation_intervals,
    hookimpl,
)


@dataclass
class FaithfulnessConfig(PluginConfig):
    """Faithfulness has no options."""


class Faithfulness(Evaluator):
    config: FaithfulnessConfig

    def evaluate(self, model, task: Task, data, circuit: Circuit, ctx: RunContext) -> EvalResult:  # noqa: ANN001
        keep = circuit.keep_dense()[None]
        dims = circuit.neuron_keep()
        ev = evaluate_keeps(model, task, data, keep, ctx, desc="faithfulness", neurons=None if dims is None else dims[None])
        f = ev.faithfulness(ev.circuits[0])
        res = EvalResult(
            self.config.name or "faithfulness",
            {
                "clean_metric": ev.clean,
                "corrupted_metric": ev.corrupted,
                "circuit_metric": ev.circuits[0],
                "faithfulness": f,
                "edges_in_circuit": circuit.n_edges,
                "edges_in_graph": circuit.graph.n_edges,
                "nodes_in_circuit": int(circuit.nodes.sum()),
                "n_examples": ev.n_examples,
            },
        )
        # Each example's clean, corrupted and circuit metric, and bootstrap intervals over the examples.
        add_circuit_uncertainty(res, ev, evaluation_intervals(ev, ctx), 0, ctx)
        if circuit.neurons is not None:
            res.values["neurons_in_circuit"] = circuit.n_neurons
        if f is None:
            res.notes.append(UNDEFINED_NOTE)
        add_gap_check(res, ev, ctx)  # faithfulness_meaningful: is the clean-corrupted gap more than noise?
        return res


@hookimpl
def circuitkit_register_evaluators(registry) -> None:  # noqa: ANN001
    registry.add("faithfulness", Faithfulness, FaithfulnessConfig)
