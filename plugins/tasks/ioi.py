"""Indirect object identification (IOI).

Wang, Variengien, Conmy, Shlegeris & Steinhardt (2023), "Interpretability in the Wild: a Circuit for
Indirect Object Identification in GPT-2 small" (ICLR 2023).
"When Mary and John went to the store, John gave a drink to" -> " Mary". The two names are introduced in
either order (ABBA: the indirect object first; BABA: the subject first), then the subject S is repeated.
The corrupted prompt is the ABC variant of Wang et al.: the repeated subject is replaced by a third name,
so nothing in the prompt says which of the first two names is the indirect object. Metric: logit
difference between the indirect object (IO) and the subject (S).

The held-out split holds out combinations of (name pair, template), not names: every name also occurs in
training examples, with other partners.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from circuitkit_plugins.tasks._common import attempts, check_split, in_split

from circuitkit.api import ConfigError, Example, Task, TaskConfig, hookimpl

NAMES = [
    "Mary",
    "John",
    "Tom",
    "James",
    "Dan",
    "Sid",
    "Mike",
    "Paul",
    "Rob",
    "Kate",
    "Anna",
    "Amy",
    "Lisa",
    "Sarah",
    "Laura",
    "Emma",
    "Alice",
    "Bob",
    "Jack",
    "Ben",
    "Sam",
    "Tim",
    "Joe",
    "Max",
    "Eric",
    "Adam",
    "Mark",
    "Steve",
    "Peter",
    "Chris",
    "David",
    "Michael",
    "Daniel",
    "Andrew",
    "Ryan",
    "Kevin",
    "Jason",
    "Brian",
    "Matt",
    "Luke",
    "Ian",
    "Carl",
    "Frank",
    "George",
    "Henry",
    "Jane",
    "Rachel",
    "Emily",
    "Jessica",
    "Julia",
    "Grace",
    "Rose",
    "Helen",
    "Claire",
    "Anne",
    "Susan",
    "Karen",
    "Linda",
    "Nancy",
    "Maria",
    "Lucy",
    "Alex",
    "Victoria",
    "Martin",
    "Simon",
    "Scott",
    "Tony",
    "Eva",
    "Jennifer",
    "Amanda",
    "Nicole",
    "Michelle",
    "Megan",
    "Hannah",
    "Kelly",
    "Jim",
    "Bill",
    "Fred",
    "Harry",
    "Oliver",
    "Charlie",
    "Edward",
    "Patrick",
    "Louis",
    "Arthur",
    "Jacob",
    "Joseph",
    "Thomas",
    "Richard",
    "Robert",
    "William",
    "Charles",
    "Jeff",
    "Greg",
    "Kyle",
    "Sean",
    "Nick",
    "Leo",
    "Ray",
    "Anthony",
    "Stephen",
    "Sara",
    "Diana",
    "Sophie",
    "Olivia",
    "Natalie",
    "Kim",
    "Ruth",
    "Alan",
    "Roger",
]
PLACES = [
    "store",
    "park",
    "school",
    "hospital",
    "station",
    "restaurant",
    "office",
    "beach",
    "market",
    "library",
    "garden",
    "house",
    "river",
    "lake",
    "museum",
    "airport",
    "church",
    "theater",
]
OBJECTS = [
    "drink",
    "book",
    "ring",
    "bone",
    "kiss",
    "basketball",
    "computer",
    "necklace",
    "snack",
    "letter",
    "bag",
    "gift",
    "key",
    "flower",
    "ball",
    "pen",
    "ticket",
    "hat",
]
# {A} and {B} are introduced, {S} is the repeated subject; the answer follows the last word.
TEMPLATES = [
    "When {A} and {B} went to the {place}, {S} gave a {object} to",
    "Then, {A} and {B} went to the {place}. {S} gave a {object} to",
    "When {A} and {B} got a {object} at the {place}, {S} decided to give it to",
    "After {A} and {B} went to the {place}, {S} gave a {object} to",
    "While {A} and {B} were working at the {place}, {S} gave a {object} to",
    "Then, {A} and {B} had a lot of fun at the {place}. {S} gave a {object} to",
    "Friends {A} and {B} found a {object} at the {place}. {S} gave it to",
    "When {A} and {B} arrived at the {place}, {S} handed a {object} to",
]
ORDERS = ("ABBA", "BABA")


@dataclass
class IOIConfig(TaskConfig):
    """Options of IOI (see TaskConfig).

    Attributes:
        templates: which template indices to use (empty: all eight).
        orders: which name orders to use: ``"ABBA"`` (IO first), ``"BABA"`` (S first), or both.
    """

    metric: str = "logit_diff"
    templates: tuple[int, ...] = ()
    orders: tuple[str, ...] = ORDERS

    def __post_init__(self) -> None:
        bad = [o for o in self.orders if o not in ORDERS]
        if bad or not self.orders:
            raise ConfigError(f"task.orders={list(self.orders)} for IOI: use ABBA and/or BABA.")
        if any(not 0 <= t < len(TEMPLATES) for t in self.templates):
            raise ConfigError(f"task.templates={list(self.templates)}: IOI has templates 0..{len(TEMPLATES) - 1}.")


class IOI(Task):
    config: IOIConfig

    def generate(self, tokenizer: Any, split: str) -> Iterator[Example]:
        cfg = self.config
        check_split(cfg.name or "ioi", split)
        template_ids = list(cfg.templates) or list(range(len(TEMPLATES)))
        rng = random.Random(cfg.seed)
        for _ in range(attempts(cfg.n_examples)):
            t = rng.choice(template_ids)
            io, s, c = rng.sample(NAMES, 3)
            order = rng.choice(cfg.orders)
            place, obj = rng.choice(PLACES), rng.choice(OBJECTS)
            if not in_split(split, tuple(sorted((io, s))), t):
                continue
            a, b = (io, s) if order == "ABBA" else (s, io)
            fill = {"A": a, "B": b, "place": place, "object": obj}
            yield Example(
                TEMPLATES[t].format(S=s, **fill),
                TEMPLATES[t].format(S=c, **fill),
                correct=(" " + io,),
                incorrect=(" " + s,),
                meta={"template": t, "order": order, "io": io, "s": s, "c": c},
            )


@hookimpl
def circuitkit_register_tasks(registry) -> None:  # noqa: ANN001
    registry.add("ioi", IOI, IOIConfig)
