"""EAP-IG's interpolation points (``method.ig_points``), checked against gradients taken with
torch.autograd on hand-hooked bridge runs (tests/helpers.py), not through circuitkit's attribution code."""

import pytest
import torch
from helpers import HAND_EXAMPLES, HandTask, capture, input_gradient_scores, source_hook

import circuitkit as ck
from circuitkit.data import tokenize_examples
from circuitkit.errors import ConfigError
from circuitkit.metrics import logit_diff

EDGES = ["input->a0.h0<q>", "input->a1.h2<k>", "a0.h2->a1.h1<k>", "m0->a1.h2<v>", "a1.h0->m1", "m0->logits", "input->m0"]


def reference(model, batch, alphas, edges):
    """``mean_alpha (out_clean - out_corrupted) . grad(alpha)`` per edge, averaged over examples."""
    grads = {a: input_gradient_scores(model, batch, logit_diff, a) for a in alphas}
    diffs = {}
    for s in model.graph.source_names:
        hook, head = source_hook(model, s)
        diffs[s] = capture(model, batch.clean, hook, head) - capture(model, batch.corrupted, hook, head)
    n = len(batch)
    out, magnitude = {}, {}
    for edge in edges:
        src, dst = edge.split("->")
        if dst == "logits":
            key, head = "logits", None
        elif "<" in dst:
            node, q = dst[:-1].split("<")
            key, head = f"{node[1]}{q}", int(node.split(".h")[1])
        else:
            key, head = f"{dst[1:]}m", None
        terms = []
        for a in alphas:
            gr = grads[a][key]
            terms.append(diffs[src] * (gr[:, :, head] if head is not None else gr))
        out[edge] = float(sum(t.sum() for t in terms)) / n / len(alphas)
        magnitude[edge] = float(sum(t.abs().sum() for t in terms)) / n / len(alphas)
    n_terms = terms[0].numel()
    return out, magnitude, n_terms


@pytest.fixture(scope="module")
def setup(tiny_model64):
    model = tiny_model64
    task = HandTask(ck.TaskConfig(name="hand", metric="logit_diff"))
    data = tokenize_examples("hand", HAND_EXAMPLES, model.tokenizer)
    return model, task, data, next(data.batches(8))


@pytest.mark.parametrize(
    ("points", "steps", "alphas"),
    [("left", 2, (0.0, 0.5)), ("left", 3, (0.0, 1 / 3, 2 / 3)), ("left", 1, (0.0,)), ("right", 2, (0.5, 1.0))],
)
def test_ig_points_are_the_stated_alphas(setup, points, steps, alphas):
    """``left``: alpha = k/m for k = 0..m-1 (the EAP-IG library's points); ``right`` (the default): k = 1..m."""
    model, task, data, batch = setup
    opts = {"ig_steps": steps} if points == "right" else {"ig_steps": steps, "ig_points": points}
    scores = ck.build("methods", "eap_ig", **opts).attribute(model, task, data, ck.RunContext(batch_size=8, progress=False))
    assert scores.meta["ig_points"] == points
    want, magnitude, n_terms = reference(model, batch, alphas, EDGES)
    eps = torch.finfo(model.dtype).eps
    for edge in EDGES:
        # Two float64 computations of the same sum of n_terms products, with different kernels and orders.
        tol = n_terms * eps * magnitude[edge]
        assert abs(scores[edge] - want[edge]) <= tol, (edge, scores[edge], want[edge], tol)
    # The two choices really differ on this model (the check above is not vacuous).
    other = {"left": (0.5, 1.0), "right": (0.0, 0.5)}[points] if steps == 2 else None
    if other is not None:
        far, _, _ = reference(model, batch, other, EDGES)
        assert max(abs(far[e] - want[e]) / magnitude[e] for e in EDGES) > 1e3 * n_terms * eps


def test_default_points_are_unchanged_and_a_bad_choice_is_refused():
    assert ck.build("methods", "eap_ig").config.ig_points == "right"
    with pytest.raises(ConfigError, match=r"method.ig_points must be one of right, left, got 'middle'"):
        ck.build("methods", "eap_ig", ig_points="middle")
