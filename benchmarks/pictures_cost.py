"""What the pictures cost a default run: the README's command with and without them.

Runs ``python -m circuitkit method=eap_ig task=greater_than`` (the bundled model, its default evaluators)
as a user would, alternating ``pictures=true`` (circuit.svg/png, curve.png, circuit.html) and
``pictures=false``, ``--repeats`` times each with the attribution cache off, and prints the median wall
times, their difference and ratio, and the time the pictures reporter itself took in-process on the last run
(drawing and writing only, without importing matplotlib).

    python benchmarks/pictures_cost.py --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def one_run(out: Path, pictures: bool) -> float:
    cmd = [sys.executable, "-m", "circuitkit", "method=eap_ig", "task=greater_than", f"pictures={str(pictures).lower()}",
           "cache=false", "progress=false", f"output_dir={out}"]  # fmt: skip
    t = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - t


def reporter_seconds(run_dir: Path) -> float:
    import torch

    import circuitkit as ck
    from circuitkit.results import Circuit, EvalResult, RunResult, Scores

    torch.set_num_threads(1)
    res = json.loads((run_dir / "results.json").read_text())
    scores = Scores.load(run_dir / "scores.json")
    circuit = Circuit.load(run_dir / "circuit.json")
    circuit.scores = scores
    evals = {k: EvalResult(k, v.get("values", {}), v.get("tables", {})) for k, v in res.items() if isinstance(v, dict) and "values" in v}
    run = RunResult(meta=res["meta"], scores=scores, circuit=circuit, evals=evals)
    rep = ck.build("reporters", "pictures")
    import matplotlib.figure  # noqa: F401 - imported before timing: drawing and writing only

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        rep.report(run, tmp)
        return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    times: dict[bool, list[float]] = {True: [], False: []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            for pictures in (False, True):
                times[pictures].append(one_run(Path(tmp) / f"{i}-{pictures}", pictures))
        last = Path(tmp) / f"{args.repeats - 1}-True"
        files = sorted(p.name for p in last.iterdir() if p.suffix in (".svg", ".png", ".html"))
        rep = reporter_seconds(last)
    off, on = statistics.median(times[False]), statistics.median(times[True])
    print(f"default run, pictures=false: {off:6.2f} s (median of {args.repeats})")
    print(f"default run, pictures=true:  {on:6.2f} s   ({', '.join(files)})")
    print(f"pictures cost {on - off:+.2f} s = {on / off:.3f}x the run without them; the reporter alone (no imports): {rep:.2f} s")


if __name__ == "__main__":
    main()
