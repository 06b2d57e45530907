"""Hypernymy: naming the category of listed things.

The Hypernymy task of Hanna, Pezzelle & Belinkov (2024), "Have Faith in Faithfulness: Going Beyond Circuit
Overlap When Finding Model Mechanisms", after Hearst (1992), "Automatic Acquisition of Hyponyms from Large
Text Corpora" ("X and other Y" patterns). "We found diamonds, rubies and other" -> " gems" (or " jewels",
" stones"). The corrupted prompt replaces the listed things with things of another category, of the same
number of tokens. Metric: summed probability of the category's words minus that of the corrupting
category's words.

The held-out split holds out combinations of (template, listed things), not words: every hyponym also
occurs in training examples, in other combinations.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from circuitkit_plugins.tasks._common import Lengths, attempts, check_split, in_split

from circuitkit.api import Example, Rejected, Task, TaskConfig, answer_id, hookimpl

# category -> (answer words, hyponyms). Answers that are not single tokens of the tokenizer are left out of
# the answer set; a category with none left is not used.
CATEGORIES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "gems": ((" gems", " jewels", " gemstones"), ("rubies", "emeralds", "diamonds", "sapphires", "pearls", "opals")),
    "fruits": (
        (" fruits", " fruit"),
        ("apples", "bananas", "oranges", "grapes", "pears", "cherries", "peaches", "plums", "lemons", "mangoes"),
    ),
    "vegetables": (
        (" vegetables", " veggies"),
        ("carrots", "potatoes", "onions", "peas", "beans", "lettuce", "spinach", "broccoli"),
    ),
    "animals": (
        (" animals", " mammals", " creatures"),
        ("dogs", "cats", "horses", "cows", "pigs", "sheep", "goats", "rabbits", "lions", "tigers", "wolves", "deer"),
    ),
    "birds": ((" birds",), ("eagles", "sparrows", "owls", "parrots", "ducks", "hawks", "crows", "pigeons", "geese", "swans")),
    "instruments": ((" instruments",), ("guitars", "pianos", "violins", "drums", "flutes", "trumpets", "cellos", "harps")),
    "vehicles": ((" vehicles",), ("cars", "trucks", "buses", "bicycles", "motorcycles", "vans", "tractors")),
    "tools": ((" tools",), ("hammers", "saws", "drills", "wrenches", "screwdrivers", "pliers", "chisels")),
    "metals": ((" metals",), ("iron", "copper", "zinc", "tin", "nickel", "aluminum")),
    "weapons": ((" weapons", " arms"), ("swords", "guns", "spears", "knives", "rifles", "daggers", "pistols")),
    "clothes": (
        (" clothes", " clothing", " garments"),
        ("shirts", "pants", "hats", "socks", "jackets", "dresses", "coats", "skirts"),
    ),
    "flowers": ((" flowers",), ("roses", "tulips", "lilies", "daisies", "orchids", "violets")),
    "insects": ((" insects", " bugs"), ("ants", "bees", "flies", "beetles", "wasps", "mosquitoes", "moths")),
    "sports": ((" sports",), ("football", "tennis", "soccer", "golf", "hockey", "baseball", "basketball", "rugby")),
    "drinks": ((" drinks", " beverages"), ("coffee", "tea", "juice", "milk", "soda", "beer", "wine", "whiskey")),
    "furniture": ((" furniture",), ("chairs", "tables", "sofas", "beds", "desks", "couches", "cabinets")),
    "spices": ((" spices",), ("pepper", "cinnamon", "ginger", "nutmeg", "paprika", "cumin")),
    "diseases": ((" diseases", " illnesses"), ("measles", "malaria", "cholera", "tuberculosis", "typhoid", "smallpox")),
    "reptiles": ((" reptiles",), ("snakes", "lizards", "turtles", "crocodiles", "alligators", "iguanas")),
    "grains": ((" grains",), ("rice", "wheat", "corn", "barley", "oats", "rye")),
}
# {0}, {1}... are the listed hyponyms (always after a space); the answer follows "and other".
TEMPLATES = [
    "I saw {0}, {1} and other",
    "We found {0}, {1} and other",
    "The shop sells {0}, {1} and other",
    "She talked about {0} and other",
    "There were {0}, {1}, {2} and other",
    "He likes {0} and other",
    "The book describes {0}, {1} and other",
    "They studied {0} and other",
]


@dataclass
class HypernymyConfig(TaskConfig):
    """Options of hypernymy (see TaskConfig)."""

    metric: str = "prob_diff"


def _slots(template: str) -> int:
    return sum(f"{{{i}}}" in template for i in range(10))


class Hypernymy(Task):
    config: HypernymyConfig

    def describe_data(self, tokenizer: Any) -> dict[str, Any]:
        """The answer words left out (not single tokens after "and other") and the categories not used (none
        of their answer words is)."""
        info: dict[str, Any] = {}
        out = [a for c, (ans, _) in CATEGORIES.items() for a in ans if answer_id(tokenizer, a, "and other") is None]
        if out:
            info["answers_left_out"] = out
            unused = [c for c, (ans, _) in CATEGORIES.items() if all(a in out for a in ans)]
            if unused:
                info["categories_not_used"] = unused
        return info

    def generate(self, tokenizer: Any, split: str) -> Iterator[Example | Rejected]:
        cfg = self.config
        check_split(cfg.name or "hypernymy", split)
        rng = random.Random(cfg.seed)
        lengths = Lengths(tokenizer)
        answers = {
            c: tuple(a for a in ans if answer_id(tokenizer, a, "and other") is not None) for c, (ans, _) in CATEGORIES.items()
        }
        categories = [c for c in CATEGORIES if answers[c]]
        if len(categories) < 2:  # nothing fits this tokenizer: yield anyway, the core reports why
            categories = list(CATEGORIES)
        for _ in range(attempts(cfg.n_examples)):
            t = rng.randrange(len(TEMPLATES))
            template = TEMPLATES[t]
            k = _slots(template)
            cat = rng.choice(categories)
            words = rng.sample(CATEGORIES[cat][1], k)
            if not in_split(split, t, tuple(words)):
                continue
            other = rng.choice([c for c in categories if c != cat])
            swapped: list[str] = []
            for w in words:
                pick = lengths.same_length(rng, w, CATEGORIES[other][1], exclude=swapped)
                if pick is None:
                    break
                swapped.append(pick)
            if len(swapped) != k:
                w = words[len(swapped)]
                yield Rejected(
                    "hyponym without one of the corrupting category of the same token length",
                    f"{w!r} ({lengths(w)} token(s)) in {other}",
                )
                continue
            yield Example(
                template.format(*words),
                template.format(*swapped),
                correct=answers[cat] or CATEGORIES[cat][0],
                incorrect=answers[other] or CATEGORIES[other][0],
                meta={"template": t, "category": cat, "hyponyms": words, "corrupted_category": other},
            )


@hookimpl
def circuitkit_register_tasks(registry) -> None:  # noqa: ANN001
    registry.add("hypernymy", Hypernymy, HypernymyConfig)
