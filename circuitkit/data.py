"""Task examples, their tokenization and batching.

A task produces :class:`Example` objects (strings). :func:`tokenize_examples` turns them into a
:class:`TaskData` for one tokenizer, checking that the clean and corrupted prompts have the same number of
tokens and that every answer is a single token. Batches are right-padded, so no attention mask is needed
with causal attention: the padding comes after the position the metric reads.

Every candidate that is not kept is counted by reason (:attr:`TaskData.drop_counts`): those the core rejects
(different lengths, answers that are not single tokens, unknown tokens, identical pairs) and those a
generator rejects itself by yielding a :class:`Rejected` instead of an :class:`Example`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from circuitkit.errors import DataError, quote


@dataclass(frozen=True)
class Example:
    """One clean/corrupted prompt pair.

    Attributes:
        clean: the prompt on which the model shows the behaviour.
        corrupted: the same prompt with the information the behaviour needs replaced; it must tokenize
            to the same number of tokens as ``clean``.
        correct: answer strings (each one token, usually with a leading space) that the metric rewards.
        incorrect: answer strings that the metric penalises (may be empty).
        meta: free-form information (template id, start year...), kept in result files.
    """

    clean: str
    corrupted: str
    correct: tuple[str, ...]
    incorrect: tuple[str, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class Rejected:
    """A candidate a task generator rejected itself, yielded in place of an :class:`Example` so that it is
    counted (:attr:`TaskData.drop_counts`) and named in messages.

    Attributes:
        reason: what was wrong, the same text for every candidate rejected for that reason (it is the key
            the candidates are counted under), e.g. ``"subject has no other-gender word of the same token length"``.
        detail: this candidate's specifics, shown as an example of the reason (e.g. ``"' hairdresser' is 3 tokens"``).
    """

    reason: str
    detail: str = ""


@dataclass
class Batch:
    """A right-padded batch of tokenized examples.

    Attributes:
        clean: ``[batch, pos]`` token ids.
        corrupted: ``[batch, pos]`` token ids.
        last: ``[batch]`` index of the last real token (where the answer is predicted).
        correct: ``[batch, k]`` answer ids, padded; ``correct_mask`` says which are real.
        incorrect: ``[batch, j]`` answer ids, padded (``j`` may be 0); ``incorrect_mask`` likewise.
        index: ``[batch]`` position of each example in its :class:`TaskData`.
    """

    clean: torch.Tensor
    corrupted: torch.Tensor
    last: torch.Tensor
    correct: torch.Tensor
    correct_mask: torch.Tensor
    incorrect: torch.Tensor
    incorrect_mask: torch.Tensor
    index: torch.Tensor

    def __len__(self) -> int:
        return int(self.clean.shape[0])

    def to(self, device: torch.device | str) -> Batch:
        return Batch(**{k: v.to(device) for k, v in self.__dict__.items()})

    def repeat(self, copies: int) -> Batch:
        """The batch stacked ``copies`` times along the batch dimension (copy-major)."""
        return Batch(**{k: v.repeat(copies, *([1] * (v.dim() - 1))) for k, v in self.__dict__.items()})


@dataclass
class TaskData:
    """Tokenized examples of one task for one tokenizer.

    Attributes:
        task: the task's registered name.
        examples: the kept examples.
        clean_ids, corrupted_ids: token ids per example (same length within a pair).
        correct_ids, incorrect_ids: answer token ids per example.
        dropped: ``(example, reason)`` for every example that the core filtered out.
        drop_counts: how many candidates were not kept, by reason: those in ``dropped`` and those the
            generator rejected itself (:class:`Rejected`).
        drop_details: one example of each reason in ``drop_counts`` (the first candidate's specifics).
        info: what the data means for this tokenizer, when the task says (greater_than: how the tokenizer
            splits a year, what the answer tokens are and what the metric measures); written to
            ``results.json`` as ``meta.task_info``.
    """

    task: str
    examples: list[Example]
    clean_ids: list[list[int]]
    corrupted_ids: list[list[int]]
    correct_ids: list[list[int]]
    incorrect_ids: list[list[int]]
    dropped: list[tuple[Example, str]] = field(default_factory=list)
    drop_counts: dict[str, int] = field(default_factory=dict)
    drop_details: dict[str, str] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def n_dropped(self) -> int:
        """How many candidates were not kept, for every reason."""
        return sum(self.drop_counts.values())

    def count_drop(self, reason: str, detail: str = "") -> None:
        """Count one candidate that was not kept because of ``reason`` (``detail``: its specifics)."""
        self.drop_counts[reason] = self.drop_counts.get(reason, 0) + 1
        if detail and reason not in self.drop_details:
            self.drop_details[reason] = detail

    def drop_summary(self, limit: int = 4) -> str:
        """The reasons candidates were dropped, most frequent first, with counts and one example each
        (``"12 x answers that are not single tokens of this tokenizer (e.g. ...)"``); "" when none were."""
        ranked = sorted(self.drop_counts.items(), key=lambda kv: (-kv[1], kv[0]))
        parts = []
        for reason, n in ranked[:limit]:
            detail = self.drop_details.get(reason)
            parts.append(f"{reason} ({n}{', e.g. ' + detail if detail else ''})")
        if len(ranked) > limit:
            parts.append(f"{len(ranked) - limit} more reason(s) ({sum(n for _, n in ranked[limit:])})")
        return "; ".join(parts)

    def subset(self, indices: Sequence[int]) -> TaskData:
        """A new TaskData holding only the examples at ``indices``."""
        pick = list(indices)
        return TaskData(
            task=self.task,
            examples=[self.examples[i] for i in pick],
            clean_ids=[self.clean_ids[i] for i in pick],
            corrupted_ids=[self.corrupted_ids[i] for i in pick],
            correct_ids=[self.correct_ids[i] for i in pick],
            incorrect_ids=[self.incorrect_ids[i] for i in pick],
            info=dict(self.info),
        )

    def batches(self, batch_size: int, pad_id: int = 0) -> Iterator[Batch]:
        """Yield right-padded batches of at most ``batch_size`` examples, in order."""
        if batch_size < 1:
            raise DataError(f"batch_size must be at least 1, got {batch_size}; set batch_size=16 or similar.")
        for start in range(0, len(self), batch_size):
            idx = list(range(start, min(start + batch_size, len(self))))
            yield self._collate(idx, pad_id)

    def _collate(self, idx: list[int], pad_id: int) -> Batch:
        width = max(len(self.clean_ids[i]) for i in idx)

        def pad(rows: list[list[int]], size: int, value: int) -> torch.Tensor:
            out = torch.full((len(rows), size), value, dtype=torch.long)
            for r, row in enumerate(rows):
                out[r, : len(row)] = torch.tensor(row, dtype=torch.long)
            return out

        def pad_mask(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
            size = max((len(r) for r in rows), default=0)
            ids = pad(rows, size, 0)
            mask = torch.zeros((len(rows), size), dtype=torch.bool)
            for r, row in enumerate(rows):
                mask[r, : len(row)] = True
            return ids, mask

        correct, correct_mask = pad_mask([self.correct_ids[i] for i in idx])
        incorrect, incorrect_mask = pad_mask([self.incorrect_ids[i] for i in idx])
        return Batch(
            clean=pad([self.clean_ids[i] for i in idx], width, pad_id),
            corrupted=pad([self.corrupted_ids[i] for i in idx], width, pad_id),
            last=torch.tensor([len(self.clean_ids[i]) - 1 for i in idx], dtype=torch.long),
            correct=correct,
            correct_mask=correct_mask,
            incorrect=incorrect,
            incorrect_mask=incorrect_mask,
            index=torch.tensor(idx, dtype=torch.long),
        )

    def content_hash(self) -> str:
        """A hash of the token ids and answers: equal data gives an equal hash."""
        payload = json.dumps(
            [self.task, self.clean_ids, self.corrupted_ids, self.correct_ids, self.incorrect_ids],
            separators=(",", ":"),
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _describe(i: int, ex: Example) -> str:
    where = ex.meta.get("source") or f"example {i}"
    return f"{where} (clean={quote(ex.clean)}, corrupted={quote(ex.corrupted)})"


#: How many bad examples one error message lists (the count of all of them is given too).
MAX_REPORTED = 10


def encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` without special tokens."""
    return list(tokenizer.encode(text, add_special_tokens=False))


def tokens_after(tokenizer: Any, context: str, text: str) -> list[int] | None:
    """The token ids ``text`` adds when it follows ``context``: the ids of ``context + text`` after those of
    ``context``, or None when the ids of ``context`` are not a prefix of them (a token spans the join)."""
    head, full = encode(tokenizer, context), encode(tokenizer, context + text)
    return full[len(head) :] if full[: len(head)] == head else None


def answer_id(tokenizer: Any, answer: str, context: str | None = None) -> int | None:
    """The single token id of ``answer``, or None if it is not exactly one token or is unknown.

    ``answer`` is tokenized on its own first. When that is not one token and a ``context`` (the prompt the
    answer follows) is given, the token the answer adds after the context counts: tokenizers of the older
    SentencePiece layout, which put a word-boundary marker before every text, encode ``" she"`` on its own
    as ``["▁", "▁she"]`` but ``"... said that she"`` ends in the one token ``"▁she"``.
    """
    ids = encode(tokenizer, answer)
    if len(ids) != 1 and context:
        ids = tokens_after(tokenizer, context, answer) or []
    if len(ids) != 1:
        return None
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is not None and ids[0] == unk and answer != getattr(tokenizer, "unk_token", None):
        return None
    return ids[0]


def show_tokens(tokenizer: Any, text: str) -> str:
    """``text`` and its tokens as the tokenizer writes them, for messages: ``' she' -> ['▁', '▁she']``."""
    ids = encode(tokenizer, text)
    try:
        pieces = tokenizer.convert_ids_to_tokens(ids)
    except (AttributeError, TypeError, ValueError):
        pieces = [tokenizer.decode([i]) for i in ids]
    pieces = list(pieces)
    more = f" + {len(pieces) - 12} more" if len(pieces) > 12 else ""
    return f"{quote(text, 60)} -> {pieces[:12]}{more}"


#: Reasons the core drops a generated example (the keys of ``TaskData.drop_counts``).
EMPTY_PROMPT = "an empty prompt"
DIFFERENT_LENGTHS = "clean and corrupted prompts tokenize to different lengths"
NO_CORRECT = "no correct answer"
NOT_SINGLE_TOKENS = "answers that are not single tokens of this tokenizer"
UNKNOWN_TOKEN = "a prompt with the tokenizer's unknown token"
IDENTICAL_PAIR = "clean and corrupted prompts with the same token ids"


def tokenize_examples(
    task: str,
    examples: Iterable[Example | Rejected],
    tokenizer: Any,
    *,
    prepend_bos: bool = True,
    on_invalid: Literal["error", "drop"] = "error",
    limit: int | None = None,
) -> TaskData:
    """Tokenize examples, checking every one.

    Args:
        task: the task name (for messages and hashes).
        examples: the examples, in order; a :class:`Rejected` among them is counted in
            ``TaskData.drop_counts``.
        tokenizer: a Hugging Face tokenizer.
        prepend_bos: put the tokenizer's BOS token (GPT-2: ``<|endoftext|>``) before every prompt.
        on_invalid: ``"error"`` raises one :class:`DataError` naming every bad example (up to
            :data:`MAX_REPORTED` of them, with the count of all); ``"drop"`` keeps
            going and records the example and the reason in ``TaskData.dropped`` (and counts it in
            ``TaskData.drop_counts``). Bad means: an empty prompt, clean and corrupted prompts of different
            token lengths or with the same token ids, a prompt containing the tokenizer's unknown token, no
            correct answer, or an answer that is not a single token (on its own, or after the clean prompt).
        limit: stop once this many valid examples are kept.

    Returns:
        The tokenized :class:`TaskData`.
    """
    bos = getattr(tokenizer, "bos_token_id", None) if prepend_bos else None
    prefix = [bos] if bos is not None else []
    unk = getattr(tokenizer, "unk_token_id", None)
    unk_text = getattr(tokenizer, "unk_token", None) or "\0"
    data = TaskData(task, [], [], [], [], [])
    errors: list[str] = []
    n_bad = 0
    i = -1
    for item in examples:
        if limit is not None and len(data) >= limit:
            break
        if isinstance(item, Rejected):
            if on_invalid == "error":  # a user's file: a row its reader rejected is an error like any other
                n_bad += 1
                if len(errors) < MAX_REPORTED:
                    errors.append(item.detail or item.reason)
                continue
            data.count_drop(item.reason, item.detail)
            continue
        i += 1
        ex = item
        key: str | None = None
        detail = ""
        clean_text, corrupted_text = encode(tokenizer, ex.clean), encode(tokenizer, ex.corrupted)
        clean, corrupted = prefix + clean_text, prefix + corrupted_text
        correct = [answer_id(tokenizer, a, ex.clean) for a in ex.correct]
        incorrect = [answer_id(tokenizer, a, ex.clean) for a in ex.incorrect]
        if not ex.clean or not ex.corrupted:
            key, detail = EMPTY_PROMPT, ""
        elif len(clean) != len(corrupted):
            key = DIFFERENT_LENGTHS
            detail = f"({len(clean)} vs {len(corrupted)} tokens); write pairs whose differing words are single tokens"
        elif not ex.correct:
            key, detail = NO_CORRECT, ""
        elif None in correct or None in incorrect:
            bad = [a for a, t in zip(ex.correct + ex.incorrect, correct + incorrect) if t is None]
            key = NOT_SINGLE_TOKENS
            detail = (
                f"{show_tokens(tokenizer, bad[0])}; use answers that tokenize to one token (GPT-2 style "
                "tokenizers usually need a leading space, e.g. ' Mary')"
            )
        elif unk is not None and any(
            unk in ids and unk_text not in text for ids, text in ((clean_text, ex.clean), (corrupted_text, ex.corrupted))
        ):
            text = ex.clean if unk in clean_text else ex.corrupted
            key = UNKNOWN_TOKEN
            detail = f"{show_tokens(tokenizer, text)}: this tokenizer cannot spell the prompt; use words it has"
        elif clean == corrupted:
            key = IDENTICAL_PAIR
            detail = "the tokenizer does not tell the two prompts apart, so the pair is no counterfactual"
        if key is not None:
            if on_invalid == "error":  # a user's file: every bad row is reported, worded per row
                n_bad += 1
                if len(errors) < MAX_REPORTED:
                    errors.append(f"{_describe(i, ex)} has {_error_reason(key, detail, bad if key == NOT_SINGLE_TOKENS else [])}")
                continue
            if key == NOT_SINGLE_TOKENS:
                reason = f"answer(s) {bad} are not single tokens of this tokenizer; {detail}"
            else:
                reason = f"{key} {detail}".rstrip() if detail.startswith("(") else f"{key}{': ' + detail if detail else ''}"
            data.dropped.append((ex, reason))
            data.count_drop(key, f"{_short(ex)}: {detail}" if detail else _short(ex))
            continue
        data.examples.append(ex)
        data.clean_ids.append(clean)
        data.corrupted_ids.append(corrupted)
        data.correct_ids.append([t for t in correct if t is not None])
        data.incorrect_ids.append([t for t in incorrect if t is not None])
    if errors:
        raise DataError(bad_rows_message(f"Task '{task}'", n_bad, errors))
    return data


def _error_reason(key: str, detail: str, bad: list[str]) -> str:
    """A bad example's reason as it follows "<example> has ..."."""
    if key == DIFFERENT_LENGTHS:
        return f"clean and corrupted prompts that tokenize to different lengths {detail}"
    if key == NOT_SINGLE_TOKENS:
        return f"answers that are not single tokens of this tokenizer ({', '.join(quote(a, 40) for a in bad)}): {detail}"
    if key == IDENTICAL_PAIR:
        return f"clean and corrupted prompts with the same token ids: {detail}"
    return f"{key}{': ' + detail if detail else ''}"


def bad_rows_message(what: str, n_bad: int, errors: list[str]) -> str:
    """One message for every bad row: ``what`` (the task or file), then each row's problem (the first
    :data:`MAX_REPORTED`), so all of them can be fixed at once."""
    if n_bad == 1:
        return f"{what}: {errors[0]}."
    shown = f" (the first {len(errors)} shown)" if n_bad > len(errors) else ""
    return f"{what}: {n_bad} examples are unusable{shown}: " + "; ".join(f"[{k + 1}] {e}" for k, e in enumerate(errors)) + "."


def _short(ex: Example) -> str:
    where = ex.meta.get("source")
    return (f"{where} " if where else "") + f"clean={quote(ex.clean)}"
