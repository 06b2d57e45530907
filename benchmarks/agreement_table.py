"""Agreement of every attribution method with exact patching.

For each task, runs exact activation patching (the ground truth that attribution methods estimate) and
every other registered method on the same examples, and prints the Pearson and Spearman correlation of
``|score|`` with ``|patching score|`` over all edges. Information flow routes and the random baseline are
included: their scores are not metric drops, so only the ranking (Spearman) is comparable, and random
should be near 0.

Usage::

    python benchmarks/agreement_table.py                                   # bundled model, greater_than + ioi
    python benchmarks/agreement_table.py --model /path/to/saved-dir --tasks greater_than sva --n-examples 32
    python benchmarks/agreement_table.py --methods eap eap_ig acdc --set acdc.tau=0.001 --metric kl

``--model`` is anything :func:`circuitkit.load_model` accepts (``bundled``, a directory written by
``save_pretrained`` with its tokenizer, a Hub name). ``--set METHOD.OPTION=VALUE`` passes method options
(values are parsed as Python literals when possible). ``--metric kl`` scores every method, patching
included, against KL divergence to the clean distribution (:mod:`circuitkit.objectives`); EAP's KL
scores are then rounding noise (the gradient of KL at the clean run is 0), so its row means little.
"""

from __future__ import annotations

import argparse
import ast
import math
import sys
import time

import numpy as np
import torch

import circuitkit as ck
from circuitkit.objectives import bind_objective
from circuitkit.plugins import get_registry


def ranks(x: np.ndarray) -> np.ndarray:
    """Ranks with ties averaged (as Spearman's rho uses)."""
    order = np.argsort(x, kind="stable")
    r = np.empty(len(x), dtype=np.float64)
    r[order] = np.arange(len(x), dtype=np.float64)
    sx = x[order]
    start = 0
    for i in range(1, len(x) + 1):
        if i == len(x) or sx[i] != sx[start]:
            r[order[start:i]] = (start + i - 1) / 2.0
            start = i
    return r


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    den = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return float((a * b).sum()) / den if den > 0 else float("nan")


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return pearson(ranks(a), ranks(b))


def parse_sets(items: list[str]) -> dict[str, dict[str, object]]:
    out: dict[str, dict[str, object]] = {}
    for item in items:
        key, _, value = item.partition("=")
        method, _, option = key.partition(".")
        if not option or not _:
            raise SystemExit(f"--set expects METHOD.OPTION=VALUE, got {item!r}")
        try:
            parsed: object = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            parsed = value
        out.setdefault(method, {})[option] = parsed
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="bundled", help="bundled, a save_pretrained directory, or a Hub name")
    ap.add_argument("--tasks", nargs="+", default=["greater_than", "ioi"])
    ap.add_argument("--methods", nargs="*", default=None, help="methods to compare (default: every registered one)")
    ap.add_argument("--n-examples", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--metric", default=None, help="override every task's metric (e.g. kl)")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="METHOD.OPTION=VALUE")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    registry = get_registry()
    methods = args.methods or [m for m in registry.methods.names() if m != "patching"]
    options = parse_sets(args.sets)
    model = ck.load_model(args.model, device=args.device, dtype=args.dtype)
    g = model.graph
    print(f"model {model.name}: {g.n_layers} layers x {g.n_heads} heads, {g.n_edges} edges, {model.device}, {args.dtype}")

    table: dict[str, dict[str, tuple[float, float] | str]] = {m: {} for m in methods}
    seconds: dict[str, dict[str, float]] = {m: {} for m in ["patching", *methods]}
    ctx = ck.RunContext(batch_size=args.batch_size, progress=False)
    for task_name in args.tasks:
        task_opts: dict[str, object] = {"n_examples": args.n_examples}
        if args.metric:
            task_opts["metric"] = args.metric
        task = registry.tasks.build(task_name, task_opts)
        data = task.build(model.tokenizer, prepend_bos=model.prepend_bos)
        task = bind_objective(task, model)
        print(f"task {task_name}: {len(data)} examples, metric {task.config.metric}", file=sys.stderr)
        t0 = time.perf_counter()
        truth = registry.methods.build("patching", options.get("patching")).attribute(model, task, data, ctx)
        seconds["patching"][task_name] = time.perf_counter() - t0
        ref = truth.values.abs().numpy()
        for m in methods:
            t0 = time.perf_counter()
            try:
                s = registry.methods.build(m, options.get(m)).attribute(model, task, data, ctx)
            except ck.CircuitkitError as e:
                table[m][task_name] = f"error: {str(e).splitlines()[0][:60]}"
                continue
            seconds[m][task_name] = time.perf_counter() - t0
            v = s.values.abs().numpy()
            ok = np.isfinite(v) & np.isfinite(ref)
            table[m][task_name] = (pearson(v[ok], ref[ok]), spearman(v[ok], ref[ok]))

    width = max(len(m) for m in [*methods, "method"]) + 2
    col = 26
    print()
    print("Agreement of |score| with |exact patching| over all edges: Pearson / Spearman (seconds)")
    print("method".ljust(width) + "".join(t.ljust(col) for t in args.tasks))
    for m in methods:
        cells = []
        for t in args.tasks:
            cell = table[m].get(t, "-")
            if isinstance(cell, tuple):
                cells.append(f"{cell[0]:+.3f} / {cell[1]:+.3f} ({seconds[m].get(t, float('nan')):.1f}s)".ljust(col))
            else:
                cells.append(str(cell)[: col - 1].ljust(col))
        print(m.ljust(width) + "".join(cells))
    print("patching".ljust(width) + "".join(f"(reference, {seconds['patching'][t]:.1f}s)".ljust(col) for t in args.tasks))


if __name__ == "__main__":
    main()
