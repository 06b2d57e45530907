"""A task read from a file: JSONL or CSV rows of ``clean, corrupted, correct, incorrect``.

``correct`` and ``incorrect`` are answer strings (one token each, e.g. " Mary"); in JSONL they may also be
lists of strings (answer sets), in CSV several answers are separated by ``|``. Metric: logit difference
(mean correct minus mean incorrect) unless ``task.metric`` says otherwise; ``incorrect`` is optional, but
one file has one metric: either every row has an incorrect answer or none does. Every row must be valid:
the error names every bad row (up to ten, with the count of all), so a file is fixed in one go. Files are
UTF-8, with or without a byte-order mark (as Excel writes them).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from circuitkit.api import ConfigError, DataError, Example, Rejected, Task, TaskConfig, hookimpl, quote

COLUMNS = ("clean", "corrupted", "correct", "incorrect")
MALFORMED = "a malformed row"


@dataclass
class CustomConfig(TaskConfig):
    """Options of the custom task.

    Attributes:
        path: a ``.jsonl`` or ``.csv`` file (required).
    """

    path: str = ""
    n_examples: int = 1_000_000
    split: str = "all"


class RowError(ValueError):
    """One row of a task file is unusable (the message names it)."""


def _answers(value: Any, where: str, column: str) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        return tuple(value.split("|")) if "|" in value else (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise RowError(f"{where}: column '{column}' must be a string or a list of strings, got {quote(value, 60)}")


def read_text(path: Path) -> str:
    """The file's text: UTF-8, a leading byte-order mark dropped; anything else is one clear error."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"task.path={path} cannot be read: {e.strerror or e}.") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(
            f"{path} is not UTF-8 text (byte 0x{raw[e.start]:02x} on line {line}). Save it as UTF-8 "
            "(in Excel: 'CSV UTF-8'; or iconv -f latin1 -t utf-8)."
        ) from None


def read_rows(path: Path) -> Iterator[tuple[str, dict[str, Any] | RowError]]:
    """Yield ``(location, row)`` from a JSONL or CSV file; a malformed row gives a :class:`RowError` in
    place of the row, so every bad row can be reported. A file-level problem (not UTF-8, a CSV header
    without the needed columns, an unknown extension) raises."""
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".json", ".csv", ".tsv"):
        raise ConfigError(f"task.path={path} must end in .jsonl or .csv (got '{suffix or 'no extension'}').")
    text = read_text(path)
    if suffix in (".jsonl", ".json"):
        for i, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{path}, line {i}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                yield where, RowError(f"{where} is not valid JSON ({e.msg}); each line must be one JSON object")
                continue
            except RecursionError:
                yield where, RowError(f"{where} is nested too deeply to be a row; each line must be one JSON object")
                continue
            if not isinstance(row, dict):
                yield where, RowError(f"{where} is not a JSON object with keys {', '.join(COLUMNS)}")
                continue
            yield where, row
    else:
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t" if suffix == ".tsv" else ",")
        try:
            fieldnames = reader.fieldnames or []
        except csv.Error as e:
            raise DataError(f"{path}: the header is not valid CSV ({e}).") from None
        missing = [c for c in COLUMNS[:3] if c not in fieldnames]
        if missing:
            raise DataError(f"{path}: the header lacks column(s) {', '.join(missing)}; expected {', '.join(COLUMNS)}.")
        i = 1
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                i = reader.line_num
                yield f"{path}, line {i}", RowError(f"{path}, line {i} is not valid CSV ({e})")
                continue
            i = reader.line_num
            where = f"{path}, line {i}"
            if None in row or any(v is None for v in row.values()):
                yield where, RowError(f"{where} has a different number of fields than the header")
                continue
            yield where, row


def _text(row: dict[str, Any], column: str, where: str) -> str:
    value = row[column]
    if not isinstance(value, str):
        raise RowError(f"{where}: column '{column}' must be a string, got {quote(value, 60)}")
    return value


class Custom(Task):
    config: CustomConfig
    on_invalid = "error"

    def generate(self, tokenizer: Any, split: str) -> Iterator[Example | Rejected]:
        if not self.config.path:
            raise ConfigError(
                "task=custom needs a file: add task.path=/path/to/data.jsonl (or .csv) with columns clean, corrupted, correct, incorrect."
            )
        path = Path(self.config.path).expanduser()
        if not path.is_file():
            raise ConfigError(f"task.path={self.config.path} does not exist or is not a file.")
        rows = list(read_rows(path))
        if not rows:
            raise DataError(
                f"{path} has no rows (the file is empty{' or holds only the header' if path.suffix.lower() in ('.csv', '.tsv') else ''}). "
                f"Add rows with columns {', '.join(COLUMNS)}."
            )
        # One metric per file: when some rows have an incorrect answer, every row needs one.
        with_incorrect = [w for w, r in rows if isinstance(r, dict) and r.get("incorrect") not in (None, "", [])]
        for where, row in rows:
            try:
                if isinstance(row, RowError):
                    raise row
                missing = [c for c in COLUMNS[:3] if row.get(c) in (None, "", [])]
                if missing:
                    raise RowError(f"{where}: missing or empty column(s) {', '.join(missing)}")
                if with_incorrect and row.get("incorrect") in (None, "", []):
                    raise RowError(
                        f"{where} has no 'incorrect' answer, but {len(with_incorrect)} other row(s) have one (e.g. "
                        f"{with_incorrect[0].rsplit(', ', 1)[-1]}); one file has one metric: give every row an "
                        "incorrect answer, or none"
                    )
                yield Example(
                    _text(row, "clean", where),
                    _text(row, "corrupted", where),
                    _answers(row["correct"], where, "correct"),
                    _answers(row.get("incorrect"), where, "incorrect"),
                    meta={"source": where},
                )
            except RowError as e:
                yield Rejected(MALFORMED, str(e))


@hookimpl
def circuitkit_register_tasks(registry) -> None:  # noqa: ANN001
    registry.add("custom", Custom, CustomConfig)
