"""Speed and memory of attribution relative to the bare model's own passes.

Builds a GPT-2-small-shaped model from a config (random weights, no download), or with ``--arch llama`` a
Llama-shaped one with grouped-query attention (``--kv-heads`` key/value heads, gated MLP of width
``--intermediate``; its graph has one k and one v input per key/value head), and times, on the same
batches and in one run:

- bare passes: the Hugging Face model's own corrupted forward + clean forward + backward (EAP's work),
  and 1 + m forward/backward passes (EAP-IG(m)'s work); also the same through the bridge with
  circuitkit's hook settings (split q/k/v inputs etc.) but no hooks;
- circuitkit's EAP, EAP-IG(5) and clean-corrupted; evaluation of one circuit; and exact patching of a
  sample of edges (edges/second, batched vs one evaluation per edge).

Prints seconds and ratios. ``--device auto`` (the default) runs on a GPU when there is one: times then
wait for the GPU's queued work, and peak memory is torch's peak GPU allocation. Usage::

    python benchmarks/speed.py                      # GPT-2 small shape, 16 prompts x 16 tokens
    python benchmarks/speed.py --layers 4 --heads 8 --d-model 128 --patch-edges 256
    python benchmarks/speed.py --arch llama         # 12 layers, 12 query heads sharing 4 key/value heads
    python benchmarks/speed.py --device cuda --prompts 64 --tokens 128
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import torch

import circuitkit as ck
from circuitkit.attribution import exact_patching
from circuitkit.data import Example, tokenize_examples
from circuitkit.evaluation import evaluate_keeps
from circuitkit.results import Circuit

WARMUP = True


def timed(fn, repeat: int = 3) -> float:
    if WARMUP:
        fn()
    best = float("inf")
    for _ in range(repeat):
        _sync()
        t0 = time.perf_counter()
        fn()
        _sync()
        best = min(best, time.perf_counter() - t0)
    return best


def _sync() -> None:
    """Wait for queued GPU work, so that a time covers it."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--d-model", type=int, default=768)
    ap.add_argument("--arch", choices=("gpt2", "llama"), default="gpt2", help="GPT-2 (multi-head) or Llama (grouped-query)")
    ap.add_argument("--kv-heads", type=int, default=4, help="key/value heads per layer (--arch llama)")
    ap.add_argument("--intermediate", type=int, default=2048, help="MLP width (--arch llama)")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--ig-steps", type=int, default=5)
    ap.add_argument("--patch-edges", type=int, default=64, help="edges to patch exactly (a sample)")
    ap.add_argument(
        "--edges-per-pass", type=int, default=32, help="exact patching: edges per stacked pass (the method's default)"
    )
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    ap.add_argument(
        "--positions-per-pass",
        type=int,
        default=None,
        help="attribution: positions of the difference buffer per pass (default: all)",
    )
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurements")
    ap.add_argument("--no-warmup", action="store_true", help="no untimed first call (for big models)")
    ap.add_argument("--methods", default="eap,eap_ig,clean_corrupted", help="which attribution rows to time")
    ap.add_argument("--skip-bridge", action="store_true", help="do not time the bridge-without-hooks baseline")
    ap.add_argument("--skip-eval", action="store_true", help="do not time evaluation and exact patching")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
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
            max_position_embeddings=max(64, 2 * args.tokens),
        )
    else:
        model = tiny_gpt2(
            args.layers, args.heads, args.d_model, tokenizer=tok, device=args.device, n_positions=max(64, 2 * args.tokens)
        )
    hf = model.bridge.original_model
    embed, body = hf.get_input_embeddings(), hf.base_model  # GPT-2: transformer.wte, transformer
    g = model.graph
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 20000, (args.prompts, args.tokens), generator=gen)
    corr = ids.clone()
    corr[:, args.tokens // 2] = torch.randint(1000, 20000, (args.prompts,), generator=gen)
    examples = [Example(tok.decode(a), tok.decode(b), (" the",), (" a",)) for a, b in zip(ids.tolist(), corr.tolist())]
    data = tokenize_examples("bench", examples, tok, prepend_bos=False, on_invalid="drop")
    task_cls = type("BenchTask", (ck.Task,), {"generate": lambda self, t, s: iter(examples)})
    task = task_cls(ck.TaskConfig(name="bench"))
    batch = next(data.batches(len(data))).to(model.device)
    ctx = ck.RunContext(batch_size=len(data), progress=False)
    if args.positions_per_pass:
        ctx.positions_per_pass = args.positions_per_pass
    heads = (
        f"{args.heads} heads"
        if args.arch == "gpt2"
        else f"Llama, {args.heads} query heads sharing {g.n_kv} key/value heads, MLP {args.intermediate}"
    )
    print(
        f"model: {args.layers} layers, {heads}, d_model {args.d_model}; {g.n_edges} edges; "
        f"{len(data)} prompts x {batch.clean.shape[1]} tokens; positions per pass {args.positions_per_pass or 'all'}; device {model.device}"
        + (
            f" ({torch.cuda.get_device_name(model.device)})"
            if model.device.type == "cuda"
            else f"; torch threads {torch.get_num_threads()}"
        )
    )

    def metric_of(logits):
        rows = torch.arange(len(batch), device=logits.device)
        return task.metric(logits[rows, batch.last], batch).sum()

    def bare_hf(m_passes: int) -> None:
        with torch.no_grad():
            hf(batch.corrupted)
        for _ in range(m_passes):
            emb = embed(batch.clean).detach().requires_grad_(True)
            metric_of(hf(inputs_embeds=emb).logits).backward()

    def bare_hf_last(m_passes: int) -> None:
        """The same passes computing logits only at the answer position (as circuitkit does)."""
        rows = torch.arange(len(batch), device=batch.clean.device)

        def last_logits(**kw):
            h = body(**kw).last_hidden_state[rows, batch.last]
            return task.metric(hf.lm_head(h), batch).sum()

        with torch.no_grad():
            last_logits(input_ids=batch.corrupted)
        for _ in range(m_passes):
            emb = embed(batch.clean).detach().requires_grad_(True)
            last_logits(inputs_embeds=emb).backward()

    def bare_bridge(m_passes: int) -> None:
        with torch.no_grad():
            model.bridge(batch.corrupted)
        for _ in range(m_passes):
            with (
                torch.enable_grad(),
                model.bridge.hooks(fwd_hooks=[(model.INPUT_HOOK, lambda t, hook: t.detach().requires_grad_(True))]),
            ):
                metric_of(model.bridge(batch.clean)).backward()

    if args.child:
        _child(args.child, model, task, data, ctx, bare_hf, bare_hf_last, args.ig_steps)
        return

    rows = []
    m = args.ig_steps
    global WARMUP
    WARMUP = not args.no_warmup
    wanted = set(args.methods.split(","))
    for name, method, opts, passes in (
        ("EAP", "eap", {}, 1),
        (f"EAP-IG({m})", "eap_ig", {"ig_steps": m}, m),
        ("clean-corrupted", "clean_corrupted", {}, 2),
    ):
        if method not in wanted:
            continue
        t_hf = timed(lambda p=passes: bare_hf(p), args.repeat)
        t_last = timed(lambda p=passes: bare_hf_last(p), args.repeat)
        t_br = float("nan") if args.skip_bridge else timed(lambda p=passes: bare_bridge(p), args.repeat)
        t = timed(lambda mm=method, o=opts: ck.build("methods", mm, **o).attribute(model, task, data, ctx), args.repeat)
        rows.append((name, t, t_hf, t_last, t_br))

    print("\nattribution vs the bare model's own passes on the same batch (corrupted fwd + m x (fwd + bwd));")
    print("bare HF: full logits; HF@answer: logits only at the answer position; bridge: the TransformerBridge, no hooks")
    print(f"{'method':<16}{'seconds':>9}{'bare HF':>9}{'ratio':>7}{'HF@answer':>11}{'ratio':>7}{'bridge':>9}{'ratio':>7}")
    for name, t, hf_t, last_t, br_t in rows:
        print(f"{name:<16}{t:>9.3f}{hf_t:>9.3f}{t / hf_t:>7.2f}{last_t:>11.3f}{t / last_t:>7.2f}{br_t:>9.3f}{t / br_t:>7.2f}")

    if not args.skip_eval:
        # Evaluation of one circuit: corrupted fwd + clean fwd + one masked fwd.
        circuit = ck.build("selectors", "top_n", n_edges=min(500, g.n_edges)).select(
            ck.build("methods", "eap").attribute(model, task, data, ctx)
        )
        keep = circuit.keep_dense()[None]
        t_eval = timed(lambda: evaluate_keeps(model, task, data, keep, ctx), args.repeat)
        t_fwd = timed(lambda: hf(batch.clean), args.repeat)
        print(f"\nevaluation of one circuit: {t_eval:.3f} s = {t_eval / t_fwd:.2f} x one bare HF forward ({t_fwd:.3f} s)")

        # Exact patching: batched vs one full evaluation per edge.
        picks = torch.randperm(g.n_edges, generator=gen)[: args.patch_edges]
        t_patch = timed(
            lambda: exact_patching(model, task, data, ctx, edges=picks, edges_per_pass=args.edges_per_pass), args.repeat
        )
        single = torch.stack([Circuit(g, (torch.arange(g.n_edges) != int(i)).numpy()).keep_dense() for i in picks[:16]])
        t_single = timed(
            lambda: [evaluate_keeps(model, task, data, single[k : k + 1], ctx) for k in range(len(single))], args.repeat
        ) / len(single)
        print(
            f"exact patching: {args.patch_edges / t_patch:.1f} edges/s batched; one evaluation per edge: {1 / t_single:.1f} edges/s; "
            f"speed-up {t_single * args.patch_edges / t_patch:.1f}x; all {g.n_edges} edges ~ {g.n_edges / (args.patch_edges / t_patch):.0f} s"
        )
    if not args.no_memory and model.device.type == "cuda":
        print("\npeak GPU memory of the pass above the loaded model and data (torch.cuda.max_memory_allocated):")
        peaks = {
            what: _cuda_peak_mb(what, model, task, data, ctx, bare_hf, bare_hf_last, m)
            for what in ("bare_hf", "bare_hf_last", "eap", "bare_hf_ig", "eap_ig")
        }
        _print_peaks(peaks, m)
    elif not args.no_memory:
        print("\npeak memory of the pass above the loaded model and data (separate processes; peak RSS counter reset")
        print("just before the pass; allocations of 64 KiB or more mmapped, so freed memory leaves RSS at once):")
        base = [a for a in sys.argv[1:] if a != "--no-memory"]
        peaks = {}
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
        for what in ("bare_hf", "bare_hf_last", "eap", "bare_hf_ig", "eap_ig"):
            out = subprocess.run([sys.executable, __file__, *base, "--child", what], capture_output=True, text=True, env=env)
            line = [ln for ln in out.stdout.splitlines() if ln.startswith("PEAK")]
            peaks[what] = float(line[0].split()[1]) if line else float("nan")
        _print_peaks(peaks, m)


def _print_peaks(peaks: dict[str, float], m: int) -> None:
    print(
        f"  bare HF fwd+bwd (corrupted fwd + clean fwd/bwd): {peaks['bare_hf']:.0f} MB; logits at answer only: {peaks['bare_hf_last']:.0f} MB"
    )
    print(
        f"  EAP: {peaks['eap']:.0f} MB = {peaks['eap'] / peaks['bare_hf']:.2f} x bare HF, {peaks['eap'] / peaks['bare_hf_last']:.2f} x HF@answer"
    )
    print(
        f"  EAP-IG({m}): {peaks['eap_ig']:.0f} MB = {peaks['eap_ig'] / peaks['bare_hf_ig']:.2f} x its bare HF passes ({peaks['bare_hf_ig']:.0f} MB)"
    )


def _run_pass(what, model, task, data, ctx, bare_hf, bare_hf_last, m) -> None:  # noqa: ANN001
    if what == "bare_hf":
        bare_hf(1)
    elif what == "bare_hf_last":
        bare_hf_last(1)
    elif what == "bare_hf_ig":
        bare_hf(m)
    elif what == "eap":
        ck.build("methods", "eap").attribute(model, task, data, ctx)
    elif what == "eap_ig":
        ck.build("methods", "eap_ig", ig_steps=m).attribute(model, task, data, ctx)


def _cuda_peak_mb(what, model, task, data, ctx, bare_hf, bare_hf_last, m) -> float:  # noqa: ANN001
    """Peak GPU memory allocated by one pass, above what was allocated before it."""
    import gc

    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(model.device)
    before = torch.cuda.memory_allocated(model.device)
    _run_pass(what, model, task, data, ctx, bare_hf, bare_hf_last, m)
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated(model.device) - before) / 2**20


def _status_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _child(what, model, task, data, ctx, bare_hf, bare_hf_last, m) -> None:  # noqa: ANN001
    import gc

    gc.collect()
    before = _status_mb("VmRSS")
    try:  # reset the peak-RSS counter (Linux): model loading's transient peak must not count
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    _run_pass(what, model, task, data, ctx, bare_hf, bare_hf_last, m)
    peak = _status_mb("VmHWM")
    print(f"PEAK {max(peak - before, 0.0):.1f}")


if __name__ == "__main__":
    main()
