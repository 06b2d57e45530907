"""Wall time of the default command, ``python -m circuitkit method=eap_ig task=greater_than cache=false``
(the smallest circuit reaching faithfulness 0.85, the faithfulness curve, CPR/CMD and the pictures), against
the same run with a fixed 200-edge circuit and only the faithfulness evaluator (the default before the
size search), each as a user starts it: a fresh process, the bundled model, no attribution cache.

Prints each run's wall and CPU seconds (user + system of the child process: less sensitive than wall time
to other work on a shared machine), the medians per command, their ratios, and how many circuit sizes the
search evaluated (results.json ``selection``). Usage::

    python benchmarks/default_run.py              # 3 runs of each command, interleaved
    python benchmarks/default_run.py --repeat 5 --extra model.device=cpu
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BASE = ["method=eap_ig", "task=greater_than", "cache=false"]
FIXED = ["selector=top_n", "selector.n_edges=200", "evaluator=[faithfulness]"]


def run(args: list[str], out: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one run in a fresh process."""
    env = {**os.environ, "WANDB_MODE": "disabled"}
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "circuitkit", *args, f"output_dir={out}"], capture_output=True, text=True, env=env)
    dt = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode != 0:
        sys.exit(f"failed: {' '.join(args)}\n{p.stderr[-2000:]}")
    return dt, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--extra", nargs="*", default=[], help="overrides added to both commands")
    args = ap.parse_args()
    times: dict[str, list[float]] = {"default": [], "fixed": []}
    cpu: dict[str, list[float]] = {"default": [], "fixed": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeat):
            for label, extra in (("default", []), ("fixed", FIXED)):
                out = Path(tmp) / f"{label}-{i}"
                wall, used = run([*BASE, *extra, *args.extra], out)
                times[label].append(wall)
                cpu[label].append(used)
                print(f"{label:>8} run {i + 1}: {wall:.2f} s wall, {used:.2f} s CPU", flush=True)
        results = json.loads((Path(tmp) / "default-0" / "results.json").read_text())
        fixed = json.loads((Path(tmp) / "fixed-0" / "results.json").read_text())
    med = {k: statistics.median(v) for k, v in times.items()}
    mcpu = {k: statistics.median(v) for k, v in cpu.items()}
    print()
    print(f"python -m circuitkit {' '.join(BASE + args.extra)}   (load average {os.getloadavg()[0]:.1f}, {os.cpu_count()} CPUs)")
    print(f"  default (search + curve + pictures): median {med['default']:.2f} s wall, {mcpu['default']:.2f} s CPU")
    print(f"  fixed 200 edges, faithfulness only:  median {med['fixed']:.2f} s wall, {mcpu['fixed']:.2f} s CPU")
    print(f"  ratio default / fixed: {med['default'] / med['fixed']:.2f} wall, {mcpu['default'] / mcpu['fixed']:.2f} CPU")
    sel = results.get("selection") or {}
    if sel:
        grid = sum(1 for r in sel["evaluated"] if r["stage"] == "grid")
        print(
            f"  selection: {sel['edges_in_circuit']} of {sel['edges_in_graph']} edges ({100 * sel['fraction_of_graph']:.2g}%), "
            f"faithfulness {sel['faithfulness']:.3f} >= {sel['target']:g}; {len(sel['evaluated'])} sizes evaluated "
            f"({grid} grid, {len(sel['evaluated']) - grid} bisection in {sel['bisection_rounds']} rounds)"
        )
    # Stages relative to attribution in the same process: comparable across machines and loads.
    for label, res in (("default", results), ("fixed", fixed)):
        secs = res.get("seconds", {})
        att = secs.get("attribute") or float("nan")
        after = {k: v for k, v in secs.items() if k == "select" or k.startswith("evaluate_")}
        print(
            f"  {label} run 1 seconds: "
            + ", ".join(f"{k} {v:.2f}" for k, v in secs.items())
            + f"; selection + evaluation = {sum(after.values()) / att:.2f} x attribution"
        )


if __name__ == "__main__":
    main()
