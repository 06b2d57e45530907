"""What the error bars cost: per-edge standard errors in attribution and bootstrap intervals in evaluation.

Times, in one run and on the same batches, the parts of a default run (EAP-IG attribution, the faithfulness
curve's evaluation sweep) with and without the uncertainty work:

- attribution with per-example contractions (``stderr=True``, what runs by default: scores, standard
  errors and per-example scores from the same passes) vs the plain contraction (``stderr=False``);
- the bootstrap of the evaluation (``n_resamples`` resamples of every circuit's per-example metric, CPR and
  CMD per resample) vs the evaluation sweep it comes from.

Prints CPU seconds (best of ``--repeat``, alternating with and without) and the ratio (with / without) of each, and of their sum — the share of a default run's
attribution + evaluation time the error bars add. Usage::

    python benchmarks/uncertainty_cost.py                  # the bundled model, greater_than, 64 examples
    python benchmarks/uncertainty_cost.py --gpt2-shape     # GPT-2-small shape (random weights), 32,491 edges
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
import circuitkit as ck  # noqa: E402
from circuitkit.analysis import MIB_PERCENTAGES  # noqa: E402
from circuitkit.attribution import gradient_attribution  # noqa: E402
from circuitkit.evaluation import evaluate_keeps  # noqa: E402
from circuitkit.uncertainty import BootstrapConfig, area_samples, metric_intervals  # noqa: E402

#: Times are CPU seconds of this process (time.process_time): other processes' load on a shared machine
#: lengthens wall time, much less the CPU time a computation needs (run with --threads 1 for a clean count).
clock = time.process_time


def best_of(fn, repeat: int) -> tuple[float, object]:
    out = fn()  # warm-up
    best = float("inf")
    for _ in range(repeat):
        t0 = clock()
        out = fn()
        best = min(best, clock() - t0)
    return best, out


def _once(fn) -> float:  # noqa: ANN001
    t0 = clock()
    fn()
    return clock() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--gpt2-shape", action="store_true", help="a GPT-2-small-shaped model with random weights instead of the bundled one"
    )
    ap.add_argument("--task", default="greater_than")
    ap.add_argument("--examples", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--ig-steps", type=int, default=5)
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    if args.gpt2_shape:
        from circuitkit.testing_models import gpt2_tokenizer, tiny_gpt2

        model = tiny_gpt2(12, 12, 768, tokenizer=gpt2_tokenizer())
    else:
        model = ck.load_model("bundled", device="cpu")
    task = ck.build("tasks", args.task, n_examples=args.examples)
    data = task.build(model.tokenizer, prepend_bos=model.prepend_bos)
    ctx = ck.RunContext(batch_size=args.batch_size, progress=False)
    alphas = [k / args.ig_steps for k in range(1, args.ig_steps + 1)]
    g = model.graph
    print(f"model: {'GPT-2-small shape' if args.gpt2_shape else 'bundled'}, {g.n_edges} edges; task {args.task}, {len(data)} examples, "
          f"batch {args.batch_size}; EAP-IG({args.ig_steps}); torch threads {torch.get_num_threads()}")  # fmt: skip

    def attribute(stderr: bool):
        return lambda: gradient_attribution(model, task, data, ctx, alphas, method="eap_ig", stderr=stderr)

    # Alternated, best of each: load from other processes hits both alike.
    s_plain, s_se = attribute(False)(), attribute(True)()
    t_plain = t_se = float("inf")
    for _ in range(args.repeat):
        t_plain = min(t_plain, _once(attribute(False)))
        t_se = min(t_se, _once(attribute(True)))
    diff = float((s_se.values - s_plain.values).abs().max())
    print(f"attribution: plain {t_plain:.3f} s, with per-example scores and standard errors {t_se:.3f} s: ratio {t_se / t_plain:.3f} "
          f"(scores agree to {diff:.2e}, scale {float(s_plain.values.abs().max()):.2e})")  # fmt: skip

    # The faithfulness curve's sweep (MIB budgets) and its bootstrap.
    sel = ck.build("selectors", "top_n", n_edges=1)
    circuits = []
    for p in MIB_PERCENTAGES:
        sel.config.n_edges = max(1, int(p / 100 * g.n_edges))
        circuits.append(sel.select(s_se).keep_dense())
    keeps = torch.stack(circuits)
    t_eval, ev = best_of(lambda: evaluate_keeps(model, task, data, keeps, ctx), args.repeat)
    cfg = BootstrapConfig(n_resamples=args.resamples)
    fractions = [p / 100 for p in MIB_PERCENTAGES]

    def boot():
        mi = metric_intervals(ev.clean_values, ev.corrupted_values, ev.circuit_values, cfg, 0)
        ivs = [mi.interval(mi.faithfulness[i]) for i in range(len(circuits))]
        ivs.append(mi.interval(area_samples(fractions, mi.faithfulness)))
        ivs.append(mi.interval(area_samples(fractions, mi.faithfulness, distance_to_one=True)))
        return ivs

    t_boot, _ = best_of(boot, args.repeat)
    print(f"evaluation: curve sweep ({len(circuits)} circuits) {t_eval:.3f} s, bootstrap ({args.resamples} resamples, every point, "
          f"CPR, CMD) {t_boot:.3f} s: ratio {(t_eval + t_boot) / t_eval:.3f}")  # fmt: skip
    base = t_plain + t_eval
    print(
        f"attribution + evaluation: {base:.3f} s without, {t_se + t_eval + t_boot:.3f} s with error bars: ratio {(t_se + t_eval + t_boot) / base:.3f}"
    )


if __name__ == "__main__":
    main()
