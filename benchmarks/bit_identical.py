"""Check that a change to circuitkit's code changes no number: run the default command and one run of each
method (and each attribution level) on the bundled model, and compare the run files byte for byte with the
same runs of another checkout, on the same machine.

Two steps, because the two checkouts are different installs of the package::

    # on the revision before the change (e.g. a worktree with its own editable install)
    python benchmarks/bit_identical.py --save /path/before
    # on the revision after it
    python benchmarks/bit_identical.py --against /path/before

``--save`` writes each run's ``scores.json`` and ``circuit.json`` and the numbers of ``results.json`` (every
number except the timings, ``seconds``) under the given folder; ``--against`` makes the same runs and
prints, per run and file, ``identical`` or what differs (the largest absolute difference of the numbers and
how many differ). Exit status 1 when anything differs. ``scores.json`` holds the scores, their standard
errors and the run's metadata (method options, model and data hashes, library versions), so a byte-identical
file is the strongest statement: same scores, same options, same data.

Runs use ``cache=false`` and ``pictures=false`` (no attribution cache; pictures hold no numbers that the
JSON files do not).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

# name -> overrides. The default command first, then one run per method, then the other levels.
RUNS: dict[str, list[str]] = {
    "default": ["method=eap_ig", "task=greater_than"],
    "eap": ["method=eap", "task=greater_than", "selector.n_edges=200"],
    "eap_ig": ["method=eap_ig", "task=ioi", "selector.n_edges=200"],
    "clean_corrupted": ["method=clean_corrupted", "task=greater_than", "selector.n_edges=200"],
    "patching": ["method=patching", "task=greater_than", "selector.n_edges=200"],
    "eap_ig_activations": ["method=eap_ig_activations", "task=greater_than", "selector.n_edges=200"],
    "information_flow_routes": ["method=information_flow_routes", "task=greater_than", "selector.n_edges=200"],
    "acdc": ["method=acdc", "task=greater_than", "evaluator=[faithfulness]"],
    "random": ["method=random", "task=greater_than", "selector.n_edges=200"],
    "eap_node": ["method=eap", "method.level=node", "task=greater_than", "selector.n_nodes=5"],
    "eap_neuron": ["method=eap", "method.level=neuron", "task=greater_than", "selector.n_neurons=50", "evaluator=[faithfulness]"],
    "eap_zero": ["method=eap", "task=sva", "intervention=zero", "selector.n_edges=100"],
    "eap_ig_mean": ["method=eap_ig", "task=greater_than", "intervention=mean", "selector=threshold", "selector.threshold=0.01"],
}
COMMON = ["cache=false", "pictures=false", "progress=false"]
FILES = ("scores.json", "circuit.json", "results.json")


def run_all(out: Path, only: list[str] | None) -> None:
    env = {**os.environ, "WANDB_MODE": "disabled"}
    for name, args in RUNS.items():
        if only and name not in only:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp) / "run"
            p = subprocess.run(
                [sys.executable, "-m", "circuitkit", *args, *COMMON, f"output_dir={d}"], capture_output=True, text=True, env=env
            )
            if p.returncode != 0:
                sys.exit(f"run {name} failed ({' '.join(args)}):\n{p.stderr[-3000:]}")
            dest = out / name
            dest.mkdir(parents=True, exist_ok=True)
            for f in FILES:
                if not (d / f).exists():
                    continue
                data = (d / f).read_bytes()
                if f == "results.json":
                    r = json.loads(data)
                    r.pop("seconds", None)
                    r.get("meta", {}).get("config", {}).pop("output_dir", None)
                    data = json.dumps(r, indent=1, sort_keys=True).encode()
                (dest / f).write_bytes(data)
        print(f"{name}: done", flush=True)


def _numbers(x, path="") -> dict[str, object]:
    """Flatten a JSON value into {path: leaf}."""
    if isinstance(x, dict):
        out: dict[str, object] = {}
        for k, v in x.items():
            out.update(_numbers(v, f"{path}/{k}"))
        return out
    if isinstance(x, list):
        out = {}
        for i, v in enumerate(x):
            out.update(_numbers(v, f"{path}[{i}]"))
        return out
    return {path: x}


def compare(before: Path, after: Path, names: list[str]) -> bool:
    same = True
    for name in names:
        if not (before / name).exists():
            continue
        for f in FILES:
            a, b = before / name / f, after / name / f
            if not a.exists() and not b.exists():
                continue
            if not a.exists() or not b.exists():
                print(f"{name}/{f}: present in only one of the two")
                same = False
                continue
            if a.read_bytes() == b.read_bytes():
                print(f"{name}/{f}: identical")
                continue
            same = False
            na, nb = _numbers(json.loads(a.read_bytes())), _numbers(json.loads(b.read_bytes()))
            keys = sorted(set(na) | set(nb))
            differ = [k for k in keys if na.get(k) != nb.get(k)]
            diffs = [
                abs(na[k] - nb[k])
                for k in differ
                if isinstance(na.get(k), (int, float)) and isinstance(nb.get(k), (int, float)) and not isinstance(na.get(k), bool)
            ]
            largest = max((d for d in diffs if not math.isnan(d)), default=float("nan"))
            print(
                f"{name}/{f}: DIFFERS in {len(differ)} of {len(keys)} values (largest numeric difference {largest:.3g}); first: {differ[:5]}"
            )
    return same


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--save", type=Path, help="run everything and keep the files here")
    g.add_argument("--against", type=Path, help="run everything and compare with the files kept here by --save")
    ap.add_argument("--only", nargs="*", help=f"a subset of the runs: {' '.join(RUNS)}")
    args = ap.parse_args()
    if args.save:
        run_all(args.save, args.only)
        return
    with tempfile.TemporaryDirectory() as tmp:
        names = args.only or [n for n in RUNS if (args.against / n).exists()]
        run_all(Path(tmp), names)
        ok = compare(args.against, Path(tmp), names)
    print("all identical" if ok else "DIFFERENCES FOUND")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
