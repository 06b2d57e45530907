"""Induction: continuing a repeated random token sequence.

Elhage et al. (2021), "A Mathematical Framework for Transformer Circuits"; Olsson et al. (2022),
"In-context Learning and Induction Heads". The prompt is a random prefix, a random sequence ``s`` and the
first ``k`` tokens of ``s`` again; the answer is ``s[k]``. The prefix length, the sequence length and ``k``
are random, so the answer cannot be found by position. The corrupted prompt replaces the first occurrence
of ``s`` by other random tokens, leaving nothing to copy. Metric: the logit of the answer.

Tokens are drawn from the ``vocab_size`` lowest-id tokens of the tokenizer that are a space followed by a
lower-case ASCII word and re-encode to themselves (for GPT-2's BPE, low ids are the frequent merges).
Prompts are built by decoding token ids and are kept only when they re-encode to the same ids.

The held-out split holds out sequences (a hash of ``s``), not tokens: every token is used in both splits.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from circuitkit_plugins.tasks._common import attempts, check_split, in_split

from circuitkit import hookimpl
from circuitkit.data import Example, encode
from circuitkit.errors import ConfigError
from circuitkit.interfaces import Task, TaskConfig


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


def word_tokens(tokenizer: Any, limit: int) -> list[int]:
    """The ``limit`` lowest ids that decode to " word" (lower-case ASCII) and re-encode to themselves."""
    out = []
    for i in range(len(tokenizer)):
        text = tokenizer.decode([i])
        word = text[1:]
        if text[:1] == " " and len(word) >= 2 and word.isascii() and word.isalpha() and word.islower():
            if encode(tokenizer, text) == [i]:
                out.append(i)
                if len(out) >= limit:
                    break
    return out


class Induction(Task):
    config: InductionConfig

    def generate(self, tokenizer: Any, split: str) -> Iterator[Example]:
        cfg = self.config
        check_split(cfg.name or "induction", split)
        if not 2 <= cfg.min_seq_len <= cfg.max_seq_len or cfg.max_prefix_len < 0:
            raise ConfigError(
                f"induction needs 2 <= task.min_seq_len <= task.max_seq_len and task.max_prefix_len >= 0 (got "
                f"{cfg.min_seq_len}, {cfg.max_seq_len}, {cfg.max_prefix_len})."
            )
        vocab = word_tokens(tokenizer, cfg.vocab_size)
        rng = random.Random(cfg.seed)
        for _ in range(attempts(cfg.n_examples)):
            n = rng.randint(cfg.min_seq_len, cfg.max_seq_len)
            p = rng.randint(0, cfg.max_prefix_len)
            k = rng.randint(1, n - 1)
            if len(vocab) < p + 2 * n:
                return  # too few word tokens: nothing can be generated (the core reports it)
            draw = rng.sample(vocab, p + 2 * n)
            prefix, seq, other = draw[:p], draw[p : p + n], draw[p + n :]
            if not in_split(split, tuple(seq)):
                continue
            clean_ids = prefix + seq + seq[:k]
            corrupted_ids = prefix + other + seq[:k]
            clean, corrupted = tokenizer.decode(clean_ids), tokenizer.decode(corrupted_ids)
            if encode(tokenizer, clean) != clean_ids or encode(tokenizer, corrupted) != corrupted_ids:
                continue
            yield Example(
                clean,
                corrupted,
                correct=(tokenizer.decode([seq[k]]),),
                meta={"prefix_len": p, "seq_len": n, "shown": k},
            )


@hookimpl
def circuitkit_register_tasks(registry) -> None:  # noqa: ANN001
    registry.add("induction", Induction, InductionConfig)
