"""Models with a norm after the attention and the MLP (Gemma-2, Gemma-3, OLMo-2) and models with an output
logit transform (Gemma-2/3's soft-capping), checked against a separately loaded copy of the Hugging Face
model with plain PyTorch hooks on its own modules (``post_attention_layernorm``, ``o_proj``, ``model.norm``
...), never against another circuitkit path."""

from __future__ import annotations

import json
from types import ModuleType, SimpleNamespace

import pytest
import torch
from helpers import HandTask

import circuitkit as ck
from circuitkit import engine, verify
from circuitkit.engine import readout
from circuitkit.errors import ModelLoadError
from circuitkit.interfaces import TaskConfig
from circuitkit.interventions import build_intervention
from circuitkit.model import CircuitModel, bridge_model
from circuitkit.testing_families import _randomise, save_family, tiny_family

torch.set_num_threads(1)

EPS_FD = 1e-2  # finite-difference step
#: Gemma's and OLMo-2's RMSNorms compute in float32 whatever the model's dtype, so values behind a norm carry
#: float32 rounding even in these float64 models.
EPS_NORM = torch.finfo(torch.float32).eps


def _gemma2_with_biases(path):
    """Gemma-2 with attention biases (o_proj included), to check how the output bias is shared."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    from circuitkit.testing_models import gpt2_tokenizer

    tok = gpt2_tokenizer()
    torch.manual_seed(5)
    cfg = Gemma2Config(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=64,
        initializer_range=0.1,
        attention_bias=True,
        final_logit_softcapping=5.0,
        query_pre_attn_scalar=16,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    model = Gemma2ForCausalLM(cfg)
    _randomise(model, torch.Generator().manual_seed(6))
    model.to(torch.float64).save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path


FAMILIES = ["gemma2", "gemma3", "olmo2", "gemma2_bias"]


@pytest.fixture(scope="module", params=FAMILIES)
def fam(request, tmp_path_factory):
    from transformers import AutoModelForCausalLM

    name = request.param
    path = tmp_path_factory.mktemp(name)
    if name == "gemma2_bias":
        _gemma2_with_biases(path)
    else:
        save_family(name, path, dtype=torch.float64)
    model = ck.load_model(str(path), device="cpu", dtype="float64")
    ref = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float64).eval()
    task = HandTask(TaskConfig(name="hand"))
    data = task.build(model.tokenizer, prepend_bos=model.prepend_bos)
    batch = next(data.batches(8, model.pad_id))
    return SimpleNamespace(name=name, model=model, ref=ref, task=task, data=data, batch=batch, path=path)


# ----- the reference: hooks on the Hugging Face model itself ------------------------------------------------


def _layers(ref):
    return ref.model.layers


def ref_run(ref, tokens, *, pre=None, post=None):
    """Logits of the reference model and what its modules saw: ``o_proj`` inputs, post-norm inputs and outputs,
    the final norm's input. ``pre``/``post``: ``{module: fn}`` forward pre-hooks (``fn(x) -> x``) and forward
    hooks (``fn(out) -> out``) that edit the pass."""
    cap: dict = {}
    handles = []

    def keep(key, what):
        def hook(mod, args, out=None):
            cap[key] = (args[0] if what == "in" else out).detach().clone()

        return hook

    for i, layer in enumerate(_layers(ref)):
        handles.append(layer.self_attn.o_proj.register_forward_pre_hook(keep(("z", i), "in")))
        handles.append(layer.post_attention_layernorm.register_forward_pre_hook(keep(("x", i), "in")))
        handles.append(layer.post_attention_layernorm.register_forward_hook(keep(("attn", i), "out")))
        handles.append(layer.post_feedforward_layernorm.register_forward_hook(keep(("mlp", i), "out")))
    handles.append(ref.model.embed_tokens.register_forward_hook(keep("embed", "out")))
    handles.append(ref.model.norm.register_forward_pre_hook(keep("final", "in")))
    for mod, fn in (pre or {}).items():
        handles.append(mod.register_forward_pre_hook(lambda m, args, fn=fn: (fn(args[0]), *args[1:])))
    for mod, fn in (post or {}).items():
        handles.append(mod.register_forward_hook(lambda m, args, out, fn=fn: fn(out)))
    try:
        with torch.no_grad():
            logits = ref(input_ids=tokens, attention_mask=torch.ones_like(tokens)).logits
    finally:
        for h in handles:
            h.remove()
    return logits, cap


def norm_scale(norm):
    """The RMSNorm's scale as the model applies it: Gemma's norms multiply by ``1 + w``, OLMo-2's by ``w``."""
    w = norm.weight.detach()
    return 1 + w if "Gemma" in type(norm).__name__ else w


def ref_shares(ref, cap, layer):
    """``[b, p, heads, d]``: each head's part of the normed attention output, from the reference's own
    ``o_proj`` input and weights: (z_h W_O,h + b_O / H) * rsqrt(mean(X^2) + eps) * scale."""
    attn = _layers(ref)[layer].self_attn
    norm = _layers(ref)[layer].post_attention_layernorm
    z = cap[("z", layer)]
    n_heads = ref.config.num_attention_heads
    dh = z.shape[-1] // n_heads
    w_o = attn.o_proj.weight.detach().reshape(-1, n_heads, dh)  # [d, H, dh]
    r = torch.einsum("bphk,dhk->bphd", z.reshape(*z.shape[:2], n_heads, dh), w_o)
    if attn.o_proj.bias is not None:
        r = r + attn.o_proj.bias.detach() / n_heads
    x = cap[("x", layer)]
    eps = getattr(norm, "eps", None) or norm.variance_epsilon
    inv = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return r * (inv * norm_scale(norm)).unsqueeze(-2)


def metric_of(fam, logits, batch=None):
    batch = batch or fam.batch
    return fam.task.metric(logits[torch.arange(len(batch)), batch.last], batch)


def mlp_input_module(ref, layer):
    """The module whose input is layer ``layer``'s MLP input (the residual stream, before any pre-MLP norm)."""
    lay = _layers(ref)[layer]
    return getattr(lay, "pre_feedforward_layernorm", None) or lay.mlp


# ----- tests ----------------------------------------------------------------------------------------------------


def test_head_shares_sum_to_the_normed_attention_output_and_the_sources_to_the_final_norm_input(fam):
    model, ref = fam.model, fam.ref
    g = model.graph
    tol = g.n_heads * EPS_NORM  # a sum of n_heads shares, each rounded as the norm rounds
    for tokens in (fam.batch.clean, fam.batch.corrupted):
        _, cap = ref_run(ref, tokens)
        sources = engine.run_sources(model, tokens).sources
        scale = float(cap["final"].abs().max())
        for layer in range(g.n_layers):
            shares = ref_shares(ref, cap, layer)
            # the reference split is exact: its shares add up to what the model's post-norm returned
            torch.testing.assert_close(shares.sum(2), cap[("attn", layer)], rtol=0, atol=tol * scale)
            mine = sources[g.src_head(layer, 0) : g.src_head(layer, 0) + g.n_heads].permute(1, 2, 0, 3)
            torch.testing.assert_close(mine, shares, rtol=0, atol=tol * scale)
            torch.testing.assert_close(sources[g.src_mlp(layer)], cap[("mlp", layer)], rtol=0, atol=tol * scale)
        torch.testing.assert_close(sources[0], cap["embed"], rtol=0, atol=tol * scale)
        torch.testing.assert_close(sources.sum(0), cap["final"], rtol=0, atol=tol * scale)


def test_endpoints_are_the_models_own_logits(fam):
    model, ref, batch = fam.model, fam.ref, fam.batch
    for tokens in (batch.clean, batch.corrupted):
        logits, _ = ref_run(ref, tokens)
        want = metric_of(fam, logits)
        got = engine.answer_metric(model, engine.run_sources(model, tokens).final, batch, fam.task.metric)
        tol = model.graph.n_layers * model.d_model * EPS_NORM * float(want.abs().max())
        torch.testing.assert_close(got, want, rtol=0, atol=tol)
        cap = getattr(ref.config, "final_logit_softcapping", None)
        if cap:  # the soft-capping matters here: without it the metric would be far off
            raw = cap * torch.atanh(logits / cap)
            assert float((metric_of(fam, raw) - want).abs().max()) > 1e3 * tol


def test_head_to_logits_and_mlp_edges_patch_the_share_difference(fam):
    """Exact patching of ``aL.hH->logits`` equals adding that head's corrupted-minus-clean share to the final
    norm's input; ``a0.hH->m1`` equals adding it to layer 1's MLP input (hooks on the reference model)."""
    model, ref, batch = fam.model, fam.ref, fam.batch
    g = model.graph
    scores = ck.build("methods", "patching").attribute(model, fam.task, fam.data, ck.RunContext(batch_size=8, progress=False))
    clean_logits, clean_cap = ref_run(ref, batch.clean)
    _, corr_cap = ref_run(ref, batch.corrupted)
    clean_metric = metric_of(fam, clean_logits)
    tol = g.n_layers * model.d_model * EPS_NORM * float(clean_metric.abs().max())
    for layer in range(g.n_layers):
        diff = ref_shares(ref, corr_cap, layer) - ref_shares(ref, clean_cap, layer)
        for h in range(g.n_heads):
            logits, _ = ref_run(ref, batch.clean, pre={ref.model.norm: lambda x, d=diff[:, :, h]: x + d})
            assert scores[f"a{layer}.h{h}->logits"] == pytest.approx(
                float((clean_metric - metric_of(fam, logits)).mean()), abs=tol
            )
            if layer == 0:
                logits, _ = ref_run(ref, batch.clean, pre={mlp_input_module(ref, 1): lambda x, d=diff[:, :, h]: x + d})
                assert scores[f"a0.h{h}->m1"] == pytest.approx(float((clean_metric - metric_of(fam, logits)).mean()), abs=tol)


def test_eap_matches_central_differences_of_single_edge_perturbations(fam):
    model, ref, batch = fam.model, fam.ref, fam.batch
    scores = ck.build("methods", "eap").attribute(model, fam.task, fam.data, ck.RunContext(batch_size=8, progress=False))
    _, clean_cap = ref_run(ref, batch.clean)
    _, corr_cap = ref_run(ref, batch.corrupted)
    diffs = {layer: ref_shares(ref, corr_cap, layer) - ref_shares(ref, clean_cap, layer) for layer in range(2)}
    mlp0 = corr_cap[("mlp", 0)] - clean_cap[("mlp", 0)]

    def central(module, d, h):
        up, _ = ref_run(ref, batch.clean, pre={module: lambda x: x + h * d})
        down, _ = ref_run(ref, batch.clean, pre={module: lambda x: x - h * d})
        return -float((metric_of(fam, up) - metric_of(fam, down)).mean()) / (2 * h)

    def fd(module, d):
        # Richardson's extrapolation of two central differences: error O(h^4), plus the norms' float32
        # rounding divided by h (the step cannot be small: the norms round to float32).
        return (4 * central(module, d, EPS_FD / 2) - central(module, d, EPS_FD)) / 3

    clean_logits, _ = ref_run(ref, batch.clean)
    noise = model.d_model * EPS_NORM * float(metric_of(fam, clean_logits).abs().max()) / EPS_FD

    cases = {f"a{L}.h{h}->logits": (ref.model.norm, diffs[L][:, :, h]) for L in range(2) for h in range(4)}
    cases.update({f"a0.h{h}->m1": (mlp_input_module(ref, 1), diffs[0][:, :, h]) for h in range(4)})
    cases["m0->logits"] = (ref.model.norm, mlp0)
    for edge, (module, d) in cases.items():
        assert scores[edge] == pytest.approx(fd(module, d), rel=1e-4, abs=noise), edge


def test_node_patching_replaces_the_heads_share(fam):
    """Node-level exact patching of a head (every outgoing edge corrupted) replaces its share of the normed
    output, the other heads keeping theirs: the reference adds the share difference after the post-norm."""
    model, ref, batch = fam.model, fam.ref, fam.batch
    g = model.graph
    nodes = ck.build("methods", "patching", level="node").attribute(
        model, fam.task, fam.data, ck.RunContext(batch_size=8, progress=False)
    )
    node = dict(zip(g.source_names, nodes.nodes.tolist()))
    clean_logits, clean_cap = ref_run(ref, batch.clean)
    _, corr_cap = ref_run(ref, batch.corrupted)
    clean_metric = metric_of(fam, clean_logits)
    tol = g.n_layers * model.d_model * EPS_NORM * float(clean_metric.abs().max())
    for layer in range(g.n_layers):
        diff = ref_shares(ref, corr_cap, layer) - ref_shares(ref, clean_cap, layer)
        post = _layers(ref)[layer].post_attention_layernorm
        for h in (0, 3):
            logits, _ = ref_run(ref, batch.clean, post={post: lambda out, d=diff[:, :, h]: out + d})
            assert node[f"a{layer}.h{h}"] == pytest.approx(float((clean_metric - metric_of(fam, logits)).mean()), abs=tol)


def test_neuron_level_gradient_is_the_gradient_at_the_normed_output(fam):
    """Neuron-level EAP of a head: its share difference times the gradient at the post-norm's output
    (autograd on the reference model), per output dimension."""
    model, ref, batch = fam.model, fam.ref, fam.batch
    g = model.graph
    scores = ck.build("methods", "eap", level="neuron").attribute(
        model, fam.task, fam.data, ck.RunContext(batch_size=8, progress=False)
    )
    _, clean_cap = ref_run(ref, batch.clean)
    _, corr_cap = ref_run(ref, batch.corrupted)
    box = {}

    def grab(mod, args, out):
        out = out.detach().requires_grad_(True)
        box["out"] = out
        return out

    post = _layers(ref)[1].post_attention_layernorm
    handle = post.register_forward_hook(grab)
    try:
        with torch.enable_grad():
            logits = ref(input_ids=batch.clean, attention_mask=torch.ones_like(batch.clean)).logits
            (grad,) = torch.autograd.grad(metric_of(fam, logits).sum(), box["out"])
    finally:
        handle.remove()
    clean, corr = ref_shares(ref, clean_cap, 1), ref_shares(ref, corr_cap, 1)
    want = torch.einsum("bphd,bpd->hd", clean - corr, grad) / len(batch)
    got = scores.neurons[g.src_head(1, 0) : g.src_head(1, 0) + g.n_heads]
    # circuitkit's shares and gradients carry the norms' float32 rounding (relative to the shares, not to
    # their difference), a few times over
    bound = g.n_heads * EPS_NORM * torch.einsum("bphd,bpd->hd", clean.abs() + corr.abs(), grad.abs()) / len(batch)
    assert bool(((got - want).abs() <= bound).all()), float(((got - want).abs() / bound).max())


def test_zero_ablation_of_every_head_removes_the_normed_attention_output(fam):
    """Zero ablation sets a head's share (its part of the bias included) to zero: zeroing every head of a layer
    removes what the layer's normed attention adds (the reference zeroes the post-norm's output)."""
    model, ref, batch = fam.model, fam.ref, fam.batch
    g = model.graph
    iv = build_intervention(model, fam.data, "zero")
    removed = iv.values(model, batch)
    keep = torch.ones(1, g.n_sources, g.n_destinations)
    heads = list(range(g.src_head(0, 0), g.src_head(0, 0) + g.n_heads))
    # every outgoing edge of every head of layer 0 removed
    keep[0, heads, :] = 0
    final = engine.masked_forward(model, batch.clean, removed, keep)
    got = engine.answer_metric(model, final, batch, fam.task.metric)
    post = _layers(ref)[0].post_attention_layernorm
    logits, _ = ref_run(ref, batch.clean, post={post: torch.zeros_like})
    want = metric_of(fam, logits)
    tol = g.n_layers * model.d_model * EPS_NORM * float(want.abs().max())
    torch.testing.assert_close(got, want, rtol=0, atol=tol)


def test_softcapped_logits_in_float32_are_the_models():
    """Endpoints within float32 rounding of the Hugging Face model's own (soft-capped) logits."""
    hf, tok = tiny_family("gemma2", seed=11)
    import copy

    ref = copy.deepcopy(hf)
    model = bridge_model(hf, tok, name="gemma2-f32", device="cpu")
    tokens = torch.randint(0, len(tok), (3, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = ref(input_ids=tokens).logits
        got = model.unembed(engine.run_sources(model, tokens).final)
        raw = model.bridge.unembed(model.bridge.ln_final(engine.run_sources(model, tokens).final))
    tol = model.graph.n_layers * model.d_model * torch.finfo(torch.float32).eps * float(want.abs().max())
    torch.testing.assert_close(got, want, rtol=0, atol=tol)
    assert float((raw - want).abs().max()) > 1e3 * tol  # the cap changes these logits


# ----- the check at load -------------------------------------------------------------------------------------


def _old_head_outputs(model, layer, fn):
    """The decomposition before post-norm shares: heads read before the norm (wrong for these models)."""
    return [(model.head_out_hook(layer), fn)]


def _break_head_outputs(monkeypatch):
    """Every engine module that reads head outputs reads them with :func:`_old_head_outputs`."""
    for mod in [engine, *(m for m in vars(engine).values() if isinstance(m, ModuleType))]:
        if hasattr(mod, "head_output_hooks"):
            monkeypatch.setattr(mod, "head_output_hooks", _old_head_outputs)


def test_a_broken_decomposition_is_refused_naming_the_identity_and_family(monkeypatch):
    _break_head_outputs(monkeypatch)
    hf, tok = tiny_family("gemma2", seed=21)
    with pytest.raises(ModelLoadError) as err:
        bridge_model(hf, tok, name="broken-gemma2", device="cpu")
    msg = str(err.value)
    assert "\n" not in msg
    assert "Gemma2ForCausalLM (gemma2)" in msg and "not the input plus the sum of the head and MLP outputs" in msg
    assert "largest difference" in msg and "allow_unverified" in msg


def test_missing_logit_transform_is_refused(monkeypatch):
    monkeypatch.setattr(CircuitModel, "logit_transform", lambda self, logits: logits)
    hf, tok = tiny_family("gemma2", seed=22)
    with pytest.raises(ModelLoadError, match="circuitkit's logits differ from the model's"):
        bridge_model(hf, tok, name="uncapped-gemma2", device="cpu")


def test_allow_unverified_warns_and_is_recorded_in_results(monkeypatch, tmp_path, caplog):
    from circuitkit.pipeline import run

    _break_head_outputs(monkeypatch)
    path = save_family("olmo2", tmp_path / "olmo2", seed=23)
    cfg = {
        "model": {"name": str(path), "device": "cpu", "allow_unverified": True},
        "method": {"name": "eap"},
        "task": {"name": "greater_than", "n_examples": 4},
        "selector": {"name": "top_n", "n_edges": 10},
        "evaluator": {"faithfulness": {}},
        "progress": False,
        "cache": False,
        "pictures": False,
    }
    with caplog.at_level("WARNING", logger="circuitkit"):
        result = run(cfg, tmp_path / "run")
    assert result.status == "complete"
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "could not verify" in r.getMessage()]
    assert len(warned) == 1 and "Olmo2ForCausalLM" in warned[0] and "allow_unverified" in warned[0]
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert "Olmo2ForCausalLM" in saved["meta"]["model_unverified"]
    assert "not the input plus the sum" in saved["meta"]["model_unverified"]
    monkeypatch.undo()
    # without the option the same directory is refused
    _break_head_outputs(monkeypatch)
    verify._VERIFIED.clear()
    with pytest.raises(ModelLoadError):
        ck.load_model(str(path), device="cpu")


def test_the_check_runs_once_per_weights(monkeypatch):
    calls = []
    real = verify._reference
    monkeypatch.setattr(verify, "_reference", lambda *a: calls.append(1) or real(*a))
    hf, tok = tiny_family("olmo2", seed=24)
    first = bridge_model(hf, tok, name="a", device="cpu")
    assert calls and first.verification.ok
    before = len(calls)
    hf2, _ = tiny_family("olmo2", seed=24)
    second = bridge_model(hf2, tok, name="b", device="cpu")  # the same weights: the check is not run again
    assert len(calls) == before and first.verification is second.verification


def test_verified_on_pre_norm_families_too():
    for family in ("gpt2", "llama", "gpt_neox_parallel", "phi3"):
        hf, tok = tiny_family(family, seed=25)
        model = bridge_model(hf, tok, name=family, device="cpu")
        assert model.verification.ok and model.unverified is None, (family, model.verification.failures)


def _logit_scaled(family):
    from transformers import CohereConfig, CohereForCausalLM, GraniteConfig, GraniteForCausalLM

    from circuitkit.testing_families import _llama_like
    from circuitkit.testing_models import gpt2_tokenizer

    tok = gpt2_tokenizer()
    torch.manual_seed(31)
    if family == "granite":  # logits divided by logits_scaling; residual and embedding multipliers too
        cfg = GraniteConfig(
            **_llama_like(tok, num_key_value_heads=2), logits_scaling=4.0, residual_multiplier=0.5, embedding_multiplier=3.0
        )
        hf = GraniteForCausalLM(cfg)
    else:  # logits multiplied by logit_scale
        hf = CohereForCausalLM(CohereConfig(**_llama_like(tok, num_key_value_heads=2), logit_scale=0.25))
    _randomise(hf, torch.Generator().manual_seed(32))
    return hf.eval(), tok


@pytest.mark.parametrize("family", ["granite", "cohere"])
def test_logit_scales_are_applied(family):
    import copy

    hf, tok = _logit_scaled(family)
    ref = copy.deepcopy(hf)
    # Cohere's attention and MLP share one input norm, so its MLP-input hook is dead (refused by default);
    # the logits are what this test is about.
    model = bridge_model(hf, tok, name=family, device="cpu", allow_unverified=family == "cohere")
    tokens = torch.randint(0, len(tok), (3, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = ref(input_ids=tokens).logits
        final = engine.run_sources(model, tokens).final
        got = model.unembed(final)
        raw = model.bridge.unembed(model.bridge.ln_final(final))
        ids = torch.tensor([3, 50, 1000])
        cols = readout._unembed_columns(model, final[:, -1], ids)
    tol = model.graph.n_layers * model.d_model * torch.finfo(torch.float32).eps * float(want.abs().max())
    torch.testing.assert_close(got, want, rtol=0, atol=tol)
    torch.testing.assert_close(cols, want[:, -1, ids], rtol=0, atol=tol)
    assert float((raw - want).abs().max()) > 1e3 * tol  # the scale changes these logits


def test_a_model_whose_forward_fails_is_refused_even_when_unverified_is_allowed(monkeypatch):
    def fails(*args):
        raise RuntimeError("expected m1 and m2 to have the same dtype")

    monkeypatch.setattr(verify, "_reference", fails)
    hf, tok = tiny_family("llama", seed=26)
    with pytest.raises(ModelLoadError, match="cannot run through TransformerLens' bridge in float32: a forward pass"):
        bridge_model(hf, tok, name="fails", device="cpu", allow_unverified=True)


def test_a_post_attention_norm_other_than_rmsnorm_is_refused(monkeypatch):
    """The shares are written for RMSNorm; a model whose post-attention norm centres (LayerNorm) is refused."""
    from circuitkit.model import _check_post_norms

    hf, tok = tiny_family("gemma2", seed=27)
    model = bridge_model(hf, tok, name="g2", device="cpu")
    norm = model.bridge.blocks[1].ln1_post
    monkeypatch.setattr(type(norm), "uses_rms_norm", property(lambda self: False))
    with pytest.raises(
        ModelLoadError,
        match="before it joins the residual stream; circuitkit splits such a normed output between the heads for RMSNorm only",
    ):
        _check_post_norms(model.bridge, "g2", "Gemma2ForCausalLM", model.graph.n_layers)
