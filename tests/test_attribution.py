"""Attribution and evaluation against independent computations on tiny random models."""

import math

import numpy as np
import pytest
import torch
from helpers import float_tol, input_gradient_scores, patched_metric, plain_metric

import circuitkit as ck
from circuitkit import engine
from circuitkit.data import Example, tokenize_examples
from circuitkit.engine import fastpaths, forward, gradient, memory, readout
from circuitkit.evaluation import evaluate_keeps
from circuitkit.metrics import logit_diff
from circuitkit.results import Circuit

EXAMPLES = [
    Example(
        "When Mary and John went to the store, John gave a drink to",
        "When Mary and John went to the store, Anne gave a drink to",
        (" Mary",),
        (" John",),
    ),
    Example(
        "The war lasted from the year 1732 to the year 17", "The war lasted from the year 1701 to the year 17", (" 45",), (" 01",)
    ),
    Example("The key to the cabinets", "The keys to the cabinets", (" is",), (" are",)),
    Example("After Tom and Anna left, Tom said to", "After Tom and Anna left, Paul said to", (" Anna",), (" Tom",)),
    Example("Paris, the capital of", "London, the capital of", (" France",), (" England",)),
    Example("The nurse said that", "The pilot said that", (" she",), (" he",)),
    Example("She went to the park and then", "He went to the park and then", (" she",), (" he",)),
    Example("One two three one two", "Six nine four one two", (" three",), ()),
]


class _Task(ck.Task):
    def generate(self, tokenizer, split):
        return iter(EXAMPLES)


@pytest.fixture(scope="module")
def task():
    return _Task(ck.TaskConfig(name="hand", metric="logit_diff"))


def data_for(model, n=len(EXAMPLES)):
    return tokenize_examples("hand", EXAMPLES[:n], model.tokenizer)


def ctx(batch_size=8):
    return ck.RunContext(batch_size=batch_size, progress=False)


def test_eap_equals_finite_differences_of_single_edge_patches(tiny_model64, task):
    """EAP's score of an edge is the derivative of the metric along that edge's corruption, at the clean
    run: checked against a central finite difference of a hand-written single-edge hook."""
    model = tiny_model64
    data = data_for(model, 4)
    scores = ck.build("methods", "eap").attribute(model, task, data, ctx())
    batch = next(data.batches(8))
    rng = np.random.default_rng(0)
    picks = list(rng.choice(model.graph.n_edges, 25, replace=False)) + [
        model.graph.index_of(e) for e in ("m0->m1", "a0.h1->m1", "input->logits", "m1->logits")
    ]
    eps = 1e-5
    for i in picks:
        edge = model.graph.edge_names[i]
        up = patched_metric(model, batch, logit_diff, edge, eps).mean()
        down = patched_metric(model, batch, logit_diff, edge, -eps).mean()
        drop_rate = -(up - down).item() / (2 * eps)  # d(drop)/d(fraction corrupted)
        assert scores[edge] == pytest.approx(drop_rate, rel=1e-4, abs=1e-9), edge


def test_ig_with_one_step_is_eap_and_two_steps_is_the_mean_of_two_gradients(tiny_model64, task):
    model = tiny_model64
    data = data_for(model, 5)
    eap = ck.build("methods", "eap").attribute(model, task, data, ctx())
    ig1 = ck.build("methods", "eap_ig", ig_steps=1).attribute(model, task, data, ctx())
    assert torch.allclose(eap.values, ig1.values, rtol=1e-12, atol=1e-15)

    ig2 = ck.build("methods", "eap_ig", ig_steps=2).attribute(model, task, data, ctx())
    cc = ck.build("methods", "clean_corrupted").attribute(model, task, data, ctx())
    batch = next(data.batches(8))
    g = model.graph
    grads = {a: input_gradient_scores(model, batch, logit_diff, a) for a in (0.0, 0.5, 1.0)}
    # Reference scores from autograd.grad, contracted with source differences captured by hand.
    from helpers import capture, source_hook

    diffs = {}
    for s in g.source_names:
        hook, head = source_hook(model, s)
        diffs[s] = capture(model, batch.clean, hook, head) - capture(model, batch.corrupted, hook, head)
    n = len(batch)
    for edge in ["input->a0.h0<q>", "a0.h2->a1.h1<k>", "m0->a1.h2<v>", "a1.h0->m1", "m0->logits", "input->m0"]:
        src, dst = edge.split("->")
        if dst == "logits":
            key, head = "logits", None
        elif "<" in dst:
            node, q = dst[:-1].split("<")
            key, head = f"{node[1]}{q}", int(node.split(".h")[1])
        else:
            key, head = f"{dst[1:]}m", None

        def dot(a, key=key, head=head, src=src):
            gr = grads[a][key]
            gr = gr[:, :, head] if head is not None else gr
            return float((diffs[src] * gr).sum()) / n

        assert ig2[edge] == pytest.approx((dot(0.5) + dot(1.0)) / 2, rel=1e-9, abs=1e-12), edge
        assert cc[edge] == pytest.approx((dot(0.0) + dot(1.0)) / 2, rel=1e-9, abs=1e-12), edge
        assert eap[edge] == pytest.approx(dot(1.0), rel=1e-9, abs=1e-12), edge


def test_ig_input_edges_satisfy_completeness_as_steps_grow(tiny_model64, task):
    """The input node feeds every destination, so the sum of its edge scores is the integrated-gradients
    attribution of the input embedding, which converges to metric(clean) - metric(corrupted)."""
    model = tiny_model64
    data = data_for(model, 4)
    batch = next(data.batches(8))
    target = (
        (plain_metric(model, batch.clean, batch, logit_diff) - plain_metric(model, batch.corrupted, batch, logit_diff))
        .mean()
        .item()
    )
    g = model.graph
    errors = []
    for steps in (1, 4, 64):
        s = ck.build("methods", "eap_ig", ig_steps=steps).attribute(model, task, data, ctx())
        total = float(s.dense()[0].sum())
        errors.append(abs(total - target))
    assert errors[2] < 0.02 * abs(target) + 1e-9
    assert errors[2] < errors[0]
    assert g.n_edges == len(s)


def test_patching_equals_all_but_one_circuits_and_hand_written_patches(tiny_model, task):
    model = tiny_model
    data = data_for(model, 6)
    g = model.graph
    named = [g.index_of(e) for e in ("m1->logits", "input->logits", "a1.h0->m1", "m0->a1.h2<k>", "input->a0.h1<v>", "a0.h3->m0")]
    rest = [i for i in np.random.default_rng(1).choice(g.n_edges, 12, replace=False) if i not in named]
    picks = torch.tensor(named + rest)  # every layer group, the logits included
    from circuitkit.attribution import exact_patching

    s = exact_patching(model, task, data, ctx(batch_size=4), edges_per_pass=5, edges=picks)
    keeps = []
    for i in picks.tolist():
        mask = np.ones(g.n_edges, bool)
        mask[i] = False
        keeps.append(Circuit(g, mask).keep_dense())
    ev = evaluate_keeps(model, task, data, torch.stack(keeps), ctx(batch_size=8))
    batch = next(data.batches(8))
    tol = float_tol(model, abs(ev.clean) + abs(ev.corrupted))
    for k, i in enumerate(picks.tolist()):
        edge = g.edge_names[i]
        assert s[edge] == pytest.approx(ev.clean - ev.circuits[k], abs=tol), edge
        hand = (
            (plain_metric(model, batch.clean, batch, logit_diff) - patched_metric(model, batch, logit_diff, edge)).mean().item()
        )
        assert s[edge] == pytest.approx(hand, abs=tol), edge
    assert torch.isnan(s.values).sum() == g.n_edges - len(picks)


def test_evaluation_endpoints(tiny_model, task):
    model = tiny_model
    data = data_for(model)
    g = model.graph
    ev = evaluate_keeps(
        model, task, data, torch.stack([Circuit.empty(g).keep_dense(), Circuit.full(g).keep_dense()]), ctx(batch_size=3)
    )
    batch = next(data.batches(8))
    clean = plain_metric(model, batch.clean, batch, logit_diff).mean().item()
    corrupted = plain_metric(model, batch.corrupted, batch, logit_diff).mean().item()
    tol = float_tol(model, abs(clean) + abs(corrupted))
    assert ev.circuits[0] == pytest.approx(corrupted, abs=tol)
    assert ev.circuits[1] == pytest.approx(clean, abs=tol)
    assert ev.clean == pytest.approx(clean, abs=tol) and ev.corrupted == pytest.approx(corrupted, abs=tol)
    ratio_tol = 4 * tol / abs(clean - corrupted)  # faithfulness divides by the clean-corrupted gap
    assert ev.faithfulness(ev.circuits[1]) == pytest.approx(1.0, abs=ratio_tol)
    assert ev.faithfulness(ev.circuits[0]) == pytest.approx(0.0, abs=ratio_tol)
    res = ck.build("evaluators", "faithfulness").evaluate(model, task, data, Circuit.full(g), ctx())
    assert res.values["faithfulness"] == pytest.approx(1.0, abs=ratio_tol)


@pytest.mark.parametrize("method", ["eap", "eap_ig", "clean_corrupted"])
def test_scores_do_not_depend_on_batch_size(tiny_model, task, method):
    data = data_for(tiny_model)
    runs = [ck.build("methods", method).attribute(tiny_model, task, data, ctx(batch_size=b)).values for b in (1, 3, 8)]
    scale = runs[0].abs().max()
    for other in runs[1:]:
        assert torch.allclose(other, runs[0], rtol=0, atol=float_tol(tiny_model, scale))


def test_patching_does_not_depend_on_batch_size(tiny_model, task):
    from circuitkit.attribution import exact_patching

    data = data_for(tiny_model)
    picks = torch.arange(0, tiny_model.graph.n_edges, 7)
    a = exact_patching(tiny_model, task, data, ctx(batch_size=1), edges=picks, edges_per_pass=16).values
    b = exact_patching(tiny_model, task, data, ctx(batch_size=8), edges=picks, edges_per_pass=3).values
    ok = ~torch.isnan(a)
    batch = next(data.batches(len(data)))
    scale = plain_metric(tiny_model, batch.clean, batch, logit_diff).abs().max()  # a score is a difference of metrics
    assert torch.allclose(a[ok], b[ok], rtol=0, atol=float_tol(tiny_model, scale))


def test_scores_are_indexable_by_edge_name_and_deterministic(tiny_model, task):
    data = data_for(tiny_model, 3)
    s1 = ck.build("methods", "eap_ig").attribute(tiny_model, task, data, ctx())
    s2 = ck.build("methods", "eap_ig").attribute(tiny_model, task, data, ctx())
    assert torch.equal(s1.values, s2.values)  # bit-identical on CPU
    assert s1["input->logits"] == float(s1.values[tiny_model.graph.index_of("input->logits")])
    assert len(dict(s1)) == tiny_model.graph.n_edges


def test_top_n_selection(tiny_model, task):
    data = data_for(tiny_model, 3)
    s = ck.build("methods", "eap").attribute(tiny_model, task, data, ctx())
    c = ck.build("selectors", "top_n", n_edges=30).select(s)
    assert 0 < c.n_edges <= 30
    assert (tiny_model.graph.prune(c.edges) == c.edges).all()
    top = {n for n, _ in s.top(30)}
    assert set(c.edge_names) <= top
    with pytest.raises(ck.CircuitkitError, match="larger than the graph"):
        ck.build("selectors", "top_n", n_edges=10**6).select(s)
    with pytest.raises(ck.CircuitkitError, match="non-negative"):
        ck.build("selectors", "top_n", n_edges=-1).select(s)


def test_engine_keeps_scores_in_graph_layout(tiny_model):
    g = tiny_model.graph
    run = engine.run_sources(tiny_model, torch.tensor([[50256, 464, 1175]]))
    assert run.sources.shape == (g.n_sources, 1, 3, tiny_model.d_model)


def test_low_precision_buffer_is_close_and_contraction_chunking_is_exact(tiny_model, task, monkeypatch):
    data = data_for(tiny_model)
    full = ck.build("methods", "eap_ig", ig_steps=3).attribute(tiny_model, task, data, ctx())
    c = ctx()
    c.buffer_dtype = "bfloat16"
    low = ck.build("methods", "eap_ig", ig_steps=3).attribute(tiny_model, task, data, c)
    scale = float(full.values.abs().max())
    assert float((low.values - full.values).abs().max()) < 2e-2 * scale
    # Chunked conversion of a low-precision buffer equals converting it whole.
    monkeypatch.setattr(gradient, "CONTRACT_CHUNK", 3)
    low3 = ck.build("methods", "eap_ig", ig_steps=3).attribute(tiny_model, task, data, c)
    assert torch.allclose(low3.values, low.values, rtol=1e-6, atol=1e-9 * scale)


def test_memory_estimate_refuses_runs_that_cannot_fit(tiny_model, task, monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda device: 1000)
    with pytest.raises(ck.CircuitkitError, match="Lower batch_size"):
        ck.build("methods", "eap").attribute(tiny_model, task, data_for(tiny_model), ctx())


@pytest.mark.parametrize("intervention", ["patching", "zero", "mean_positional"])
@pytest.mark.parametrize(("method", "options"), [("eap", {}), ("eap_ig", {"ig_steps": 3}), ("clean_corrupted", {})])
def test_positions_per_pass_gives_the_same_scores(tiny_model64, task, method, options, intervention):
    """Attribution with the difference buffer holding 1, 2 or 3 positions at a time (the passes repeated per
    group) equals the one-pass scores: edge and neuron level (EAP, EAP-IG), every intervention."""
    from circuitkit.interventions import build_intervention

    data = data_for(tiny_model64)
    iv = build_intervention(tiny_model64, data, intervention)

    def run(k, level):
        c = ctx(batch_size=4)
        c.intervention = iv
        if k is not None:
            c.positions_per_pass = k
        s = ck.build("methods", method, **options, **({"level": level} if level != "edge" else {})).attribute(
            tiny_model64, task, data, c
        )
        return s.values if level == "edge" else s.neurons

    for level in ("edge", "neuron") if method != "clean_corrupted" else ("edge",):
        full = run(None, level)
        assert full.abs().max() > 0
        for k in (1, 2, 3):
            chunked = run(k, level)
            assert torch.allclose(chunked, full, rtol=1e-9, atol=1e-12 * float(full.abs().max())), (level, k)


def test_positions_per_pass_divides_the_memory_estimate_and_is_checked(tiny_model, task, monkeypatch):
    data = data_for(tiny_model)
    width = max(len(x) for x in data.clean_ids)
    full = memory.attribution_memory(tiny_model, 8, width, per_example=True).total
    two = memory.attribution_memory(tiny_model, 8, width, positions=2, per_example=True).total
    assert two < full
    monkeypatch.setattr(memory, "available_bytes", lambda device: (full + two) // 2)
    with pytest.raises(ck.CircuitkitError, match="positions_per_pass"):
        ck.build("methods", "eap").attribute(tiny_model, task, data, ctx())
    c = ctx()
    c.positions_per_pass = 2
    low = ck.build("methods", "eap").attribute(tiny_model, task, data, c).values
    monkeypatch.undo()
    plain = ck.build("methods", "eap").attribute(tiny_model, task, data, ctx()).values
    assert torch.allclose(low, plain, rtol=1e-5, atol=1e-6 * float(plain.abs().max()))
    for bad in (0, -1, 1.5, "two", True):
        c.positions_per_pass = bad
        with pytest.raises(ck.CircuitkitError, match="positions_per_pass must be a positive integer"):
            ck.build("methods", "eap").attribute(tiny_model, task, data, c)


def test_parallel_attention_mlp_model_gpt_neox(tokenizer, task):
    """GPT-NeoX/Pythia blocks read attention and MLP from the same residual: the graph has no
    same-layer head->MLP edges, EAP matches finite differences and the evaluation endpoints hold."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(0)
    cfg = GPTNeoXConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        use_parallel_residual=True,
    )
    model = ck.bridge_model(GPTNeoXForCausalLM(cfg).double(), tokenizer, name="tiny-neox", device="cpu")
    assert model.graph.parallel_attn_mlp and "a0.h0->m0" not in model.graph.edge_index
    data = data_for(model, 4)
    s = ck.build("methods", "eap").attribute(model, task, data, ctx())
    batch = next(data.batches(8))
    for edge in ["input->a0.h0<q>", "a0.h1->a1.h0<k>", "m0->a1.h2<v>", "a1.h0->logits", "a0.h2->m1"]:
        eps = 1e-5
        fd = -(
            patched_metric(model, batch, logit_diff, edge, eps).mean()
            - patched_metric(model, batch, logit_diff, edge, -eps).mean()
        ).item() / (2 * eps)
        assert s[edge] == pytest.approx(fd, rel=1e-4, abs=1e-9), edge
    g = model.graph
    ev = evaluate_keeps(model, task, data, torch.stack([Circuit.empty(g).keep_dense(), Circuit.full(g).keep_dense()]), ctx())
    assert ev.circuits[0] == pytest.approx(ev.corrupted, abs=1e-6) and ev.circuits[1] == pytest.approx(ev.clean, abs=1e-6)
    from circuitkit.attribution import exact_patching

    edges = ["input->a0.h0<q>", "a0.h1->a1.h0<k>", "m0->a1.h2<v>", "a1.h0->logits", "a0.h2->m1", "input->m0"]
    exact = exact_patching(model, task, data, ctx(), edges=torch.tensor([g.index_of(e) for e in edges]), edges_per_pass=4)
    for edge in edges:
        hand = (
            (plain_metric(model, batch.clean, batch, logit_diff) - patched_metric(model, batch, logit_diff, edge)).mean().item()
        )
        assert exact[edge] == pytest.approx(hand, rel=1e-7, abs=1e-9), edge


@pytest.mark.parametrize(("arch", "metric"), [("gpt2", "logit_diff"), ("llama", "logit_diff"), ("gpt2", "prob_diff")])
def test_exact_patching_shortcuts_leave_scores_unchanged(arch, metric, tokenizer, tiny_model64, monkeypatch):
    """Skipping the blocks before a group's layer, running layers without per-head inputs, replacing
    single heads' q/k/v projections (instead of per-head inputs), unembedding only the answer tokens (or
    accumulating the softmax normaliser over vocabulary chunks), running the last MLP only at the answer
    position and GPT-2's GELU as a fused kernel give the scores of the plain computation."""
    from circuitkit.attribution import exact_patching
    from circuitkit.testing_models import tiny_llama

    task = _Task(ck.TaskConfig(name="hand", metric=metric))
    if arch == "gpt2":
        model = tiny_model64
    else:
        model = tiny_llama(n_layers=3, n_heads=4, n_kv_heads=2, d_model=32, dtype=torch.float64, tokenizer=tokenizer)
    assert (
        fastpaths._projected_inputs_ok(model)
        and fastpaths._skipping_is_exact(model)
        and fastpaths._plain_attention_is_close(model)
    )
    shortcut = task.answer_logits_metric() if metric == "logit_diff" else task.answer_probs_metric()
    assert fastpaths._unembed_columns_ok(model) and shortcut is not None and fastpaths._last_mlp_ok(model)
    data = data_for(model)
    fast = exact_patching(model, task, data, ctx(batch_size=4), edges_per_pass=7).values
    assert fastpaths._fused_gelu_ok(model) == (arch == "gpt2")  # GPT-2's gelu_new; Llama's SiLU is fused already
    for name in ("projected_inputs", "skip_blocks", "plain_attention", "unembed_columns", "last_mlp", "fused_gelu"):
        monkeypatch.setattr(model.capabilities, name, fastpaths.Outcome("failed", "turned off by the test"))
    plain = exact_patching(model, task, data, ctx(batch_size=4), edges_per_pass=7).values
    assert not torch.isnan(fast).any()
    assert torch.allclose(fast, plain, rtol=1e-5, atol=1e-5 * float(plain.abs().max()))


def test_fused_gelu_leaves_gradient_and_patching_scores_unchanged_and_is_undone(tokenizer, task, monkeypatch):
    """GPT-2's ``gelu_new`` (eight elementwise operations) run as PyTorch's fused tanh GELU in every pass:
    float32 EAP, EAP-IG and exact patching scores stay within 1e-5 of the unfused ones, and the modules
    are back to their own forward after each pass, also one that fails."""
    from circuitkit.attribution import exact_patching
    from circuitkit.testing_models import tiny_gpt2

    model = tiny_gpt2(tokenizer=tokenizer, seed=3)
    mods = forward._tanh_gelu_modules(model)
    assert len(mods) == 2 and all(type(m).__name__ == "NewGELUActivation" for m in mods)
    assert fastpaths._fused_gelu_ok(model)
    data = data_for(model)
    calls = []
    fused_gelu = forward._fused_tanh_gelu
    monkeypatch.setattr(forward, "_fused_tanh_gelu", lambda x: calls.append(1) or fused_gelu(x))
    runs = {}
    for fused in (True, False):
        model.capabilities.fused_gelu = fastpaths.Outcome("ok" if fused else "failed")
        calls.clear()
        runs[fused] = [
            ck.build("methods", "eap").attribute(model, task, data, ctx()).values,
            ck.build("methods", "eap_ig", ig_steps=3).attribute(model, task, data, ctx()).values,
            exact_patching(model, task, data, ctx(), edges_per_pass=5).values,
        ]
        assert bool(calls) == fused
    for fast, plain in zip(runs[True], runs[False]):
        assert torch.allclose(fast, plain, rtol=1e-5, atol=1e-5 * float(plain.abs().max()))
    assert all("forward" not in m.__dict__ for m in mods)

    model.capabilities.fused_gelu = fastpaths.Outcome("ok")

    def fail(t, hook):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        forward._forward(model, torch.tensor([list(data.clean_ids[0])]), [("blocks.1.hook_resid_pre", fail)])
    assert all("forward" not in m.__dict__ for m in mods)


@pytest.mark.parametrize("metric", ["logit_diff", "logit", "prob_diff", "logprob"])
def test_answer_metric_equals_the_metric_of_the_full_logits(tiny_model, metric):
    data = data_for(tiny_model)
    batch = next(data.batches(8))
    final = engine.run_sources(tiny_model, batch.clean).final
    t = _Task(ck.TaskConfig(name="hand", metric=metric))
    assert (t.answer_logits_metric() is not None) == (metric in ("logit_diff", "logit"))
    assert (t.answer_probs_metric() is not None) == (metric in ("prob_diff", "logprob"))
    full = t.metric(engine.answer_logits(tiny_model, final, batch.last), batch)
    assert torch.allclose(
        engine.answer_metric(tiny_model, final, batch, t.metric), full, rtol=0, atol=float_tol(tiny_model, full.abs().max())
    )


@pytest.mark.parametrize("gain", [0.0, 1.0, 30.0, 3000.0])
@pytest.mark.parametrize("chunk", [7, 1024, 10**6])
def test_answer_and_rest_logits_give_the_full_softmax(tiny_model, gain, chunk, monkeypatch):
    """The answer columns plus the other tokens' log-mass give the answers the probabilities and log
    probabilities of the full softmax: from a flat distribution (final norm gain 0) to one where one answer
    holds all the mass (gain 3000), with the vocabulary in many chunks, a few, or one."""
    monkeypatch.setattr(readout, "VOCAB_CHUNK", chunk)
    ln = tiny_model.bridge.ln_final.original_component
    gen = torch.Generator().manual_seed(1)
    resid = torch.randn(5, tiny_model.d_model, generator=gen)
    saved = ln.weight.detach().clone()
    try:
        with torch.no_grad():
            ln.weight.mul_(gain)
            full = tiny_model.unembed(resid).double()
            ids = torch.cat([full.argmax(-1).unique(), torch.tensor([262, 4000, 50256])]).unique()
            mine = readout._answer_and_rest_logits(tiny_model, resid, ids).double()
    finally:
        with torch.no_grad():
            ln.weight.copy_(saved)
    assert mine.shape == (5, len(ids) + 1)
    # Both sides are float32 logits computed by different kernels (a full matrix product vs chunked ones), so
    # each logit may differ by the float32 rounding bound of its dot product, n * eps * sum_i |x_i w_i| + |b|
    # (n = d_model), and the normaliser by that plus the rounding of its sum over the vocabulary. A wrong
    # normaliser or a missing share of the mass moves probabilities by orders of magnitude more.
    with torch.no_grad():
        ln.weight.mul_(gain)
        try:
            normed, w, bias = readout._final_norm_and_unembedding(tiny_model, resid)
        finally:
            ln.weight.copy_(saved)
    eps = torch.finfo(normed.dtype).eps
    magnitude = normed.double().abs() @ w.double().abs().T + (0 if bias is None else bias.double().abs())
    logit_err = 2 * tiny_model.d_model * eps * float(magnitude.max())  # both sides' rounding
    norm_err = logit_err + 2 * math.log2(full.shape[-1]) * eps  # + the sums over the vocabulary
    want_p, got_p = full.softmax(-1)[:, ids], mine.softmax(-1)[:, : len(ids)]
    assert torch.allclose(got_p, want_p, rtol=logit_err + norm_err, atol=4 * eps)
    want_logp, got_logp = full.log_softmax(-1)[:, ids], mine.log_softmax(-1)[:, : len(ids)]
    assert torch.allclose(got_logp, want_logp, rtol=0, atol=logit_err + norm_err + 4 * eps)
    if gain == 3000.0:  # in some rows the answers hold all the mass: the other tokens' share rounds to 0
        assert float(want_p.sum(-1).max()) > 1 - 1e-7


def test_answer_metric_keeps_the_gradient_of_probability_metrics(tiny_model):
    """With a gradient wanted, probability metrics use the plain full logits (the chunked normaliser is
    computed in place, without autograd), and the gradient is that of the full softmax."""
    batch = next(data_for(tiny_model).batches(8))
    final = engine.run_sources(tiny_model, batch.clean).final.detach().requires_grad_()
    t = _Task(ck.TaskConfig(name="hand", metric="prob_diff"))
    engine.answer_metric(tiny_model, final, batch, t.metric).sum().backward()
    got = final.grad.clone()
    final.grad = None
    t.metric(engine.answer_logits(tiny_model, final, batch.last), batch).sum().backward()
    assert got.abs().max() > 0 and torch.allclose(got, final.grad, rtol=0, atol=float_tol(tiny_model, final.grad.abs().max()))


def test_a_task_with_its_own_metric_gets_the_full_logits(tiny_model):
    class OwnMetric(_Task):
        def metric(self, logits, batch):
            assert logits.shape[1] == tiny_model.bridge.cfg.d_vocab
            return logits.logsumexp(-1)

    t = OwnMetric(ck.TaskConfig(name="hand", metric="logit_diff"))
    assert t.answer_logits_metric() is None
    batch = next(data_for(tiny_model).batches(8))
    final = engine.run_sources(tiny_model, batch.clean).final
    assert engine.answer_metric(tiny_model, final, batch, t.metric).shape == (len(batch),)


def test_positions_per_pass_from_the_run_config(tiny_model_dir, tmp_path):
    from circuitkit.pipeline import run

    def cfg(**extra):
        return {
            "model": {"name": tiny_model_dir, "device": "cpu"},
            "method": {"name": "eap_ig", "ig_steps": 2},
            "task": {"name": "greater_than", "n_examples": 8},
            "selector": {"name": "top_n", "n_edges": 20},
            "evaluator": {"faithfulness": {}},
            "progress": False,
            "cache": False,
            **extra,
        }

    chunked = run(cfg(positions_per_pass=3), tmp_path / "chunked")
    plain = run(cfg(), tmp_path / "plain")
    assert chunked.status == plain.status == "complete" and chunked.meta["config"]["positions_per_pass"] == 3
    torch.testing.assert_close(
        chunked.scores.values, plain.scores.values, rtol=1e-5, atol=1e-6 * float(plain.scores.values.abs().max())
    )
