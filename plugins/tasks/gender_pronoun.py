"""Gendered pronoun prediction.

Mathwin, Corlouer, Kran, Barez & Nanda (2023), "Identifying a Preliminary Circuit for Predicting Gendered
Pronouns in GPT-2 Small"; the profession variant follows Vig et al. (2020), "Investigating Gender Bias in
Language Models Using Causal Mediation Analysis", and the Gender-Bias task of Hanna, Pezzelle & Belinkov
(2024), "Have Faith in Faithfulness". "The nurse said that" -> " she". Subjects are first names, gendered
nouns ("the king") and professions with a strong gender stereotype ("the nurse", "the mechanic"); the
profession labels encode that stereotype, which is what the task measures, not a claim about the
professions. The corrupted prompt replaces the subject with one of the other gender, of the same kind and
the same number of tokens. Metric: logit difference between the subject's pronoun and the other one
(" she" vs " he").

The held-out split holds out combinations of (subject, template), not subjects: every subject also occurs
in training examples, with other templates.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from circuitkit_plugins.tasks._common import Lengths, attempts, check_split, in_split

from circuitkit.api import ConfigError, Example, Rejected, Task, TaskConfig, hookimpl

# kind -> (female subjects, male subjects). Nouns and professions are used with "the".
SUBJECTS: dict[str, tuple[list[str], list[str]]] = {
    "names": (
        [
            "Mary",
            "Anna",
            "Lisa",
            "Sarah",
            "Laura",
            "Emma",
            "Alice",
            "Kate",
            "Jane",
            "Rachel",
            "Emily",
            "Jessica",
            "Julia",
            "Grace",
            "Helen",
            "Susan",
            "Karen",
            "Linda",
            "Nancy",
            "Lucy",
            "Amy",
            "Rose",
            "Claire",
            "Anne",
            "Maria",
            "Hannah",
            "Megan",
            "Sophie",
            "Olivia",
            "Natalie",
            "Diana",
            "Ruth",
            "Julie",
            "Katie",
            "Jennifer",
            "Michelle",
            "Nicole",
            "Amanda",
            "Victoria",
            "Elizabeth",
        ],
        [
            "John",
            "James",
            "Tom",
            "Mike",
            "Paul",
            "David",
            "Michael",
            "Daniel",
            "Andrew",
            "Ryan",
            "Kevin",
            "Jason",
            "Brian",
            "Mark",
            "Steve",
            "Peter",
            "Chris",
            "George",
            "Henry",
            "Frank",
            "Jack",
            "Ben",
            "Sam",
            "Eric",
            "Adam",
            "Richard",
            "Robert",
            "William",
            "Thomas",
            "Joseph",
            "Charles",
            "Edward",
            "Patrick",
            "Arthur",
            "Greg",
            "Kyle",
            "Sean",
            "Nathan",
            "Aaron",
            "Justin",
        ],
    ),
    "nouns": (
        [
            "woman",
            "girl",
            "mother",
            "sister",
            "aunt",
            "queen",
            "wife",
            "daughter",
            "grandmother",
            "lady",
            "actress",
            "waitress",
            "princess",
            "bride",
            "nun",
            "niece",
            "mom",
            "girlfriend",
        ],
        [
            "man",
            "boy",
            "father",
            "brother",
            "uncle",
            "king",
            "husband",
            "son",
            "grandfather",
            "gentleman",
            "actor",
            "waiter",
            "prince",
            "groom",
            "monk",
            "nephew",
            "dad",
            "boyfriend",
        ],
    ),
    "professions": (
        ["nurse", "secretary", "receptionist", "housekeeper", "nanny", "hairdresser", "dancer", "maid", "babysitter", "stylist"],
        [
            "mechanic",
            "plumber",
            "carpenter",
            "electrician",
            "firefighter",
            "engineer",
            "pilot",
            "soldier",
            "farmer",
            "janitor",
            "builder",
            "surgeon",
            "sheriff",
            "banker",
        ],
    ),
}
PRONOUNS = (" she", " he")  # female, male
# {subj} is the subject phrase; templates starting with it capitalise it.
TEMPLATES = [
    "{subj} said that",
    "Yesterday, {subj} said that",
    "{subj} told the class that",
    "After the meeting, {subj} announced that",
    "When {subj} woke up,",
    "{subj} was tired, so",
    "{subj} went home early because",
    "{subj} called the office because",
    "At the party, {subj} whispered that",
    "{subj} smiled because",
]


@dataclass
class GenderPronounConfig(TaskConfig):
    """Options of gender_pronoun (see TaskConfig).

    Attributes:
        kinds: which subjects to use: ``names``, ``nouns`` (gendered nouns such as "the king") and/or
            ``professions`` (stereotyped professions such as "the nurse").
    """

    metric: str = "logit_diff"
    kinds: tuple[str, ...] = ("names", "nouns", "professions")

    def __post_init__(self) -> None:
        kinds = list(self.kinds)
        if not kinds or any(k not in SUBJECTS for k in kinds):
            raise ConfigError(f"task.kinds={kinds} for gender_pronoun: use any of {', '.join(SUBJECTS)}.")


def _phrase(kind: str, word: str, at_start: bool) -> str:
    if kind == "names":
        return word
    return ("The " if at_start else "the ") + word


class GenderPronoun(Task):
    config: GenderPronounConfig

    def describe_data(self, tokenizer: Any) -> dict[str, Any]:
        """The subjects that can never be used with this tokenizer: no subject of the other gender (same
        kind) has as many tokens, in the middle of a prompt."""
        lengths = Lengths(tokenizer)
        unused = [
            w
            for k in self.config.kinds
            if k in SUBJECTS
            for g in (0, 1)
            for w in SUBJECTS[k][g]
            if not any(lengths(o) == lengths(w) for o in SUBJECTS[k][1 - g])
        ]
        return {"subjects_never_used": unused} if unused else {}

    def generate(self, tokenizer: Any, split: str) -> Iterator[Example | Rejected]:
        cfg = self.config
        check_split(cfg.name or "gender_pronoun", split)
        kinds = list(cfg.kinds)
        rng = random.Random(cfg.seed)
        lengths = Lengths(tokenizer)
        for _ in range(attempts(cfg.n_examples)):
            kind = rng.choice(kinds)
            gender = rng.randrange(2)  # 0 female, 1 male
            word = rng.choice(SUBJECTS[kind][gender])
            t = rng.randrange(len(TEMPLATES))
            if not in_split(split, word, t):
                continue
            template = TEMPLATES[t]
            at_start = template.startswith("{subj}") and kind == "names"
            other = lengths.same_length(rng, word, SUBJECTS[kind][1 - gender], at_start=at_start)
            if other is None:
                yield Rejected(
                    "subject without an other-gender subject of the same token length",
                    f"{word!r} is {lengths(word, at_start)} token(s)",
                )
                continue
            starts = template.startswith("{subj}")
            yield Example(
                template.format(subj=_phrase(kind, word, starts)),
                template.format(subj=_phrase(kind, other, starts)),
                correct=(PRONOUNS[gender],),
                incorrect=(PRONOUNS[1 - gender],),
                meta={
                    "template": t,
                    "subject": word,
                    "corrupted_subject": other,
                    "kind": kind,
                    "gender": ("female", "male")[gender],
                },
            )


@hookimpl
def circuitkit_register_tasks(registry) -> None:  # noqa: ANN001
    registry.add("gender_pronoun", GenderPronoun, GenderPronounConfig)
