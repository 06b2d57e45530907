"""The GPU checks in one short run: attribution's ratios to the bare passes, evaluation's cost, and EAP-IG on a
Llama-3-8B shape with the memory estimate against the measured peak.

1. ``benchmarks/speed.py --device cuda`` on the GPT-2-small shape and on a Llama shape (EAP and EAP-IG(5)
   against the bare Hugging Face passes on the same batch);
2. ``benchmarks/eval_speed.py --device cuda`` (one 5% circuit beyond the shared passes, a 10-point curve in
   all, against one bare forward);
3. a Llama-3-8B shape built from a ``LlamaConfig`` with random weights (bfloat16, 32 layers, 32 query heads
   sharing 8 key/value heads, d_model 4096, MLP 14336, vocabulary 128256): EAP-IG(5) on 32 prompts of 64
   tokens in one batch; prints the seconds, the peak GPU memory (``torch.cuda.max_memory_allocated``), and
   the estimate (memory allocated before the pass + :func:`circuitkit.engine.memory.attribution_memory`) with its
   ratio to the peak.

Usage::

    python benchmarks/gpu_check.py                 # all three on the GPU (about 5 minutes on an H200)
    python benchmarks/gpu_check.py --only 8b       # just the 8B shape
    python benchmarks/gpu_check.py --tiny --device cpu --only 8b   # the same code on a tiny shape (a dry run)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))


def sh(args: list[str], timeout: float) -> None:
    print("$ python " + " ".join(args), flush=True)
    try:
        out = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=os.path.dirname(HERE))
        print(out.stdout + (out.stderr[-2000:] if out.returncode else ""), flush=True)
    except subprocess.TimeoutExpired:
        print(f"(stopped after {timeout:.0f} s)", flush=True)


def llama8b(args: argparse.Namespace) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    import circuitkit as ck
    from circuitkit.attribution import gradient_attribution
    from circuitkit.engine.memory import attribution_memory
    from circuitkit.model import bridge_model
    from circuitkit.testing_models import gpt2_tokenizer

    sys.path.insert(0, HERE)
    from memory_estimate import task_data

    dev = torch.device(args.device)
    if args.tiny:
        shape = {
            "hidden_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "intermediate_size": 224,
        }
    else:
        shape = {
            "hidden_size": 4096,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "intermediate_size": 14336,
        }
    cfg = LlamaConfig(**shape, vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0, tie_word_embeddings=False)
    tok = gpt2_tokenizer()
    t0 = time.perf_counter()
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # built in bfloat16 on the device: no float32 copy of the weights
    try:
        with dev:
            torch.manual_seed(0)
            hf = LlamaForCausalLM(cfg).eval()
    finally:
        torch.set_default_dtype(default)
    model = bridge_model(hf, tok, name="llama-3-8b-shape", device=str(dev))
    print(f"8B shape: {sum(p.numel() for p in hf.parameters()) / 1e9:.2f}B parameters, {model.graph.n_edges:,} edges; "
          f"built in {time.perf_counter() - t0:.0f} s", flush=True)  # fmt: skip
    task, data = task_data(model, args.prompts, args.tokens)
    width = max(len(x) for x in data.clean_ids)
    ctx = ck.RunContext(batch_size=len(data), progress=False)
    alphas = [k / 5 for k in range(1, 6)]
    est = attribution_memory(model, len(data), width, interpolates=True, per_example=True)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(dev)
        before = torch.cuda.memory_allocated(dev)
    t0 = time.perf_counter()
    scores = gradient_attribution(model, task, data, ctx, alphas, method="eap_ig")
    if dev.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    print(f"EAP-IG(5), {len(data)} prompts x {width} tokens, one batch: {seconds:.1f} s; scores finite: "
          f"{bool(torch.isfinite(scores.values).all())}", flush=True)  # fmt: skip
    print(f"estimate above the loaded model: {est.total / 2**30:.2f} GiB (buffers {est.buffers / 2**30:.2f}, activations "
          f"{est.activations / 2**30:.2f}, backward temporaries {est.transient / 2**30:.2f}, accumulators {est.accumulators / 2**30:.2f})")  # fmt: skip
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated(dev)
        print(f"peak GPU memory {peak / 2**30:.2f} GiB (model and data {before / 2**30:.2f} GiB); estimate {(before + est.total) / 2**30:.2f} "
              f"GiB = {(before + est.total) / peak:.3f}x the peak; above the model: {est.total / max(peak - before, 1):.3f}x")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", choices=("ratios", "eval", "8b"), default=["ratios", "eval", "8b"])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="a tiny Llama instead of the 8B shape (a dry run of the code)")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--step-timeout", type=float, default=240)
    args = ap.parse_args()
    if "ratios" in args.only:
        common = [
            "--device",
            args.device,
            "--prompts",
            "32",
            "--tokens",
            "64",
            "--repeat",
            "3",
            "--methods",
            "eap,eap_ig",
            "--skip-bridge",
            "--skip-eval",
        ]
        sh([f"{HERE}/speed.py", *common], args.step_timeout)
        sh([f"{HERE}/speed.py", *common, "--arch", "llama"], args.step_timeout)
    if "eval" in args.only:
        sh(
            [
                f"{HERE}/eval_speed.py",
                "--device",
                args.device,
                "--examples",
                "32",
                "--batch-size",
                "32",
                "--path",
                "both",
                "--repeat",
                "3",
            ],
            args.step_timeout,
        )
    if "8b" in args.only:
        llama8b(args)


if __name__ == "__main__":
    main()
