"""ACDC: automatic circuit discovery by recursive edge pruning.

Conmy, Mavor-Parker, Lynch, Heimersheim & Garriga-Alonso (2023), "Towards Automated Circuit Discovery for
Mechanistic Interpretability" (Algorithm 1).

Start from the full graph ``H``. Visit the destinations from ``logits`` backwards (reverse topological
order: ``logits``, then per layer from the last: the MLP input, the heads' v, k, q inputs). For each edge
``u -> v`` into the current destination (latest source first), measure the objective with the edge
tentatively corrupted, ``L(H \\ {u -> v})``; if ``change < tau`` the edge is removed for good, otherwise
it stays. Removed edges carry their corrupted value (``out_u(corrupted)``) in every later measurement.

Objectives (``objective``):

- ``kl`` (the paper's default): ``L(H) = mean over examples of KL(p_clean || p_H)`` at the answer position,
  where ``p_clean`` is the full model's clean output distribution; ``change = L(H \\ e) - L(H)`` (signed:
  an edge whose removal brings the circuit closer to the full model is always removed).
- ``task``: the task's metric ``M``; ``change = |mean M(H \\ e) - mean M(H)|``.

Interventions: a removed edge carries what the run's ``intervention`` says (the corrupted run's output
of its source by default; ``zero``, ``mean`` or ``mean_positional`` ablation otherwise, see
:class:`circuitkit.interventions.Intervention`); ``method.intervention`` overrides it for ACDC alone.

Output. ACDC decides a circuit; to fit the Attributor/Selector interfaces the score of every edge is
the ``change`` measured when the edge was considered, on the exact graph state ACDC saw at that moment.
Kept edges have ``score >= tau`` and removed edges ``score < tau``, so **``selector=threshold
selector.threshold=<tau> selector.absolute=false`` selects exactly ACDC's circuit** (the mask is in
``meta`` too as ``kept``). Edges into a node that no longer reaches ``logits`` when it is visited are
removed without a measurement (their change is exactly 0) and score 0. Scores of removed edges can be
large and negative (removals that help), so ranking by ``|score|`` does *not* reproduce ACDC.

Batching. The decisions are sequential (each depends on the removals before it); they are reproduced
exactly while the tentative removals into one destination are evaluated together in stacked masked
passes (:func:`circuitkit.engine.masked_metric`, keep masks ``[copies, n_sources, n_destinations]``):
copy ``j`` removes edge ``j`` on top of the removals *predicted* for the edges before it. The predictions
(first: "removed"; later: from the previous round's measurements) are checked in order against the
measured changes; at the first wrong prediction the remaining edges are measured again from the true
state. The cost is one masked copy per edge per round, and usually one or two rounds per destination.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from circuitkit.api import (
    Attributor,
    ConfigError,
    Intervention,
    KLToClean,
    PluginConfig,
    RunContext,
    Scores,
    Task,
    bind_objective,
    build_intervention,
    check_intervention,
    hookimpl,
    kl_task,
    masked_metric,
    progress,
    removed_values,
)

OBJECTIVES = ("kl", "task")


@dataclass
class ACDCConfig(PluginConfig):
    """Options of ACDC.

    Attributes:
        tau: removal threshold: an edge is removed when its change of the objective is below ``tau``.
        objective: ``kl`` (KL divergence to the clean output distribution) or ``task`` (absolute change
            of the task metric).
        copies_per_pass: tentative removals evaluated together in one stacked forward pass.
        intervention: what a removed edge carries; null (default): the run's ``intervention``.
            ``patching`` (the corrupted run), ``zero``, ``mean`` or ``mean_positional``.
    """

    tau: float = 0.01
    objective: str = "kl"
    copies_per_pass: int = 32
    intervention: str | None = None

    def __post_init__(self) -> None:
        t = self.tau
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
            raise ConfigError(f"method.tau must be a finite number >= 0, got {t!r}.")
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"method.objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}.")
        c = self.copies_per_pass
        if not isinstance(c, int) or isinstance(c, bool) or c < 1:
            raise ConfigError(f"method.copies_per_pass must be an integer of at least 1, got {c!r}.")


class _Objective:
    """Mean objective over all examples for stacked keep masks, with the per-batch runs cached."""

    def __init__(
        self, model, task: Task, data, ctx: RunContext, objective: str, intervention: Intervention | None = None
    ) -> None:  # noqa: ANN001
        self.model = model
        self.sign = 1.0
        if objective == "kl":
            vocab = int(model.bridge.cfg.d_vocab)
            bound = kl_task(task, model)
            metric = bound.bound_metric
            assert isinstance(metric, KLToClean)
            metric.max_bytes = max(metric.max_bytes, (len(data) + 1) * vocab * 8)
            self.metric: Any = metric
            self.sign = -1.0  # the metric is -KL; the objective is KL
        else:
            self.metric = bind_objective(task, model).metric
        self.batches = []
        for batch in data.batches(ctx.batch_size, model.pad_id):
            batch = batch.to(model.device)
            corrupted = removed_values(model, batch, intervention)
            if isinstance(self.metric, KLToClean):
                self.metric.prepare(batch)
            self.batches.append((batch, corrupted))
        self.n = len(data)
        self.copies = 0

    def __call__(self, keeps: torch.Tensor, per_pass: int) -> torch.Tensor:
        """Mean objective ``[len(keeps)]`` (float64) of the circuits ``keeps [c, S, D]``."""
        out = torch.zeros(len(keeps), dtype=torch.float64)
        for batch, corrupted in self.batches:
            for start in range(0, len(keeps), per_pass):
                chunk = keeps[start : start + per_pass].to(device=self.model.device, dtype=corrupted.dtype)
                # The dense masked forward: ACDC's scores are differences of these metrics, and the sparse
                # form's other order of sums would move them by float rounding.
                vals = masked_metric(self.model, batch, self.metric, corrupted, chunk, path="dense")
                out[start : start + len(chunk)] += vals.double().sum(1).cpu()
        self.copies += len(keeps)
        return self.sign * out / self.n


class ACDC(Attributor):
    config: ACDCConfig

    def __init__(self, config: ACDCConfig) -> None:
        super().__init__(config)
        if config.intervention is not None:
            check_intervention(config.intervention, "method.intervention")

    def attribute(self, model, task: Task, data, ctx: RunContext):  # noqa: ANN001, ANN201
        cfg = self.config
        g = model.graph
        tau = float(cfg.tau)
        name = cfg.name or "acdc"
        if cfg.intervention is None:
            intervention = ctx.intervention
        else:
            intervention = build_intervention(model, data, cfg.intervention, ctx.batch_size)
        objective = _Objective(model, task, data, ctx, cfg.objective, intervention)
        keep = torch.ones(g.n_sources, g.n_destinations, dtype=torch.float64)  # non-edges count as kept
        score = torch.zeros(g.n_sources, g.n_destinations, dtype=torch.float64)
        current = float(objective(keep[None], 1)[0])
        start_value = current

        def change(value: float, before: float) -> float:
            return value - before if cfg.objective == "kl" else abs(value - before)

        n_nodes = len(g.node_names)
        live = np.zeros(n_nodes, dtype=bool)  # node reaches logits through kept edges (final once visited)
        live[-1] = True
        rounds = 0
        for dst in progress(range(g.n_destinations - 1, -1, -1), ctx, total=g.n_destinations, desc=f"{name} pruning"):
            nodes = g.dst_nodes[dst]  # one node, or every head of a grouped key/value input's group
            if nodes[0] != n_nodes - 1:
                live_dst = torch.as_tensor(g.dst_mask(live))
                for node in nodes.tolist():
                    outs = keep[node].bool() & live_dst & g.valid[node]
                    live[node] = bool(outs.any())
            cands = list(range(int(g.n_upstream[dst]) - 1, -1, -1))
            if not live[nodes].any() and tau > 0:
                keep[cands, dst] = 0  # nothing downstream reads this node: the change is exactly 0
                continue
            predicted = [True] * len(cands)
            i = 0
            while i < len(cands):
                rounds += 1
                # Copy j removes cands[j] on top of the removals predicted for cands[i .. j-1].
                states = []
                state = keep.clone()
                for j in range(i, len(cands)):
                    s = state.clone()
                    s[cands[j], dst] = 0
                    states.append(s)
                    if predicted[j]:
                        state = s
                values = objective(torch.stack(states), cfg.copies_per_pass).tolist()
                before = current
                chain_before = current  # the value of the chain's own state before copy j
                wrong = None
                for j in range(i, len(cands)):
                    v = values[j - i]
                    assumed = predicted[j]
                    if wrong is None:
                        ch = change(v, before)
                        score[cands[j], dst] = ch
                        removed = ch < tau
                        if removed:
                            keep[cands[j], dst] = 0
                            current = before = v
                        if removed != assumed:
                            wrong = j  # later copies assumed the wrong state: measure them again
                    else:
                        # Predictions for the next round, from this round's (slightly off) chain.
                        predicted[j] = change(v, chain_before) < tau
                    if assumed:
                        chain_before = v
                i = len(cands) if wrong is None else wrong + 1
        kept = g.to_flat(keep.bool())
        meta = {
            "method": name,
            "n_examples": objective.n,
            "tau": tau,
            "objective": cfg.objective,
            "intervention": (intervention or Intervention()).kind,
            "objective_full_graph": start_value,
            "objective_circuit": current,
            "n_kept": int(kept.sum()),
            "kept": [int(i) for i in kept.nonzero().squeeze(1).tolist()],
            "masked_copies": objective.copies,
            "rounds": rounds,
            "select_with": f"selector=threshold selector.threshold={tau} selector.absolute=false",
        }
        return Scores.from_dense(g, score, meta)


@hookimpl
def circuitkit_register_methods(registry) -> None:  # noqa: ANN001
    registry.add("acdc", ACDC, ACDCConfig)
