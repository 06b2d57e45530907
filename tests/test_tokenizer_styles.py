"""The builtin tasks on tokenizers in the styles researchers use (tests/tokenizer_styles.py: GPT-2, Llama-2 through
transformers' LlamaTokenizer, the older SentencePiece layout, Gemma, Llama-3, Qwen2, word- and character-level).

For every task x style: it builds, or fails with its true reason; every kept pair has equal lengths, different
ids, no unknown token, and answers that are the one token the tokenizer itself writes after the prompt;
greater_than's correct answers are exactly the later years (or the stated analogue). Every candidate not kept
is counted by reason. BOS is decided from the tokenizer as given. Building data needs only the tokenizer; the
model forwards are in the two end-to-end checks at the end.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys

import pytest
import tokenizer_styles as styles
import torch

import circuitkit
from circuitkit.data import (
    DIFFERENT_LENGTHS,
    IDENTICAL_PAIR,
    NOT_SINGLE_TOKENS,
    UNKNOWN_TOKEN,
    Example,
    Rejected,
    TaskData,
    encode,
    tokenize_examples,
)
from circuitkit.errors import DataError
from circuitkit.interfaces import Task, TaskConfig

TASKS = ["ioi", "greater_than", "gender_pronoun", "sva", "hypernymy", "country_capital", "induction"]
N = 32
# Tasks that cannot be expressed with one token per character: their answers are words.
CHAR_FAILS = {"ioi", "gender_pronoun", "sva", "hypernymy", "country_capital"}


@functools.cache
def built(task: str, style: str, n: int = N) -> TaskData | DataError:
    try:
        return circuitkit.build("tasks", task, n_examples=n).build(styles.build(style))
    except DataError as e:
        return e


def pieces(tok, ids):  # noqa: ANN001, ANN201
    return tok.convert_ids_to_tokens(list(ids))


@pytest.mark.parametrize("style", styles.STYLES)
@pytest.mark.parametrize("task", TASKS)
def test_builds_sound_pairs_or_fails_with_its_reason(task, style):
    tok = styles.build(style)
    data = built(task, style)
    if style == "char" and task in CHAR_FAILS:
        # The true reason: every answer of these tasks is a word, several characters long.
        first = next(e for e in circuitkit.build("tasks", task).generate(tok, "test") if isinstance(e, Example))
        assert all(len(encode(tok, a)) > 1 for a in first.correct)
        assert isinstance(data, DataError)
        assert f"Task '{task}': only 0 usable examples" in str(data)
        assert NOT_SINGLE_TOKENS in str(data) and "-> [' '," in str(data)  # the answer's tokens are shown
        return
    if style == "char" and task == "induction":
        assert isinstance(data, DataError) and "0 word tokens to draw from" in str(data)
        assert len(encode(tok, "the")) == 3  # no token is a word
        return
    assert isinstance(data, TaskData), data
    assert len(data) == N
    bos = tok.bos_token_id
    unk = tok.unk_token_id
    for ex, clean, corrupted, good, bad in zip(
        data.examples, data.clean_ids, data.corrupted_ids, data.correct_ids, data.incorrect_ids, strict=True
    ):
        prefix = [bos] if bos is not None else []
        assert clean == prefix + encode(tok, ex.clean) and corrupted == prefix + encode(tok, ex.corrupted)
        assert len(clean) == len(corrupted) and clean != corrupted
        body = clean[len(prefix) :] + corrupted[len(prefix) :]  # GPT-2's unknown token is its BOS
        assert unk is None or unk not in body
        assert len(good) == len(ex.correct) >= 1 and len(bad) == len(ex.incorrect) and not set(good) & set(bad)
        for answer, tid in zip(ex.correct + ex.incorrect, good + bad, strict=True):
            if task == "greater_than" and style == "gpt2":
                # GPT-2's two-digit tokens, as Hanna et al. use them (GPT-2 writes a few years, " 1700", as one token).
                assert encode(tok, answer) == [tid]
            else:
                # The answer is the one token the tokenizer writes after the prompt when the text goes on.
                assert encode(tok, ex.clean + answer) == encode(tok, ex.clean) + [tid], (ex.clean, answer)
            assert tok.decode([tid]).strip() == answer.strip()
    assert data.n_dropped == sum(data.drop_counts.values()) and all(n > 0 for n in data.drop_counts.values())


def _year_range(style: str, piece: str, century: int) -> tuple[int, int]:
    """The end years an answer token can begin, read from the token's own digits."""
    digits = piece.lstrip("Ġ▁ ")
    assert digits.isdigit(), piece
    if style == "two-digit":
        return century * 100 + int(digits), century * 100 + int(digits)
    if style == "one-digit":
        return century * 100 + 10 * int(digits), century * 100 + 10 * int(digits) + 9
    if style == "three-digit":
        assert digits[:2] == str(century)
        return int(digits) * 10, int(digits) * 10 + 9
    assert digits[:2] == str(century)
    return int(digits), int(digits)


EXPECTED_SPLIT = {
    "gpt2": "two-digit",
    "llama2": "one-digit",
    "llama2-legacy": "one-digit",
    "gemma": "one-digit",
    "llama3": "three-digit",
    "qwen2": "one-digit",
    "word": "whole-year",
    "char": "one-digit",
}


@pytest.mark.parametrize("style", styles.STYLES)
def test_greater_than_answers_are_exactly_the_later_years(style):
    tok = styles.build(style)
    data = built("greater_than", style)
    split = data.info["year_split"]
    assert split == EXPECTED_SPLIT[style]
    assert data.info["metric"].startswith("prob_diff: probability of")
    for ex, good, bad in zip(data.examples, data.correct_ids, data.incorrect_ids, strict=True):
        year = ex.meta["year"]
        century = year // 100
        later = [_year_range(split, p, century) for p in pieces(tok, good)]
        earlier = [_year_range(split, p, century) for p in pieces(tok, bad)]
        assert all(lo > year for lo, _ in later) and all(hi <= year for _, hi in earlier)
        # Every answer of the alphabet is used, except the one (a decade) that could be either.
        n_answers = 100 if split in ("two-digit", "whole-year") else 10
        assert len(good) + len(bad) == n_answers - (split not in ("two-digit", "whole-year"))
        # The prompt stops where the year's answer token starts: at the century, or before the year.
        tail = {"two-digit": f" {century}", "one-digit": f" {century}", "three-digit": " ", "whole-year": " year"}[split]
        assert ex.clean.endswith(tail) or (split == "whole-year" and ex.clean.endswith(" in"))
        # The start year is written in the clean prompt, XX01 in the corrupted one.
        assert str(year) in ex.clean and f"{century}01" in ex.corrupted


def test_greater_than_cannot_be_expressed_says_how_the_tokenizer_splits_a_year():
    """A word-level vocabulary without years writes every year as the unknown token: one message that shows it."""
    tok = styles.word_level(frozenset(str(y) for y in range(1000, 2100)))
    assert encode(tok, " 1732") == [tok.unk_token_id]
    with pytest.raises(DataError, match=r"cannot express greater-than: it splits a year as ' 1732' -> \['\[UNK\]'\]"):
        circuitkit.build("tasks", "greater_than", n_examples=8).build(tok)


def test_older_sentencepiece_layout_answers_are_read_after_the_prompt():
    """A normalizer that prepends '▁' writes ' she' on its own as '▁' + '▁she'; after a prompt it is the one
    token '▁she', which is the answer the model predicts."""
    tok = styles.build("llama2-legacy")
    assert pieces(tok, encode(tok, " she")) == ["▁", "▁she"]
    data = built("gender_pronoun", "llama2-legacy")
    she = tok.convert_tokens_to_ids("▁she")
    assert any(she in ids for ids in data.correct_ids)


def test_induction_finds_word_tokens_by_their_marker():
    """SentencePiece decoders strip the space of a lone token; word tokens are found by their '▁' anyway."""
    from circuitkit_plugins.tasks.induction import word_tokens

    for style in ("llama2", "llama2-legacy", "gemma"):
        tok = styles.build(style)
        words = word_tokens(tok, 10_000)
        assert words and all(tok.convert_ids_to_tokens(i).startswith("▁") for i in words)
        assert not tok.decode([words[0]]).startswith(" ") or style == "gemma"
    # The same words as GPT-2's byte-level tokens ("Ġ") where both have them.
    gpt2, llama2 = styles.build("gpt2"), styles.build("llama2")
    g = {gpt2.convert_ids_to_tokens(i)[1:] for i in word_tokens(gpt2, 50_000)}
    s = {llama2.convert_ids_to_tokens(i)[1:] for i in word_tokens(llama2, 10_000)}
    assert {"nurse", "store", "drink"} <= g & s


def test_unknown_tokens_are_dropped_and_counted():
    tok = styles.build("word-partial")
    for task in ("gender_pronoun", "country_capital", "hypernymy"):
        data = built(task, "word-partial")
        assert data.drop_counts.get(UNKNOWN_TOKEN, 0) > 0, data.drop_counts
        assert all(tok.unk_token_id not in ids for ids in data.clean_ids + data.corrupted_ids)
        # Nothing is lost silently: the candidates the generator produced up to the last kept one are exactly
        # the kept ones plus the counted ones.
        stream = list(circuitkit.build("tasks", task, n_examples=N).generate(tok, "test"))
        last = max(i for i, e in enumerate(stream) if isinstance(e, Example) and e == data.examples[-1])
        assert last + 1 == len(data) + data.n_dropped
        assert sum(isinstance(e, Rejected) for e in stream[: last + 1]) == sum(
            n
            for r, n in data.drop_counts.items()
            if r not in (UNKNOWN_TOKEN, NOT_SINGLE_TOKENS, DIFFERENT_LENGTHS, IDENTICAL_PAIR)
        )


def test_identical_token_ids_are_no_counterfactual():
    tok = styles.build("word")
    same = Example("The key to the cabinet", "The  key to the cabinet", (" is",), (" are",))  # two spaces: same words
    good = Example("The key to the cabinet", "The keys to the cabinet", (" is",), (" are",))
    data = tokenize_examples("hand", [same, good], tok, on_invalid="drop")
    assert data.examples == [good] and data.drop_counts == {IDENTICAL_PAIR: 1}
    with pytest.raises(DataError, match=r"example 0 .*same token ids"):
        tokenize_examples("hand", [same, good], tok)


class _Nothing(Task):
    def generate(self, tokenizer, split):  # noqa: ANN001, ANN201
        return iter(())


class _AllRejected(Task):
    def generate(self, tokenizer, split):  # noqa: ANN001, ANN201
        for i in range(5):
            yield Rejected("word missing from the vocabulary", f"word{i}")
        yield Rejected("another reason")


def test_empty_result_messages_name_what_happened():
    tok = styles.build("word")
    with pytest.raises(
        DataError, match=r"only 0 usable examples .*; the task generated no candidates for task.split='test'\."
    ) as e:
        _Nothing(TaskConfig(name="nothing", min_examples=0)).build(tok)  # min_examples=0 still needs one example
    assert "nothing." not in str(e.value).split(";")[1][:10] and "lower task.min_examples" not in str(e.value)
    with pytest.raises(
        DataError,
        match=r"6 were dropped because of: word missing from the vocabulary \(5, e\.g\. word0\); another reason \(1\)\.",
    ):
        _AllRejected(TaskConfig(name="rejects")).build(tok)


def test_too_few_examples_message_counts_every_reason():
    err = built("sva", "char")
    counts = [int(n) for n in __import__("re").findall(r"\((\d+), e\.g\.", str(err))]
    total = int(__import__("re").search(r"; (\d+) were dropped", str(err)).group(1))
    assert counts and sum(counts) == total
    assert "singular and plural subject of different token lengths" in str(err)


# ----- BOS and end to end (model forwards) ---------------------------------------------------------------


@pytest.mark.parametrize(("style", "has_bos"), [("qwen2", False), ("word", False), ("llama2", True)])
def test_bos_is_decided_from_the_tokenizer_as_given(style, has_bos):
    from circuitkit.testing_models import tiny_llama

    torch.set_num_threads(1)
    tok = styles.build(style)
    n_tokens = len(tok)
    model = tiny_llama(n_layers=1, tokenizer=tok, d_model=16, n_heads=2, n_kv_heads=1)
    assert model.prepend_bos is has_bos
    # Wrapping did not give the tokenizer a BOS (the EOS, or an added "<|endoftext|>") nor new tokens.
    assert model.tokenizer.bos_token_id == tok.bos_token_id and len(model.tokenizer) == n_tokens
    data = circuitkit.build("tasks", "sva", n_examples=4).build(model.tokenizer, prepend_bos=model.prepend_bos)
    for ex, ids in zip(data.examples, data.clean_ids, strict=True):
        assert ids == ([tok.bos_token_id] if has_bos else []) + encode(tok, ex.clean)


def _cli(*args):  # noqa: ANN002, ANN202
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    return subprocess.run([sys.executable, "-m", "circuitkit", *args], capture_output=True, text=True, env=env, timeout=600)


def test_cli_greater_than_on_a_qwen_style_model(tmp_path):
    """One digit per token and no BOS token: the run uses the decade digit, prepends nothing, says so in
    results.json, and its clean metric is the Hugging Face model's own probability of later decades minus
    earlier ones on the prompt's own tokens."""
    from transformers import AutoModelForCausalLM

    from circuitkit.testing_models import tiny_llama

    torch.set_num_threads(1)
    tok = styles.build("qwen2")
    model_dir = tmp_path / "qwen-style"
    tiny_llama(n_layers=2, tokenizer=tok, save_to=model_dir)
    out = tmp_path / "run"
    p = _cli(
        f"model.name={model_dir}",
        "method=eap",
        "task=greater_than",
        "task.n_examples=8",
        "selector.n_edges=20",
        "evaluator=[faithfulness]",
        "pictures=false",
        "progress=false",
        f"hydra.run.dir={out}",
    )
    assert p.returncode == 0, p.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    meta = results["meta"]
    assert meta["prepend_bos"] is False and meta["bos_token"] is None
    assert meta["task_info"]["year_split"] == "one-digit" and "decade" in meta["task_info"]["metric"]
    assert meta["n_dropped"] == sum(meta["dropped_by_reason"].values()) > 0
    # The independent reference: the saved model's own forward on the prompt's tokens.
    hf = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    data = circuitkit.build("tasks", "greater_than", n_examples=8).build(styles.build("qwen2"))

    def metric(prefix: list[int]) -> float:
        values = []
        with torch.no_grad():
            for ex in data.examples:
                probs = hf(torch.tensor([prefix + encode(tok, ex.clean)])).logits[0, -1].double().softmax(-1)
                later = [encode(tok, ex.clean + a)[-1] for a in ex.correct]
                earlier = [encode(tok, ex.clean + a)[-1] for a in ex.incorrect]
                values.append((probs[later].sum() - probs[earlier].sum()).item())
        return sum(values) / len(values)

    clean = results["faithfulness"]["values"]["clean_metric"]
    tol = 2 * 32 * torch.finfo(torch.float32).eps  # n_layers * d_model * eps; probabilities are at most 1
    assert clean == pytest.approx(metric([]), abs=tol)
    # What the run would have measured with the EOS token the bridge would have put first.
    assert abs(clean - metric([tok.eos_token_id])) > 10 * tol
