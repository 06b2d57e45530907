"""Induction-only training of the bundled model's architecture: how fast does induction form?

The bundled model falls short on induction (docs/model-card.md). This script trains a fresh model of the
same architecture on induction alone, so that initialisations and optimiser settings can be compared in
minutes rather than in a full 30-minute training run, and prints the training loss and the held-out
accuracy (``metrics.accuracy`` on ``induction``'s test split: the answer is the top-1 prediction over the
whole vocabulary) every ``--eval-every`` steps.

Training rows are built as in ``circuitkit.zoo.train``: fresh random sequences from the task's word tokens
(training split only), each shown and repeated, scored at every position of the repeat, several episodes
packed into one 64-token row. ``--restrict`` computes the training softmax over the task's word tokens
only (about 6x cheaper per step on one thread; held-out accuracy is still over the full vocabulary).

    python benchmarks/induction_probe.py --restrict --steps 4000
    python benchmarks/induction_probe.py --restrict --steps 4000 --pos-init 0.5 --emb-std 0.1 --final-gain 3
    python benchmarks/induction_probe.py --restrict --steps 2400 --prev-head 1 --prev-amplitude 0.1
    python benchmarks/induction_probe.py --restrict --steps 2400 --prev-head 1 --prev-amplitude 0.1 --freeze-prev
"""

from __future__ import annotations

import argparse
import math
import random
import time

import torch
from circuitkit_plugins.tasks._common import in_split
from circuitkit_plugins.tasks.induction import word_tokens

from circuitkit.zoo.train import (
    ARCH,
    _batch,
    _packed,
    answer_logits,
    build_task,
    evaluate,
    load_tokenizer,
    optimizer,
    position_code,
    shift_rotation,
)


def sinusoidal(positions: int, width: int) -> torch.Tensor:
    """Sine/cosine position codes ``[positions, width]`` (Vaswani et al. 2017), entries in [-1, 1]."""
    pos = torch.arange(positions, dtype=torch.float32)[:, None]
    freq = 10000 ** (torch.arange(0, width, 2, dtype=torch.float32) / width)
    out = torch.zeros(positions, width)
    out[:, 0::2] = torch.sin(pos / freq)
    out[:, 1::2] = torch.cos(pos / freq)
    return out


@torch.no_grad()
def previous_token_prior(model, amplitude: float, gain: float) -> None:  # noqa: ANN001
    """Initialise layer 0's head 0 as a previous-token head: positions are coded as ``position_code`` in
    residual dimensions 0-15 (which the token embeddings leave at zero), the head's key reads them as they
    are and its query is ``shift_rotation(gain)``, so that query ``i`` matches key ``i - 1`` best. (The
    training script's ``init_induction_circuit`` builds the same head and the induction heads reading it.)"""
    n_pos, d = model.config.n_positions, model.config.n_embd
    hd = d // model.config.n_head
    if hd < 16:
        raise SystemExit(f"--prev-head needs heads of at least 16 dimensions (these have {hd})")
    wpe = torch.zeros(n_pos, d)
    wpe[:, :16] = position_code(n_pos, amplitude)
    model.transformer.wpe.weight.copy_(wpe)
    model.transformer.wte.weight[:, :16] = 0.0
    attn = model.transformer.h[0].attn
    w_qkv, b_qkv = attn.c_attn.weight, attn.c_attn.bias  # Conv1D: x @ W, W [d, 3d]
    for block in (0, 1):  # query, key of head 0
        w_qkv[:, block * d : block * d + hd] = 0.0
        b_qkv[block * d : block * d + hd] = 0.0
    w_qkv[:16, 0:16] = shift_rotation(gain)
    w_qkv[:16, d : d + 16] = torch.eye(16)


def pinned_previous_token_head(model) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:  # noqa: ANN001
    """What ``--freeze-prev`` holds at its initial values: the position embeddings, the token embeddings'
    dimensions 0-15, layer 0's first LayerNorm on those dimensions and the query and key of layer 0's head 0.
    Returned as ``(parameter, mask, values)``; ``restore`` writes the values back after each step (a zero
    gradient is not enough: AdamW's weight decay would still shrink them)."""
    d = model.config.n_embd
    hd = d // model.config.n_head
    t = model.transformer
    out = []

    def pin(param: torch.Tensor, mask: torch.Tensor) -> None:
        out.append((param, mask, param.detach().clone()))

    pin(t.wpe.weight, torch.ones_like(t.wpe.weight, dtype=torch.bool))
    emb = torch.zeros_like(t.wte.weight, dtype=torch.bool)
    emb[:, :16] = True
    pin(t.wte.weight, emb)
    for param in (t.h[0].ln_1.weight, t.h[0].ln_1.bias):
        m = torch.zeros_like(param, dtype=torch.bool)
        m[:16] = True
        pin(param, m)
    attn = t.h[0].attn
    m = torch.zeros_like(attn.c_attn.weight, dtype=torch.bool)
    mb = torch.zeros_like(attn.c_attn.bias, dtype=torch.bool)
    for block in (0, 1):
        m[:, block * d : block * d + hd] = True
        mb[block * d : block * d + hd] = True
    pin(attn.c_attn.weight, m)
    pin(attn.c_attn.bias, mb)
    return out


@torch.no_grad()
def restore(pinned: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> None:
    for param, mask, values in pinned:
        param[mask] = values[mask]


@torch.no_grad()
def previous_token_attention(model, x: torch.Tensor) -> float:  # noqa: ANN001
    """Mean attention of layer 0's head 0 from each position (after the first) to the position before it."""
    t = model.transformer
    d, hd = model.config.n_embd, model.config.n_embd // model.config.n_head
    h = t.h[0].ln_1(t.wte(x) + t.wpe(torch.arange(x.shape[1])))
    qkv = t.h[0].attn.c_attn(h)
    q, k = qkv[..., :hd], qkv[..., d : d + hd]
    scores = q @ k.transpose(-1, -2) / math.sqrt(hd)
    scores = scores.masked_fill(torch.ones(x.shape[1], x.shape[1], dtype=torch.bool).triu(1), float("-inf"))
    att = scores.softmax(-1)
    i = torch.arange(1, x.shape[1])
    return float(att[:, i, i - 1].mean())


@torch.no_grad()
def copying(model, data, pad: int) -> tuple[float, dict[int, float]]:  # noqa: ANN001
    """The fraction of held-out prompts whose top-1 prediction is one of the prompt's own tokens, and the
    accuracy by how many tokens of the repeat are shown (1, 2, 3, 4 or more): induction proper is equally
    accurate at every count, copying from context without locating the continuation is not."""
    model.eval()
    in_prompt, hits = [], {}
    for i, ids in enumerate(data.clean_ids):
        top = int(model(torch.tensor([ids])).logits[0, -1].argmax())
        in_prompt.append(top in ids)
        shown = min(4, data.examples[i].meta["shown"])
        hits.setdefault(shown, []).append(top == data.correct_ids[i][0])
    model.train()
    return sum(in_prompt) / len(in_prompt), {k: sum(v) / len(v) for k, v in sorted(hits.items())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--rows", type=int, default=16, help="64-token rows per step")
    p.add_argument("--lr", type=float, default=2e-3, help="AdamW learning rate (constant after warm-up)")
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--heads", type=int, default=ARCH["n_head"])
    p.add_argument("--vocab", type=int, default=5000, help="word tokens the sequences are drawn from")
    p.add_argument("--min-len", type=int, default=4)
    p.add_argument("--max-len", type=int, default=16)
    p.add_argument("--restrict", action="store_true", help="training softmax over the word tokens only")
    p.add_argument("--pos-init", type=float, default=0.0, help="initialise positions as sinusoids times this (0: GPT-2's)")
    p.add_argument("--emb-std", type=float, default=0.0, help="token embedding init std (0: GPT-2's 0.02)")
    p.add_argument("--final-gain", type=float, default=1.0, help="initial gain of the final LayerNorm")
    p.add_argument(
        "--prev-head",
        type=float,
        default=0.0,
        help="initialise layer 0 head 0 as a previous-token head with this query gain (0: no)",
    )
    p.add_argument("--prev-amplitude", type=float, default=0.1, help="amplitude of the position sinusoids with --prev-head")
    p.add_argument(
        "--freeze-prev", action="store_true", help="with --prev-head: hold the previous-token head fixed during training"
    )
    p.add_argument("--eval-every", type=int, default=400)
    p.add_argument("--eval-examples", type=int, default=96)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    from transformers import GPT2Config, GPT2LMHeadModel

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    tok = load_tokenizer()
    pad, bos = tok.eos_token_id, tok.bos_token_id
    words = word_tokens(tok, args.vocab)
    held_out = {"induction": build_task("induction", "test", args.eval_examples, 0, tok, vocab_size=args.vocab)}

    def episodes():  # noqa: ANN202
        while True:
            n, k = rng.randint(args.min_len, args.max_len), rng.randint(0, 10)
            draw = rng.sample(words, k + n)
            prefix, seq = draw[:k], draw[k:]
            if in_split("train", tuple(seq)):
                start = 1 + k + n  # where the repeat starts
                yield [bos, *prefix, *seq, *seq[:-1]], [(start + j - 1, [seq[j]]) for j in range(1, n)]

    config = GPT2Config(
        vocab_size=len(tok),
        **{**ARCH, "n_head": args.heads},
        tie_word_embeddings=True,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    model = GPT2LMHeadModel(config)
    with torch.no_grad():
        model.transformer.ln_f.weight.fill_(args.final_gain)
        if args.emb_std:
            model.transformer.wte.weight.normal_(0.0, args.emb_std)
        if args.pos_init:
            model.transformer.wpe.weight.copy_(sinusoidal(ARCH["n_positions"], ARCH["n_embd"]) * args.pos_init)
        if args.prev_head:
            previous_token_prior(model, args.prev_amplitude, args.prev_head)
    if args.freeze_prev and not args.prev_head:
        raise SystemExit("--freeze-prev needs --prev-head")
    pinned = pinned_previous_token_head(model) if args.freeze_prev else []
    opt = optimizer(model, args.lr, args.weight_decay)
    vocab = torch.tensor(words)
    index = torch.zeros(len(tok), dtype=torch.long)
    index[vocab] = torch.arange(len(words))
    rows = _packed(episodes(), ARCH["n_positions"])
    print(
        f"{'step':>6s} {'loss':>7s} {'held-out acc':>12s} {'answer logit':>12s} {'top-1 in prompt':>15s}  "
        f"{'accuracy with 1 / 2 / 3 / 4+ repeated tokens shown':50s} {'prev':>5s} {'s':>6s}",
        flush=True,
    )
    t0, total = time.time(), 0.0
    for step in range(args.steps):
        batch = [
            (ids, [(pos, answers[0]) for pos, answers in targets]) for ids, targets in (next(rows) for _ in range(args.rows))
        ]
        x, row, pos, y = _batch(batch, pad)
        if args.restrict:
            h = model.transformer(input_ids=x).last_hidden_state[row, pos]
            loss = torch.nn.functional.cross_entropy(h @ model.lm_head.weight[vocab].T, index[y])
        else:
            loss = torch.nn.functional.cross_entropy(answer_logits(model, x, pos, row), y)
        for g in opt.param_groups:
            g["lr"] = args.lr * min(1.0, (step + 1) / args.warmup)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        restore(pinned)
        total += loss.item()
        if (step + 1) % args.eval_every == 0:
            r = evaluate(model, held_out, pad)["induction"]
            in_prompt, by_shown = copying(model, held_out["induction"][1], pad)
            loss_avg = total / args.eval_every
            shown = " / ".join(f"{v:.2f}" for v in by_shown.values())
            print(
                f"{step + 1:6d} {loss_avg:7.3f} {r['accuracy']:12.3f} {r['clean_metric']:12.2f} {in_prompt:15.2f}  "
                f"{shown:50s} {previous_token_attention(model, x):5.2f} {time.time() - t0:6.0f}",
                flush=True,
            )
            total = 0.0
            if math.isnan(loss_avg):
                raise SystemExit("the loss is NaN: lower --lr")


if __name__ == "__main__":
    main()
