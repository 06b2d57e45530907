"""Method comparison table: CPR, CMD, edges for faithfulness 0.85 and agreement with exact patching.

For every task and every method (EAP and EAP-IG by default) this scores the model's edges, evaluates the
faithfulness curve at MIB's edge budgets (0.1 ... 100 % of the edges; the ``mib`` preset, conf/preset/mib.yaml) and prints, as in MIB's results
table (methods as rows, tasks as columns, one block per measure):

- CPR (higher is better) and CMD (lower is better), MIB's areas under the faithfulness curve
  (Mueller et al. 2025; see :func:`circuitkit.analysis.cpr`). As in MIB, CPR is taken from circuits
  selected by signed score and CMD from circuits selected by ``|score|`` (``cpr_signed=true``);
- the smallest circuit (edges, top-n by ``|score|``) whose faithfulness reaches 0.85;
- Pearson and Spearman correlation of ``|score|`` with exact activation patching of every edge
  (Hanna et al. 2024).

Exact patching is run once per task and also appears as a row (the ground truth the methods approximate).

Usage::

    python benchmarks/method_table.py                               # the bundled model, every task
    python benchmarks/method_table.py --model /path/to/saved/model --tasks ioi,greater_than
    python benchmarks/method_table.py --n-examples 32 --json table.json --plots curves/
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

MEASURES = [
    ("cpr", "CPR (higher is better)"),
    ("cmd", "CMD (lower is better)"),
    ("edges_for_target", "Edges for faithfulness >= {target:g} (fewer is better)"),
    ("pearson", "Pearson r of |score| with patching"),
    ("spearman", "Spearman rho of |score| with patching"),
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--model", default="bundled", help="'bundled', a saved model directory, or a Hugging Face name (default: bundled)"
    )
    p.add_argument("--tasks", default="", help="comma-separated task names (default: every registered task except custom)")
    p.add_argument("--methods", default="eap,eap_ig", help="comma-separated methods (default: eap,eap_ig)")
    p.add_argument("--n-examples", type=int, default=64, help="examples per task (default: 64)")
    p.add_argument("--split", default="test", help="task split (default: test)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--target", type=float, default=0.85, help="faithfulness target for the edge count (default: 0.85)")
    p.add_argument("--edges-per-pass", type=int, default=32, help="edges patched together in one pass by exact patching")
    p.add_argument("--no-patching-row", action="store_true", help="do not list exact patching as a method row")
    p.add_argument("--json", default="", help="also write every number (and the curves) to this JSON file")
    p.add_argument("--plots", default="", help="write one faithfulness-curve picture per task into this directory")
    p.add_argument("--progress", action="store_true", help="show progress bars")
    return p.parse_args(argv)


def fmt(v: Any, key: str) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if key == "edges_for_target":
        return str(int(v))
    return f"{v:.2f}" if key in ("cpr", "cmd") else f"{v:.3f}"


def render(results: dict[str, dict[str, dict[str, Any]]], tasks: list[str], methods: list[str], target: float) -> str:
    """One block per measure: methods as rows, tasks as columns."""
    lines = []
    width = max([len("Method")] + [len(m) for m in methods]) + 2
    cols = [max(len(t), 8) + 2 for t in tasks]
    for key, title in MEASURES:
        lines.append(title.format(target=target))
        lines.append("Method".ljust(width) + "".join(t.rjust(w) for t, w in zip(tasks, cols, strict=True)))
        lines.append("-" * (width + sum(cols)))
        for m in methods:
            cells = [fmt(results.get(t, {}).get(m, {}).get(key), key) for t in tasks]
            lines.append(m.ljust(width) + "".join(c.rjust(w) for c, w in zip(cells, cols, strict=True)))
        lines.append("")
    return "\n".join(lines)


def mib_curve_options() -> dict[str, Any]:
    """MIB's faithfulness-curve settings (edge budgets, CPR from signed scores) from the ``mib`` preset
    (conf/preset/mib.yaml), as ``python -m circuitkit preset=mib`` runs them."""
    from omegaconf import OmegaConf

    from circuitkit.config import compose

    options = OmegaConf.to_container(compose(["preset=mib"]).evaluator.faithfulness_curve)
    assert isinstance(options, dict)
    options.pop("name", None)
    return options  # type: ignore[return-value]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    import circuitkit as ck
    from circuitkit.analysis import score_agreement
    from circuitkit.errors import CircuitkitError
    from circuitkit.plugins import get_registry

    torch.manual_seed(args.seed)
    registry = get_registry()
    tasks = [t for t in args.tasks.split(",") if t] or [t for t in registry.tasks.names() if t != "custom"]
    methods = [m for m in args.methods.split(",") if m]
    for m in methods:
        registry.methods.get(m)  # a clear error for an unknown name
    for t in tasks:
        registry.tasks.get(t)

    t0 = time.perf_counter()
    try:
        model = ck.load_model(args.model, device=args.device, dtype=args.dtype)
    except CircuitkitError as e:
        print(f"method_table: {e}", file=sys.stderr)
        return 1
    g = model.graph
    print(
        f"model: {model.name} ({g.n_layers} layers, {g.n_heads} heads, {g.n_edges} edges) loaded in {time.perf_counter() - t0:.1f}s on {model.device}",
        flush=True,
    )

    curve_eval = ck.build("evaluators", "faithfulness_curve", **{**mib_curve_options(), "target": args.target})
    rows = methods + ([] if args.no_patching_row else ["patching"])
    results: dict[str, dict[str, dict[str, Any]]] = {}
    skipped: dict[str, str] = {}
    for task_name in tasks:
        task = registry.tasks.build(task_name, {"n_examples": args.n_examples, "split": args.split, "seed": args.seed})
        try:
            data = task.build(model.tokenizer, prepend_bos=model.prepend_bos)
        except CircuitkitError as e:
            skipped[task_name] = str(e).splitlines()[0]
            print(f"{task_name}: skipped ({skipped[task_name]})", flush=True)
            continue
        ctx = ck.RunContext(batch_size=args.batch_size, progress=args.progress, seed=args.seed)
        t0 = time.perf_counter()
        truth = ck.build("methods", "patching", edges_per_pass=args.edges_per_pass).attribute(model, task, data, ctx)
        print(f"{task_name}: {len(data)} examples; exact patching {time.perf_counter() - t0:.1f}s", flush=True)
        results[task_name] = {}
        for m in rows:
            t0 = time.perf_counter()
            scores = truth if m == "patching" else registry.methods.build(m).attribute(model, task, data, ctx)
            seconds = time.perf_counter() - t0
            ctx.scores = scores
            ev = curve_eval.evaluate(model, task, data, ck.Circuit.empty(g), ctx)
            agree = score_agreement(scores, truth)
            results[task_name][m] = {
                **{
                    k: ev.values.get(k)
                    for k in ("cpr", "cmd", "edges_for_target", "faithfulness_at_target", "clean_metric", "corrupted_metric")
                },
                "pearson": agree["pearson"] if m != "patching" else None,
                "spearman": agree["spearman"] if m != "patching" else None,
                "attribution_seconds": seconds,
                "curve": ev.tables["curve"],
                "curve_signed": ev.tables["curve_signed"],
                "notes": ev.notes,
            }
            r = results[task_name][m]
            print(
                f"  {m}: CPR {fmt(r['cpr'], 'cpr')}  CMD {fmt(r['cmd'], 'cmd')}  edges@{args.target:g} {fmt(r['edges_for_target'], 'edges_for_target')}  "
                f"r {fmt(r['pearson'], 'pearson')}  rho {fmt(r['spearman'], 'spearman')}  ({seconds:.1f}s)",
                flush=True,
            )
        if args.plots:
            from circuitkit import plot

            if plot.available():
                out = Path(args.plots) / f"curve_{task_name}.png"
                plot.plot_curves(
                    {m: results[task_name][m]["curve"] for m in rows},
                    out,
                    target=args.target,
                    title=f"{task_name} ({model.name})",
                )
            else:
                print(f"no pictures: {plot.INSTALL_HINT}", flush=True)

    shown = [t for t in tasks if t in results]
    print()
    print(
        f"{model.name}: {args.n_examples} examples per task ({args.split} split); budgets {', '.join(f'{b:g}' for b in curve_eval.config.budgets)} % of {g.n_edges} edges"
    )
    print(render(results, shown, rows, args.target))
    for t, why in skipped.items():
        print(f"skipped {t}: {why}")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"model": model.name, "n_edges": g.n_edges, "args": vars(args), "results": results, "skipped": skipped}, indent=1
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
