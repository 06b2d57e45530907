"""Node-level attribution and the interventions, on the bundled model.

For each task and intervention (``patching``, ``zero``, ``mean``, ``mean_positional``), prints:

- the agreement (Pearson / Spearman over nodes) of EAP and EAP-IG node scores with exact node patching
  (every outgoing edge of a node corrupted at once), under that intervention;
- the faithfulness of the top-``k`` node circuits chosen by EAP-IG node scores (every edge between the
  kept nodes), evaluated under the same intervention.

Usage::

    python benchmarks/levels_table.py                         # bundled model, greater_than + ioi
    python benchmarks/levels_table.py --tasks sva --n-examples 32 --k 4 8 16
"""

from __future__ import annotations

import argparse
import time

import torch
from agreement_table import pearson, spearman

import circuitkit as ck
from circuitkit.evaluation import evaluate_keeps
from circuitkit.interventions import build_intervention, intervention_names
from circuitkit.nodes import select_units
from circuitkit.plugins import get_registry


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="bundled")
    ap.add_argument("--tasks", nargs="+", default=["greater_than", "ioi"])
    ap.add_argument("--interventions", nargs="+", default=intervention_names())
    ap.add_argument("--n-examples", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--k", type=int, nargs="+", default=[4, 8, 12])
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    registry = get_registry()
    model = ck.load_model(args.model)
    g = model.graph
    print(f"model {model.name}: {g.n_sources} nodes (+ logits), {g.n_edges} edges; {args.n_examples} examples per task")
    header = (
        "| task | intervention | EAP node r / rho | EAP-IG node r / rho | "
        + " | ".join(f"faithfulness top-{k} nodes" for k in args.k)
        + " | seconds |"
    )
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for task_name in args.tasks:
        task = registry.tasks.build(task_name, {"n_examples": args.n_examples})
        data = task.build(model.tokenizer, prepend_bos=model.prepend_bos)
        for kind in args.interventions:
            t0 = time.perf_counter()
            ctx = ck.RunContext(batch_size=args.batch_size, progress=False)
            ctx.intervention = build_intervention(model, data, kind, args.batch_size)
            truth = registry.methods.build("patching", {"level": "node"}).attribute(model, task, data, ctx).nodes.numpy()
            eap = registry.methods.build("eap", {"level": "node"}).attribute(model, task, data, ctx)
            ig = registry.methods.build("eap_ig", {"level": "node"}).attribute(model, task, data, ctx)
            agree = [f"{pearson(s.nodes.numpy(), truth):.2f} / {spearman(s.nodes.numpy(), truth):.2f}" for s in (eap, ig)]
            circuits = [select_units(ig, n_nodes=k) for k in args.k]
            ev = evaluate_keeps(model, task, data, torch.stack([c.keep_dense() for c in circuits]), ctx)
            faith = [ev.faithfulness(v) for v in ev.circuits]
            cells = [f"{f:.3f}" if f is not None else "undefined" for f in faith]
            print(
                f"| {task_name} | {kind} | {agree[0]} | {agree[1]} | "
                + " | ".join(cells)
                + f" | {time.perf_counter() - t0:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
