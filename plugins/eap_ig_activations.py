"""EAP with integrated gradients along intermediate activations (EAP-IG-activations).

Hanna, Pezzelle & Belinkov (2024), "Have Faith in Faithfulness: Going Beyond Circuit Overlap When
Finding Model Mechanisms"; the variant benchmarked as EAP-IG-activations in Mueller et al. (2025), "MIB: A
Mechanistic Interpretability Benchmark" and implemented as ``get_scores_ig_activations`` in the EAP-IG
library (hannamw/EAP-IG, ``attribute(..., method="EAP-IG-activations")``).

Notation: ``z_u`` / ``z'_u`` are source ``u``'s clean / corrupted outputs, ``delta_u = z_u - z'_u``, ``x_v``
the input of destination ``v``, ``M`` the summed task metric, ``m = ig_steps``, ``alpha_k = k / m`` for
``k = 1 .. m``. Every forward pass runs on the clean input with one unit's output replaced by
``z'_w + alpha_k (z_w - z'_w)``; everything downstream is recomputed, and no gradient flows into the
replaced unit. ``grad_v(w, k)`` is ``dM/dx_v`` in that pass.

``interpolate="layer"`` (default; the EAP-IG library's definition). The units ``w`` are the input
embeddings, each attention layer (all its heads together) and each MLP, ``W = 1 + 2 n_layers`` of them,
and every pass contributes to every edge::

    score(u -> v) = delta_u . (1 / (W m)) sum_w sum_k grad_v(w, k)

``interpolate="source"`` (integrated gradients along each source's own activation). The units are the
sources themselves (each head separately), and only the passes that interpolate ``u`` score ``u``'s
edges::

    score(u -> v) = delta_u . (1 / m) sum_k grad_v(u, k)

This is a right Riemann sum of ``delta_u . integral_0^1 dM/dx_v (z_u = z'_u + a delta_u) da``, so the
scores of ``u``'s edges sum (over ``v``) to the integrated-gradients attribution of ``u``'s output, which
converges to ``M(clean) - M(u's output corrupted)`` as ``m`` grows; ``ig_steps=1`` is EAP. For ``u =
input`` it is EAP-IG (inputs).

Signs follow circuitkit (scores estimate drops of the metric: ``delta = clean - corrupted``); the EAP-IG
library reports ``corrupted - clean`` and divides by the same counts. Cost per batch: two forwards without
autograd, then ``W m`` (layer) or ``n_sources m`` (source) forward/backward passes, stacked
``copies_per_pass`` at a time. With ``task.metric=kl`` the metric is ``-KL(clean || current)``
(:mod:`circuitkit.objectives`), i.e. EAP-IG-activations-KL.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from circuitkit.api import (
    Attributor,
    ConfigError,
    PluginConfig,
    RunContext,
    Scores,
    Task,
    bind_objective,
    hookimpl,
    progress,
    removed_values,
    run_sources,
    source_groups,
    stacked_gradient_pass,
)

INTERPOLATE = ("layer", "source")


@dataclass
class EAPIGActivationsConfig(PluginConfig):
    """Options of EAP-IG-activations.

    Attributes:
        ig_steps: interpolation points ``alpha = k / ig_steps``, ``k = 1 .. ig_steps``.
        interpolate: ``layer`` (the EAP-IG library: input, each attention layer, each MLP; every pass
            scores every edge) or ``source`` (each source separately; a pass scores only the edges of the
            source it interpolates).
        copies_per_pass: interpolation passes stacked into one forward/backward (memory grows with it).
    """

    ig_steps: int = 5
    interpolate: str = "layer"
    copies_per_pass: int = 8

    def __post_init__(self) -> None:
        m = self.ig_steps
        if not isinstance(m, int) or isinstance(m, bool) or m < 1:
            raise ConfigError(f"method.ig_steps must be an integer of at least 1, got {m!r}.")
        if self.interpolate not in INTERPOLATE:
            raise ConfigError(f"method.interpolate must be one of {', '.join(INTERPOLATE)}, got {self.interpolate!r}.")
        c = self.copies_per_pass
        if not isinstance(c, int) or isinstance(c, bool) or c < 1:
            raise ConfigError(f"method.copies_per_pass must be an integer of at least 1, got {c!r}.")


class EAPIGActivations(Attributor):
    config: EAPIGActivationsConfig

    def attribute(self, model, task: Task, data, ctx: RunContext):  # noqa: ANN001, ANN201
        cfg = self.config
        task = bind_objective(task, model)
        g = model.graph
        m = cfg.ig_steps
        if cfg.interpolate == "layer":
            units = source_groups(model)
        else:
            units = [[s] for s in range(g.n_sources)]
        # One pass per (unit, step); a pass's gradient scores every source row (layer) or its unit's rows.
        passes = [(unit, k / m) for unit in units for k in range(1, m + 1)]
        weight = 1.0 / len(passes) if cfg.interpolate == "layer" else 1.0 / m
        scores = torch.zeros(g.n_sources, g.n_destinations, dtype=torch.float64, device=model.device)
        n = 0
        n_batches = (len(data) + ctx.batch_size - 1) // ctx.batch_size
        name = cfg.name or "eap_ig_activations"
        for batch in progress(data.batches(ctx.batch_size, model.pad_id), ctx, total=n_batches, desc=f"{name} attribution"):
            batch = batch.to(model.device)
            corrupted = removed_values(model, batch, ctx.intervention)
            clean = run_sources(model, batch.clean).sources
            assert corrupted is not None and clean is not None
            delta = clean - corrupted
            prepare = getattr(getattr(task, "bound_metric", None), "prepare", None)
            if prepare is not None:
                prepare(batch)  # the clean reference distribution, once per batch
            for start in range(0, len(passes), cfg.copies_per_pass):
                chunk = passes[start : start + cfg.copies_per_pass]
                overrides = [[(s, corrupted[s] + a * delta[s]) for s in unit] for unit, a in chunk]
                if cfg.interpolate == "layer":
                    rows = torch.ones(len(chunk), g.n_sources, dtype=delta.dtype, device=delta.device)
                else:
                    rows = torch.zeros(len(chunk), g.n_sources, dtype=delta.dtype, device=delta.device)
                    for i, (unit, _) in enumerate(chunk):
                        rows[i, unit] = 1
                stacked_gradient_pass(model, batch, task.metric, delta, scores, overrides, rows, weight=weight)
            n += len(batch)
        meta = {"method": name, "n_examples": n, "ig_steps": m, "interpolate": cfg.interpolate}
        return Scores.from_dense(g, scores / n, meta)


@hookimpl
def circuitkit_register_methods(registry) -> None:  # noqa: ANN001
    registry.add("eap_ig_activations", EAPIGActivations, EAPIGActivationsConfig)
