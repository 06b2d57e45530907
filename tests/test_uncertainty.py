"""Uncertainty: bootstrap intervals, per-edge standard errors, inclusion frequency, stability, transfer."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import circuitkit as ck
from circuitkit import uncertainty as unc
from circuitkit.data import tokenize_examples
from tests.helpers import HAND_EXAMPLES, HandTask, float_tol, plain_metric


@pytest.fixture(scope="module")
def hand(tiny_model64):
    task = HandTask(ck.TaskConfig(name="hand", metric="logit_diff"))
    data = tokenize_examples("hand", HAND_EXAMPLES, tiny_model64.tokenizer)
    return tiny_model64, task, data


# ----- per-edge standard errors ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "options", "extra"),
    [("eap", {}, {}), ("eap_ig", {"ig_steps": 2}, {"positions_per_pass": 3}), ("patching", {}, {})],
)
def test_stderr_equals_single_example_runs(hand, method, options, extra):
    """The standard errors from one batched pass equal sd/sqrt(n) of scores computed one example at a time
    (separate runs of batch size 1: scores do not depend on the batch, so these are the per-example scores)."""
    model, task, data = hand
    ctx = ck.RunContext(batch_size=3, progress=False)
    ctx.extra.update(extra)
    scores = ck.build("methods", method, **options).attribute(model, task, data, ctx)
    single = []
    for i in range(len(data)):
        one = ck.build("methods", method, **options).attribute(model, task, data.subset([i]), ck.RunContext(batch_size=1, progress=False))
        single.append(one.values)
    per = torch.stack(single)  # [n, E]
    n = per.shape[0]
    expected = per.std(0, unbiased=True) / math.sqrt(n)
    assert scores.stderr is not None and scores.per_example is not None
    # Both are sums of the same products in another order: rounding of the metric's magnitude.
    batch = next(iter(data.batches(len(data), model.pad_id)))
    tol = float_tol(model, plain_metric(model, batch.clean, batch, task.metric).abs().max())
    assert torch.allclose(scores.per_example, per, atol=tol, rtol=0)
    assert torch.allclose(scores.stderr, expected, atol=tol, rtol=0)
    assert torch.allclose(scores.values, per.mean(0), atol=tol, rtol=0)
    assert float(scores.stderr.max()) > 100 * tol  # not trivially zero


def test_stderr_round_trips_scores_json(hand, tmp_path):
    model, task, data = hand
    scores = ck.build("methods", "eap").attribute(model, task, data, ck.RunContext(batch_size=4, progress=False))
    scores.save(tmp_path / "s.json")
    back = ck.Scores.load(tmp_path / "s.json", graph=model.graph)
    assert back.stderr is not None and torch.equal(back.stderr, scores.stderr)
    # a file without the field (older runs, other tools) still loads, without standard errors
    import json

    obj = json.loads((tmp_path / "s.json").read_text())
    del obj["stderr"]
    (tmp_path / "old.json").write_text(json.dumps(obj))
    assert ck.Scores.load(tmp_path / "old.json", graph=model.graph).stderr is None
