"""How well attribution's memory estimate predicts the measured peak (CPU, or a GPU with ``--device cuda``).

For each shape, one child process per measurement builds the model (random weights from a config), and runs
EAP-IG(m) over one batch; the peak is measured above what the loaded model and data hold:

- CPU: the peak resident set (``VmHWM``, reset just before the pass via ``/proc/self/clear_refs``) minus the
  resident set before it, with ``MALLOC_MMAP_THRESHOLD_=65536`` so that freed tensors leave the resident set
  at once (what the process really holds at its peak, allocator slack included);
- CUDA: ``torch.cuda.max_memory_allocated`` minus the memory allocated before the pass.

The estimate is :func:`circuitkit.engine.memory.attribution_memory` (buffers, forward activations kept for the
backward pass from a probe, backward temporaries, accumulators). Prints both and their ratio. Usage::

    python benchmarks/memory_estimate.py                  # three small shapes on the CPU
    python benchmarks/memory_estimate.py --shapes gpt2:12:12:768 --prompts 8 --tokens 32
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import torch

SHAPES = ("gpt2:4:8:256", "gpt2:12:12:768", "llama:6:8:512:2")


def build(shape: str, device: str):  # noqa: ANN201
    from circuitkit.testing_models import gpt2_tokenizer, tiny_gpt2, tiny_llama

    arch, *nums = shape.split(":")
    n = [int(x) for x in nums]
    tok = gpt2_tokenizer()
    if arch == "llama":
        layers, heads, d, kv = n
        return tiny_llama(
            layers, heads, kv, d, tokenizer=tok, intermediate_size=4 * d, device=device, max_position_embeddings=256
        )
    layers, heads, d = n
    return tiny_gpt2(layers, heads, d, tokenizer=tok, device=device, n_positions=256)


def task_data(model, prompts: int, tokens: int):  # noqa: ANN001, ANN201
    import circuitkit as ck
    from circuitkit.data import Example, tokenize_examples

    tok = model.tokenizer
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 20000, (prompts, tokens), generator=gen)
    corr = ids.clone()
    corr[:, tokens // 2] = torch.randint(1000, 20000, (prompts,), generator=gen)
    examples = [
        Example(tok.decode(a), tok.decode(b), (" the",), (" a",)) for a, b in zip(ids.tolist(), corr.tolist(), strict=True)
    ]
    data = tokenize_examples("bench", examples, tok, prepend_bos=False, on_invalid="drop")
    task = type("BenchTask", (ck.Task,), {"generate": lambda self, t, s: iter(examples)})(ck.TaskConfig(name="bench"))
    return task, data


def _status_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child(args: argparse.Namespace) -> None:
    import gc

    import circuitkit as ck
    from circuitkit.attribution import gradient_attribution
    from circuitkit.engine.memory import attribution_memory

    model = build(args.child, args.device)
    task, data = task_data(model, args.prompts, args.tokens)
    ctx = ck.RunContext(batch_size=len(data), progress=False)
    width = max(len(x) for x in data.clean_ids)
    alphas = [k / args.ig_steps for k in range(1, args.ig_steps + 1)]
    est = attribution_memory(model, len(data), width, interpolates=args.ig_steps > 1, per_example=True)
    gc.collect()
    if model.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(model.device)
        before = torch.cuda.memory_allocated(model.device)
        gradient_attribution(model, task, data, ctx, alphas, method="eap_ig")
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated(model.device) - before) / 2**20
    else:
        # the probe runs before the measured pass (it is cached on the model)
        before = _status_mb("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        gradient_attribution(model, task, data, ctx, alphas, method="eap_ig")
        peak = max(_status_mb("VmHWM") - before, 0.0)
    print(f"RESULT {peak:.1f} {est.total / 2**20:.1f} {est.buffers / 2**20:.1f} {est.activations / 2**20:.1f} "
          f"{est.transient / 2**20:.1f} {est.accumulators / 2**20:.1f} {len(data)} {width}")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), help="arch:layers:heads:d_model[:kv_heads]")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--ig-steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        child(args)
        return
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    print(
        f"EAP-IG({args.ig_steps}), {args.prompts} prompts x {args.tokens} tokens, device {args.device}; MB above the loaded model and data"
    )
    print(
        f"{'shape':<20}{'examples x tokens':>18}{'measured':>10}{'estimate':>10}{'ratio':>7}   buffers / activations / transient / accumulators"
    )
    for shape in args.shapes:
        cmd = [sys.executable, __file__, "--child", shape, "--prompts", str(args.prompts), "--tokens", str(args.tokens),
               "--ig-steps", str(args.ig_steps), "--threads", str(args.threads), "--device", args.device]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
        line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT")]
        if not line:
            print(f"{shape:<20} failed: {out.stderr.strip().splitlines()[-1:]}")
            continue
        peak, est, buf, act, tr, acc, n, w = (float(x) for x in line[0].split()[1:])
        print(
            f"{shape:<20}{f'{int(n)} x {int(w)}':>18}{peak:>10.1f}{est:>10.1f}{est / peak:>7.2f}   {buf:.1f} / {act:.1f} / {tr:.1f} / {acc:.1f}"
        )


if __name__ == "__main__":
    main()
