"""Speed and memory of attribution relative to the bare model's own passes.

Builds a GPT-2-small-shaped model from a config (random weights, no download) and times, on the same
batches and in one run:

- bare passes: the Hugging Face model's own corrupted forward + clean forward + backward (EAP's work),
  and 1 + m forward/backward passes (EAP-IG(m)'s work); also the same through the bridge with
  circuitkit's hook settings (split q/k/v inputs etc.) but no hooks;
- circuitkit's EAP, EAP-IG(5) and clean-corrupted; evaluation of one circuit; and exact patching of a
  sample of edges (edges/second, batched vs one evaluation per edge).

Prints seconds and ratios. Usage::

    python benchmarks/speed.py                      # GPT-2 small shape, 16 prompts x 16 tokens
    python benchmarks/speed.py --layers 4 --heads 8 --d-model 128 --patch-edges 256
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

import circuitkit as ck
from circuitkit.attribution import exact_patching
from circuitkit.data import Example, tokenize_examples
from circuitkit.evaluation import evaluate_keeps
from circuitkit.results import Circuit


def timed(fn, repeat: int = 3) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--d-model", type=int, default=768)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--ig-steps", type=int, default=5)
    ap.add_argument("--patch-edges", type=int, default=64, help="edges to patch exactly (a sample)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from circuitkit.testing_models import gpt2_tokenizer, tiny_gpt2

    tok = gpt2_tokenizer()
    model = tiny_gpt2(args.layers, args.heads, args.d_model, tokenizer=tok)
    hf = model.bridge.original_model if hasattr(model.bridge, "original_model") else None
    g = model.graph
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 20000, (args.prompts, args.tokens), generator=gen)
    corr = ids.clone()
    corr[:, args.tokens // 2] = torch.randint(1000, 20000, (args.prompts,), generator=gen)
    examples = [
        Example(tok.decode(a), tok.decode(b), (" the",), (" a",)) for a, b in zip(ids.tolist(), corr.tolist())
    ]
    data = tokenize_examples("bench", examples, tok, prepend_bos=False, on_invalid="drop")
    task_cls = type("BenchTask", (ck.Task,), {"generate": lambda self, t, s: iter(examples)})
    task = task_cls(ck.TaskConfig(name="bench"))
    batch = next(data.batches(len(data)))
    ctx = ck.RunContext(batch_size=len(data), progress=False)
    print(f"model: {args.layers} layers, {args.heads} heads, d_model {args.d_model}; {g.n_edges} edges; "
          f"{len(data)} prompts x {batch.clean.shape[1]} tokens; torch threads {torch.get_num_threads()}")

    def metric_of(logits):
        rows = torch.arange(len(batch))
        return task.metric(logits[rows, batch.last], batch).sum()

    def bare_hf(m_passes: int) -> None:
        with torch.no_grad():
            hf(batch.corrupted)
        for _ in range(m_passes):
            emb = hf.transformer.wte(batch.clean).detach().requires_grad_(True)
            metric_of(hf(inputs_embeds=emb).logits).backward()

    def bare_bridge(m_passes: int) -> None:
        with torch.no_grad():
            model.bridge(batch.corrupted)
        for _ in range(m_passes):
            with torch.enable_grad(), model.bridge.hooks(fwd_hooks=[(model.INPUT_HOOK, lambda t, hook: t.detach().requires_grad_(True))]):
                metric_of(model.bridge(batch.clean)).backward()

    rows = []
    t_hf1 = timed(lambda: bare_hf(1), args.repeat)
    t_br1 = timed(lambda: bare_bridge(1), args.repeat)
    t_eap = timed(lambda: ck.build("methods", "eap").attribute(model, task, data, ctx), args.repeat)
    rows.append(("EAP", t_eap, t_hf1, t_br1))
    m = args.ig_steps
    t_hfm = timed(lambda: bare_hf(m), args.repeat)
    t_brm = timed(lambda: bare_bridge(m), args.repeat)
    t_ig = timed(lambda: ck.build("methods", "eap_ig", ig_steps=m).attribute(model, task, data, ctx), args.repeat)
    rows.append((f"EAP-IG({m})", t_ig, t_hfm, t_brm))
    t_hf2 = timed(lambda: bare_hf(2), args.repeat)
    t_br2 = timed(lambda: bare_bridge(2), args.repeat)
    t_cc = timed(lambda: ck.build("methods", "clean_corrupted").attribute(model, task, data, ctx), args.repeat)
    rows.append(("clean-corrupted", t_cc, t_hf2, t_br2))

    print("\nattribution vs the bare model's own passes on the same batch (corrupted fwd + m x (fwd + bwd)):")
    print(f"{'method':<16}{'seconds':>10}{'bare HF':>10}{'ratio':>8}{'bare bridge':>13}{'ratio':>8}")
    for name, t, hf_t, br_t in rows:
        print(f"{name:<16}{t:>10.3f}{hf_t:>10.3f}{t / hf_t:>8.2f}{br_t:>13.3f}{t / br_t:>8.2f}")

    # Evaluation of one circuit: corrupted fwd + clean fwd + one masked fwd.
    circuit = ck.build("selectors", "top_n", n_edges=min(500, g.n_edges)).select(ck.build("methods", "eap").attribute(model, task, data, ctx))
    keep = circuit.keep_dense()[None]
    t_eval = timed(lambda: evaluate_keeps(model, task, data, keep, ctx), args.repeat)
    t_fwd = timed(lambda: hf(batch.clean), args.repeat)
    print(f"\nevaluation of one circuit: {t_eval:.3f} s = {t_eval / t_fwd:.2f} x one bare HF forward ({t_fwd:.3f} s)")

    # Exact patching: batched vs one full evaluation per edge.
    picks = torch.randperm(g.n_edges, generator=gen)[: args.patch_edges]
    t_patch = timed(lambda: exact_patching(model, task, data, ctx, edges=picks, edges_per_pass=32), 1)
    single = torch.stack([Circuit(g, (torch.arange(g.n_edges) != int(i)).numpy()).keep_dense() for i in picks[:4]])
    t_single = timed(lambda: [evaluate_keeps(model, task, data, single[k : k + 1], ctx) for k in range(len(single))], 1) / len(single)
    print(f"exact patching: {args.patch_edges / t_patch:.1f} edges/s batched; one evaluation per edge: {1 / t_single:.1f} edges/s; "
          f"speed-up {t_single * args.patch_edges / t_patch:.1f}x; all {g.n_edges} edges ~ {g.n_edges / (args.patch_edges / t_patch):.0f} s")
    print(f"\npeak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
