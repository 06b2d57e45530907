"""Exact patching of every edge of a real model on real tasks, against one full evaluation per edge.

For each task: the time of ``exact_patching`` over all edges (stacked copies, one edge removed in each), and
the time of evaluating single all-but-one-edge circuits one by one with ``evaluate_keeps`` (corrupted pass,
clean pass, masked pass: what a loop over edges without circuitkit's batching costs), on the same examples
and in the same run. Prints edges/second for both and their ratio. Times are the best of ``--repeat`` runs after
an untimed one.

Usage::

    python benchmarks/patching_speed.py                          # bundled model, ioi and greater_than
    python benchmarks/patching_speed.py --tasks sva --n-examples 32 --edges-per-pass 16
"""

from __future__ import annotations

import argparse
import sys

import torch
from speed import timed  # best of n runs after one untimed call (benchmarks/speed.py)

import circuitkit as ck
from circuitkit.attribution import exact_patching
from circuitkit.errors import CircuitkitError
from circuitkit.evaluation import evaluate_keeps
from circuitkit.plugins import get_registry
from circuitkit.results import Circuit


def measure(model, task, data, args, gen) -> tuple[float, float]:  # noqa: ANN001
    """Seconds for exact patching of every edge, and seconds per edge evaluated one by one."""
    g = model.graph
    ctx = ck.RunContext(batch_size=len(data), progress=False)
    t_all = timed(lambda: exact_patching(model, task, data, ctx, edges_per_pass=args.edges_per_pass), args.repeat)
    picks = torch.randperm(g.n_edges, generator=gen)[: args.single_edges]
    keeps = torch.stack([Circuit(g, (torch.arange(g.n_edges) != int(i)).numpy()).keep_dense() for i in picks])
    t_one = timed(lambda: [evaluate_keeps(model, task, data, keeps[k : k + 1], ctx) for k in range(len(keeps))], args.repeat)
    return t_all, t_one / len(keeps)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="bundled")
    ap.add_argument("--tasks", nargs="+", default=["ioi", "greater_than"])
    ap.add_argument("--n-examples", type=int, default=16)
    ap.add_argument("--edges-per-pass", type=int, default=32, help="the patching method's default is 32")
    ap.add_argument("--single-edges", type=int, default=16, help="edges evaluated one by one for the baseline")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        model = ck.load_model(args.model, device=args.device)
    except CircuitkitError as e:
        print(f"patching_speed: {e}", file=sys.stderr)
        return 1
    g = model.graph
    registry = get_registry()
    print(
        f"model: {model.name}, {g.n_edges} edges; {args.n_examples} examples per task; {args.edges_per_pass} edges per pass; "
        f"device {model.device}" + ("" if model.device.type == "cuda" else f", torch threads {torch.get_num_threads()}")
    )
    print(f"{'task':<16}{'metric':<12}{'all edges s':>12}{'edges/s':>9}{'one-by-one edges/s':>20}{'speed-up':>10}")
    gen = torch.Generator().manual_seed(0)
    for name in args.tasks:
        task = registry.tasks.build(name, {"n_examples": args.n_examples, "split": "test"})
        data = task.build(model.tokenizer, prepend_bos=model.prepend_bos)
        t_all, t_one = measure(model, task, data, args, gen)
        print(
            f"{name:<16}{task.config.metric:<12}{t_all:>12.2f}{g.n_edges / t_all:>9.1f}{1 / t_one:>20.1f}{t_one * g.n_edges / t_all:>9.1f}x",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
