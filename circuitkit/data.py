"""Task examples, their tokenization and batching.

A task produces :class:`Example` objects (strings). :func:`tokenize_examples` turns them into a
:class:`TaskData` for one tokenizer, checking that the clean and corrupted prompts have the same number of
tokens and that every answer is a single token. Batches are right-padded, so no attention mask is needed
with causal attention: the padding comes after the position the metric reads.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from circuitkit.errors import DataError


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
        dropped: ``(example, reason)`` for every example that was filtered out.
    """

    task: str
    examples: list[Example]
    clean_ids: list[list[int]]
    corrupted_ids: list[list[int]]
    correct_ids: list[list[int]]
    incorrect_ids: list[list[int]]
    dropped: list[tuple[Example, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.examples)

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
    return f"{where} (clean={ex.clean!r}, corrupted={ex.corrupted!r})"


def encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` without special tokens."""
    return list(tokenizer.encode(text, add_special_tokens=False))


def answer_id(tokenizer: Any, answer: str) -> int | None:
    """The single token id of ``answer``, or None if it is not exactly one token or is unknown."""
    ids = encode(tokenizer, answer)
    if len(ids) != 1:
        return None
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is not None and ids[0] == unk and answer != getattr(tokenizer, "unk_token", None):
        return None
    return ids[0]


def tokenize_examples(
    task: str,
    examples: Iterable[Example],
    tokenizer: Any,
    *,
    prepend_bos: bool = True,
    on_invalid: Literal["error", "drop"] = "error",
    limit: int | None = None,
) -> TaskData:
    """Tokenize examples, checking every one.

    Args:
        task: the task name (for messages and hashes).
        examples: the examples, in order.
        tokenizer: a Hugging Face tokenizer.
        prepend_bos: put the tokenizer's BOS token (GPT-2: ``<|endoftext|>``) before every prompt.
        on_invalid: ``"error"`` raises a :class:`DataError` naming the first bad example; ``"drop"`` keeps
            going and records the example and the reason in ``TaskData.dropped``.
        limit: stop once this many valid examples are kept.

    Returns:
        The tokenized :class:`TaskData`.
    """
    bos = getattr(tokenizer, "bos_token_id", None) if prepend_bos else None
    prefix = [bos] if bos is not None else []
    data = TaskData(task, [], [], [], [], [])
    for i, ex in enumerate(examples):
        if limit is not None and len(data) >= limit:
            break
        reason = None
        clean = prefix + encode(tokenizer, ex.clean)
        corrupted = prefix + encode(tokenizer, ex.corrupted)
        correct = [answer_id(tokenizer, a) for a in ex.correct]
        incorrect = [answer_id(tokenizer, a) for a in ex.incorrect]
        if not ex.clean or not ex.corrupted:
            reason = "an empty prompt"
        elif len(clean) != len(corrupted):
            reason = (
                f"clean and corrupted prompts tokenize to different lengths ({len(clean)} vs "
                f"{len(corrupted)} tokens); write pairs whose differing words are single tokens"
            )
        elif not ex.correct:
            reason = "no correct answer"
        elif None in correct or None in incorrect:
            bad = [a for a, t in zip(ex.correct + ex.incorrect, correct + incorrect) if t is None]
            reason = (
                f"answer(s) {bad} are not single tokens of this tokenizer; use answers that tokenize to one "
                "token (GPT-2 style tokenizers usually need a leading space, e.g. ' Mary')"
            )
        if reason is not None:
            if on_invalid == "error":
                raise DataError(f"Task '{task}': {_describe(i, ex)} has {reason}.")
            data.dropped.append((ex, reason))
            continue
        data.examples.append(ex)
        data.clean_ids.append(clean)
        data.corrupted_ids.append(corrupted)
        data.correct_ids.append([t for t in correct if t is not None])
        data.incorrect_ids.append([t for t in incorrect if t is not None])
    return data
