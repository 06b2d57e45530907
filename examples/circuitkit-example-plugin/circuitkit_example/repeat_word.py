"""``repeat_word``: say again the word the prompt repeats.

Clean: ``"Remember: dog dog. The word to remember is"`` -> `` dog``. Corrupted: the same prompt with
another word (``"Remember: lion lion. The word to remember is"``), which leaves nothing to copy; the
metric (logit difference by default) rewards `` dog`` over `` lion``. ``repeats`` sets how many times
the word is said.

A generator may yield more examples than asked for and examples that do not fit the model's tokenizer
(a word of two tokens, say): :meth:`circuitkit.interfaces.Task.build` keeps the first ``n_examples``
whose clean and corrupted prompts have the same length and whose answers are single tokens. The held-out
split (``task.split=test``, the default) holds out about a quarter of the word pairs.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from circuitkit.api import ConfigError, Example, Task, TaskConfig

WORDS = (
    "dog cat bird fish horse cow pig sheep lion tiger bear wolf fox mouse duck apple bread cake rice milk "
    "tea wine beer salt sugar book pen desk chair door window table lamp clock phone car bus train ship "
    "plane boat bike road river lake sea hill tree rose star moon sun rain snow wind fire stone gold"
).split()
SPLITS = ("test", "train", "all")


@dataclass
class RepeatWordConfig(TaskConfig):
    """Options of ``repeat_word`` (``task.<option>=...``; the common ones are in TaskConfig).

    Attributes:
        repeats: how many times the prompt says the word.
        words: the words to draw from (empty: a builtin list of 58 common nouns).
    """

    n_examples: int = 32
    repeats: int = 2
    words: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if isinstance(self.repeats, bool) or not isinstance(self.repeats, int) or self.repeats < 1:
            raise ConfigError(f"task.repeats must be an integer of at least 1, got {self.repeats!r}.")
        if self.split not in SPLITS:
            raise ConfigError(f"task.split={self.split!r}: repeat_word has the splits {', '.join(SPLITS)}.")
        if self.words and len(set(self.words)) < 2:
            raise ConfigError("task.words needs at least two different words (one for the clean, one for the corrupted prompt).")


class RepeatWord(Task):
    config: RepeatWordConfig

    def generate(self, tokenizer: Any, split: str) -> Iterator[Example]:
        words = list(self.config.words) or WORDS
        rng = random.Random(self.config.seed)
        for _ in range(self.config.n_examples * 50):
            word, other = rng.sample(words, 2)
            held_out = zlib.crc32(f"{word}|{other}".encode()) % 4 == 0
            if split != "all" and held_out != (split == "test"):
                continue
            yield Example(
                clean=self.prompt(word),
                corrupted=self.prompt(other),
                correct=(f" {word}",),
                incorrect=(f" {other}",),
                meta={"word": word, "other": other},
            )

    def prompt(self, word: str) -> str:
        return f"Remember: {' '.join([word] * self.config.repeats)}. The word to remember is"
