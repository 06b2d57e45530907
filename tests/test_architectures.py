"""circuitkit against the Hugging Face model itself, over many architecture families.

Each family's tiny random model (2 layers, 4 heads, d_model 64, float64, random norm scales and biases;
:mod:`circuitkit.testing_families`) is saved with ``save_pretrained`` and the GPT-2 tokenizer, loaded with
:func:`circuitkit.load_model` as a user would, and compared with hooks on a separately loaded copy of the
Hugging Face model (:mod:`circuitkit.testing_reference`, never circuitkit's engine): the edge count, the
faithfulness endpoints against the model's own logits, exact patching against an independent patch, EAP
against central finite differences, and per head either node patching against corrupting the head inside
the model (pre-norm families) or the heads' shares summing to the normed attention output (a norm after the
attention). ``benchmarks/architectures_table.py`` writes docs/architectures.md from the same checks.
"""

from __future__ import annotations

import functools
import logging

import pytest
import torch

from circuitkit.model import WORKING_FAMILIES
from circuitkit.testing_families import FAMILIES, tiny_family
from circuitkit.testing_reference import SPECS, FamilyReport, check_family, expected_edges

SUPPORTED = [f for f in FAMILIES if not SPECS[f].refused]
REFUSED = [f for f in FAMILIES if SPECS[f].refused]
POST_NORM = [f for f in SUPPORTED if SPECS[f].post_attn_norm is not None]
PRE_NORM = [f for f in SUPPORTED if SPECS[f].post_attn_norm is None]

#: The names the refusal message uses -> the matrix's families.
NAMED = {
    "GPT-2": ["gpt2"],
    "GPT-NeoX/Pythia": ["gpt_neox_parallel", "gpt_neox_sequential"],
    "Llama": ["llama"],
    "Mistral": ["mistral"],
    "Qwen2": ["qwen2"],
    "Qwen3": ["qwen3"],
    "Gemma": ["gemma"],
    "Gemma-2": ["gemma2"],
    "Gemma-3": ["gemma3"],
    "OLMo": ["olmo"],
    "OLMo-2": ["olmo2"],
    "Phi": ["phi"],
    "Phi-3": ["phi3"],
    "Falcon": ["falcon"],
    "StableLM": ["stablelm"],
    "SmolLM": ["smollm"],
    "SmolLM3": ["smollm3"],
    "Bloom": ["bloom"],
}


@functools.cache
def report(family: str) -> FamilyReport:
    torch.set_num_threads(1)
    return check_family(family)


def _failures(rep: FamilyReport, prefix: str) -> list[str]:
    return [
        f"{c.name}: error {c.error:.3g} > {c.tolerance:.3g} {c.detail}"
        for c in rep.checks
        if c.name.startswith(prefix) and not c.ok
    ]


def _supported(family: str) -> FamilyReport:
    rep = report(family)
    assert rep.status == "supported", f"{family} is not loaded: {rep.message}"
    return rep


def test_family_builders_randomise_norms_and_biases():
    """The tiny models exercise norm scales and biases (Hugging Face initialises them to constants)."""
    for family in ("gpt2", "llama", "bloom", "gemma2", "phi"):
        hf, _ = tiny_family(family)
        norms = [p for n, p in hf.named_parameters() if n.endswith("weight") and ("norm" in n or "ln" in n.split(".")[-2])]
        biases = [p for n, p in hf.named_parameters() if n.endswith("bias")]
        assert norms and all(p.std() > 0.1 for p in norms), family
        assert all(p.std() > 0.01 for p in biases), family


@pytest.mark.parametrize("family", SUPPORTED)
def test_edge_count_matches_the_formula(family):
    rep = _supported(family)
    assert not _failures(rep, "edge count"), _failures(rep, "edge count")


def test_edge_count_formula_gives_gpt2_small():
    """The formula of the matrix, checked on the number every circuit library quotes."""
    assert expected_edges(12, 12, 12, False) == 32491


@pytest.mark.parametrize("family", SUPPORTED)
def test_faithfulness_endpoints_are_the_model_logits(family):
    """Empty circuit = the corrupted run, full circuit = the clean run, both against the HF model's own
    logits (soft-capping included)."""
    rep = _supported(family)
    bad = _failures(rep, "clean metric") + _failures(rep, "corrupted metric") + _failures(rep, "empty") + _failures(rep, "full")
    assert not bad, bad


@pytest.mark.parametrize("family", SUPPORTED)
def test_exact_patching_matches_an_independent_patch(family):
    rep = _supported(family)
    assert not _failures(rep, "patching"), _failures(rep, "patching")


@pytest.mark.parametrize("family", SUPPORTED)
def test_eap_matches_finite_differences(family):
    rep = _supported(family)
    assert not _failures(rep, "EAP"), _failures(rep, "EAP")


@pytest.mark.parametrize("family", PRE_NORM)
def test_all_outgoing_edges_of_a_head_equal_the_head_corrupted_inside_the_model(family):
    rep = _supported(family)
    assert any(c.name.startswith("node") for c in rep.checks)
    assert not _failures(rep, "node"), _failures(rep, "node")


@pytest.mark.parametrize("family", POST_NORM)
def test_head_shares_sum_to_the_normed_attention_output(family):
    """Behind a norm after the attention the heads' shares add up to what the block adds, in the clean and
    the corrupted run (and head->logits patching, among the patched edges, equals adding the share's
    difference at the final norm's input)."""
    rep = _supported(family)
    assert sum(c.name.startswith("layer") for c in rep.checks) == 4
    assert not _failures(rep, "layer"), _failures(rep, "layer")


@pytest.mark.parametrize("family", REFUSED)
def test_refused_families_say_why_and_name_families_that_work(family):
    rep = report(family)
    assert rep.status == "refused", f"{family} was expected to be refused: {rep.status} {rep.message}"
    msg = rep.message
    assert ("q/k/v" in msg or "MLP-input hook" in msg) and "Families that work:" in msg
    working = msg.split("Families that work:")[1]
    assert [name for name in WORKING_FAMILIES if name in working] == list(WORKING_FAMILIES)
    assert all(name not in working.replace("Phi-3", "") for name in ("OPT", "GPT-J", "Falcon", "Phi"))


def test_every_family_the_refusal_names_passes_the_matrix():
    """No message recommends a family that fails."""
    for name in WORKING_FAMILIES:
        assert name in NAMED, f"{name} is named as working but has no family in the matrix"
        for family in NAMED[name]:
            rep = _supported(family)
            assert rep.ok, f"{name} ({family}) is named as working but fails: {[c.name for c in rep.checks if not c.ok]}"


def test_bloom_reentry_falls_back_to_the_exact_path(caplog):
    """Bloom's bridge ignores ``start_at_layer``: the check against the plain forward fails, is logged, and
    exact patching re-enters by replacing the layer's input in a run from the tokens (the patching checks
    above then agree with the independent patch)."""
    from circuitkit.engine import fastpaths, forward
    from circuitkit.model import bridge_model

    hf, tok = tiny_family("bloom", dtype=torch.float64)
    model = bridge_model(hf, tok, name="bloom", device="cpu")
    # The check at load may have run the checks already (unless an earlier test verified these weights).
    model.capabilities = fastpaths.Capabilities()
    with caplog.at_level(logging.DEBUG, logger="circuitkit.engine"):
        assert forward._reentry_mode(model) == "hook"
    assert model.capabilities.reentry.status == "failed" and model.capabilities.reentry.reason.startswith("layer 1: ")
    assert "fast path reentry off (exact path instead)" in caplog.text
    ref = fastpaths._plain_reference(model)
    # The exact path gives the plain forward's final residual from the residual at layer 1.
    final = forward._forward(model, ref.tokens, [], start_at_layer=1, resid=ref.resid[1])
    assert torch.allclose(final, ref.final, rtol=0, atol=1e-12 * float(ref.final.abs().max()))


def test_fast_paths_off_runs_no_check_and_gives_the_same_scores(tokenizer):
    """``model.fast_paths = False``: every fast path is off without running its check, and exact patching
    gives the fast paths' scores (float rounding apart)."""
    import circuitkit as ck
    from circuitkit.attribution import exact_patching
    from circuitkit.interfaces import RunContext
    from circuitkit.testing_models import tiny_gpt2
    from circuitkit.testing_reference import ExamplesTask

    model = tiny_gpt2(tokenizer=tokenizer, dtype=torch.float64, seed=1)
    task = ExamplesTask(ck.TaskConfig(name="examples", metric="logit_diff"))
    data = task.build(model.tokenizer)
    ctx = RunContext(batch_size=4, progress=False)
    fast = exact_patching(model, task, data, ctx, edges_per_pass=16).values
    checked = model.capabilities.checked()
    assert all(o.status == "ok" for o in checked.values()) and "skip_blocks" in checked
    plain_model = tiny_gpt2(tokenizer=tokenizer, dtype=torch.float64, seed=1)
    plain_model.fast_paths = False
    plain = exact_patching(plain_model, task, data, ctx, edges_per_pass=16).values
    assert plain_model.capabilities.checked() == {}
    # A score is a difference of two metric values: rounding on the metric's scale.
    from circuitkit import engine
    from circuitkit.engine import forward

    batch = next(iter(data.batches(4, model.pad_id)))
    scale = float(engine.answer_metric(model, forward._forward(model, batch.clean, []), batch, task.metric).abs().max())
    eps = torch.finfo(torch.float64).eps
    assert torch.allclose(fast, plain, rtol=0, atol=model.graph.n_layers * model.d_model * eps * scale)


def test_a_check_that_raises_turns_its_fast_path_off_but_a_bug_propagates(tokenizer, caplog):
    """A check that raises what a fast path that does not run on a model raises (a replaced forward called
    with other arguments: TypeError) turns that fast path off, once, with the exception as the reason and a
    debug line; any other exception (a bug in circuitkit: AssertionError) propagates and leaves the outcome
    unknown."""
    from circuitkit.engine import fastpaths
    from circuitkit.testing_models import tiny_gpt2

    model = tiny_gpt2(tokenizer=tokenizer, seed=1)
    model.capabilities = fastpaths.Capabilities()  # the checks run at load: start again

    def wrong_signature():
        raise TypeError("forward() got an unexpected keyword argument 'x'")

    with caplog.at_level(logging.DEBUG, logger="circuitkit.engine"):
        assert fastpaths._checked_once(model, "last_mlp", wrong_signature) is False
    assert model.capabilities.last_mlp == fastpaths.Outcome(
        "failed", "TypeError: forward() got an unexpected keyword argument 'x'"
    )
    assert "fast path last_mlp raised" in caplog.text and "fast path last_mlp off (exact path instead)" in caplog.text
    assert fastpaths._checked_once(model, "last_mlp", lambda: True) is False  # checked once: not run again

    def bug():
        raise AssertionError("a bug")

    with pytest.raises(AssertionError, match="a bug"):
        fastpaths._checked_once(model, "fused_gelu", bug)
    assert model.capabilities.fused_gelu.status == "unknown" and not model.capabilities.checking
    assert fastpaths._checked_once(model, "fused_gelu", lambda: (True, "")) is True
    assert model.capabilities.checked() == {"last_mlp": model.capabilities.last_mlp, "fused_gelu": fastpaths.Outcome("ok")}
