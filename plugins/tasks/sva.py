"""Subject-verb agreement (SVA).

Linzen, Dupoux & Goldberg (2016), "Assessing the Ability of LSTMs to Learn Syntax-Sensitive Dependencies";
Finlayson et al. (2021), "Causal Analysis of Syntactic Agreement Mechanisms in Neural Language Models";
the SVA task of Hanna, Pezzelle & Belinkov (2024), "Have Faith in Faithfulness".
"The key to the cabinets" -> " is". The subject is singular or plural and is optionally followed by a
prepositional phrase whose noun (the attractor) may have the other number. The corrupted prompt flips the
subject's number ("The keys to the cabinets"), keeping the token count. Metric: summed probability of the
agreeing verbs (" is", " was", " has" for a singular subject) minus that of the non-agreeing ones
(" are", " were", " have").

The held-out split holds out combinations of (subject noun, attractor noun, template), not nouns: every
noun also occurs in training examples, in other combinations.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from circuitkit_plugins.tasks._common import Lengths, attempts, check_split, in_split

from circuitkit.api import Example, Rejected, Task, TaskConfig, hookimpl

# (singular, plural) subjects.
SUBJECTS = [
    ("key", "keys"),
    ("author", "authors"),
    ("dog", "dogs"),
    ("teacher", "teachers"),
    ("doctor", "doctors"),
    ("boy", "boys"),
    ("girl", "girls"),
    ("friend", "friends"),
    ("student", "students"),
    ("car", "cars"),
    ("book", "books"),
    ("box", "boxes"),
    ("picture", "pictures"),
    ("farmer", "farmers"),
    ("senator", "senators"),
    ("pilot", "pilots"),
    ("manager", "managers"),
    ("officer", "officers"),
    ("painting", "paintings"),
    ("letter", "letters"),
    ("bottle", "bottles"),
    ("lamp", "lamps"),
    ("song", "songs"),
    ("child", "children"),
    ("man", "men"),
    ("woman", "women"),
    ("player", "players"),
    ("worker", "workers"),
    ("singer", "singers"),
    ("window", "windows"),
    ("horse", "horses"),
    ("bird", "birds"),
    ("computer", "computers"),
    ("lawyer", "lawyers"),
    ("customer", "customers"),
    ("report", "reports"),
    ("table", "tables"),
    ("phone", "phones"),
]
# (singular, plural) attractors.
ATTRACTORS = [
    ("cabinet", "cabinets"),
    ("door", "doors"),
    ("tree", "trees"),
    ("house", "houses"),
    ("building", "buildings"),
    ("wall", "walls"),
    ("river", "rivers"),
    ("bridge", "bridges"),
    ("garden", "gardens"),
    ("office", "offices"),
    ("road", "roads"),
    ("school", "schools"),
    ("chair", "chairs"),
    ("desk", "desks"),
    ("shelf", "shelves"),
    ("farm", "farms"),
    ("city", "cities"),
    ("tower", "towers"),
    ("lake", "lakes"),
    ("church", "churches"),
]
# {subj} is the subject noun, {attr} the attractor noun (templates without it have no attractor).
TEMPLATES = [
    "The {subj}",
    "The old {subj}",
    "The {subj} to the {attr}",
    "The {subj} near the {attr}",
    "The {subj} behind the {attr}",
    "The {subj} next to the {attr}",
    "The {subj} by the {attr}",
    "The {subj} from the {attr}",
    "The {subj} in front of the {attr}",
    "The {subj} across from the {attr}",
]
VERBS = ((" is", " was", " has"), (" are", " were", " have"))  # singular, plural


@dataclass
class SVAConfig(TaskConfig):
    """Options of sva (see TaskConfig).

    Attributes:
        attractors: use templates with an attractor phrase ("The key to the cabinets"); False keeps only
            bare subjects ("The key", "The old key").
    """

    metric: str = "prob_diff"
    attractors: bool = True


class SVA(Task):
    config: SVAConfig

    def describe_data(self, tokenizer: Any) -> dict[str, Any]:
        """The subjects never used with this tokenizer: singular and plural of different token lengths."""
        lengths = Lengths(tokenizer)
        unused = [f"{s}/{p}" for s, p in SUBJECTS if lengths(s) != lengths(p)]
        return {"subjects_never_used": unused} if unused else {}

    def generate(self, tokenizer: Any, split: str) -> Iterator[Example | Rejected]:
        cfg = self.config
        check_split(cfg.name or "sva", split)
        rng = random.Random(cfg.seed)
        lengths = Lengths(tokenizer)
        template_ids = [t for t, tpl in enumerate(TEMPLATES) if cfg.attractors or "{attr}" not in tpl]
        for _ in range(attempts(cfg.n_examples)):
            t = rng.choice(template_ids)
            subj = rng.choice(SUBJECTS)
            has_attr = "{attr}" in TEMPLATES[t]
            attr = rng.choice(ATTRACTORS) if has_attr else ("", "")
            number = rng.randrange(2)  # 0 singular, 1 plural
            attr_number = rng.randrange(2)
            if not in_split(split, subj[0], attr[0], t):
                continue
            if lengths(subj[0]) != lengths(subj[1]):
                yield Rejected(
                    "singular and plural subject of different token lengths",
                    f"{subj[0]!r} is {lengths(subj[0])} token(s), {subj[1]!r} {lengths(subj[1])}",
                )
                continue
            template = TEMPLATES[t]
            yield Example(
                template.format(subj=subj[number], attr=attr[attr_number]),
                template.format(subj=subj[1 - number], attr=attr[attr_number]),
                correct=VERBS[number],
                incorrect=VERBS[1 - number],
                meta={
                    "template": t,
                    "subject": subj[number],
                    "attractor": attr[attr_number],
                    "number": ("singular", "plural")[number],
                },
            )


@hookimpl
def circuitkit_register_tasks(registry) -> None:  # noqa: ANN001
    registry.add("sva", SVA, SVAConfig)
