"""The numbers of docs/model-card.md: the bundled model's held-out accuracy and metrics per task.

Loads the bundled model through ``circuitkit.load_model`` (the TransformerLens bridge, float32), builds each
task's held-out split (``split="test"``: combinations held out from training, not words) with
``circuitkit.build``, runs the clean and corrupted prompts through ``circuitkit.engine.run_sources`` and
reads the logits at the answer position with ``circuitkit.engine.answer_logits``. Prints a Markdown table
and the graph's edge count, then the attention of layer 0's and layer 1's heads on held-out induction prompts
(previous-token and induction patterns). Usage::

    python benchmarks/model_card_numbers.py                 # 256 held-out examples per task, seed 0
    python benchmarks/model_card_numbers.py --n 512 --json numbers.json
"""

from __future__ import annotations

import argparse
import json

import torch

import circuitkit as ck
from circuitkit import engine
from circuitkit.metrics import accuracy

TASKS = ["ioi", "greater_than", "gender_pronoun", "sva", "hypernymy", "country_capital", "induction"]


def task_numbers(model: ck.CircuitModel, name: str, n: int, seed: int, batch_size: int) -> dict:
    task = ck.build("tasks", name, split="test", n_examples=n, seed=seed)
    data = task.build(model.tokenizer, prepend_bos=model.prepend_bos)
    acc, clean, corrupted = [], [], []
    for batch in data.batches(batch_size, pad_id=model.pad_id):
        batch = batch.to(model.device)
        lc = engine.answer_logits(model, engine.run_sources(model, batch.clean).final, batch.last).float()
        lx = engine.answer_logits(model, engine.run_sources(model, batch.corrupted).final, batch.last).float()
        acc.append(accuracy(lc, batch))
        clean.append(task.metric(lc, batch))
        corrupted.append(task.metric(lx, batch))
    return {
        "metric": task.config.metric,
        "n": len(data),
        "accuracy": torch.cat(acc).mean().item(),
        "clean_metric": torch.cat(clean).mean().item(),
        "corrupted_metric": torch.cat(corrupted).mean().item(),
    }


def induction_attention(model: ck.CircuitModel, n: int, seed: int) -> dict[str, list[float]]:
    """Per head of layers 0 and 1, on ``n`` held-out induction prompts: the mean attention of each position
    to the one before it (layer 0: previous-token heads), and the attention of the last position to the
    one after the earlier occurrence of its token (layer 1: induction heads; that position holds the answer)."""
    task = ck.build("tasks", "induction", split="test", n_examples=n, seed=seed)
    data = task.build(model.tokenizer, prepend_bos=model.prepend_bos)
    prev, induct, patterns = [], [], {}

    def keep(pattern: torch.Tensor, hook: object) -> None:
        patterns[hook.name] = pattern[0].detach()  # [heads, query, key]

    for ex, ids in zip(data.examples, data.clean_ids, strict=True):
        with torch.no_grad(), model.bridge.hooks(fwd_hooks=[(f"blocks.{layer}.attn.hook_pattern", keep) for layer in (0, 1)]):
            model.bridge(torch.tensor([ids], device=model.device))
        p0, p1 = patterns["blocks.0.attn.hook_pattern"], patterns["blocks.1.attn.hook_pattern"]
        i = torch.arange(1, len(ids))
        prev.append(p0[:, i, i - 1].mean(-1))
        bos = len(ids) - (ex.meta["prefix_len"] + ex.meta["seq_len"] + ex.meta["shown"])
        induct.append(p1[:, -1, bos + ex.meta["prefix_len"] + ex.meta["shown"]])
    return {
        "layer 0, previous token": torch.stack(prev).mean(0).tolist(),
        "layer 1, induction": torch.stack(induct).mean(0).tolist(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="bundled")
    p.add_argument("--n", type=int, default=256, help="held-out examples per task")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default=None, help="also write the numbers to this file")
    args = p.parse_args()

    model = ck.load_model(args.model, device=args.device)
    results = {name: task_numbers(model, name, args.n, args.seed, args.batch_size) for name in TASKS}
    g = model.graph
    print(
        f"model: {model.name}  layers={g.n_layers} heads={g.n_heads} d_model={model.d_model}  "
        f"graph: {g.n_edges} edges  weights_hash={model.weights_hash}"
    )
    print()
    print("| task | metric | n | held-out accuracy | mean clean metric | mean corrupted metric |")
    print("|---|---|---:|---:|---:|---:|")
    for name, r in results.items():
        print(
            f"| {name} | {r['metric']} | {r['n']} | {r['accuracy']:.3f} | {r['clean_metric']:.3f} | {r['corrupted_metric']:.3f} |"
        )
    heads = induction_attention(model, args.n, args.seed)
    print()
    print(f"attention per head on {args.n} held-out induction prompts (heads 0..{g.n_heads - 1}):")
    for what, values in heads.items():
        print(f"  {what:24s} " + " ".join(f"{v:.2f}" for v in values))
    if args.json:
        out = {
            "model": model.name,
            "n_edges": g.n_edges,
            "weights_hash": model.weights_hash,
            "tasks": results,
            "induction_attention": heads,
        }
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
