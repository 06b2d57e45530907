"""Tests of the example plugin: circuitkit's contract suites plus what is particular to each component.

The ``ck_*`` fixtures come from circuitkit's pytest plugin, which pytest loads automatically once
circuitkit is installed.
"""

import pytest
import torch

import circuitkit as ck
from circuitkit.api import ConfigError
from circuitkit.testing import AttributorContract, InterventionContract, MetricContract, TaskContract


class TestEapCorrupted(AttributorContract):
    name = "eap_corrupted"


class TestEapCorruptedHalfway(AttributorContract):
    name = "eap_corrupted"
    options = {"alpha": 0.5}


class TestRepeatWord(TaskContract):
    name = "repeat_word"
    options = {"n_examples": 16, "repeats": 3}


class TestAnswerMargin(MetricContract):
    name = "answer_margin"


class TestHalfway(InterventionContract):
    name = "halfway"


def ctx(batch_size=8):
    return ck.RunContext(batch_size=batch_size, progress=False)


def test_alpha_one_is_eap_and_the_gradients_average_to_clean_corrupted(ck_tiny_model64, ck_tiny_task, ck_tiny_data):
    """clean_corrupted averages the gradients at the clean and at the corrupted input: it is the mean of
    eap_corrupted with alpha=1 (plain EAP) and alpha=0."""
    model, task, data = ck_tiny_model64, ck_tiny_task, ck_tiny_data
    at_clean = ck.build("methods", "eap_corrupted", alpha=1.0).attribute(model, task, data, ctx())
    at_corrupted = ck.build("methods", "eap_corrupted").attribute(model, task, data, ctx())
    eap = ck.build("methods", "eap").attribute(model, task, data, ctx())
    both = ck.build("methods", "clean_corrupted").attribute(model, task, data, ctx())
    torch.testing.assert_close(at_clean.values, eap.values, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close((at_clean.values + at_corrupted.values) / 2, both.values, rtol=1e-10, atol=1e-14)
    assert not torch.allclose(at_corrupted.values, eap.values)
    assert at_corrupted.meta["alpha"] == 0.0


@pytest.mark.parametrize("alpha", [-0.1, 1.5, float("nan"), "x"])
def test_bad_alpha_fails_when_built(alpha):
    with pytest.raises(ConfigError, match="method.alpha must be a number between 0"):
        ck.build("methods", "eap_corrupted", alpha=alpha)


def test_repeat_word_prompts(ck_tokenizer):
    data = ck.build("tasks", "repeat_word", n_examples=4, repeats=3, seed=1).build(ck_tokenizer)
    ex = data.examples[0]
    word, other = ex.meta["word"], ex.meta["other"]
    assert ex.clean == f"Remember: {word} {word} {word}. The word to remember is"
    assert ex.corrupted == ex.clean.replace(word, other)
    assert ex.correct == (f" {word}",) and ex.incorrect == (f" {other}",)


def test_repeat_word_splits_are_disjoint(ck_tokenizer):
    def pairs(split):
        data = ck.build("tasks", "repeat_word", n_examples=40, split=split).build(ck_tokenizer)
        return {(e.meta["word"], e.meta["other"]) for e in data.examples}

    assert not pairs("test") & pairs("train")


def test_repeat_word_checks_its_options():
    with pytest.raises(ConfigError, match="task.repeats"):
        ck.build("tasks", "repeat_word", repeats=0)
    with pytest.raises(ConfigError, match="task.split"):
        ck.build("tasks", "repeat_word", split="validation")


def test_answer_margin_by_hand(ck_tiny_task, ck_tiny_data):
    """The margin against the definition, written out per example on random logits."""
    import dataclasses

    task = type(ck_tiny_task)(dataclasses.replace(ck_tiny_task.config, metric="answer_margin"))
    batch = next(ck_tiny_data.batches(len(ck_tiny_data)))
    logits = torch.randn(len(batch), 50257, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    got = task.metric(logits, batch)
    for i, ex in enumerate(ck_tiny_data.examples):
        correct = max(float(logits[i, t]) for t in ck_tiny_data.correct_ids[i])
        wrong = [float(logits[i, t]) for t in ck_tiny_data.incorrect_ids[i]]
        assert float(got[i]) == correct - (max(wrong) if wrong else 0.0), ex.clean


def test_halfway_carries_the_midpoint(ck_tiny_model64, ck_tiny_data):
    """A removed edge carries the mean of its source's clean and corrupted outputs, every source at once."""
    from circuitkit.api import build_intervention, run_sources

    model = ck_tiny_model64
    iv = build_intervention(model, ck_tiny_data, "halfway", 8)
    batch = next(ck_tiny_data.batches(8, model.pad_id))
    clean = run_sources(model, batch.clean).sources
    corrupted = run_sources(model, batch.corrupted).sources
    assert not torch.equal(clean, corrupted)
    torch.testing.assert_close(iv.values(model, batch), (clean + corrupted) / 2, rtol=0, atol=1e-12)
    assert not iv.uses_corrupted and iv.kind == "halfway"
