"""What evaluating circuits costs, relative to one bare forward pass of the model.

Builds a GPT-2-small-shaped model from a config (random weights, no download; ``--arch llama`` for a Llama
shape with grouped-query attention), scores its edges with EAP on a task, and times in one run, on the same
data:

- one bare forward: the Hugging Face model's own forward of the clean prompts (no autograd);
- the shared passes: the clean and the corrupted run of every batch (what an evaluation cache keeps for a
  whole run);
- one circuit of at most ``--circuit-percent`` (5) % of the edges, *beyond* the shared passes (the cache
  already holds them, as for every circuit after the first of a run);
- a 10-point MIB faithfulness curve (0.1 % ... 100 % of the edges) *in all*: shared passes included, from
  an empty cache.

Prints CPU seconds of this process (``time.process_time``, best of ``--repeat``; with ``--threads 1`` other
processes' load barely moves them; on a GPU, ``--device cuda``, wall seconds after the queued work) and each time as a multiple of the bare forward. ``--path dense`` /
``--path sparse`` / ``--path both`` times the dense masked forward (every non-circuit edge corrected at its
destination), the sparse one (the corrupted input plus the kept edges' differences, or the full input
minus the removed ones, whichever set is smaller), or both, with the largest relative difference of their
metrics. Usage::

    python benchmarks/eval_speed.py                       # GPT-2 small shape, ioi, 16 prompts, 1 thread
    python benchmarks/eval_speed.py --path both --repeat 3
    python benchmarks/eval_speed.py --layers 4 --heads 8 --d-model 128   # a quick check
"""

from __future__ import annotations

import argparse
import time

import torch

import circuitkit as ck
from circuitkit import evaluation
from circuitkit.analysis import MIB_PERCENTAGES
from circuitkit.evaluation import EvaluationCache, evaluate_keeps


def clock() -> float:
    """CPU seconds of this process; on a GPU, wall seconds after the queued work is done."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
        return time.perf_counter()
    return time.process_time()


def best_of(fn, repeat: int, setup=None) -> tuple[float, object]:  # noqa: ANN001
    """Best time of ``repeat`` calls after one untimed call; ``setup()`` runs untimed before each."""
    if setup is not None:
        setup()
    out = fn()
    best = float("inf")
    for _ in range(repeat):
        if setup is not None:
            setup()
        t0 = clock()
        out = fn()
        best = min(best, clock() - t0)
    return best, out


def _paths(choice: str) -> list[str]:
    return ["dense", "sparse"] if choice == "both" else [choice]


def _set_path(path: str) -> None:
    """Which masked forward evaluation uses (the sparse one, if this checkout has it; else the dense)."""
    from circuitkit.engine import masking

    if hasattr(masking, "set_masking"):
        masking.set_masking(path)
    elif path != "dense":
        raise SystemExit("this checkout has only the dense masked forward: use --path dense")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=("gpt2", "llama"), default="gpt2")
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--kv-heads", type=int, default=4, help="key/value heads per layer (--arch llama)")
    ap.add_argument("--d-model", type=int, default=768)
    ap.add_argument("--intermediate", type=int, default=2048, help="MLP width (--arch llama)")
    ap.add_argument("--task", default="ioi")
    ap.add_argument("--examples", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--circuit-percent", type=float, default=5.0, help="size of the single circuit, percent of the edges")
    ap.add_argument("--circuits-per-pass", type=int, default=8, help="circuits stacked per masked pass (the curve's default)")
    ap.add_argument("--path", choices=("dense", "sparse", "both"), default="sparse")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N (on a GPU: wall seconds)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from circuitkit.testing_models import gpt2_tokenizer, tiny_gpt2, tiny_llama

    tok = gpt2_tokenizer()
    if args.arch == "llama":
        model = tiny_llama(
            args.layers,
            args.heads,
            args.kv_heads,
            args.d_model,
            tokenizer=tok,
            intermediate_size=args.intermediate,
            device=args.device,
        )
    else:
        model = tiny_gpt2(args.layers, args.heads, args.d_model, tokenizer=tok, device=args.device)
    g = model.graph
    task = ck.build("tasks", args.task, n_examples=args.examples)
    data = task.build(model.tokenizer, prepend_bos=model.prepend_bos)
    batch = next(data.batches(len(data), model.pad_id)).to(model.device)
    hf = model.bridge.original_model
    ctx = ck.RunContext(batch_size=args.batch_size, progress=False)
    print(f"model: {args.arch} shape, {args.layers} layers, {args.heads} heads, d_model {args.d_model}; {g.n_edges} edges; "
          f"task {args.task}, {len(data)} prompts x {batch.clean.shape[1]} tokens, batch {args.batch_size}; "
          f"device {model.device}, torch threads {torch.get_num_threads()}; {'wall' if model.device.type == 'cuda' else 'CPU'} seconds, best of {args.repeat}")  # fmt: skip

    scores = ck.build("methods", "eap").attribute(model, task, data, ctx)

    def top(percent: float) -> ck.Circuit:
        return ck.build("selectors", "top_n", n_edges=max(1, int(percent / 100 * g.n_edges))).select(scores)

    single = top(args.circuit_percent)
    one = single.keep_dense()[None]
    curve = torch.stack([top(p).keep_dense() for p in MIB_PERCENTAGES])

    def bare() -> None:
        with torch.no_grad():
            hf(batch.clean)

    t_fwd, _ = best_of(bare, args.repeat)
    print(f"\none bare forward (Hugging Face, clean prompts): {t_fwd:.3f} s")
    endpoints = torch.zeros(0, *one.shape[1:])
    t_shared, _ = best_of(lambda: evaluate_keeps(model, task, data, endpoints, ctx), args.repeat)
    print(f"shared passes (clean + corrupted run of every batch): {t_shared:.3f} s = {t_shared / t_fwd:.2f}x")

    stacked = f"{args.circuits_per_pass}"
    if hasattr(evaluation, "copies_per_pass"):  # a checkout that limits stacking on a CPU says how many fit
        stacked = (
            f"at most {args.circuits_per_pass} ({min(args.circuits_per_pass, evaluation.copies_per_pass(model, batch))} fit)"
        )
    results = {}
    for path in _paths(args.path):
        _set_path(path)
        cache = EvaluationCache()
        cctx = ck.RunContext(batch_size=args.batch_size, progress=False, evaluations=cache)
        evaluate_keeps(model, task, data, endpoints, cctx)  # the shared passes, kept by the cache

        def forget(cache: EvaluationCache = cache) -> None:  # the cache keeps the shared passes, not the circuit
            for entry in cache._entries:
                entry.circuits.clear()

        t_one, ev_one = best_of(lambda cctx=cctx: evaluate_keeps(model, task, data, one, cctx), args.repeat, setup=forget)
        t_curve, ev_curve = best_of(
            lambda: evaluate_keeps(model, task, data, curve, ctx, circuits_per_pass=args.circuits_per_pass), args.repeat
        )
        n_one = single.n_edges
        results[path] = (ev_one, ev_curve)
        print(f"\n[{path}] one circuit of {n_one} edges ({100 * n_one / g.n_edges:.2f}% of the graph), beyond the shared passes: "
              f"{t_one:.3f} s = {t_one / t_fwd:.2f}x one bare forward")  # fmt: skip
        print(f"[{path}] 10-point MIB curve ({', '.join(f'{p:g}' for p in MIB_PERCENTAGES)} %), {stacked} circuits per pass, "
              f"in all: {t_curve:.3f} s = {t_curve / t_fwd:.2f}x one bare forward")  # fmt: skip
    if len(results) == 2:
        (a1, ac), (b1, bc) = results["dense"], results["sparse"]
        rel = rel_scale = 0.0
        for a, b in ((a1, b1), (ac, bc)):
            x, y = a.circuit_values, b.circuit_values
            rel = max(rel, float(((x - y).abs() / y.abs().clamp(min=1e-30)).max()))
            scale = float(a.clean_values.abs().max())
            rel_scale = max(rel_scale, float((x - y).abs().max()) / scale)
        print(f"\nsparse vs dense: largest relative difference of a per-example circuit metric {rel:.2e} "
              f"(largest difference over the clean metric's scale {rel_scale:.2e})")  # fmt: skip


if __name__ == "__main__":
    main()
