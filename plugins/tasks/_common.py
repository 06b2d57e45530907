"""Helpers shared by the builtin task generators: the train/test split and same-length substitution.

The held-out split holds out *combinations* (name pair x template, subject x template, ...), never words:
every word of the test split also occurs in training examples, in other combinations. A combination is
assigned to the test split when a CRC32 of its key is divisible by 4 (about a quarter), which does not
depend on the seed, the tokenizer or the other options.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Sequence
from typing import Any

from circuitkit.api import ConfigError, encode

SPLITS = ("train", "test")


def check_split(task: str, split: str) -> None:
    """Raise a ConfigError unless ``split`` is ``"train"`` or ``"test"``."""
    if split not in SPLITS:
        raise ConfigError(
            f"task.split={split!r} is not valid for task '{task}': use 'test' (combinations held out from the "
            "bundled model's training data) or 'train'."
        )


def is_test(*key: Any) -> bool:
    """Deterministic train/test assignment of a combination (about 1 in 4 held out)."""
    return zlib.crc32(repr(key).encode()) % 4 == 0


def in_split(split: str, *key: Any) -> bool:
    """Whether the combination ``key`` belongs to ``split``."""
    return is_test(*key) == (split == "test")


def attempts(n_examples: int) -> int:
    """How many candidates a generator may try: generous, so that ``n_examples`` survive filtering."""
    return max(n_examples, 16) * 50


class Lengths:
    """Token lengths of words as they appear inside a prompt (after a space, or at its start), memoised.

    Byte-level BPE tokenizers (GPT-2 and most others) split text at spaces before merging, so a word's
    tokens do not depend on its neighbours; for other tokenizers the core's length check still applies.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._memo: dict[str, int] = {}

    def __call__(self, word: str, at_start: bool = False) -> int:
        text = word if at_start else " " + word
        n = self._memo.get(text)
        if n is None:
            n = self._memo[text] = len(encode(self.tokenizer, text))
        return n

    def same_length(
        self, rng: random.Random, word: str, pool: Sequence[str], *, at_start: bool = False, exclude: Sequence[str] = ()
    ) -> str | None:
        """A random word of ``pool`` (not ``word``, not in ``exclude``) with as many tokens as ``word``."""
        target = self(word, at_start)
        skip = set(exclude) | {word}
        options = [w for w in pool if w not in skip and self(w, at_start) == target]
        return rng.choice(options) if options else None
