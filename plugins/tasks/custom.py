"""A task read from a file: JSONL or CSV rows of ``clean, corrupted, correct, incorrect``.

``correct`` and ``incorrect`` are answer strings (one token each, e.g. " Mary"); in JSONL they may also be
lists of strings (answer sets), in CSV several answers are separated by ``|``. Metric: logit difference
(mean correct minus mean incorrect) unless ``task.metric`` says otherwise. Every row must be valid:
a bad row is an error that names it.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from circuitkit import hookimpl
from circuitkit.data import Example
from circuitkit.errors import ConfigError, DataError
from circuitkit.interfaces import Task, TaskConfig

COLUMNS = ("clean", "corrupted", "correct", "incorrect")


@dataclass
class CustomConfig(TaskConfig):
    """Options of the custom task.

    Attributes:
        path: a ``.jsonl`` or ``.csv`` file (required).
    """

    path: str = ""
    n_examples: int = 1_000_000
    split: str = "all"


def _answers(value: Any, where: str, column: str) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        return tuple(value.split("|")) if "|" in value else (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise DataError(f"{where}: column '{column}' must be a string or a list of strings, got {value!r}.")


def read_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield (location, row) from a JSONL or CSV file, with clear errors for malformed rows."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        with path.open(encoding="utf-8") as f:
            for i, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                where = f"{path}, line {i}"
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{where} is not valid JSON ({e.msg}). Each line must be one JSON object.") from None
                if not isinstance(row, dict):
                    raise DataError(f"{where} is not a JSON object with keys {', '.join(COLUMNS)}.")
                yield where, row
    elif suffix in (".csv", ".tsv"):
        with path.open(encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
            missing = [c for c in COLUMNS[:3] if c not in (reader.fieldnames or [])]
            if missing:
                raise DataError(f"{path}: the header lacks column(s) {', '.join(missing)}; expected {', '.join(COLUMNS)}.")
            for i, row in enumerate(reader, start=2):
                if None in row or any(v is None for v in row.values()):
                    raise DataError(f"{path}, line {i} has a different number of fields than the header.")
                yield f"{path}, line {i}", row
    else:
        raise ConfigError(f"task.path={path} must end in .jsonl or .csv (got '{suffix or 'no extension'}').")


class Custom(Task):
    config: CustomConfig
    on_invalid = "error"

    def generate(self, tokenizer: Any, split: str) -> Iterator[Example]:
        if not self.config.path:
            raise ConfigError("task=custom needs a file: add task.path=/path/to/data.jsonl (or .csv) with columns clean, corrupted, correct, incorrect.")
        path = Path(self.config.path).expanduser()
        if not path.is_file():
            raise ConfigError(f"task.path={self.config.path} does not exist or is not a file.")
        for where, row in read_rows(path):
            missing = [c for c in COLUMNS[:3] if not row.get(c)]
            if missing:
                raise DataError(f"{where}: missing or empty column(s) {', '.join(missing)}.")
            yield Example(
                str(row["clean"]),
                str(row["corrupted"]),
                _answers(row["correct"], where, "correct"),
                _answers(row.get("incorrect"), where, "incorrect"),
                meta={"source": where},
            )


@hookimpl
def circuitkit_register_tasks(registry) -> None:  # noqa: ANN001
    registry.add("custom", Custom, CustomConfig)
