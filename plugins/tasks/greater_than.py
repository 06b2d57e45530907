"""Greater-than: the year-span task.

Hanna, Liu & Variengien (2023), "How does GPT-2 compute greater-than?"; used by Hanna et al. (2024).
"The war lasted from the year 1732 to the year 17" -> a year greater than 32. The corrupted prompt starts
in the year ``XX01``, which leaves no information about the start year. Metric: probability of the
two-digit continuations greater than ``YY`` minus probability of those less than or equal to it.

Only prompts whose start year tokenizes as ``XX`` + ``YY`` (two single tokens) and whose ``01`` variant
does too are kept, for whatever tokenizer the model has. The held-out split holds out combinations of
(template, noun, year), not words.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from circuitkit_plugins.tasks._common import check_split

from circuitkit import hookimpl
from circuitkit.data import Example, encode
from circuitkit.errors import ConfigError
from circuitkit.interfaces import Task, TaskConfig

NOUNS = [
    "war", "expedition", "contract", "deal", "project", "pilgrimage", "voyage", "campaign", "siege",
    "reign", "journey", "famine", "drought", "strike", "trial", "truce", "rebellion", "occupation",
    "construction", "plague", "alliance", "partnership", "tour", "dynasty",
]
TEMPLATES = [
    "The {noun} lasted from the year {start} to the year {century}",
    "The {noun} started in the year {start} and ended in the year {century}",
    "The {noun} began in {start} and it ended in {century}",
    "The {noun} ran from the year {start} until the year {century}",
]
CENTURIES = [11, 12, 13, 14, 15, 16, 17, 18, 19]


def is_test(*key: Any) -> bool:
    """Deterministic train/test assignment of a combination (about 1 in 4 held out)."""
    return zlib.crc32(repr(key).encode()) % 4 == 0


@dataclass
class GreaterThanConfig(TaskConfig):
    """Options of greater-than (see TaskConfig).

    Attributes:
        templates: which template indices to use (empty: all).
    """

    metric: str = "prob_diff"
    templates: tuple[int, ...] = ()


class GreaterThan(Task):
    config: GreaterThanConfig

    def generate(self, tokenizer: Any, split: str) -> Iterator[Example]:
        check_split(self.config.name or "greater_than", split)
        rng = random.Random(self.config.seed)
        # Template ids index TEMPLATES itself, so a subset of templates keeps the split of the full set.
        template_ids = list(self.config.templates) or list(range(len(TEMPLATES)))
        if any(not 0 <= t < len(TEMPLATES) for t in template_ids):
            raise ConfigError(f"task.templates={list(self.config.templates)}: greater_than has templates 0..{len(TEMPLATES) - 1}.")
        for _ in range(self.config.n_examples * 50):
            t = rng.choice(template_ids)
            noun = rng.choice(NOUNS)
            century = rng.choice(CENTURIES)
            yy = rng.randint(2, 98)
            if is_test(t, noun, yy) != (split == "test"):
                continue
            if not (_two_tokens(tokenizer, century, yy) and _two_tokens(tokenizer, century, 1)):
                continue
            template = TEMPLATES[t]
            clean = template.format(noun=noun, start=f"{century}{yy:02d}", century=century)
            corrupted = template.format(noun=noun, start=f"{century}01", century=century)
            yield Example(
                clean,
                corrupted,
                correct=tuple(f"{y:02d}" for y in range(yy + 1, 100)),
                incorrect=tuple(f"{y:02d}" for y in range(0, yy + 1)),
                meta={"year": century * 100 + yy, "template": t},
            )


def _two_tokens(tokenizer: Any, century: int, yy: int) -> bool:
    ids = encode(tokenizer, f" {century}{yy:02d}")
    return len(ids) == 2 and encode(tokenizer, f"{yy:02d}") == ids[1:]


@hookimpl
def circuitkit_register_tasks(registry) -> None:  # noqa: ANN001
    registry.add("greater_than", GreaterThan, GreaterThanConfig)
