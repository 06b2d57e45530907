"""EAP-IG-activations, information flow routes, ACDC, the random baseline and the KL objective, each
checked against an independent computation (hand-written bridge hooks and torch.autograd, formulas on
hand-made tensors, a plain sequential ACDC loop) on tiny float64 models."""

import numpy as np
import pytest
import torch
from helpers import HAND_EXAMPLES, capture, dest_hook, patched_metric, plain_metric, source_hook

import circuitkit as ck
from circuitkit import engine
from circuitkit.data import Example, tokenize_examples
from circuitkit.metrics import logit_diff
from circuitkit.objectives import BoundTask, KLToClean, bind_objective

# The first three hand examples (IOI, agreement, IOI) and a pronoun example.
EXAMPLES = [*HAND_EXAMPLES[:3], Example("The nurse said that", "The pilot said that", (" she",), (" he",))]


class _Task(ck.Task):
    def generate(self, tokenizer, split):
        return iter(EXAMPLES)


def make_task(metric="logit_diff"):
    return _Task(ck.TaskConfig(name="hand", metric=metric))


def data_for(model, n=len(EXAMPLES)):
    return tokenize_examples("hand", EXAMPLES[:n], model.tokenizer)


def ctx(batch_size=8, seed=0):
    return ck.RunContext(batch_size=batch_size, progress=False, seed=seed)


# ----- independent references ----------------------------------------------------------------------


def dest_grads(model, batch, metric, replace=()):
    """d(sum metric)/d(input of every destination) on the clean run, with ``replace = [(hook, head, value)]``
    source outputs set to constants; computed with torch.autograd.grad on tensors captured at the hooks."""
    g = model.graph
    inputs = {}
    by_hook = {}
    for hook_name, head, value in replace:
        by_hook.setdefault(hook_name, []).append((head, value))

    def source(hook_name, leaf=False):
        def f(t, hook):
            t = t.detach().clone() if leaf else t.clone()
            for head, value in by_hook.get(hook_name, ()):
                if head is None:
                    t = value.clone()
                else:
                    t[:, :, head] = value
            return t.requires_grad_(True) if leaf else t

        return f

    def grab(name):
        def f(t, hook):
            t = t.clone()
            inputs[name] = t
            return t

        return f

    hooks = [("blocks.0.hook_resid_pre", source("blocks.0.hook_resid_pre", leaf=True))]
    for d in g.destination_names:
        hook_name, _ = dest_hook(model, d)
        if hook_name not in {h for h, _ in hooks}:
            hooks.append((hook_name, grab(hook_name)))
    for layer in range(g.n_layers):
        for name in (f"blocks.{layer}.attn.hook_result", f"blocks.{layer}.hook_mlp_out"):
            if name in by_hook:
                hooks.append((name, source(name)))
    with torch.enable_grad(), model.bridge.hooks(fwd_hooks=hooks):
        logits = model.bridge(batch.clean)
        m = metric(logits[torch.arange(len(batch)), batch.last], batch).sum()
        names = list(inputs)
        grads = torch.autograd.grad(m, [inputs[n] for n in names], allow_unused=True)
    return {n: (gr if gr is not None else torch.zeros_like(inputs[n])) for n, gr in zip(names, grads)}


def capture_all(model, tokens, names):
    """Tensors at several hooks (``(hook, head)`` pairs from helpers.source_hook/dest_hook), one forward."""
    box = {}
    by_hook = {}
    for n in names:
        hook, head = n
        by_hook.setdefault(hook, []).append(head)

    def grab(hook_name):
        def f(t, hook):
            for head in by_hook[hook_name]:
                box[(hook_name, head)] = (t[:, :, head] if head is not None else t).detach().clone()
            return t

        return f

    with model.bridge.hooks(fwd_hooks=[(h, grab(h)) for h in by_hook]):
        model.bridge(tokens)
    return [box[n] for n in names]


def source_values(model, batch):
    """Clean and corrupted outputs of every source, captured with hand-written hooks."""
    names = model.graph.source_names
    where = [source_hook(model, s) for s in names]
    clean = capture_all(model, batch.clean, where)
    corr = capture_all(model, batch.corrupted, where)
    return {s: (c, r) for s, c, r in zip(names, clean, corr)}


def contract(model, grads, diffs, sources_scored, weight, ref):
    """ref[edge] += weight * diffs[src] . grads[dst] for every edge whose source is in ``sources_scored``."""
    for i, edge in enumerate(model.graph.edge_names):
        src, dst = edge.split("->")
        if src not in sources_scored:
            continue
        hook, head = dest_hook(model, dst)
        gr = grads[hook][:, :, head] if head is not None else grads[hook]
        ref[i] += weight * float((diffs[src] * gr).sum())


# ----- the KL objective ----------------------------------------------------------------------------


def test_kl_metric_is_minus_kl_to_the_clean_distribution_and_caches_per_batch(tiny_model64):
    model = tiny_model64
    batch = next(data_for(model).batches(8))
    kl = KLToClean(model)
    clean_logits = model.bridge(batch.clean)[torch.arange(len(batch)), batch.last]
    corr_logits = model.bridge(batch.corrupted)[torch.arange(len(batch)), batch.last]
    assert torch.allclose(kl(clean_logits, batch), torch.zeros(len(batch), dtype=torch.float64), atol=1e-12)
    p = torch.softmax(clean_logits, -1)
    q = torch.softmax(corr_logits, -1)
    by_hand = (p * (p.log() - q.log())).sum(-1)
    assert torch.allclose(-kl(corr_logits, batch), by_hand, rtol=1e-10)
    assert (by_hand > 0).all()
    # Stacked copies of the batch reuse the cached clean distribution.
    rep = batch.repeat(3)
    kl(corr_logits.repeat(3, 1), rep)
    assert kl.clean_forwards == 1
    # Unbound, the metric name is accepted by configs but explains how to bind it.
    task = make_task("kl")
    task.build(model.tokenizer)
    with pytest.raises(ck.CircuitkitError, match="bind_objective"):
        task.metric(corr_logits, batch)
    bound = bind_objective(task, model)
    assert isinstance(bound, BoundTask) and bind_objective(bound, model) is bound
    assert torch.allclose(bound.metric(corr_logits, batch), -by_hand, rtol=1e-10)
    assert bind_objective(make_task(), model).config.metric == "logit_diff"


def test_eap_with_kl_equals_finite_differences(tiny_model64):
    """EAP-KL scores are derivatives of -KL(clean || .) along each edge's corruption at the clean run. KL has
    its minimum there, so both sides vanish: the scores must be zero up to rounding, like the differences."""
    model = tiny_model64
    data = data_for(model, 3)
    task = bind_objective(make_task("kl"), model)
    scores = ck.build("methods", "eap").attribute(model, task, data, ctx())
    batch = next(data.batches(8))
    eps = 1e-5
    for edge in ["a0.h1->m1", "input->logits"]:
        up = patched_metric(model, batch, task.metric, edge, eps).mean().item()
        down = patched_metric(model, batch, task.metric, edge, -eps).mean().item()
        assert scores[edge] == pytest.approx(-(up - down) / (2 * eps), abs=1e-9)
    assert scores.values.abs().max() < 1e-12


def test_kl_objective_with_builtin_methods_matches_hand_computations(tiny_model64):
    """Away from the clean run the KL gradient is not zero: EAP-IG-KL (2 steps) against autograd, and
    patching-KL against a hand-written single-edge patch (a patching score is KL(clean || patched) >= 0)."""
    model = tiny_model64
    data = data_for(model, 3)
    task = bind_objective(make_task("kl"), model)
    batch = next(data.batches(8))
    task.bound_metric.prepare(batch)
    ig2 = ck.build("methods", "eap_ig", ig_steps=2).attribute(model, task, data, ctx())
    vals = source_values(model, batch)
    diffs = {s: c - r for s, (c, r) in vals.items()}
    ref = np.zeros(model.graph.n_edges)
    for a in (0.5, 1.0):
        clean_in, corr_in = vals["input"]
        grads = dest_grads(model, batch, task.metric, [("blocks.0.hook_resid_pre", None, corr_in + a * (clean_in - corr_in))])
        contract(model, grads, diffs, set(diffs), 0.5 / len(batch), ref)
    assert np.abs(ref).max() > 1e-9  # not trivially zero
    np.testing.assert_allclose(ig2.values.numpy(), ref, rtol=1e-8, atol=1e-12 * np.abs(ref).max())

    from circuitkit.attribution import exact_patching

    picks = [model.graph.index_of(e) for e in ("input->logits", "a0.h2->a1.h1<v>", "m0->m1")]
    s = exact_patching(model, task, data, ctx(), edges=torch.tensor(picks))
    for i in picks:
        edge = model.graph.edge_names[i]
        kl_patched = -patched_metric(model, batch, task.metric, edge).mean().item()
        assert s[edge] == pytest.approx(kl_patched, rel=1e-6, abs=1e-14) and kl_patched >= 0


# ----- EAP-IG-activations ----------------------------------------------------------------------------


def test_ig_activations_source_mode_basic_identities(tiny_model64):
    model = tiny_model64
    task = make_task()
    data = data_for(model, 3)
    eap = ck.build("methods", "eap").attribute(model, task, data, ctx())
    one = ck.build("methods", "eap_ig_activations", ig_steps=1, interpolate="source").attribute(model, task, data, ctx())
    assert torch.allclose(one.values, eap.values, rtol=1e-10, atol=1e-14)
    # Interpolating the input embeddings alone is EAP-IG (inputs): the input node's edges agree.
    ig = ck.build("methods", "eap_ig", ig_steps=3).attribute(model, task, data, ctx())
    act = ck.build("methods", "eap_ig_activations", ig_steps=3, interpolate="source", copies_per_pass=14).attribute(
        model, task, data, ctx()
    )
    assert torch.allclose(act.dense()[0], ig.dense()[0], rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("interpolate", ["layer", "source"])
def test_ig_activations_equals_its_definition(tiny_model64, interpolate):
    """Every score against the definition in the plugin's docstring, rebuilt from autograd gradients on
    hand-hooked passes (the EAP-IG library's units for ``layer``; every source for ``source``)."""
    model = tiny_model64
    g = model.graph
    task = make_task()
    data = data_for(model, 2)
    m = 2
    s = ck.build("methods", "eap_ig_activations", ig_steps=m, interpolate=interpolate, copies_per_pass=3).attribute(
        model, task, data, ctx()
    )
    batch = next(data.batches(8))
    vals = source_values(model, batch)
    diffs = {k: c - r for k, (c, r) in vals.items()}
    units = [("blocks.0.hook_resid_pre", None, ["input"])]
    for layer in range(g.n_layers):
        heads = [f"a{layer}.h{h}" for h in range(g.n_heads)]
        if interpolate == "layer":
            units.append((f"blocks.{layer}.attn.hook_result", None, heads))
        else:
            units += [(f"blocks.{layer}.attn.hook_result", h, [heads[h]]) for h in range(g.n_heads)]
        units.append((f"blocks.{layer}.hook_mlp_out", None, [f"m{layer}"]))
    n_units = len(units)
    checked = set(g.source_names)
    if interpolate == "source":  # every source's rows are independent: check some of them
        units = [u for u in units if u[2][0] in ("input", "a0.h1", "m0", "a1.h2")]
        checked = {u[2][0] for u in units}
    ref = np.zeros(g.n_edges)
    for hook_name, head, names in units:
        if head is None and hook_name.endswith("hook_result"):
            clean = torch.stack([vals[n][0] for n in names], 2)
            corr = torch.stack([vals[n][1] for n in names], 2)
        else:
            clean, corr = vals[names[0]]
        for k in range(1, m + 1):
            grads = dest_grads(model, batch, logit_diff, [(hook_name, head, corr + (k / m) * (clean - corr))])
            scored = set(diffs) if interpolate == "layer" else set(names)
            weight = 1 / (n_units * m) if interpolate == "layer" else 1 / m
            contract(model, grads, diffs, scored, weight / len(batch), ref)
    rows = np.array([e.split("->")[0] in checked for e in g.edge_names])
    np.testing.assert_allclose(s.values.numpy()[rows], ref[rows], rtol=1e-8, atol=1e-10 * np.abs(ref).max())


def test_ig_activations_source_mode_integrates_to_the_node_effect(tiny_model64):
    """Completeness: the scores of a source's edges sum to its integrated-gradients attribution, which
    tends to metric(clean) - metric(that source's output corrupted) as the number of steps grows."""
    model = tiny_model64
    task = make_task()
    data = data_for(model, 2)
    batch = next(data.batches(8))
    clean_metric = plain_metric(model, batch.clean, batch, logit_diff)
    errors = {}
    for steps in (1, 24):
        s = ck.build("methods", "eap_ig_activations", ig_steps=steps, interpolate="source", copies_per_pass=48).attribute(
            model, task, data, ctx()
        )
        rows = s.dense().sum(1)
        for u in ["a0.h1", "m0", "a1.h2", "m1"]:
            hook, head = source_hook(model, u)
            corr = capture(model, batch.corrupted, hook, head)

            def put(t, hook, corr=corr, head=head):
                t = t.clone()
                if head is None:
                    return corr.clone()
                t[:, :, head] = corr
                return t

            with model.bridge.hooks(fwd_hooks=[(hook, put)]):
                target = (clean_metric - plain_metric(model, batch.clean, batch, logit_diff)).mean().item()
            errors.setdefault(u, []).append(abs(float(rows[model.graph.source_names.index(u)]) - target) / (abs(target) + 1e-12))
    for u, (e1, e24) in errors.items():
        assert e24 < 0.05, (u, e24)
        assert e24 <= e1 + 1e-9, (u, e1, e24)


# ----- information flow routes ------------------------------------------------------------------------


def test_route_importance_formula_on_hand_made_activations():
    from circuitkit.engine import route_importance

    # One example, positions 0..1 real, position 2 padding; d = 2; three sources.
    x = torch.tensor([[[1.0, 0.0], [2.0, 2.0], [9.0, 9.0]]])  # [b=1, p=3, d=2]
    c = torch.tensor(
        [
            [[[1.0, 0.0], [1.0, 1.0], [5.0, 0.0]]],  # u0: equals x at t=0; half of x at t=1
            [[[0.5, 0.5], [2.0, 0.0], [0.0, 0.0]]],  # u1: proximity 1 - 1 = 0 at t=0; 4 - 2 = 2 at t=1
            [[[-1.0, 0.0], [0.0, 0.0], [0.0, 0.0]]],  # u2: negative proximity -> 0; 4 - 4 = 0 at t=1
        ]
    )
    last = torch.tensor([1])
    imp = route_importance(x, c, last)
    # t=0: proximities (1, 0, 0) -> (1, 0, 0); t=1: ||x||=4, (4-2, 4-2, 4-4) = (2, 2, 0) -> (.5, .5, 0)
    expected = torch.tensor([[(1 + 0.5) / 2], [(0 + 0.5) / 2], [0.0]])
    assert torch.allclose(imp, expected)
    # All proximities zero at a position -> importances 0 there (not NaN); per-head inputs give a head axis.
    zero = route_importance(torch.zeros(1, 1, 2), torch.ones(2, 1, 1, 2), torch.tensor([0]))
    assert torch.equal(zero, torch.zeros(2, 1))
    heads = route_importance(torch.stack([x, x], 2), c, last)
    assert heads.shape == (3, 1, 2) and torch.allclose(heads[..., 1], expected)


def test_information_flow_routes_on_a_model_matches_the_formula(tiny_model64):
    model = tiny_model64
    g = model.graph
    data = data_for(model)
    s = ck.build("methods", "information_flow_routes").attribute(model, make_task(), data, ctx(batch_size=3))
    assert (s.values >= 0).all() and (s.values <= 1).all()
    dense = s.dense()
    assert torch.allclose(dense.sum(0), torch.ones(g.n_destinations, dtype=torch.float64), atol=1e-9)
    batch = next(data.batches(8))
    outs = dict(zip(g.source_names, capture_all(model, batch.clean, [source_hook(model, u) for u in g.source_names])))
    dsts = ["a1.h2<k>", "m0", "logits", "a0.h1<v>"]
    for dst, x in zip(dsts, capture_all(model, batch.clean, [dest_hook(model, d) for d in dsts])):
        ups = [g.source_names[i] for i in range(g.n_upstream[g.destination_names.index(dst)])]
        ref = {u: 0.0 for u in ups}
        for i in range(len(batch)):
            n_pos = int(batch.last[i]) + 1
            for t in range(n_pos):
                xt = x[i, t]
                prox = {u: max(0.0, float(xt.abs().sum() - (xt - outs[u][i, t]).abs().sum())) for u in ups}
                total = sum(prox.values())
                for u in ups:
                    ref[u] += (prox[u] / total if total > 0 else 0.0) / n_pos / len(batch)
        for u in ups:
            assert s[f"{u}->{dst}"] == pytest.approx(ref[u], rel=1e-9, abs=1e-12)


# ----- ACDC --------------------------------------------------------------------------------------------

LIVE_HEADS = {"a0.h1", "a1.h0"}


@pytest.fixture(scope="module")
def sparse_model(tokenizer):
    """2 layers, 2 heads, float64, where only a0.h1 and a1.h0 write to the residual stream: every other
    head's W_O and both MLPs' output weights and biases are zero, so their outputs are exactly 0."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from circuitkit.model import bridge_model

    torch.manual_seed(3)
    cfg = GPT2Config(n_layer=2, n_head=2, n_embd=16, n_positions=64, vocab_size=len(tokenizer), initializer_range=0.3)
    hf = GPT2LMHeadModel(cfg)
    d_head = 8
    with torch.no_grad():
        for n, p in hf.named_parameters():
            if n.endswith("bias"):
                p.normal_(0, 0.1)
        hf.transformer.h[0].attn.c_proj.weight[0:d_head] = 0  # a0.h0
        hf.transformer.h[1].attn.c_proj.weight[d_head:] = 0  # a1.h1
        for block in hf.transformer.h:
            block.mlp.c_proj.weight.zero_()
            block.mlp.c_proj.bias.zero_()
    return bridge_model(hf.double(), tokenizer, name="sparse", device="cpu")


def sequential_acdc(model, task, data, tau, objective, removed_value=None):
    """Algorithm 1 of Conmy et al. (2023), one edge at a time, without shortcuts. ``removed_value(batch)``
    gives what removed edges carry (default: the corrupted run's source outputs)."""
    g = model.graph
    metric = bind_objective(make_task("kl"), model).metric if objective == "kl" else task.metric
    removed_value = removed_value or (lambda b: engine.run_sources(model, b.corrupted).sources)
    runs = [(b, removed_value(b)) for b in data.batches(ctx().batch_size)]

    def value(keep):
        total = sum(float(engine.masked_metric(model, b, metric, corr, keep[None]).sum()) for b, corr in runs)
        return (-1 if objective == "kl" else 1) * total / len(data)

    keep = torch.ones(g.n_sources, g.n_destinations, dtype=torch.float64)
    score = torch.zeros_like(keep)
    current = value(keep)
    for dst in range(g.n_destinations - 1, -1, -1):
        for src in range(int(g.n_upstream[dst]) - 1, -1, -1):
            trial = keep.clone()
            trial[src, dst] = 0
            v = value(trial)
            ch = v - current if objective == "kl" else abs(v - current)
            score[src, dst] = ch
            if ch < tau:
                keep, current = trial, v
    return g.to_flat(keep.bool()).numpy(), g.to_flat(score)


def kept_mask(g, scores):
    kept = np.zeros(g.n_edges, bool)
    kept[scores.meta["kept"]] = True
    return kept


def touches_dead(g):
    live = {"input", "logits"} | LIVE_HEADS
    return np.array([not ({e.split("->")[0], e.split("->")[1].split("<")[0]} <= live) for e in g.edge_names])


def test_acdc_recovers_the_hand_built_circuit_and_equals_sequential_acdc(sparse_model):
    model = sparse_model
    g = model.graph
    task = make_task()
    data = data_for(model, 3)
    tau = 1e-3  # about 2% of the largest single-edge KL effect of this model on these examples
    s = ck.build("methods", "acdc", tau=tau, copies_per_pass=7).attribute(model, task, data, ctx(batch_size=2))
    kept = kept_mask(g, s)
    dead = touches_dead(g)
    assert not (kept & dead).any(), [e for e, k, d in zip(g.edge_names, kept, dead) if k and d]
    for edge in ("a1.h0->logits", "a0.h1->a1.h0<v>"):  # the two largest single-edge effects
        assert kept[g.index_of(edge)], edge

    ref_kept, ref_score = sequential_acdc(model, task, data, tau, "kl")
    assert (kept == ref_kept).all()
    # Edges into nodes that no longer reach the logits are skipped (score 0; their change is 0 anyway).
    np.testing.assert_allclose(s.values.numpy(), ref_score.numpy(), rtol=1e-6, atol=1e-12)
    assert s.meta["masked_copies"] < 2 * g.n_edges

    # The threshold selector with tau reproduces ACDC's circuit (pruning removes nothing it measured).
    circuit = ck.build("selectors", "threshold", threshold=tau, absolute=False).select(s)
    assert (circuit.edges == g.prune(kept)).all() and circuit.n_edges > 0


# ----- random baseline ----------------------------------------------------------------------------------


def test_random_scores_are_seeded(tiny_model64):
    model = tiny_model64
    data = data_for(model, 1)
    a = ck.build("methods", "random", seed=3).attribute(model, make_task(), data, ctx(seed=0))
    b = ck.build("methods", "random", seed=3).attribute(model, make_task(), data, ctx(seed=1))
    c = ck.build("methods", "random").attribute(model, make_task(), data, ctx(seed=3))
    d = ck.build("methods", "random").attribute(model, make_task(), data, ctx(seed=4))
    assert torch.equal(a.values, b.values) and torch.equal(a.values, c.values)
    assert not torch.equal(c.values, d.values)
    assert a.values.shape == (model.graph.n_edges,) and a.values.std() > 0.5


# ----- node-level scores ----------------------------------------------------------------------------------


def test_node_scores_of_eap_are_gradient_times_difference_at_the_node_output(tiny_model64):
    """Summing a node's outgoing EAP edge scores gives (clean - corrupted output) . d metric / d output,
    with the gradient taken by autograd at the node's own output hook."""
    from circuitkit.nodes import exact_node_patching, node_scores_from_edges

    model = tiny_model64
    g = model.graph
    task = make_task()
    data = data_for(model, 3)
    eap = ck.build("methods", "eap").attribute(model, task, data, ctx())
    nodes = node_scores_from_edges(eap)
    batch = next(data.batches(8))
    vals = source_values(model, batch)
    outputs = {}

    def keep_output(hook_name):
        def f(t, hook):
            t = t.detach().clone().requires_grad_(True) if hook_name.endswith("resid_pre") else t.clone()
            outputs[hook_name] = t
            return t

        return f

    hook_names = sorted({source_hook(model, s)[0] for s in g.source_names})
    with torch.enable_grad(), model.bridge.hooks(fwd_hooks=[(h, keep_output(h)) for h in hook_names]):
        logits = model.bridge(batch.clean)
        total = logit_diff(logits[torch.arange(len(batch)), batch.last], batch).sum()
        grads = dict(zip(hook_names, torch.autograd.grad(total, [outputs[h] for h in hook_names])))
    for i, s in enumerate(g.source_names):
        hook, head = source_hook(model, s)
        gr = grads[hook][:, :, head] if head is not None else grads[hook]
        clean, corr = vals[s]
        assert float(nodes[i]) == pytest.approx(float(((clean - corr) * gr).sum()) / len(batch), rel=1e-9, abs=1e-13), s

    exact = exact_node_patching(model, task, data, ctx(batch_size=2), nodes_per_pass=4)
    clean_m = plain_metric(model, batch.clean, batch, logit_diff)
    assert float(exact[0]) == pytest.approx(
        (clean_m - plain_metric(model, batch.corrupted, batch, logit_diff)).mean().item(), rel=1e-9
    )
    for s in ("a0.h2", "m0", "a1.h1"):
        hook, head = source_hook(model, s)
        corr = vals[s][1]

        def put(t, hook, corr=corr, head=head):
            t = t.clone()
            if head is None:
                return corr.clone()
            t[:, :, head] = corr
            return t

        with model.bridge.hooks(fwd_hooks=[(hook, put)]):
            patched = plain_metric(model, batch.clean, batch, logit_diff)
        assert float(exact[g.source_names.index(s)]) == pytest.approx((clean_m - patched).mean().item(), rel=1e-8, abs=1e-12), s


def test_node_circuit_keeps_the_edges_between_kept_nodes(tiny_model64):
    from circuitkit.nodes import node_circuit

    g = tiny_model64.graph
    c = node_circuit(g, ["input", "a0.h1", "a1.h2"])
    assert set(c.node_names) <= {"input", "a0.h1", "a1.h2", "logits"}
    assert "a0.h1->a1.h2<v>" in c.edge_names and "input->logits" in c.edge_names
    assert all("m0" not in e and "a0.h0" not in e for e in c.edge_names)
    with pytest.raises(ck.CircuitkitError, match="not a node"):
        node_circuit(g, ["a9.h9"])


# ----- zero and mean interventions ------------------------------------------------------------------------


def test_mean_source_outputs(sparse_model):
    from circuitkit.interventions import mean_source_outputs

    model = sparse_model
    g = model.graph
    data = data_for(model, 2)
    means = mean_source_outputs(model, data, batch_size=1)
    per_pos = mean_source_outputs(model, data, batch_size=2, per_position=True)
    outs = [capture_all(model, torch.tensor([ids]), [source_hook(model, s) for s in g.source_names]) for ids in data.clean_ids]
    for i in (0, 2, g.n_sources - 2):
        rows = torch.cat([o[i][0] for o in outs])  # every real position of every example
        assert torch.allclose(means[i, 0, 0], rows.mean(0), atol=1e-12)
        assert torch.allclose(per_pos[i, 0, 1], torch.stack([o[i][0, 1] for o in outs]).mean(0), atol=1e-12)


@pytest.mark.parametrize("objective,intervention", [("task", "zero"), ("kl", "mean")])
def test_acdc_objectives_and_interventions_equal_sequential_acdc(sparse_model, objective, intervention):
    from circuitkit.interventions import mean_source_outputs

    model = sparse_model
    g = model.graph
    task = make_task()
    data = data_for(model, 2)
    if intervention == "zero":
        # Zero ablation counts b_O / n_heads as part of each head's output: measured here as the
        # attention output minus the sum of the head outputs.
        share = torch.zeros(g.n_sources, model.d_model, dtype=torch.float64)
        tokens = torch.tensor([data.clean_ids[0]])
        for layer in range(g.n_layers):
            attn_out, result = capture_all(
                model, tokens, [(f"blocks.{layer}.hook_attn_out", None), (f"blocks.{layer}.attn.hook_result", None)]
            )
            base = g.src_head(layer, 0)
            share[base : base + g.n_heads] = (attn_out - result.sum(2))[0, 0] / g.n_heads

        def value(b):
            return (-share)[:, None, None, :].expand(g.n_sources, *b.clean.shape, model.d_model)
    else:
        means = mean_source_outputs(model, data)

        def value(b):
            return means.expand(g.n_sources, *b.clean.shape, model.d_model)

    tau = 1e-4
    s = ck.build("methods", "acdc", tau=tau, objective=objective, intervention=intervention).attribute(model, task, data, ctx())
    kept = kept_mask(g, s)
    ref_kept, ref_score = sequential_acdc(model, task, data, tau, objective, value)
    assert (kept == ref_kept).all()
    np.testing.assert_allclose(s.values.numpy(), ref_score.numpy(), rtol=1e-6, atol=1e-12)
    # Dead units write exactly 0 whatever their inputs, so ablating them changes nothing -- except that
    # zero ablation takes a dead head's share of its layer's (nonzero) b_O away too.
    dead = touches_dead(g)
    if intervention == "zero":
        dead &= np.array([e.split("->")[0].startswith("m") for e in g.edge_names])
    assert not (kept & dead).any() and kept.any()
    assert s.meta["intervention"] == intervention


def test_acdc_rejects_bad_options():
    with pytest.raises(ck.CircuitkitError, match="tau"):
        ck.build("methods", "acdc", tau=-1.0)
    with pytest.raises(ck.CircuitkitError, match="objective"):
        ck.build("methods", "acdc", objective="l2")
    with pytest.raises(ck.CircuitkitError, match="intervention"):
        ck.build("methods", "acdc", intervention="resample")
