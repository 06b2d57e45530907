"""Completeness: does the circuit hold *all* of the behaviour, or does the rest of the model carry it too?

The complement test: every edge *of the circuit* carries its corrupted value and every other edge is
kept. Its metric is normalised like faithfulness,

    complement_faithfulness = (m(complement) - m(corrupted)) / (m(clean) - m(corrupted)),

and the reported ``completeness`` is ``1 - complement_faithfulness``: 1 when corrupting the circuit's
edges removes the whole behaviour (nothing outside the circuit carries it), 0 when the model behaves as
if nothing was corrupted. Endpoints: the empty circuit's complement is the full model (the clean run):
complement_faithfulness 1, completeness 0; the full circuit's complement is the corrupted run:
complement_faithfulness 0, completeness 1.

The circuit's own faithfulness is measured in the same sweep and reported beside it (``faithfulness``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from circuitkit.api import (
    UNDEFINED_NOTE,
    Circuit,
    ConfigError,
    EvalResult,
    Evaluator,
    PluginConfig,
    RunContext,
    Task,
    add_gap_check,
    evaluate_keeps,
    hookimpl,
)


@dataclass
class CompletenessConfig(PluginConfig):
    """Completeness has no options."""


def complement(circuit: Circuit) -> Circuit:
    """Every edge not in ``circuit`` (not pruned: dangling edges of the complement still carry clean values)."""
    return Circuit(circuit.graph, ~np.asarray(circuit.edges, dtype=bool))


class Completeness(Evaluator):
    config: CompletenessConfig

    def evaluate(self, model, task: Task, data, circuit: Circuit, ctx: RunContext) -> EvalResult:  # noqa: ANN001
        if circuit.neurons is not None:
            raise ConfigError(
                f"Evaluator '{self.config.name or 'completeness'}' compares a circuit with the rest of the model edge by "
                "edge; a neuron-level circuit has no edge complement. Use evaluator=[faithfulness], or method.level=node."
            )
        keeps = torch.stack([circuit.keep_dense(), complement(circuit).keep_dense()])
        ev = evaluate_keeps(model, task, data, keeps, ctx, desc="completeness")
        f = ev.faithfulness(ev.circuits[0])
        fc = ev.faithfulness(ev.circuits[1])
        res = EvalResult(
            self.config.name or "completeness",
            {
                "completeness": None if fc is None else 1.0 - fc,
                "complement_faithfulness": fc,
                "complement_metric": ev.circuits[1],
                "faithfulness": f,
                "circuit_metric": ev.circuits[0],
                "clean_metric": ev.clean,
                "corrupted_metric": ev.corrupted,
                "edges_in_circuit": circuit.n_edges,
                "edges_in_graph": circuit.graph.n_edges,
                "n_examples": ev.n_examples,
            },
        )
        if fc is None:
            res.notes.append(UNDEFINED_NOTE)
        add_gap_check(res, ev, ctx)
        return res


@hookimpl
def circuitkit_register_evaluators(registry) -> None:  # noqa: ANN001
    registry.add("completeness", Completeness, CompletenessConfig)
