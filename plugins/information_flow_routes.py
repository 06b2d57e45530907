"""Information flow routes: proximity-based edge importance in one forward pass.

Ferrando & Voita (2024), "Information Flow Routes: Automatically Interpreting Language Models at Scale";
the component-level form used by the EAP-IG library (``get_scores_information_flow_routes`` in
hannamw/EAP-IG) and benchmarked in MIB (Mueller et al. 2025).

The input of a destination ``v`` is a sum of upstream contributions: ``x_v = sum_u c_u`` (plus biases),
where ``c_u`` is source ``u``'s output. On the clean run, at every position ``t`` of an example (up to
its last real token), with L1 norms::

    proximity(u -> v) = max(0, ||x_v||_1 - ||x_v - c_u||_1)
    importance(u -> v) = proximity(u -> v) / sum_{u' upstream of v} proximity(u' -> v)

(0 when every proximity at that position is 0). The score of ``u -> v`` is the importance averaged over
the example's positions, then over examples. Each destination's upstream importances sum to 1 (or 0).

These scores are importances in ``[0, 1]``, **not** estimated drops of a task metric: they use only the
clean input, ignore the corrupted prompts and the task metric, and are never negative. They rank edges
(``top_n``, ``threshold`` selectors work as usual) but are not comparable in magnitude with EAP or
patching scores. Cost: one forward pass per batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from circuitkit.api import Attributor, PluginConfig, RunContext, Scores, Task, hookimpl, information_flow_scores, progress


@dataclass
class InformationFlowRoutesConfig(PluginConfig):
    """Information flow routes has no options."""


class InformationFlowRoutes(Attributor):
    config: InformationFlowRoutesConfig

    def attribute(self, model, task: Task, data, ctx: RunContext):  # noqa: ANN001, ANN201
        g = model.graph
        name = self.config.name or "information_flow_routes"
        scores = torch.zeros(g.n_sources, g.n_destinations, dtype=torch.float64, device=model.device)
        n = 0
        n_batches = (len(data) + ctx.batch_size - 1) // ctx.batch_size
        for batch in progress(data.batches(ctx.batch_size, model.pad_id), ctx, total=n_batches, desc=f"{name} attribution"):
            information_flow_scores(model, batch, scores)
            n += len(batch)
        meta = {"method": name, "n_examples": n, "score_kind": "importance", "uses_corrupted": False}
        return Scores.from_dense(g, scores / n, meta)


@hookimpl
def circuitkit_register_methods(registry) -> None:  # noqa: ANN001
    registry.add("information_flow_routes", InformationFlowRoutes, InformationFlowRoutesConfig)
