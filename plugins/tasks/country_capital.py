"""Country of a capital city.

The Capital-Country task of Hanna, Pezzelle & Belinkov (2024), "Have Faith in Faithfulness: Going Beyond
Circuit Overlap When Finding Model Mechanisms"; factual recall as in Meng et al. (2022), "Locating and
Editing Factual Associations in GPT". "Kabul, the capital of" -> " Afghanistan". The corrupted prompt
names another capital with the same number of tokens. Metric: probability of the clean capital's
country minus that of the corrupted capital's country.

The held-out split holds out combinations of (country, template), not countries: every capital also
occurs in training examples, with other templates.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from circuitkit_plugins.tasks._common import Lengths, attempts, check_split, in_split

from circuitkit.api import Example, Rejected, Task, TaskConfig, hookimpl

# (country, capital). Capitals named like their country (Mexico City, Kuwait...) are left out: the prompt
# would contain the answer.
CAPITALS = [
    ("Afghanistan", "Kabul"),
    ("France", "Paris"),
    ("Germany", "Berlin"),
    ("Japan", "Tokyo"),
    ("China", "Beijing"),
    ("India", "New Delhi"),
    ("Russia", "Moscow"),
    ("Italy", "Rome"),
    ("Spain", "Madrid"),
    ("Egypt", "Cairo"),
    ("Iran", "Tehran"),
    ("Iraq", "Baghdad"),
    ("Canada", "Ottawa"),
    ("Brazil", "Brasilia"),
    ("Australia", "Canberra"),
    ("Greece", "Athens"),
    ("Turkey", "Ankara"),
    ("Poland", "Warsaw"),
    ("Sweden", "Stockholm"),
    ("Norway", "Oslo"),
    ("Ireland", "Dublin"),
    ("Pakistan", "Islamabad"),
    ("Syria", "Damascus"),
    ("Ukraine", "Kyiv"),
    ("Kenya", "Nairobi"),
    ("Nigeria", "Abuja"),
    ("Cuba", "Havana"),
    ("Peru", "Lima"),
    ("Chile", "Santiago"),
    ("Argentina", "Buenos Aires"),
    ("Vietnam", "Hanoi"),
    ("Thailand", "Bangkok"),
    ("Portugal", "Lisbon"),
    ("Austria", "Vienna"),
    ("Denmark", "Copenhagen"),
    ("Finland", "Helsinki"),
    ("Hungary", "Budapest"),
    ("Belgium", "Brussels"),
    ("Switzerland", "Bern"),
    ("Netherlands", "Amsterdam"),
    ("Indonesia", "Jakarta"),
    ("Philippines", "Manila"),
    ("Malaysia", "Kuala Lumpur"),
    ("Venezuela", "Caracas"),
    ("Colombia", "Bogota"),
    ("Ethiopia", "Addis Ababa"),
    ("Lebanon", "Beirut"),
    ("Jordan", "Amman"),
    ("Qatar", "Doha"),
    ("Iceland", "Reykjavik"),
    ("Libya", "Tripoli"),
    ("Sudan", "Khartoum"),
    ("Somalia", "Mogadishu"),
    ("Nepal", "Kathmandu"),
    ("Romania", "Bucharest"),
    ("Bulgaria", "Sofia"),
    ("Serbia", "Belgrade"),
    ("Croatia", "Zagreb"),
    ("Scotland", "Edinburgh"),
    ("England", "London"),
    ("Wales", "Cardiff"),
    ("Armenia", "Yerevan"),
    ("Azerbaijan", "Baku"),
    ("Kazakhstan", "Astana"),
    ("Bangladesh", "Dhaka"),
    ("Cambodia", "Phnom Penh"),
    ("Taiwan", "Taipei"),
    ("Morocco", "Rabat"),
    ("Algeria", "Algiers"),
    ("Tunisia", "Tunis"),
    ("Ghana", "Accra"),
    ("Senegal", "Dakar"),
    ("Uganda", "Kampala"),
    ("Zimbabwe", "Harare"),
    ("Angola", "Luanda"),
    ("Ecuador", "Quito"),
    ("Uruguay", "Montevideo"),
    ("Jamaica", "Kingston"),
    ("Estonia", "Tallinn"),
    ("Latvia", "Riga"),
    ("Lithuania", "Vilnius"),
    ("Belarus", "Minsk"),
    ("Albania", "Tirana"),
    ("Cyprus", "Nicosia"),
    ("Malta", "Valletta"),
    ("Oman", "Muscat"),
    ("Bahrain", "Manama"),
    ("Rwanda", "Kigali"),
    ("Mali", "Bamako"),
    ("Niger", "Niamey"),
]
# {capital} is always preceded by a space or starts the prompt.
TEMPLATES = [
    "{capital}, the capital of",
    "{capital} is the capital of",
    "The city of {capital} is the capital of",
    "I flew to {capital}, the capital of",
    "She lives in {capital}, the capital city of",
    "The museum in {capital}, the capital of",
    "Our trip ended in {capital}, which is the capital of",
    "The mayor of {capital}, the capital of",
]


@dataclass
class CountryCapitalConfig(TaskConfig):
    """Options of country_capital (see TaskConfig)."""

    metric: str = "prob_diff"


class CountryCapital(Task):
    config: CountryCapitalConfig

    def generate(self, tokenizer: Any, split: str) -> Iterator[Example | Rejected]:
        cfg = self.config
        check_split(cfg.name or "country_capital", split)
        rng = random.Random(cfg.seed)
        lengths = Lengths(tokenizer)
        country_of = {capital: country for country, capital in CAPITALS}
        capitals = [capital for _, capital in CAPITALS]
        for _ in range(attempts(cfg.n_examples)):
            country, capital = rng.choice(CAPITALS)
            t = rng.randrange(len(TEMPLATES))
            if not in_split(split, country, t):
                continue
            template = TEMPLATES[t]
            at_start = template.startswith("{capital}")
            other = lengths.same_length(rng, capital, capitals, at_start=at_start)
            if other is None:
                yield Rejected(
                    "capital without another capital of the same token length",
                    f"{capital!r} is {lengths(capital, at_start)} token(s)",
                )
                continue
            yield Example(
                template.format(capital=capital),
                template.format(capital=other),
                correct=(" " + country,),
                incorrect=(" " + country_of[other],),
                meta={"template": t, "capital": capital, "corrupted_capital": other},
            )


@hookimpl
def circuitkit_register_tasks(registry) -> None:  # noqa: ANN001
    registry.add("country_capital", CountryCapital, CountryCapitalConfig)
