"""Induction: continuing a repeated random token sequence.

Elhage et al. (2021), "A Mathematical Framework for Transformer Circuits"; Olsson et al. (2022),
"In-context Learning and Induction Heads". The prompt is a random prefix, a random sequence ``s`` and the
first ``k`` tokens of ``s`` again; the answer is ``s[k]``. The prefix length, the sequence length and ``k``
are random, so the answer cannot be found by position. The corrupted prompt replaces the first occurrence
of ``s`` by other random tokens, leaving nothing to copy. Metric: the logit of the answer.

Tokens are drawn from the ``vocab_size`` lowest-id word tokens of the tokenizer (for GPT-2's BPE, low ids
are the frequent merges). A word token is found by what it is: its token string is a word-boundary marker
(byte-level BPE's "Ġ", SentencePiece's "▁"; none for word-level tokenizers) followed by a lower-case ASCII
word of two letters or more, and that word after a space is this one token. Prompts are built by decoding
token ids and are kept only when they re-encode to the same ids (the others are counted as dropped). A
tokenizer with too few word tokens (character-level) cannot express the task: the error says so.

The held-out split holds out sequences (a hash of ``s``), not tokens: every token is used in both splits.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from circuitkit_plugins.tasks._common import attempts, check_split, in_split

from circuitkit.api import ConfigError, DataError, Example, Rejected, Task, TaskConfig, encode, hookimpl, show_tokens


@dataclass
class InductionConfig(TaskConfig):
    """Options of induction (see TaskConfig).

    Attributes:
        vocab_size: how many word tokens the sequences are drawn from.
        min_seq_len, max_seq_len: length range of the repeated sequence.
        max_prefix_len: the random prefix has 0..max_prefix_len tokens.
    """

    metric: str = "logit"
    vocab_size: int = 5000
    min_seq_len: int = 4
    max_seq_len: int = 12
    max_prefix_len: int = 10

    def __post_init__(self) -> None:
        if not 2 <= self.min_seq_len <= self.max_seq_len or self.max_prefix_len < 0:
            raise ConfigError(
                f"induction needs 2 <= task.min_seq_len <= task.max_seq_len and task.max_prefix_len >= 0 (got "
                f"{self.min_seq_len}, {self.max_seq_len}, {self.max_prefix_len})."
            )


#: Word-boundary markers at the start of a token string: byte-level BPE (GPT-2, Llama-3, Qwen2),
#: SentencePiece (Llama-2, Gemma) and a plain space (tokenizers that keep it, or a decoded token).
MARKERS = ("Ġ", "▁", " ")


def word_tokens(tokenizer: Any, limit: int) -> list[int]:
    """The ``limit`` lowest ids that are word tokens: a word-boundary marker (or, for tokenizers without one,
    nothing) and a lower-case ASCII word, which after a space encodes to this one token."""
    out = []
    ids = range(len(tokenizer))
    pieces = _pieces(tokenizer, list(ids))
    head = encode(tokenizer, "the")
    for i, piece in zip(ids, pieces):
        if not isinstance(piece, str):
            continue
        word = piece[1:] if piece[:1] in MARKERS else piece
        if len(word) >= 2 and word.isascii() and word.isalpha() and word.islower():
            if encode(tokenizer, "the " + word) == head + [i]:
                out.append(i)
                if len(out) >= limit:
                    break
    return out


class Induction(Task):
    config: InductionConfig

    def generate(self, tokenizer: Any, split: str) -> Iterator[Example | Rejected]:
        cfg = self.config
        check_split(cfg.name or "induction", split)
        vocab = word_tokens(tokenizer, cfg.vocab_size)
        if len(vocab) < cfg.max_prefix_len + 2 * cfg.max_seq_len:
            raise DataError(
                f"Task '{cfg.name or 'induction'}': {len(vocab)} word tokens to draw from (task.vocab_size="
                f"{cfg.vocab_size}; a word token is a word-boundary marker "
                "such as 'Ġ' or '▁', or none, then a lower-case word of two letters or more, which after a space is "
                f"this one token: {show_tokens(tokenizer, 'the quick brown fox')}); induction draws prompts of up to "
                f"task.max_prefix_len + 2 * task.max_seq_len = {cfg.max_prefix_len + 2 * cfg.max_seq_len} different ones. "
                "Use a model whose tokenizer has whole words as tokens, or lower task.max_seq_len and task.max_prefix_len."
            )
        rng = random.Random(cfg.seed)
        for _ in range(attempts(cfg.n_examples)):
            n = rng.randint(cfg.min_seq_len, cfg.max_seq_len)
            p = rng.randint(0, cfg.max_prefix_len)
            k = rng.randint(1, n - 1)
            draw = rng.sample(vocab, p + 2 * n)
            prefix, seq, other = draw[:p], draw[p : p + n], draw[p + n :]
            if not in_split(split, tuple(seq)):
                continue
            clean_ids = prefix + seq + seq[:k]
            corrupted_ids = prefix + other + seq[:k]
            clean, corrupted = tokenizer.decode(clean_ids), tokenizer.decode(corrupted_ids)
            if encode(tokenizer, clean) != clean_ids or encode(tokenizer, corrupted) != corrupted_ids:
                bad = clean if encode(tokenizer, clean) != clean_ids else corrupted
                yield Rejected("decoded prompt does not re-encode to the drawn tokens", show_tokens(tokenizer, bad))
                continue
            yield Example(
                clean,
                corrupted,
                correct=(" " + _word(tokenizer, seq[k]),),
                meta={"prefix_len": p, "seq_len": n, "shown": k},
            )


def _pieces(tokenizer: Any, ids: list[int]) -> list[Any]:
    """The token strings of ``ids`` (each decoded on its own for a tokenizer without token strings)."""
    convert = getattr(tokenizer, "convert_ids_to_tokens", None)
    return list(convert(ids)) if convert is not None else [tokenizer.decode([i]) for i in ids]


def _word(tokenizer: Any, i: int) -> str:
    piece = _pieces(tokenizer, [i])[0]
    return piece[1:] if piece[:1] in MARKERS else piece


@hookimpl
def circuitkit_register_tasks(registry) -> None:  # noqa: ANN001
    registry.add("induction", Induction, InductionConfig)
