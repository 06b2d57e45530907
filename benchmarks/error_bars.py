"""Circuits with error bars on the bundled model: every task, EAP and EAP-IG.

For each task: attribute with EAP and EAP-IG, take the smallest top-n circuit reaching faithfulness 0.85
(the default run's selection: ``top_n`` without ``n_edges``), and report

- its faithfulness with the 95% percentile-bootstrap interval over the examples;
- its stability (``stability`` evaluator): Jaccard similarity of the edge sets found on bootstrap
  resamples, on fresh task seeds and on disjoint template halves with the full-data circuit;
- for EAP-IG, the task x task transfer matrix: each task's circuit evaluated on every task's data.

Prints markdown tables and writes them, with every number, to ``--out`` (JSON). Usage::

    python benchmarks/error_bars.py                         # 64 examples per task
    python benchmarks/error_bars.py --tasks ioi,sva --examples 32 --resamples 5
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import circuitkit as ck
from circuitkit.uncertainty import fmt_interval

TASKS = ("ioi", "greater_than", "gender_pronoun", "sva", "hypernymy", "country_capital", "induction")
METHODS = (("eap", {}), ("eap_ig", {"ig_steps": 5}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--examples", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--resamples", type=int, default=10, help="stability: bootstrap resamples")
    ap.add_argument("--seeds", type=int, default=2, help="stability: fresh task seeds")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="error_bars.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tasks = [t for t in args.tasks.split(",") if t]

    model = ck.load_model("bundled", device="cpu")
    t_start = time.perf_counter()
    rows, circuits, built = [], {}, {}
    for t in tasks:
        task = ck.build("tasks", t, n_examples=args.examples)
        data = task.build(model.tokenizer, prepend_bos=model.prepend_bos)
        built[t] = (task, data)
        for method, opts in METHODS:
            ctx = ck.RunContext(batch_size=args.batch_size, progress=False)
            from circuitkit.evaluation import EvaluationCache

            ctx.evaluations = EvaluationCache()
            ctx.attributor = ck.build("methods", method, **opts)
            ctx.scores = ctx.attributor.attribute(model, task, data, ctx)
            circuit = ck.build("selectors", "top_n").select_in_run(ctx.scores, model, task, data, ctx)
            f = ck.build("evaluators", "faithfulness").evaluate(model, task, data, circuit, ctx)
            st = ck.build("evaluators", "stability", resamples=args.resamples, seeds=args.seeds).evaluate(
                model, task, data, circuit, ctx
            )
            v = st.values
            row = {
                "task": t,
                "method": method,
                "edges": circuit.n_edges,
                "reached": bool((circuit.selection or {}).get("reached", True)),
                "faithfulness": f.values["faithfulness"],
                "faithfulness_ci": f.intervals.get("faithfulness"),
                "jaccard_resample": v.get("jaccard_resample_mean"),
                "jaccard_resample_min": v.get("jaccard_resample_min"),
                "jaccard_seed": v.get("jaccard_seed_mean"),
                "jaccard_template": v.get("jaccard_template_mean"),
                "faithfulness_resample_sd": v.get("faithfulness_resample_sd"),
                "faithfulness_seed_min": v.get("faithfulness_seed_min"),
                "inclusion_frequency_mean": v.get("inclusion_frequency_mean"),
                "edges_included_95": v.get("edges_included_95"),
                "median_stderr_over_abs_score_in_circuit": _median_rel_se(ctx.scores, circuit),
            }
            rows.append(row)
            circuits[(t, method)] = circuit
            print(f"[{time.perf_counter() - t_start:6.0f} s] {t} {method}: {row['edges']} edges, faithfulness "
                  f"{fmt_interval(row['faithfulness'], row['faithfulness_ci'])}, Jaccard resample {_f(row['jaccard_resample'])} "
                  f"seed {_f(row['jaccard_seed'])} template {_f(row['jaccard_template'])}", flush=True)  # fmt: skip

    # Transfer matrix for EAP-IG: each task's circuit on every task's data (same examples as above).
    from circuitkit.evaluation import evaluate_keeps

    matrix: dict[str, dict[str, list]] = {}
    for src in tasks:
        c = circuits[(src, "eap_ig")]
        matrix[src] = {}
        for dst in tasks:
            task, data = built[dst]
            ctx = ck.RunContext(batch_size=args.batch_size, progress=False)
            ev = evaluate_keeps(model, task, data, c.keep_dense()[None], ctx)
            from circuitkit.uncertainty import evaluation_intervals

            mi = evaluation_intervals(ev, ctx)
            f = ev.faithfulness(ev.circuits[0])
            matrix[src][dst] = [f, None if f is None or mi is None else mi.interval(mi.faithfulness[0])]

    print(
        "\n| task | method | edges (0.85) | faithfulness [95% CI] | Jaccard resample (min) | Jaccard seed | Jaccard template | inclusion freq. (edges >= 0.95) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['task']} | {r['method']} | {r['edges']}{'' if r['reached'] else ' (not reached)'} | "
              f"{fmt_interval(r['faithfulness'], r['faithfulness_ci'])} | {_f(r['jaccard_resample'])} ({_f(r['jaccard_resample_min'])}) | "
              f"{_f(r['jaccard_seed'])} | {_f(r['jaccard_template'])} | {_f(r['inclusion_frequency_mean'])} ({r['edges_included_95']}/{r['edges']}) |")  # fmt: skip
    print("\nEAP-IG transfer (row: the task whose 0.85 circuit is evaluated; column: the data it is evaluated on):\n")
    print("| circuit of \\ on | " + " | ".join(tasks) + " |")
    print("|---|" + "---|" * len(tasks))
    for src in tasks:
        print(f"| {src} | " + " | ".join(_f(matrix[src][d][0]) for d in tasks) + " |")
    with open(args.out, "w", encoding="utf-8") as fh:
        json.dump(
            {"rows": rows, "transfer_eap_ig": matrix, "examples": args.examples, "seconds": time.perf_counter() - t_start},
            fh,
            indent=1,
        )
    print(f"\nwritten to {args.out}; {time.perf_counter() - t_start:.0f} s")


def _median_rel_se(scores, circuit) -> float | None:  # noqa: ANN001
    if scores.stderr is None:
        return None
    idx = torch.as_tensor(circuit.edges).nonzero().squeeze(1)
    rel = scores.stderr[idx] / scores.values[idx].abs().clamp_min(1e-12)
    return float(rel.median()) if len(rel) else None


def _f(v) -> str:  # noqa: ANN001
    return "-" if v is None else f"{v:.2f}"


if __name__ == "__main__":
    main()
