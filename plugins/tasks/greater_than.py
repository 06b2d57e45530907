"""Greater-than: the year-span task.

Hanna, Liu & Variengien (2023), "How does GPT-2 compute greater-than?"; used by Hanna et al. (2024).
"The war lasted from the year 1732 to the year 17" -> a year greater than 32. The corrupted prompt starts
in the year ``XX01``, which leaves no information about the start year. Metric: probability of the
continuations that make the end year later than the start year minus probability of those that make it
the same or earlier.

What the answer token is depends on how the tokenizer splits a year (found once per tokenizer, from the
years 1100-1999 after "the year"; ``TaskData.info`` and ``results.json`` ``meta.task_info`` say which):

- ``two-digit`` (GPT-2: " 1732" -> " 17" + "32"): the prompt ends in the century; the answers are the
  two-digit tokens "00".."99", later = greater than the start year's.
- ``one-digit`` (Llama-2, Gemma, Qwen2, character-level: one token per digit): the prompt ends in the
  century; the answer is the decade digit "0".."9", later = a digit greater than the start year's decade,
  earlier = a smaller one; the start year's own decade (which could be either) counts for neither, and
  start years in a century's first or last decade (no earlier or later decade) are not used.
- ``three-digit`` (Llama-3: digits in groups of up to three from the left, " 1732" -> " " + "173" + "2"): the
  prompt ends before the year; the answer is the token of the century and decade ("170".."179"), later and
  earlier as for one digit.
- ``whole-year`` (word-level: " 1732" is one token): the prompt ends before the year; the answers are the
  years of the century, later = greater than the start year.

A start year (and its ``XX01`` variant) is used only when it splits like that too; the others are counted
as dropped. A tokenizer that splits years in none of these ways cannot express the task: the error shows
how it splits one. The held-out split holds out combinations of (template, noun, year), not words.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from circuitkit_plugins.tasks._common import check_split

from circuitkit.api import ConfigError, DataError, Example, Rejected, Task, TaskConfig, encode, hookimpl, show_tokens

NOUNS = [
    "war",
    "expedition",
    "contract",
    "deal",
    "project",
    "pilgrimage",
    "voyage",
    "campaign",
    "siege",
    "reign",
    "journey",
    "famine",
    "drought",
    "strike",
    "trial",
    "truce",
    "rebellion",
    "occupation",
    "construction",
    "plague",
    "alliance",
    "partnership",
    "tour",
    "dynasty",
]
TEMPLATES = [
    "The {noun} lasted from the year {start} to the year {century}",
    "The {noun} started in the year {start} and ended in the year {century}",
    "The {noun} began in {start} and it ended in {century}",
    "The {noun} ran from the year {start} until the year {century}",
]
CENTURIES = [11, 12, 13, 14, 15, 16, 17, 18, 19]
#: Where the probe puts a year: after a word and a space, as in every template.
PROBE = "the year"


@dataclass(frozen=True)
class Style:
    """One way of splitting a year into tokens, and what greater-than becomes with it.

    Attributes:
        name: ``two-digit``, ``one-digit``, ``three-digit`` or ``whole-year``.
        tail: what the prompt ends with after "the year": ``" {century}"``, ``" "`` or ``""``.
        answer: how the answer is written after the prompt, from the century and the two last digits.
        answer_doc, metric_doc: what the answer and the metric are (``results.json`` ``meta.task_info``).
    """

    name: str
    tail: str
    answer_doc: str
    metric_doc: str

    def tail_text(self, century: int) -> str:
        return self.tail.format(century=century)

    def answer(self, century: int, yy: int) -> str:
        """The text of the answer token for the year ``century * 100 + yy``."""
        if self.name == "two-digit":
            return f"{yy:02d}"
        if self.name == "one-digit":
            return str(yy // 10)
        if self.name == "three-digit":
            return f"{century}{yy // 10}"
        return f" {century}{yy:02d}"

    def answers(self, century: int, yy: int) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
        """(later, earlier) answers for the start year ``century * 100 + yy``; None when one set is empty."""
        if self.name in ("two-digit", "whole-year"):
            later = tuple(self.answer(century, y) for y in range(yy + 1, 100))
            earlier = tuple(self.answer(century, y) for y in range(0, yy + 1))
        else:
            decade = yy // 10
            later = tuple(self.answer(century, 10 * d) for d in range(decade + 1, 10))
            earlier = tuple(self.answer(century, 10 * d) for d in range(0, decade))
        return (later, earlier) if later and earlier else None


STYLES = (
    Style(
        "two-digit",
        " {century}",
        "the two-digit token after the century ('00'..'99')",
        "probability of the two-digit tokens greater than the start year's minus that of those less than or equal to it",
    ),
    Style(
        "one-digit",
        " {century}",
        "the decade digit after the century ('0'..'9')",
        "probability of the decade digits greater than the start year's decade minus that of the smaller ones "
        "(the start decade itself, which could be later or earlier, counts for neither)",
    ),
    Style(
        "three-digit",
        " ",
        "the three-digit token of the century and decade after 'the year ' (for 1732: '170'..'179')",
        "probability of the century-and-decade tokens of later decades than the start year's minus that of "
        "earlier decades (the start decade itself counts for neither)",
    ),
    Style(
        "whole-year",
        "",
        "the year token after 'the year' (' 1700'..' 1799')",
        "probability of the years of the century greater than the start year minus that of those less than or equal to it",
    ),
)


class YearSplit:
    """How one tokenizer splits the years 1100-1999 after "the year", memoised."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._memo: dict[tuple[str, int], bool] = {}
        self._ids: dict[str, list[int]] = {}

    def _encode(self, text: str) -> list[int]:
        ids = self._ids.get(text)
        if ids is None:
            ids = self._ids[text] = encode(self.tokenizer, text)
        return ids

    def fits(self, style: Style, century: int, yy: int) -> bool:
        """Whether the year splits as ``style`` says: the text up to the prompt's end is a token prefix, the
        answer is the one token after it, the year's remaining digits follow in their own tokens, and none of
        them is the unknown token."""
        key = (style.name, century * 100 + yy)
        hit = self._memo.get(key)
        if hit is None:
            head = self._encode(PROBE + style.tail_text(century))
            with_answer = self._encode(PROBE + style.tail_text(century) + style.answer(century, yy))
            year = self._encode(f"{PROBE} {century}{yy:02d}")
            unk = getattr(self.tokenizer, "unk_token_id", None)
            hit = (
                (unk is None or unk not in year)
                and len(with_answer) == len(head) + 1
                and with_answer[: len(head)] == head
                and year[: len(with_answer)] == with_answer
                and (style.name not in ("two-digit", "whole-year") or len(year) == len(with_answer))
            )
            self._memo[key] = hit
        return hit

    def style(self) -> tuple[Style | None, dict[str, int]]:
        """The style most of the years 1100-1999 split as (None if none does), and how many fit each."""
        counts = {s.name: sum(self.fits(s, c, yy) for c in CENTURIES for yy in range(100)) for s in STYLES}
        best = max(STYLES, key=lambda s: counts[s.name])  # ties: the first in STYLES
        return (best if counts[best.name] else None), counts


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

    def __post_init__(self) -> None:
        if any(not 0 <= t < len(TEMPLATES) for t in self.templates):
            raise ConfigError(f"task.templates={list(self.templates)}: greater_than has templates 0..{len(TEMPLATES) - 1}.")


class GreaterThan(Task):
    config: GreaterThanConfig

    def _style(self, tokenizer: Any) -> tuple[Style, YearSplit]:
        cached = getattr(self, "_style_cache", None)
        if cached is not None and cached[0] is tokenizer:
            return cached[1], cached[2]
        split = YearSplit(tokenizer)
        style, counts = split.style()
        if style is None:
            raise DataError(
                f"Task '{self.config.name or 'greater_than'}': this tokenizer cannot express greater-than: it splits "
                f"a year as {show_tokens(tokenizer, ' 1732')} (after 'the year': "
                f"{show_tokens(tokenizer, PROBE + ' 1732')}), so no token after a prompt says whether the end year "
                "is later. It needs years written as the century plus one two-digit token (GPT-2), one token per "
                "digit (Llama-2, Gemma, Qwen2), groups of up to three digits from the left (Llama-3) or one token "
                "per year, for most of the years 1100-1999; use a model with such a tokenizer, or write the pairs "
                "yourself with task=custom."
            )
        self._style_cache = (tokenizer, style, split)
        self._style_counts = counts
        return style, split

    def describe_data(self, tokenizer: Any) -> dict[str, Any]:
        style, _ = self._style(tokenizer)
        return {
            "year_split": style.name,
            "year_tokens": show_tokens(tokenizer, " 1732"),
            "answer": style.answer_doc,
            "metric": f"{self.config.metric}: {style.metric_doc}",
            "years_that_split_so": self._style_counts[style.name],
        }

    def generate(self, tokenizer: Any, split: str) -> Iterator[Example | Rejected]:
        check_split(self.config.name or "greater_than", split)
        rng = random.Random(self.config.seed)
        # Template ids index TEMPLATES itself, so a subset of templates keeps the split of the full set.
        template_ids = list(self.config.templates) or list(range(len(TEMPLATES)))
        style, years = self._style(tokenizer)
        for _ in range(self.config.n_examples * 50):
            t = rng.choice(template_ids)
            noun = rng.choice(NOUNS)
            century = rng.choice(CENTURIES)
            yy = rng.randint(2, 98)
            if is_test(t, noun, yy) != (split == "test"):
                continue
            if not (years.fits(style, century, yy) and years.fits(style, century, 1)):
                bad = yy if not years.fits(style, century, yy) else 1
                yield Rejected(
                    f"start year not split as {style.name} (like most years)",
                    show_tokens(tokenizer, f" {century}{bad:02d}"),
                )
                continue
            answers = style.answers(century, yy)
            if answers is None:
                yield Rejected(
                    f"start year in the first or last decade of its century: no earlier or later {style.name} answer",
                    f"{century}{yy:02d}",
                )
                continue
            template = TEMPLATES[t]
            tail = style.tail_text(century).lstrip(" ")
            clean = template.format(noun=noun, start=f"{century}{yy:02d}", century=tail)
            corrupted = template.format(noun=noun, start=f"{century}01", century=tail)
            if style.name == "whole-year":  # the prompt ends before the space the year token carries
                clean, corrupted = clean.rstrip(" "), corrupted.rstrip(" ")
            yield Example(
                clean,
                corrupted,
                correct=answers[0],
                incorrect=answers[1],
                meta={"year": century * 100 + yy, "template": t},
            )


@hookimpl
def circuitkit_register_tasks(registry) -> None:  # noqa: ANN001
    registry.add("greater_than", GreaterThan, GreaterThanConfig)
