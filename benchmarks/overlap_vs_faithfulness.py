"""Does overlap with the exact-patching circuit predict faithfulness? (Hanna et al. 2024's analysis.)

On the bundled model, for every task: exact patching of every edge gives the reference ranking; each
method (EAP, EAP-IG, clean-corrupted, EAP-IG on activations, random) gives its own. At each circuit size
(a share of the graph's edges) the method's top-n circuit is compared with the reference's top-n circuit
(edge IoU, :func:`circuitkit.analysis.overlap_vs_faithfulness`) and its faithfulness is measured.

Reported:

- Spearman correlation of overlap and faithfulness over all points (tasks x methods x sizes), with a 95%
  interval from a cluster bootstrap over *tasks* (the points of one task are not independent);
- the same within (task, size) cells (each cell's mean IoU and faithfulness subtracted first), which
  removes what both owe to the circuit's size — the question is whether, at a given size, the method
  whose circuit overlaps more with the reference is the more faithful one;
- a scatter plot (``--plot``) of every point, one colour per method.

Usage::

    python benchmarks/overlap_vs_faithfulness.py                     # every task, 32 examples
    python benchmarks/overlap_vs_faithfulness.py --tasks ioi,sva --plot overlap.png
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

import circuitkit as ck
from circuitkit.analysis import overlap_vs_faithfulness, spearman

TASKS = ("ioi", "greater_than", "gender_pronoun", "sva", "hypernymy", "country_capital", "induction")
METHODS = (
    ("eap", {}),
    ("eap_ig", {"ig_steps": 5}),
    ("clean_corrupted", {}),
    ("eap_ig_activations", {"ig_steps": 5}),
    ("random", {}),
)
PERCENT = (1.0, 2.0, 5.0, 10.0, 20.0, 40.0)


def cluster_bootstrap(
    points: list[dict], key_x: str, key_y: str, within: bool, n: int, seed: int
) -> tuple[float | None, list[float] | None]:
    """Spearman of ``key_x`` vs ``key_y`` over ``points`` and its percentile interval, resampling tasks."""
    tasks = sorted({p["task"] for p in points})

    def corr(pts: list[dict]) -> float | None:
        xs = np.array([p[key_x] for p in pts], dtype=np.float64)
        ys = np.array([p[key_y] for p in pts], dtype=np.float64)
        if within:  # subtract each (task, size) cell's mean
            cells: dict[tuple, list[int]] = {}
            for i, p in enumerate(pts):
                cells.setdefault((p["task"], p["_rep"], p["size"]), []).append(i)
            for idx in cells.values():
                xs[idx] -= xs[idx].mean()
                ys[idx] -= ys[idx].mean()
        return spearman(xs, ys)

    value = corr([{**p, "_rep": 0} for p in points])
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(n):
        pick = rng.choice(len(tasks), len(tasks), replace=True)
        pts = [{**p, "_rep": r} for r, t in enumerate(pick) for p in points if p["task"] == tasks[t]]
        c = corr(pts)
        if c is not None and np.isfinite(c):
            samples.append(c)
    if not samples:
        return value, None
    lo, hi = np.quantile(samples, [0.025, 0.975])
    return value, [float(lo), float(hi)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--examples", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--resamples", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--plot", default=None, help="PNG for the scatter plot")
    ap.add_argument("--out", default="overlap_vs_faithfulness.json", help="the points, written after each task")
    ap.add_argument("--from-json", default=None, help="summarise the points of an earlier --out file (no computation)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    if args.from_json:
        with open(args.from_json, encoding="utf-8") as fh:
            saved = json.load(fh)
        summarise(saved["points"], saved["sizes"], saved["n_edges"], args)
        return
    model = ck.load_model("bundled", device="cpu")
    g = model.graph
    sizes = [max(1, int(p / 100 * g.n_edges)) for p in PERCENT]
    points: list[dict] = []
    for t in [x for x in args.tasks.split(",") if x]:
        task = ck.build("tasks", t, n_examples=args.examples)
        data = task.build(model.tokenizer, prepend_bos=model.prepend_bos)
        ctx = ck.RunContext(batch_size=args.batch_size, progress=False)
        ref = ck.build("methods", "patching").attribute(model, task, data, ctx)
        for method, opts in METHODS:
            scores = ck.build("methods", method, **opts).attribute(model, task, data, ctx)
            rows = overlap_vs_faithfulness(model, task, data, scores, ref, sizes, ctx, labels=(method, "patching"))
            for r in rows:
                f = r[f"faithfulness_{method}"]
                if f is None:
                    continue
                points.append({"task": t, "method": method, "size": r["n_edges"], "edge_iou": r["edge_iou"], "node_iou": r["node_iou"],
                               "faithfulness": f, "faithfulness_patching": r["faithfulness_patching"]})  # fmt: skip
        with open(args.out, "w", encoding="utf-8") as fh:
            json.dump({"points": points, "sizes": sizes, "percent": PERCENT, "n_edges": g.n_edges}, fh, indent=1)
        print(f"[{time.perf_counter() - t0:5.0f} s] {t}: done (points so far in {args.out})", flush=True)
    summarise(points, sizes, g.n_edges, args)
    print(f"{time.perf_counter() - t0:.0f} s")


def summarise(points: list[dict], sizes: list[int], n_edges: int, args: argparse.Namespace) -> None:
    methods = [m for m, _ in METHODS]
    print(
        f"\n{len(points)} points ({len({p['task'] for p in points})} tasks x {len(methods)} methods x {len(sizes)} sizes: {PERCENT} % of {n_edges} edges)"
    )
    # The random baseline (no overlap, no faithfulness) alone makes overlap look predictive: also without it.
    for label, pts in (("all methods", points), ("without random", [p for p in points if p["method"] != "random"])):
        for within in (False, True):
            for key in ("edge_iou", "node_iou"):
                v, ci = cluster_bootstrap(pts, key, "faithfulness", within, args.resamples, 0)
                what = "within (task, size)" if within else "pooled"
                print(
                    f"{label}: Spearman({key}, faithfulness), {what}: {v:.3f}"
                    + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else " [no interval]")
                )
    print("\nmean edge IoU with the exact-patching circuit / mean faithfulness, by method and size (over tasks):")
    print("| method | " + " | ".join(f"{p:g}%" for p in PERCENT) + " |")
    print("|---|" + "---|" * len(PERCENT))
    for m in methods:
        cells = []
        for n in sizes:
            pts = [p for p in points if p["method"] == m and p["size"] == n]
            cells.append(
                f"{np.mean([p['edge_iou'] for p in pts]):.2f} / {np.mean([p['faithfulness'] for p in pts]):.2f}" if pts else "-"
            )
        print(f"| {m} | " + " | ".join(cells) + " |")
    ref_f = [np.mean([p["faithfulness_patching"] for p in points if p["size"] == n]) for n in sizes]
    print("| exact patching (reference) | " + " | ".join(f"1.00 / {f:.2f}" for f in ref_f) + " |")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        for i, m in enumerate(methods):
            pts = [p for p in points if p["method"] == m]
            ax.scatter(
                [p["edge_iou"] for p in pts],
                [p["faithfulness"] for p in pts],
                s=14,
                label=m,
                color=plt.get_cmap("tab10")(i),
                alpha=0.8,
            )
        ax.set_xlabel("edge IoU with the exact-patching circuit of the same size")
        ax.set_ylabel("faithfulness")
        ax.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
        ax.legend(fontsize=8)
        ax.set_title("Overlap vs faithfulness (bundled model, every task and size)")
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print(f"plot written to {args.plot}")


if __name__ == "__main__":
    main()
