"""Train the bundled model, ``circuitkit-tiny``.

A 4-layer GPT-2 (8 heads, d_model 128, 64 positions, tied embeddings, GPT-2's BPE tokenizer; about 7.2M
parameters) trained on the builtin tasks' *training* split (held-out combinations are never seen) plus
neutral filler sentences. The loss is on answer tokens only: every training prompt is a task prompt (or
a filler prefix) and the target is its correct answer (for answer sets, one correct answer drawn at
random each time). Induction is the exception that needs more signal: its prompts are extended to the
whole repeat and scored at every position of it (each is the answer of an induction example of the same
sequence, so of the same split), several such episodes are packed into one 64-token row, and the
sequences are fresh throughout training (shown again, random sequences get memorised instead of
copied). Batches are balanced: 8 rows of each of the seven tasks and 8 of filler; the loss is the mean
over all scored positions. Induction heads do not form in this model within the budget, so the model
starts with a built-in previous-token head and induction heads (``init_induction_circuit``) that
training then adjusts with everything else (``--no-induction-init`` starts from GPT-2's initialisation).

Run (about 30 minutes on one CPU thread; see docs/model-card.md)::

    python -m circuitkit.zoo.train --out circuitkit/zoo/circuitkit-tiny

The result is written with ``save_pretrained`` in float16 safetensors, beside the tokenizer and a
``training_report.json`` with the per-task accuracy and metrics on the held-out split. Everything is
seeded: the same command on the same software gives the same weights. Training uses one thread by
default, which keeps the weights independent of the machine's core count and is faster than two threads
when the cores are shared. The tokenizer is read from ``circuitkit/zoo/gpt2-tokenizer`` (GPT-2's BPE
vocabulary, MIT licence), so training needs nothing outside the repository.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from circuitkit.data import TaskData
from circuitkit.metrics import accuracy, get_metric

TOKENIZER_DIR = Path(__file__).parent / "gpt2-tokenizer"
TASKS = ["ioi", "greater_than", "gender_pronoun", "sva", "hypernymy", "country_capital", "induction"]
ARCH: dict[str, Any] = {"n_layer": 4, "n_head": 8, "n_embd": 128, "n_positions": 64}


def task_classes() -> dict[str, tuple[type, type]]:
    """The builtin task classes and their configs, by registered name."""
    from circuitkit_plugins.tasks.country_capital import CountryCapital, CountryCapitalConfig
    from circuitkit_plugins.tasks.gender_pronoun import GenderPronoun, GenderPronounConfig
    from circuitkit_plugins.tasks.greater_than import GreaterThan, GreaterThanConfig
    from circuitkit_plugins.tasks.hypernymy import Hypernymy, HypernymyConfig
    from circuitkit_plugins.tasks.induction import Induction, InductionConfig
    from circuitkit_plugins.tasks.ioi import IOI, IOIConfig
    from circuitkit_plugins.tasks.sva import SVA, SVAConfig

    return {
        "ioi": (IOI, IOIConfig),
        "greater_than": (GreaterThan, GreaterThanConfig),
        "gender_pronoun": (GenderPronoun, GenderPronounConfig),
        "sva": (SVA, SVAConfig),
        "hypernymy": (Hypernymy, HypernymyConfig),
        "country_capital": (CountryCapital, CountryCapitalConfig),
        "induction": (Induction, InductionConfig),
    }


def load_tokenizer() -> Any:
    from transformers import GPT2Tokenizer

    # GPT2Tokenizer.from_pretrained on the vocab.json + merges.txt directory builds the full vocabulary.
    return GPT2Tokenizer.from_pretrained(str(TOKENIZER_DIR))


def build_task(name: str, split: str, n_examples: int, seed: int, tokenizer: Any, **options: Any) -> tuple[Any, TaskData]:
    cls, cfg_cls = task_classes()[name]
    task = cls(cfg_cls(name=name, split=split, n_examples=n_examples, seed=seed, **options))
    return task, task.build(tokenizer)


# Neutral filler: plain sentences with none of the tasks' constructions; the target is the next token at a
# random point of the sentence.
_F_SUBJECTS = [
    "The weather",
    "Our street",
    "The small village",
    "The morning train",
    "The old road",
    "Most shops",
    "The river bank",
    "The bakery",
    "The football club",
    "The new bridge",
    "The village hall",
    "The harbour",
    "The night sky",
    "The city council",
    "The mountain path",
    "The local paper",
    "The school bus",
    "The factory",
]
_F_PREDICATES = [
    "was quiet",
    "opened early",
    "closed late",
    "looked calm",
    "stayed busy",
    "changed slowly",
    "became popular",
    "felt cold",
    "was crowded",
    "looked beautiful",
    "was repaired",
    "grew quickly",
    "was very loud",
    "smelled of rain",
]
_F_TAILS = [
    "in the morning",
    "during the winter",
    "after the storm",
    "on most days",
    "near the coast",
    "for many years",
    "every weekend",
    "before the holidays",
    "in the spring",
    "at night",
    "all afternoon",
    "this year",
]
_F_JOINS = [", and then it", ". Later it", ". In the evening it", ", but soon it", ". Nobody knew why it"]


def filler_pool(tokenizer: Any, rng: random.Random, n: int) -> list[tuple[list[int], Targets]]:
    from circuitkit.data import encode

    pool: list[tuple[list[int], Targets]] = []
    bos = tokenizer.bos_token_id
    while len(pool) < n:
        text = f"{rng.choice(_F_SUBJECTS)} {rng.choice(_F_PREDICATES)} {rng.choice(_F_TAILS)}"
        if rng.random() < 0.6:
            text += f"{rng.choice(_F_JOINS)} {rng.choice(_F_PREDICATES)} {rng.choice(_F_TAILS)}"
        ids = [bos] + encode(tokenizer, text + ".")
        cut = rng.randint(3, len(ids) - 1)
        pool.append((ids[:cut], [(cut - 1, [ids[cut]])]))
    return pool


Targets = list[tuple[int, list[int]]]  # (position, answer ids predicted there)


def training_row(name: str, meta: dict, ids: list[int], answers: list[int]) -> tuple[list[int], Targets]:
    """A training prompt and where it is scored: its last token, with the answer as target.

    An induction prompt ``prefix + s + s[:k]`` is extended to the whole repeat ``prefix + s + s[:-1]``
    and scored at every position of the repeat: each is the answer of an induction example of the same
    sequence ``s`` (so of the same split), and this gives the rarely-formed induction mechanism many
    more targets per prompt at almost no cost.
    """
    if name != "induction":
        return ids, [(len(ids) - 1, answers)]
    p, n, k = meta["prefix_len"], meta["seq_len"], meta["shown"]
    off = len(ids) - (p + n + k)  # the BOS token
    seq = ids[off + p : off + p + n]
    full = ids[: off + p + n] + seq[:-1]
    return full, [(off + p + n + j, [seq[j + 1]]) for j in range(n - 1)]


def _cycle(pool: list, rng: random.Random) -> Iterator:
    """The pool's items in a random order, reshuffled after each pass."""
    order = list(range(len(pool)))
    while True:
        rng.shuffle(order)
        for i in order:
            yield pool[i]


def _packed(episodes: Iterator, width: int) -> Iterator[tuple[list[int], Targets]]:
    """Rows of up to ``width`` tokens holding several induction episodes (BOS once, then episode after
    episode, no token shared between episodes of a row, so every target has one earlier occurrence)."""
    pending = next(episodes)
    while True:
        ids, targets = list(pending[0]), list(pending[1])
        used = set(ids)
        while True:
            pending = next(episodes)
            more, more_targets = pending[0][1:], pending[1]  # without its BOS
            if len(ids) + len(more) > width:
                break
            if used.isdisjoint(more):
                targets += [(pos - 1 + len(ids), answers) for pos, answers in more_targets]
                ids += more
                used.update(more)
        yield ids, targets


def _batch(
    rows: list[tuple[list[int], list[tuple[int, int]]]], pad: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    width = max(len(r) for r, _ in rows)
    x = torch.full((len(rows), width), pad, dtype=torch.long)
    for i, (r, _) in enumerate(rows):
        x[i, : len(r)] = torch.tensor(r)
    where = [(i, pos, tok) for i, (_, ts) in enumerate(rows) for pos, tok in ts]
    row, pos, y = (torch.tensor(v) for v in zip(*where, strict=True))
    return x, row, pos, y


def answer_logits(model: Any, x: torch.Tensor, last: torch.Tensor, row: torch.Tensor | None = None) -> torch.Tensor:
    """Logits at the scored positions only (row ``row[i]``, position ``last[i]``; by default each row's
    ``last[i]``): the loss never needs the others."""
    h = model.transformer(input_ids=x).last_hidden_state
    return model.lm_head(h[torch.arange(x.shape[0]) if row is None else row, last])


# Eight frequencies for the position code: sum of cos(w d) is 8 at d = 0 and at most 2.6 for 1 <= d <= 64.
POSITION_FREQS = (0.657, 0.898, 1.075, 1.374, 1.451, 1.707, 1.794, 2.959)
INDUCTION_INIT: dict[str, Any] = {
    "amplitude": 0.3,
    "prev_gain": 3.0,
    "emb_std": 0.1,
    "match_gain": 3.0,
    "copy_gain": 3.0,
    "heads": 4,
}


def position_code(n_positions: int, amplitude: float) -> torch.Tensor:
    """``[n_positions, 16]``: sines and cosines of ``POSITION_FREQS`` times ``amplitude``."""
    pos = torch.arange(n_positions, dtype=torch.float32)[:, None] * torch.tensor(POSITION_FREQS)
    out = torch.empty(n_positions, 16)
    out[:, 0::2], out[:, 1::2] = amplitude * pos.sin(), amplitude * pos.cos()
    return out


def shift_rotation(gain: float) -> torch.Tensor:
    """``[16, 16]`` map taking the position code of ``i`` to ``gain`` times that of ``i - 1`` (read as a
    query against keys that read the code as it is, position ``i`` matches ``i - 1`` best)."""
    rot = torch.zeros(16, 16)
    for f, w in enumerate(POSITION_FREQS):
        c, s = math.cos(w), math.sin(w)
        rot[2 * f : 2 * f + 2, 2 * f : 2 * f + 2] = torch.tensor([[c, s], [-s, c]])
    return gain * rot


def _set_head(attn: Any, head: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor) -> None:
    """Overwrite one head of a GPT-2 attention block (Conv1D: ``x @ W + b``). ``q``, ``k``, ``v`` are
    ``[d_model, d_head]``, ``o`` is ``[d_head, d_model]``; the head's biases become 0."""
    d = attn.c_proj.weight.shape[1]
    hd = v.shape[1]
    for block, w in enumerate((q, k, v)):
        cols = slice(block * d + head * hd, block * d + (head + 1) * hd)
        attn.c_attn.weight[:, cols] = w
        attn.c_attn.bias[cols] = 0.0
    attn.c_proj.weight[head * hd : (head + 1) * hd] = o


@torch.no_grad()
def init_induction_circuit(
    model: Any, seed: int, *, amplitude: float, prev_gain: float, emb_std: float, match_gain: float, copy_gain: float, heads: int
) -> None:
    """Start the model with an induction circuit (the construction of Elhage et al. 2021): training then
    adjusts it with everything else. Attention-only induction does not form in this model within the CPU
    training budget (docs/model-card.md), so it is built in rather than waited for.

    Residual layout at initialisation (the token embeddings are zero outside dims 32+, the position
    embeddings zero outside dims 0-15; training may use every dimension afterwards):

    - dims 0-15: positions, as ``position_code``;
    - layer 0 head 0, a previous-token head: query ``shift_rotation(prev_gain)`` and key the identity on
      dims 0-15, value a random 16-dim projection ``A`` of the token dims, output into dims 16-31;
    - layer 1 heads ``0..heads-1``, induction heads: query ``match_gain * A`` on the token dims, key the
      identity on dims 16-31 (so a position attends to the one *after* an earlier occurrence of its own
      token), value and output ``copy_gain``-scaled orthonormal 16-dim blocks ``B_h`` of the token dims, so
      that the heads together copy the attended token's embedding (``sum_h B_h^T B_h`` is the identity on
      the token dims when ``heads * 16`` covers them);
    - token embeddings ``N(0, emb_std)`` on dims 32+.
    """
    cfg = model.config
    d, hd = cfg.n_embd, cfg.n_embd // cfg.n_head
    if hd != 16 or d < 48 or cfg.n_layer < 2 or heads > cfg.n_head or heads * 16 > d - 32:
        raise ValueError(
            f"the induction initialisation needs 16-dim heads, 2+ layers and {heads} heads of 16 token dims; got {cfg}"
        )
    g = torch.Generator().manual_seed(seed)
    t = model.transformer
    t.wpe.weight.zero_()
    t.wpe.weight[:, :16] = position_code(cfg.n_positions, amplitude)
    t.wte.weight.normal_(0.0, emb_std, generator=g)
    t.wte.weight[:, :32] = 0.0
    n_tok = d - 32
    basis = torch.linalg.qr(torch.randn(n_tok, n_tok, generator=g))[0]  # orthonormal columns
    match = torch.zeros(d, hd)
    match[32:] = basis[:, :16]  # A^T
    pos_q, pos_k, prev_o = torch.zeros(d, hd), torch.zeros(d, hd), torch.zeros(hd, d)
    pos_q[:16], pos_k[:16], prev_o[:, 16:32] = shift_rotation(prev_gain), torch.eye(16), torch.eye(16)
    _set_head(t.h[0].attn, 0, pos_q, pos_k, match, prev_o)
    prev_k = torch.zeros(d, hd)
    prev_k[16:32] = torch.eye(16)
    for h in range(heads):
        block = torch.zeros(d, hd)
        block[32:] = basis[:, 16 * h : 16 * (h + 1)]  # B_h^T
        _set_head(t.h[1].attn, h, match_gain * match, prev_k, block, copy_gain * block.T)


def optimizer(model: Any, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW (betas 0.9/0.98) with weight decay on the matrices and the token embedding only (not on the
    position embeddings, biases and norm gains)."""
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "wpe" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2 or "wpe" in n]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98))


@torch.no_grad()
def evaluate(model: Any, tasks: dict[str, tuple[Any, TaskData]], pad: int, batch_size: int = 128) -> dict[str, dict[str, float]]:
    """Accuracy and mean clean/corrupted metric of each task (``metrics.accuracy`` and the task's metric)."""
    model.eval()
    out = {}
    for name, (task, data) in tasks.items():
        metric = get_metric(task.config.metric)
        acc, clean, corrupted = [], [], []
        for b in data.batches(batch_size, pad_id=pad):
            lc = answer_logits(model, b.clean, b.last).float()
            lx = answer_logits(model, b.corrupted, b.last).float()
            acc.append(accuracy(lc, b))
            clean.append(metric(lc, b))
            corrupted.append(metric(lx, b))
        out[name] = {
            "metric": task.config.metric,
            "n": len(data),
            "accuracy": torch.cat(acc).mean().item(),
            "clean_metric": torch.cat(clean).mean().item(),
            "corrupted_metric": torch.cat(corrupted).mean().item(),
        }
    model.train()
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(Path(__file__).parent / "circuitkit-tiny"), help="output directory")
    p.add_argument("--steps", type=int, default=5000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (the weights depend on it)")
    p.add_argument("--pool", type=int, default=12000, help="training examples generated per task")
    p.add_argument("--induction-min-len", type=int, default=4, help="shortest repeated sequence in training (test: 4)")
    p.add_argument("--induction-max-len", type=int, default=16, help="longest repeated sequence in training (test: 12)")
    p.add_argument(
        "--induction-vocab", type=int, default=None, help="word tokens of induction, training and held-out (default: the task's)"
    )
    p.add_argument(
        "--no-induction-init", action="store_true", help="GPT-2's initialisation throughout (no built-in induction circuit)"
    )
    p.add_argument("--tasks", default=",".join(TASKS), help="comma-separated tasks to train on (default: all)")
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--eval-examples", type=int, default=256, help="held-out examples per task in the report")
    args = p.parse_args(argv)

    from transformers import GPT2Config, GPT2LMHeadModel

    start = time.time()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    tok = load_tokenizer()
    pad = tok.eos_token_id

    # Training pools: the train split of every task (seeded apart from the test sets' default seed 0).
    pools: dict[str, list[tuple[list[int], Targets]]] = {}
    tasks = args.tasks.split(",")
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        p.error(f"unknown task(s) {', '.join(unknown)}; choose from {', '.join(TASKS)}")
    sources = [*tasks, "filler"]
    per = [args.batch_size // len(sources)] * len(sources)
    for i in range(args.batch_size - sum(per)):
        per[i] += 1
    share = dict(zip(sources, per, strict=True))
    vocab = {} if args.induction_vocab is None else {"vocab_size": args.induction_vocab}
    for name in tasks:
        n, options = args.pool, {}
        if name == "induction":
            # Fresh sequences throughout: a model shown the same random sequences again memorises their
            # bigrams instead of learning to copy.
            n, options = (
                max(args.pool, 2 * args.steps * share[name]),
                {"min_seq_len": args.induction_min_len, "max_seq_len": args.induction_max_len, **vocab},
            )
        _, data = build_task(name, "train", n, 1000 + args.seed * 100 + TASKS.index(name), tok, **options)
        pools[name] = [
            training_row(name, ex.meta, ids, answers)
            for ex, ids, answers in zip(data.examples, data.clean_ids, data.correct_ids, strict=True)
        ]
        print(f"[data] {name}: {len(data)} training examples ({len(set(map(tuple, data.clean_ids)))} distinct)", flush=True)
    pools["filler"] = filler_pool(tok, rng, args.pool)
    held_out = {
        name: build_task(name, "test", args.eval_examples, 0, tok, **(vocab if name == "induction" else {})) for name in tasks
    }
    probe = {name: (t, d.subset(range(min(len(d), 96)))) for name, (t, d) in held_out.items()}
    for name, (_, data) in held_out.items():
        seen = {tuple(ids) for ids, _ in pools[name]}
        leaked = sum(tuple(ids) in seen for ids in data.clean_ids)
        if leaked:
            raise RuntimeError(f"{leaked} held-out {name} prompts occur in the training pool.")
    print(f"[data] built in {time.time() - start:.0f}s; no held-out prompt is in the training pools", flush=True)

    config = GPT2Config(
        vocab_size=len(tok),
        **ARCH,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    model = GPT2LMHeadModel(config)
    if not args.no_induction_init:
        init_induction_circuit(model, args.seed, **INDUCTION_INIT)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"[model] {n_params / 1e6:.2f}M parameters", flush=True)
    opt = optimizer(model, args.lr, args.weight_decay)

    def lr_at(step: int) -> float:
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        frac = (step - args.warmup) / max(1, args.steps - args.warmup)
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))

    draws = {name: _cycle(pools[name], rng) for name in sources}
    if "induction" in draws:
        draws["induction"] = _packed(draws["induction"], ARCH["n_positions"])
    model.train()
    t0, run_loss = time.time(), 0.0
    for step in range(args.steps):
        rows = []
        for name, k in share.items():
            for _ in range(k):
                ids, targets = next(draws[name])
                rows.append((ids, [(pos, rng.choice(answers)) for pos, answers in targets]))
        # Forward passes over length-sorted groups (long rows, then two halves of the rest): much less
        # padding than one mixed batch. The loss is the mean over all scored positions.
        rows.sort(key=lambda r: len(r[0]))
        short = [r for r in rows if len(r[0]) <= 40]
        half = len(short) // 2
        n_targets = sum(len(ts) for _, ts in rows)
        loss = torch.zeros(())
        for part in (short[:half], short[half:], rows[len(short) :]):
            if not part:
                continue
            x, row, pos, y = _batch(part, pad)
            ce = torch.nn.functional.cross_entropy(answer_logits(model, x, pos, row), y, reduction="sum")
            loss = loss + ce / n_targets
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        run_loss += loss.item()
        if (step + 1) % 100 == 0:
            print(
                f"[train] step {step + 1}/{args.steps} loss {run_loss / 100:.3f} lr {lr_at(step):.2e} "
                f"{(step + 1) / (time.time() - t0):.2f} steps/s",
                flush=True,
            )
            run_loss = 0.0
        if args.eval_every and (step + 1) % args.eval_every == 0 and step + 1 < args.steps:
            res = evaluate(model, probe, pad)
            print("[eval] held-out accuracy " + " ".join(f"{n}={r['accuracy']:.2f}" for n, r in res.items()), flush=True)
    train_s = time.time() - t0

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model.config.architectures = ["GPT2LMHeadModel"]
    model.half().save_pretrained(str(out))
    tok.save_pretrained(str(out))
    # Evaluate what was saved: the float16 weights, loaded back as float32.
    saved = GPT2LMHeadModel.from_pretrained(str(out), dtype=torch.float32)
    results = evaluate(saved, held_out, pad)
    report = {
        "model": "circuitkit-tiny",
        "architecture": {**ARCH, "vocab_size": len(tok), "tied_embeddings": True, "parameters": n_params},
        "command": " ".join(["python -m circuitkit.zoo.train", *(sys.argv[1:] if argv is None else argv)]),
        "args": vars(args),
        "training_seconds": round(train_s, 1),
        "total_seconds": round(time.time() - start, 1),
        "torch": torch.__version__,
        "held_out": results,
        "note": "held_out is the task's split='test' (seed 0): combinations of words held out from training, not words.",
        "task_configs": {name: asdict(t.config) for name, (t, _) in held_out.items()},
    }
    (out / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"[done] trained {args.steps} steps in {train_s / 60:.1f} min; saved to {out}")
    print(f"{'task':16s} {'metric':10s} {'n':>4s} {'accuracy':>8s} {'clean':>8s} {'corrupted':>9s}")
    for name, r in results.items():
        print(
            f"{name:16s} {r['metric']:10s} {r['n']:4d} {r['accuracy']:8.3f} {r['clean_metric']:8.3f} {r['corrupted_metric']:9.3f}"
        )


if __name__ == "__main__":
    main()
