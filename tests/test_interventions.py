"""Zero, mean and positional-mean ablation in attribution and evaluation, against hand-written hooks."""

import numpy as np
import pytest
import torch
from helpers import HAND_EXAMPLES, HandTask, capture, patched_metric, source_hook

import circuitkit as ck
from circuitkit.data import tokenize_examples
from circuitkit.evaluation import evaluate_keeps
from circuitkit.interventions import build_intervention
from circuitkit.metrics import logit_diff
from circuitkit.results import Circuit

EXAMPLES = HAND_EXAMPLES
TASK = HandTask(ck.TaskConfig(name="hand", metric="logit_diff"))


def run_ctx(model, data, kind):
    c = ck.RunContext(batch_size=8, progress=False)
    c.intervention = build_intervention(model, data, kind)
    return c


def hand_b_o(model, tokens):
    """Per layer, the attention output minus the sum of its head outputs (the bias b_O), measured."""
    out = []
    for layer in range(model.graph.n_layers):
        attn_out = capture(model, tokens, f"blocks.{layer}.hook_attn_out", None)
        heads = capture(model, tokens, f"blocks.{layer}.attn.hook_result", None)
        out.append((attn_out - heads.sum(2))[0, 0])
    return out


def hand_removed(model, data, kind, source, shape):
    """What ``source`` carries when removed, computed from hooks on one example at a time."""
    if kind == "zero":
        if source.startswith("a"):
            layer = int(source[1:].split(".")[0])
            b_o = hand_b_o(model, torch.tensor([data.clean_ids[0]]))[layer]
            return (-b_o / model.graph.n_heads).expand(shape)
        return torch.zeros(shape, dtype=torch.float64)
    hook, head = source_hook(model, source)
    outs = [capture(model, torch.tensor([ids]), hook, head)[0] for ids in data.clean_ids]  # [p_i, d]
    if kind == "mean":
        return torch.cat(outs).mean(0).expand(shape)
    per_pos = torch.stack([torch.stack([o[t] for o in outs if len(o) > t]).mean(0) for t in range(shape[1])])
    return per_pos.expand(shape)


@pytest.mark.parametrize("kind", ["zero", "mean", "mean_positional"])
def test_eap_under_ablation_equals_finite_differences(tiny_model64, kind):
    """EAP with zero/mean ablation scores (out_clean - ablated) . grad: checked against central finite
    differences of a hand-written hook moving one edge toward its ablated value."""
    model = tiny_model64
    data = tokenize_examples("hand", EXAMPLES, model.tokenizer)
    scores = ck.build("methods", "eap").attribute(model, TASK, data, run_ctx(model, data, kind))
    batch = next(data.batches(8))
    g = model.graph
    rng = np.random.default_rng(1)
    picks = [g.edge_names[i] for i in rng.choice(g.n_edges, 12, replace=False)] + [
        "input->a0.h0<q>",
        "a0.h1->m1",
        "a1.h0->logits",
    ]
    eps = 1e-5
    for edge in picks:
        removed = hand_removed(model, data, kind, edge.split("->")[0], (len(batch), batch.clean.shape[1], model.d_model))
        up = patched_metric(model, batch, logit_diff, edge, eps, removed=removed).mean()
        down = patched_metric(model, batch, logit_diff, edge, -eps, removed=removed).mean()
        assert scores[edge] == pytest.approx(-(up - down).item() / (2 * eps), rel=1e-4, abs=1e-9), edge
    assert scores.meta["n_examples"] == len(data)


def forward_with(model, batch, hooks):
    with model.bridge.hooks(fwd_hooks=hooks):
        logits = model.bridge(batch.clean)
    return logit_diff(logits[torch.arange(len(batch)), batch.last], batch).mean().item()


def without_sources(g, prefix):
    """The full graph minus every edge out of the sources whose names start with ``prefix``."""
    keep = np.array([not e.split("->")[0].startswith(prefix) for e in g.edge_names])
    return Circuit(g, keep)


def test_zero_ablation_removes_whole_attention_outputs_and_the_positional_embedding(tiny_model64):
    """Zero-ablating every head of a layer zeroes the layer's attention output, b_O included (as zero-ablating
    an MLP zeroes its output bias included); zero-ablating the input removes token and position embeddings."""
    model = tiny_model64
    data = tokenize_examples("hand", EXAMPLES, model.tokenizer)
    g = model.graph
    c = run_ctx(model, data, "zero")
    circuits = [without_sources(g, "a0."), without_sources(g, "m1"), without_sources(g, "input")]
    ev = evaluate_keeps(model, TASK, data, torch.stack([x.keep_dense() for x in circuits]), c)
    batch = next(data.batches(8))
    zero = lambda t, hook: torch.zeros_like(t)  # noqa: E731
    assert ev.circuits[0] == pytest.approx(forward_with(model, batch, [("blocks.0.hook_attn_out", zero)]), rel=1e-9)
    assert ev.circuits[1] == pytest.approx(forward_with(model, batch, [("blocks.1.hook_mlp_out", zero)]), rel=1e-9)
    assert ev.circuits[2] == pytest.approx(forward_with(model, batch, [("blocks.0.hook_resid_pre", zero)]), rel=1e-9)
    # The faithfulness baseline under ablation is the fully ablated model (the empty circuit), not the
    # corrupted prompt: every attention output and MLP output zeroed, embeddings too.
    everything = [("blocks.0.hook_resid_pre", zero)]
    for layer in range(g.n_layers):
        everything += [(f"blocks.{layer}.hook_attn_out", zero), (f"blocks.{layer}.hook_mlp_out", zero)]
    assert ev.corrupted == pytest.approx(forward_with(model, batch, everything), rel=1e-9)


@pytest.mark.parametrize("kind", ["mean", "mean_positional"])
def test_empty_circuit_under_mean_ablation_equals_every_source_replaced_by_its_mean(tiny_model64, kind):
    model = tiny_model64
    data = tokenize_examples("hand", EXAMPLES, model.tokenizer)
    g = model.graph
    batch = next(data.batches(8))
    shape = (len(batch), batch.clean.shape[1], model.d_model)
    values = {s: hand_removed(model, data, kind, s, shape) for s in g.source_names}

    def replace(hook_name):
        def f(t, hook):
            t = t.clone()
            for s, (h, head) in ((s, source_hook(model, s)) for s in g.source_names):
                if h == hook_name:
                    if head is None:
                        t[:] = values[s]
                    else:
                        t[:, :, head] = values[s]
            return t

        return f

    hooks = sorted({source_hook(model, s)[0] for s in g.source_names})
    expected = forward_with(model, batch, [(h, replace(h)) for h in hooks])
    ev = evaluate_keeps(model, TASK, data, Circuit.empty(g).keep_dense()[None], run_ctx(model, data, kind))
    assert ev.circuits[0] == pytest.approx(expected, rel=1e-9)
    assert ev.corrupted == pytest.approx(expected, rel=1e-9)


def test_mean_positional_refuses_prompts_longer_than_the_reference(tiny_model64):
    model = tiny_model64
    short = tokenize_examples("hand", EXAMPLES[1:2], model.tokenizer)
    longer = tokenize_examples("hand", EXAMPLES[:1], model.tokenizer)
    iv = build_intervention(model, short, "mean_positional")
    with pytest.raises(ck.CircuitkitError, match="mean_positional"):
        iv.values(model, next(longer.batches(8)))


def test_unknown_intervention_is_a_config_error(tiny_model64):
    with pytest.raises(ck.CircuitkitError, match="intervention must be one of patching, zero, mean, mean_positional"):
        build_intervention(tiny_model64, None, "resample")


def test_eap_ig_with_zero_ablation_warns(tiny_model64, caplog):
    model = tiny_model64
    data = tokenize_examples("hand", EXAMPLES[:2], model.tokenizer)
    with caplog.at_level("WARNING", logger="circuitkit"):
        ck.build("methods", "eap_ig", ig_steps=2).attribute(model, TASK, data, run_ctx(model, data, "zero"))
    assert "scale-invariant" in caplog.text
