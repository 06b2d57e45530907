"""The builtin task generators and the custom file task: determinism, held-out splits, filtering, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import circuitkit
from circuitkit.data import Example, TaskData, tokenize_examples
from circuitkit.errors import ConfigError, DataError

GENERATED = ["ioi", "greater_than", "gender_pronoun", "sva", "hypernymy", "country_capital", "induction"]
METRICS = {
    "ioi": "logit_diff",
    "greater_than": "prob_diff",
    "gender_pronoun": "logit_diff",
    "sva": "prob_diff",
    "hypernymy": "prob_diff",
    "country_capital": "prob_diff",
    "induction": "logit",
}
TOKENIZER_DIR = Path(circuitkit.__file__).parent / "zoo" / "gpt2-tokenizer"


@pytest.fixture(scope="module")
def gpt2_tok():
    from transformers import GPT2Tokenizer

    return GPT2Tokenizer.from_pretrained(str(TOKENIZER_DIR))


class SplitTokenizer:
    """GPT-2's tokenizer, except that the token ids in ``split`` encode as two tokens (every id when
    ``split`` is None): a tokenizer that lacks some (or all) of a task's words as single tokens."""

    def __init__(self, tok, split: set[int] | None = None) -> None:
        self.tok, self.split = tok, split
        self.bos_token_id, self.unk_token_id, self.unk_token = tok.bos_token_id, None, None

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        out: list[int] = []
        for i in self.tok.encode(text, add_special_tokens=False):
            out += [i, i] if self.split is None or i in self.split else [i]
        return out

    def decode(self, ids) -> str:  # noqa: ANN001
        return self.tok.decode(ids)

    def __len__(self) -> int:
        return len(self.tok)


def build(name: str, tok, **options) -> TaskData:  # noqa: ANN001
    return circuitkit.build("tasks", name, **options).build(tok)


def test_registered_with_their_metrics():
    from circuitkit.plugins import get_registry

    tasks = get_registry().tasks
    for name, metric in METRICS.items():
        assert name in tasks.names()
        assert tasks.default_config(name).metric == metric


@pytest.mark.parametrize("name", GENERATED)
def test_deterministic_with_a_seed(name, gpt2_tok):
    a = build(name, gpt2_tok, n_examples=24, seed=3)
    b = build(name, gpt2_tok, n_examples=24, seed=3)
    c = build(name, gpt2_tok, n_examples=24, seed=4)
    assert len(a) == 24
    assert a.examples == b.examples and a.content_hash() == b.content_hash()
    assert a.examples != c.examples


@pytest.mark.parametrize("name", GENERATED)
def test_kept_examples_are_well_formed(name, gpt2_tok):
    data = build(name, gpt2_tok, n_examples=48, split="train")
    assert len(data) == 48
    for ex, clean, corrupted, good, bad in zip(
        data.examples, data.clean_ids, data.corrupted_ids, data.correct_ids, data.incorrect_ids, strict=True
    ):
        assert ex.clean != ex.corrupted
        assert len(clean) == len(corrupted) <= 64
        assert clean[0] == gpt2_tok.bos_token_id  # BOS is prepended
        assert len(good) == len(ex.correct) >= 1 and len(bad) == len(ex.incorrect)
        for answer, tid in zip(ex.correct + ex.incorrect, good + bad, strict=True):
            assert gpt2_tok.encode(answer) == [tid]
        assert not set(good) & set(bad)


@pytest.mark.parametrize("name", GENERATED)
def test_train_and_test_splits_are_disjoint(name, gpt2_tok):
    train = build(name, gpt2_tok, n_examples=300, split="train")
    test = build(name, gpt2_tok, n_examples=100, split="test")
    assert not {e.clean for e in train.examples} & {e.clean for e in test.examples}


@pytest.mark.parametrize(
    ("name", "combo"),
    [
        ("ioi", lambda e: (tuple(sorted((e.meta["io"], e.meta["s"]))), e.meta["template"])),
        ("gender_pronoun", lambda e: (e.meta["subject"], e.meta["template"])),
        ("country_capital", lambda e: (e.meta["capital"], e.meta["template"])),
        ("hypernymy", lambda e: (e.meta["template"], tuple(e.meta["hyponyms"]))),
    ],
)
def test_held_out_combinations_not_words(name, combo, gpt2_tok):
    """The test split holds out combinations; every word of a test prompt occurs in training prompts."""
    train = build(name, gpt2_tok, n_examples=3000, split="train")
    test = build(name, gpt2_tok, n_examples=200, split="test")
    assert not {combo(e) for e in train.examples} & {combo(e) for e in test.examples}
    train_words = {w for e in train.examples for w in e.clean.replace(",", " ").replace(".", " ").split()}
    test_words = {w for e in test.examples for w in e.clean.replace(",", " ").replace(".", " ").split()}
    assert test_words <= train_words


def test_ioi_has_both_orders_and_abc_corruption(gpt2_tok):
    data = build("ioi", gpt2_tok, n_examples=64)
    assert {e.meta["order"] for e in data.examples} == {"ABBA", "BABA"}
    for e in data.examples:
        io, s, c = e.meta["io"], e.meta["s"], e.meta["c"]
        assert e.correct == (" " + io,) and e.incorrect == (" " + s,)
        assert e.clean.count(s) == 2 and e.corrupted.count(s) == 1 and c in e.corrupted and c not in e.clean


def test_induction_corruption_leaves_nothing_to_copy(gpt2_tok):
    data = build("induction", gpt2_tok, n_examples=32)
    for ex, clean, corrupted, good in zip(data.examples, data.clean_ids, data.corrupted_ids, data.correct_ids, strict=True):
        k = ex.meta["shown"]
        assert good[0] in clean[:-k] and good[0] not in corrupted
        assert clean[-k:] == corrupted[-k:]


@pytest.mark.parametrize("name", GENERATED)
def test_filtering_reports_dropped_examples(name, gpt2_tok):
    """Examples that do not fit a tokenizer are dropped, each with its reason."""
    generated = circuitkit.build("tasks", name, n_examples=40).generate(gpt2_tok, "test")
    examples = [e for e in generated if isinstance(e, Example)][:40]
    first_answer = gpt2_tok.encode(examples[0].correct[0])[0]
    data = tokenize_examples(name, examples, SplitTokenizer(gpt2_tok, {first_answer}), on_invalid="drop")
    assert data.dropped and data.dropped[0][0] == examples[0]
    assert "not single tokens" in data.dropped[0][1] or "different lengths" in data.dropped[0][1]
    assert len(data) + len(data.dropped) == len(examples)
    with pytest.raises(DataError, match="example 0"):
        tokenize_examples(name, examples, SplitTokenizer(gpt2_tok, {first_answer}), on_invalid="error")


@pytest.mark.parametrize("name", GENERATED)
def test_too_few_examples_is_a_clear_error(name, gpt2_tok):
    """A tokenizer without the task's words as single tokens leaves nothing: a DataError that says so."""
    expected = {
        "greater_than": r"this tokenizer cannot express greater-than: it splits a year as ' 1732' -> \[' 17', ' 17', '32', '32'\]",
        "induction": r"0 word tokens to draw from",
    }.get(name, r"only 0 usable examples .*need at least 4\); \d+ were dropped because of: \w")
    with pytest.raises(DataError, match=rf"Task '{name}': {expected}"):
        build(name, SplitTokenizer(gpt2_tok), n_examples=8)


def test_min_examples_larger_than_possible(gpt2_tok):
    """When only some examples fit the tokenizer, the error gives the count, the need and the reason."""
    from circuitkit_plugins.tasks.ioi import NAMES

    # Only 30 of the names are single tokens: a few percent of the candidates survive.
    split = {gpt2_tok.encode(" " + n)[0] for n in NAMES[30:]}
    with pytest.raises(
        DataError,
        match=r"Task 'ioi': only \d+ usable examples for this tokenizer \(need at least 100\); \d+ were dropped because of: "
        r"answers that are not single tokens of this tokenizer \(\d+, e\.g\. clean=.*' -> \[.*\]; use answers",
    ):
        build("ioi", SplitTokenizer(gpt2_tok, split), n_examples=100, min_examples=100)
    # A lower min_examples accepts what survives.
    data = build("ioi", SplitTokenizer(gpt2_tok, split), n_examples=100, min_examples=4)
    assert 4 <= len(data) < 100 and data.dropped


@pytest.mark.parametrize("name", [n for n in GENERATED if n != "greater_than"])
def test_unknown_split_is_a_config_error(name, gpt2_tok):
    with pytest.raises(ConfigError, match="task.split='dev'"):
        build(name, gpt2_tok, split="dev")


# The custom task: every bad row is an error naming the row.


def _custom(path: Path, tok):  # noqa: ANN001
    return circuitkit.build("tasks", "custom", path=str(path), min_examples=1).build(tok)


def test_custom_reads_jsonl_and_csv(tmp_path, gpt2_tok):
    rows = [
        {
            "clean": "When Mary and John went out, John gave it to",
            "corrupted": "When Mary and John went out, Tom gave it to",
            "correct": " Mary",
            "incorrect": " John",
        },
        {
            "clean": "The keys to the cabinet",
            "corrupted": "The key to the cabinet",
            "correct": [" are", " were"],
            "incorrect": [" is", " was"],
        },
    ]
    jl = tmp_path / "d.jsonl"
    jl.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    data = _custom(jl, gpt2_tok)
    assert len(data) == 2 and data.examples[1].correct == (" are", " were")
    csv = tmp_path / "d.csv"
    csv.write_text('clean,corrupted,correct,incorrect\n"The keys to the cabinet","The key to the cabinet", are| were, is| was\n')
    assert _custom(csv, gpt2_tok).examples[0].incorrect == (" is", " was")


def test_custom_malformed_jsonl_row(tmp_path, gpt2_tok):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"clean": "a b", "corrupted": "a c", "correct": " d"}\n{"clean": "a b", "corrupted": \n')
    with pytest.raises(DataError, match=r"bad\.jsonl, line 2 is not valid JSON"):
        _custom(path, gpt2_tok)


def test_custom_csv_missing_column(tmp_path, gpt2_tok):
    header = tmp_path / "header.csv"
    header.write_text("clean,corrupted,incorrect\nThe key,The keys, are\n")
    with pytest.raises(DataError, match=r"header\.csv: the header lacks column\(s\) correct"):
        _custom(header, gpt2_tok)
    row = tmp_path / "row.csv"
    row.write_text("clean,corrupted,correct,incorrect\nThe key,The keys, is, are\nThe key,The keys\n")
    with pytest.raises(DataError, match=r"row\.csv, line 3 has a different number of fields"):
        _custom(row, gpt2_tok)
    empty = tmp_path / "empty.csv"
    empty.write_text("clean,corrupted,correct,incorrect\nThe key,The keys,, are\n")
    with pytest.raises(DataError, match=r"empty\.csv, line 2: missing or empty column\(s\) correct"):
        _custom(empty, gpt2_tok)


def test_custom_length_mismatch_names_the_row(tmp_path, gpt2_tok):
    path = tmp_path / "len.jsonl"
    good = {"clean": "The key to the cabinet", "corrupted": "The keys to the cabinet", "correct": " is", "incorrect": " are"}
    bad = {"clean": "The key to the cabinet", "corrupted": "The keys to the big cabinet", "correct": " is", "incorrect": " are"}
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(DataError, match=r"len\.jsonl, line 2 .*different lengths \(6 vs 7 tokens\)"):
        _custom(path, gpt2_tok)


def test_custom_multi_token_answer_names_the_row(tmp_path, gpt2_tok):
    path = tmp_path / "multi.csv"
    path.write_text(
        "clean,corrupted,correct,incorrect\nThe key to the cabinet,The keys to the cabinet, is, are\n"
        "The key to the cabinet,The keys to the cabinet, is certainly, are\n"
    )
    with pytest.raises(
        DataError, match=r"multi\.csv, line 3 .* has answers that are not single tokens of this tokenizer \(' is certainly'\)"
    ):
        _custom(path, gpt2_tok)
