"""What the pictures cost a default run: the README's command with and without them.

Runs ``python -m circuitkit method=eap_ig task=greater_than`` (the bundled model, its default evaluators)
as a user would, alternating ``pictures=true`` (circuit.svg/png, curve.png, circuit.html) and
``pictures=false``, ``--repeats`` times each with the attribution cache off, and prints the median wall and
CPU times (CPU: user + system of the child process, the number to trust on a busy machine), their difference
and ratio, and the time the pictures reporter itself took in-process on the last run (drawing and writing
only, without importing matplotlib).

    python benchmarks/pictures_cost.py --repeats 3
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _child_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def one_run(out: Path, pictures: bool) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one run in a fresh process. CPU time is what to compare on a busy
    machine: the wall time there mostly measures the other processes."""
    cmd = [sys.executable, "-m", "circuitkit", "method=eap_ig", "task=greater_than", f"pictures={str(pictures).lower()}",
           "cache=false", "progress=false", f"output_dir={out}"]  # fmt: skip
    t, c = time.perf_counter(), _child_cpu()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - t, _child_cpu() - c


def reporter_seconds(run_dir: Path) -> tuple[float, float]:
    import torch

    import circuitkit as ck
    from circuitkit.results import Circuit, EvalResult, RunResult, Scores

    torch.set_num_threads(1)
    res = json.loads((run_dir / "results.json").read_text())
    scores = Scores.load(run_dir / "scores.json")
    circuit = Circuit.load(run_dir / "circuit.json")
    circuit.scores = scores
    evals = {
        k: EvalResult(k, v.get("values", {}), v.get("tables", {}))
        for k, v in res.items()
        if isinstance(v, dict) and "values" in v
    }
    run = RunResult(meta=res["meta"], scores=scores, circuit=circuit, evals=evals)
    rep = ck.build("reporters", "pictures")
    import matplotlib.figure  # noqa: F401 - imported before timing: drawing and writing only

    with tempfile.TemporaryDirectory() as tmp:
        t, c = time.perf_counter(), time.process_time()
        rep.report(run, tmp)
        return time.perf_counter() - t, time.process_time() - c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    times: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            for pictures in (False, True):
                times[pictures].append(one_run(Path(tmp) / f"{i}-{pictures}", pictures))
        last = Path(tmp) / f"{args.repeats - 1}-True"
        files = sorted(p.name for p in last.iterdir() if p.suffix in (".svg", ".png", ".html"))
        rep_wall, rep_cpu = reporter_seconds(last)
    for k, what in ((0, "wall"), (1, "CPU")):
        off, on = (statistics.median(t[k] for t in times[p]) for p in (False, True))
        print(f"default run {what:4}: pictures=false {off:6.2f} s, pictures=true {on:6.2f} s (median of {args.repeats}): "
              f"pictures cost {on - off:+.2f} s = {on / off:.3f}x")  # fmt: skip
    print(f"files: {', '.join(files)}")
    print(f"the pictures reporter alone, matplotlib already imported: {rep_wall:.2f} s wall, {rep_cpu:.2f} s CPU")


if __name__ == "__main__":
    main()
