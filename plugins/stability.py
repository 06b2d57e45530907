"""Circuit stability: is the circuit found again on other examples of the same task?

Circuits found on different resamples, seeds or prompt templates of one task are known to differ. This
evaluator finds the circuit again — with the run's method (``ctx.attributor``) and the same-size selection
(``selector``, default ``top_n`` by ``|score|``, with the run's circuit's requested size) — on:

- ``resamples`` bootstrap resamples of the run's examples (drawn with replacement, seeded from the run's
  seed). A score is a mean over examples, so when the scores carry per-example values
  (``Scores.per_example``: gradient methods and exact patching) a resample's scores are the means over it,
  exactly, with no new attribution; otherwise the method runs on the resampled data;
- ``seeds`` fresh draws of the task's examples (``task.seed`` + 1, + 2, ...), attributed again;
- for tasks whose examples record a template (``meta["template"]``: ioi, greater_than, sva, ...), two
  halves of the run's examples with *disjoint* templates (templates sorted, alternately assigned).

For each kind it reports the Jaccard similarity (intersection over union) of each variant's edge set with
the run's circuit (mean, sd, min, max) and the spread of the variants' faithfulness, all evaluated on the
run's data in one sweep. It also gives each edge of the run's circuit its **inclusion frequency**: the
fraction of ``inclusion_resamples`` bootstrap resamples of the examples in which the edge is in the
top-``n`` (table ``inclusion``, with each edge's score and standard error).

A circuit that does not depend on the examples (e.g. ``method=random``) has stability 1.0 everywhere.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from circuitkit.api import (
    UNDEFINED_NOTE,
    BoundTask,
    Circuit,
    ConfigError,
    EvalResult,
    Evaluator,
    PluginConfig,
    RunContext,
    Scores,
    Task,
    bind_objective,
    bootstrap_weights,
    evaluate_keeps,
    get_registry,
    hookimpl,
    inclusion_frequency,
)

KINDS = ("resample", "seed", "template")


@dataclass
class StabilityConfig(PluginConfig):
    """Options of the stability evaluator.

    Attributes:
        resamples: bootstrap resamples of the run's examples (0: none).
        seeds: fresh task seeds, each attributed again (0: none).
        template_splits: also find the circuit on two halves of the examples with disjoint templates.
        inclusion_resamples: resamples for each edge's inclusion frequency (needs per-example scores).
        selector: selector that builds each variant's circuit; it must take ``n_edges`` (``top_n``, ``greedy``).
        absolute: select by ``|score|`` (True) or signed score.
        circuits_per_pass: the most circuits stacked in one forward pass when the variants are evaluated (on a
            CPU fewer where their per-head tensors would pass ``circuitkit.evaluation.CPU_PASS_BYTES``).
    """

    resamples: int = 10
    seeds: int = 2
    template_splits: bool = True
    inclusion_resamples: int = 200
    selector: str = "top_n"
    absolute: bool = True
    circuits_per_pass: int = 8

    def __post_init__(self) -> None:
        for key in ("resamples", "seeds", "inclusion_resamples", "circuits_per_pass"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < (1 if key == "circuits_per_pass" else 0):
                raise ConfigError(
                    f"evaluator.{self.name or 'stability'}.{key} must be a whole number >= {1 if key == 'circuits_per_pass' else 0}, got {v!r}."
                )


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """``|A & B| / |A | B|`` of two bool masks (1.0 for two empty sets)."""
    union = int((a | b).sum())
    return 1.0 if union == 0 else int((a & b).sum()) / union


def template_halves(data: Any) -> tuple[list[int], list[int]] | None:
    """Indices of two halves of ``data``'s examples with disjoint templates (``meta["template"]``), or None
    when fewer than two templates are recorded."""
    by: dict[Any, list[int]] = {}
    for i, ex in enumerate(data.examples):
        t = (ex.meta or {}).get("template")
        if t is None:
            return None
        by.setdefault(t, []).append(i)
    if len(by) < 2:
        return None
    keys = sorted(by, key=str)
    a = [i for k in keys[0::2] for i in by[k]]
    b = [i for k in keys[1::2] for i in by[k]]
    return sorted(a), sorted(b)


class Stability(Evaluator):
    config: StabilityConfig

    def __init__(self, config: StabilityConfig) -> None:
        super().__init__(config)
        self._selector_entry()

    def _selector_entry(self) -> Any:
        entry = get_registry().selectors.get(self.config.selector)
        if "n_edges" not in {f.name for f in dataclasses.fields(entry.options)}:
            raise ConfigError(
                f"evaluator.{self.config.name or 'stability'}.selector={self.config.selector} does not take n_edges; "
                "stability needs a selector that keeps a given number of edges (top_n, greedy)."
            )
        return entry

    def _select(self, scores: Scores, n: int) -> Circuit:
        entry = self._selector_entry()
        opts: dict[str, Any] = {"n_edges": int(n)}
        if "absolute" in {f.name for f in dataclasses.fields(entry.options)}:
            opts["absolute"] = self.config.absolute
        return entry.cls(entry.config(name=entry.name, **opts)).select(scores)

    def _requested(self, scores: Scores, circuit: Circuit) -> int:
        """The size to ask the selector for: the run's requested size when the selection recorded it, else the
        smallest size from which the selector rebuilds the run's circuit from the full-data scores (pruning
        can leave fewer edges than requested), else the circuit's edge count."""
        sel = circuit.selection or {}
        if sel.get("requested_edges"):
            return int(sel["requested_edges"])
        n0 = circuit.n_edges
        for n in range(max(n0, 1), 2 * n0 + 65):
            if np.array_equal(self._select(scores, n).edges, circuit.edges):
                return n
        return n0

    def evaluate(self, model, task: Task, data, circuit: Circuit, ctx: RunContext) -> EvalResult:  # noqa: ANN001
        c = self.config
        name = c.name or "stability"
        scores = ctx.scores if ctx.scores is not None else circuit.scores
        if scores is None:
            raise ConfigError(f"Evaluator '{name}' needs the run's edge scores: run it after attribution.")
        if circuit.level != "edge":
            raise ConfigError(
                f"Evaluator '{name}' compares edge sets; the circuit is {circuit.level}-level (use method.level=edge)."
            )
        n = self._requested(scores, circuit)
        attributor = getattr(ctx, "attributor", None)
        res = EvalResult(name, {"edges_in_circuit": circuit.n_edges, "requested_edges": n})
        variants: list[tuple[str, Circuit]] = []

        # --- bootstrap resamples of the examples -------------------------------------------------------
        if c.resamples:
            w = bootstrap_weights(len(data), c.resamples, ctx.seed + 1)
            if scores.per_example is not None and scores.per_example.shape[0] == len(data):
                res.notes.append("Resampled circuits from the per-example scores (exact means over each resample).")
                for k in range(c.resamples):
                    variants.append(
                        ("resample", self._select(Scores(scores.graph, w[k] @ scores.per_example, dict(scores.meta)), n))
                    )
            elif attributor is not None:
                res.notes.append("Resampled circuits by attributing again on each resample (no per-example scores).")
                counts = torch.round(w * len(data)).long()
                for k in range(c.resamples):
                    idx = [i for i in range(len(data)) for _ in range(int(counts[k, i]))]
                    variants.append(("resample", self._select(attributor.attribute(model, task, data.subset(idx), ctx), n)))
            else:
                res.notes.append(
                    "No resamples: the scores have no per-example values and no method is known (run through the pipeline)."
                )

        # --- fresh seeds of the task ------------------------------------------------------------------
        if c.seeds and attributor is not None:
            for k in range(c.seeds):
                other = _reseeded(task, model, k + 1)
                if other is None:
                    res.notes.append("No seed variants: the task has no seed option.")
                    break
                other_data = other.build(model.tokenizer, prepend_bos=model.prepend_bos)
                variants.append(("seed", self._select(attributor.attribute(model, other, other_data, ctx), n)))
        elif c.seeds:
            res.notes.append("No seed variants: no method is known (run through the pipeline).")

        # --- disjoint template splits -----------------------------------------------------------------
        if c.template_splits:
            halves = template_halves(data)
            if halves is None:
                res.notes.append("No template splits: the examples do not record two or more templates.")
            elif attributor is None:
                res.notes.append("No template splits: no method is known (run through the pipeline).")
            else:
                for half in halves:
                    variants.append(("template", self._select(attributor.attribute(model, task, data.subset(half), ctx), n)))

        # --- Jaccard with the run's circuit and faithfulness of every variant (one sweep) ---------------
        ref = np.asarray(circuit.edges, bool)
        keeps = torch.stack([circuit.keep_dense(), *[v.keep_dense() for _, v in variants]])
        ev = evaluate_keeps(model, task, data, keeps, ctx, circuits_per_pass=c.circuits_per_pass, desc="stability")
        f_ref = ev.faithfulness(ev.circuits[0])
        res.values["faithfulness"] = f_ref
        if f_ref is None:
            res.notes.append(UNDEFINED_NOTE)
        rows: list[dict[str, Any]] = []
        for i, (kind, v) in enumerate(variants):
            rows.append(
                {
                    "kind": kind,
                    "n_edges": v.n_edges,
                    "jaccard": jaccard(np.asarray(v.edges, bool), ref),
                    "node_jaccard": jaccard(v.nodes[:-1], circuit.nodes[:-1]),
                    "faithfulness": ev.faithfulness(ev.circuits[1 + i]),
                }
            )
        res.tables["variants"] = rows
        for kind in KINDS:
            js = [r["jaccard"] for r in rows if r["kind"] == kind]
            fs = [r["faithfulness"] for r in rows if r["kind"] == kind and r["faithfulness"] is not None]
            res.values[f"{kind}_variants"] = len(js)
            res.values.update(_spread(f"jaccard_{kind}", js))
            res.values.update(_spread(f"faithfulness_{kind}", fs))

        # --- inclusion frequency of the circuit's edges -------------------------------------------------
        if c.inclusion_resamples and scores.per_example is not None and scores.per_example.shape[0] == len(data):
            freq = inclusion_frequency(scores.per_example, n, c.inclusion_resamples, ctx.seed + 2, absolute=c.absolute)
            kept = np.flatnonzero(ref)
            se = scores.stderr
            table: list[dict[str, Any]] = [
                {
                    "edge": scores.graph.edge_names[i],
                    "score": float(scores.values[i]),
                    "stderr": None if se is None or not math.isfinite(float(se[i])) else float(se[i]),
                    "inclusion_frequency": float(freq[i]),
                }
                for i in kept
            ]
            table.sort(key=lambda r: -abs(r["score"]))
            res.tables["inclusion"] = table
            fr = freq[torch.as_tensor(kept, dtype=torch.long)] if len(kept) else torch.zeros(0, dtype=torch.float64)
            res.values["inclusion_frequency_mean"] = float(fr.mean()) if len(fr) else None
            res.values["edges_included_95"] = int((fr >= 0.95).sum())
            res.values["edges_included_50"] = int((fr >= 0.5).sum())
            res.values["inclusion_resamples"] = c.inclusion_resamples
        elif c.inclusion_resamples:
            res.notes.append("No inclusion frequencies: the scores carry no per-example values (method or cache without them).")
        return res


def _spread(prefix: str, xs: list[float]) -> dict[str, float | None]:
    if not xs:
        return {f"{prefix}_mean": None, f"{prefix}_sd": None, f"{prefix}_min": None, f"{prefix}_max": None}
    a = np.asarray(xs, dtype=np.float64)
    return {
        f"{prefix}_mean": float(a.mean()),
        f"{prefix}_sd": float(a.std(ddof=1)) if len(a) > 1 else 0.0,
        f"{prefix}_min": float(a.min()),
        f"{prefix}_max": float(a.max()),
    }


def _reseeded(task: Task, model: Any, offset: int) -> Task | None:
    """The same task with ``seed + offset`` (bound to the model's objective like the run's), or None."""
    base = task.wrapped if isinstance(task, BoundTask) else task
    cfg = base.config
    if not hasattr(cfg, "seed"):
        return None
    return bind_objective(type(base)(dataclasses.replace(cfg, seed=int(cfg.seed) + offset)), model)


@hookimpl
def circuitkit_register_evaluators(registry) -> None:  # noqa: ANN001
    registry.add("stability", Stability, StabilityConfig)
