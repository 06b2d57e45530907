"""Circuit evaluation's masked forward: the sparse path (cost following the circuit) against the dense path and
against a reference written here with plain bridge hooks, on tiny models of several families, for patching,
zero and mean ablation, stacked circuits of very different sizes, neuron masks and a later start layer."""

from __future__ import annotations

import pytest
import torch
from helpers import dest_hook, source_hook

import circuitkit as ck
from circuitkit import engine
from circuitkit.evaluation import evaluate_keeps
from circuitkit.interventions import build_intervention
from circuitkit.model import bridge_model
from circuitkit.results import Circuit
from circuitkit.testing_families import tiny_family

#: pre-norm multi-head, grouped-query attention with rotary, parallel attention and MLP, a norm after the
#: attention (head shares)
FAMILIES = ["gpt2", "llama", "gpt_neox_parallel", "gemma2"]
#: the families whose head outputs are the attention's per-head results, which the plain hook reference reads
#: (behind a norm after the attention a head's output is its share of the normed sum: compared with the dense
#: path above, and test_postnorm.py checks those shares against the Hugging Face model)
PLAIN = ["gpt2", "llama", "gpt_neox_parallel"]
DENSITIES = (0.0, 0.01, 0.05, 0.3, 0.7, 0.97, 1.0)


@pytest.fixture(scope="module", params=FAMILIES)
def fam(request):
    hf, tok = tiny_family(request.param, dtype=torch.float64)
    model = bridge_model(hf, tok, name=f"tiny-{request.param}")
    task = ck.build("tasks", "greater_than", n_examples=6)
    data = task.build(model.tokenizer, prepend_bos=model.prepend_bos)
    return request.param, model, task, data


def random_keeps(g, densities, seed: int) -> torch.Tensor:
    """One circuit per density: each edge kept with that probability (invalid pairs kept, as circuits give them)."""
    gen = torch.Generator().manual_seed(seed)
    valid = g.valid.double()
    keeps = [(torch.rand(g.n_sources, g.n_destinations, generator=gen) < q).double() * valid + (1 - valid) for q in densities]
    return torch.stack(keeps)


def tol(model, scale: float) -> float:
    """Two orders of summation of the same float64 values: each of the ``n_sources`` differences a destination
    adds, and each layer's ``d_model``-term sums, may round by an ``eps`` of the values' scale."""
    g = model.graph
    return (g.n_sources + g.n_layers * model.d_model) * torch.finfo(model.dtype).eps * max(scale, 1.0)


def removed_values(model, data, batch, kind: str) -> torch.Tensor:
    if kind == "patching":
        return engine.run_sources(model, batch.corrupted).sources
    return build_intervention(model, data, kind).values(model, batch)


@pytest.mark.parametrize("kind", ["patching", "zero", "mean"])
def test_sparse_equals_dense(fam, kind):
    name, model, task, data = fam
    g = model.graph
    batch = next(data.batches(len(data), model.pad_id))
    removed = removed_values(model, data, batch, kind)
    keeps = random_keeps(g, DENSITIES, seed=1)
    dense = engine.masked_forward(model, batch.clean, removed, keeps, path="dense")
    sparse = engine.masked_forward(model, batch.clean, removed, keeps, path="sparse")
    scale = float(dense.abs().max())
    assert float((sparse - dense).abs().max()) <= tol(model, scale)
    # The empty circuit is the fully removed run and the full one the clean run: nothing cancels by accident.
    assert float((dense[: len(batch)] - dense[-len(batch) :]).abs().max()) > 1e3 * tol(model, scale)


def test_sparse_equals_dense_with_neuron_masks(fam):
    name, model, task, data = fam
    g = model.graph
    batch = next(data.batches(len(data), model.pad_id))
    removed = removed_values(model, data, batch, "patching")
    keeps = random_keeps(g, (0.05, 0.5, 1.0), seed=2)
    gen = torch.Generator().manual_seed(3)
    dims = (torch.rand(3, g.n_sources, model.d_model, generator=gen) < 0.6).double()
    dense = engine.masked_forward(model, batch.clean, removed, keeps, neurons=dims, path="dense")
    sparse = engine.masked_forward(model, batch.clean, removed, keeps, neurons=dims, path="sparse")
    assert float((sparse - dense).abs().max()) <= tol(model, float(dense.abs().max()))


def test_sparse_equals_dense_from_a_later_layer(fam):
    """Only edges into the last layer and the logits removed: the pass starts there from the clean run."""
    name, model, task, data = fam
    g = model.graph
    batch = next(data.batches(len(data), model.pad_id))
    removed = removed_values(model, data, batch, "patching")
    clean = engine.run_sources(model, batch.clean, keep_resid=True)
    keeps = random_keeps(g, (0.0, 0.1, 0.8), seed=4)
    keeps[:, :, : g.dst_mlp(g.n_layers - 2) + 1] = 1
    start = g.n_layers - 1
    dense = engine.masked_forward(model, batch.clean, removed, keeps, start_layer=start, clean=clean, path="dense")
    sparse = engine.masked_forward(model, batch.clean, removed, keeps, start_layer=start, clean=clean, path="sparse")
    assert float((sparse - dense).abs().max()) <= tol(model, float(dense.abs().max()))


def reference_metric(model, batch, metric, removed, keep, dims=None) -> torch.Tensor:
    """The metric of one circuit with hooks written here on the bridge (not through circuitkit.engine): every
    source's output in this run is recorded at its own hook, and every destination's input gets, for every
    upstream source ``u``, ``(removed_u - out_u)`` times the part of the edge that is removed (per dimension
    with neuron masks ``dims``: an edge carries its clean value where the edge and the dimension are kept)."""
    g = model.graph
    out: dict[int, torch.Tensor] = {}
    hooks = []
    for u, name in enumerate(g.source_names):
        hook_name, head = source_hook(model, name)

        def record(t, hook, u=u, head=head):
            out[u] = (t[:, :, head] if head is not None else t).detach().clone()
            return t

        hooks.append((hook_name, record))
    for v, name in enumerate(g.destination_names):
        hook_name, head = dest_hook(model, name)

        def edit(t, hook, v=v, head=head):
            add = torch.zeros_like(out[0])
            for u in range(int(g.n_upstream[v])):
                kept = keep[u, v] * (dims[u] if dims is not None else 1.0)
                add = add + (removed[u] - out[u]) * (1 - kept)
            t = t.clone()
            if head is None:
                return t + add
            t[:, :, head] = t[:, :, head] + add
            return t

        hooks.append((hook_name, edit))
    with torch.no_grad(), model.bridge.hooks(fwd_hooks=hooks):
        logits = model.bridge(batch.clean)
    return metric(logits[torch.arange(len(batch)), batch.last], batch)


@pytest.mark.parametrize("fam", PLAIN, indirect=True)
@pytest.mark.parametrize("kind", ["patching", "zero", "mean"])
def test_evaluation_matches_hand_hooked_reference(fam, kind):
    """Circuits of 0.5%, 5% and 60% of the edges, top edges of a ranking as a selector gives them, evaluated
    together (sparse path, the default) against the reference above."""
    name, model, task, data = fam
    g = model.graph
    ctx = ck.RunContext(batch_size=len(data), progress=False)
    if kind != "patching":
        ctx.intervention = build_intervention(model, data, kind)
    scores = ck.build("methods", "eap").attribute(model, task, data, ctx)
    circuits = [ck.build("selectors", "top_n", n_edges=max(1, int(q * g.n_edges))).select(scores) for q in (0.005, 0.05, 0.6)]
    keeps = torch.stack([c.keep_dense() for c in circuits])
    ev = evaluate_keeps(model, task, data, keeps, ctx)
    batch = next(data.batches(len(data), model.pad_id))
    removed = removed_values(model, data, batch, kind)
    for i, c in enumerate(circuits):
        want = reference_metric(model, batch, task.metric, removed, keeps[i])
        assert ev.circuit_values[i].tolist() == pytest.approx(want.tolist(), abs=tol(model, float(want.abs().max()))), (
            kind,
            c.n_edges,
        )


@pytest.mark.parametrize("fam", PLAIN, indirect=True)
def test_neuron_circuit_matches_hand_hooked_reference(fam):
    name, model, task, data = fam
    g = model.graph
    batch = next(data.batches(len(data), model.pad_id))
    removed = removed_values(model, data, batch, "patching")
    keep = random_keeps(g, (0.1,), seed=5)
    dims = (torch.rand(1, g.n_sources, model.d_model, generator=torch.Generator().manual_seed(6)) < 0.5).double()
    got = engine.masked_metric(model, batch, task.metric, removed, keep, neurons=dims)[0]
    want = reference_metric(model, batch, task.metric, removed, keep[0], dims[0])
    assert got.tolist() == pytest.approx(want.tolist(), abs=tol(model, float(want.abs().max())))


def test_unknown_path_is_refused(fam):
    name, model, task, data = fam
    g = model.graph
    batch = next(data.batches(len(data), model.pad_id))
    keep = Circuit.full(g).keep_dense()[None]
    with pytest.raises(ValueError, match="sparse, dense"):
        engine.masked_forward(model, batch.clean, torch.zeros(g.n_sources, *batch.clean.shape, model.d_model), keep, path="fast")


def count_passes(monkeypatch) -> list[int]:
    """From now on, the number of circuits of every masked pass evaluation runs (appended in order)."""
    passes: list[int] = []
    real = engine.masked_metric

    def counted(model, batch, metric, removed, keep, **kw):
        passes.append(keep.shape[0])
        return real(model, batch, metric, removed, keep, **kw)

    monkeypatch.setattr(engine, "masked_metric", counted)
    return passes


@pytest.mark.parametrize("fam", PLAIN, indirect=True)
@pytest.mark.parametrize("kind", ["patching", "zero"])
def test_full_and_empty_circuits_take_the_clean_and_corrupted_runs(fam, kind, monkeypatch):
    """A circuit that keeps every edge is the clean run and one that keeps none the fully removed run: their
    values come from those runs with no masked pass, and equal the hand-hooked reference's; a circuit in
    between still runs its masked pass."""
    name, model, task, data = fam
    g = model.graph
    ctx = ck.RunContext(batch_size=len(data), progress=False)
    if kind != "patching":
        ctx.intervention = build_intervention(model, data, kind)
    keeps = torch.stack([Circuit.full(g).keep_dense(), Circuit.empty(g).keep_dense(), random_keeps(g, (0.3,), seed=7)[0]])
    passes = count_passes(monkeypatch)
    ev = evaluate_keeps(model, task, data, keeps, ctx)
    # one pass of the circuit in between (and, under ablation, the empty circuit's baseline run)
    assert passes == ([1] if kind == "patching" else [1, 1])
    batch = next(data.batches(len(data), model.pad_id))
    removed = removed_values(model, data, batch, kind)
    for i in range(3):
        want = reference_metric(model, batch, task.metric, removed, keeps[i])
        assert ev.circuit_values[i].tolist() == pytest.approx(want.tolist(), abs=tol(model, float(want.abs().max()))), i
    assert ev.circuit_values[0].tolist() == ev.clean_values.tolist()
    assert ev.circuit_values[1].tolist() == ev.corrupted_values.tolist()


@pytest.mark.parametrize("fam", PLAIN, indirect=True)
def test_a_circuit_keeping_every_edge_but_not_every_neuron_runs_its_pass(fam):
    """With neuron masks, keeping every edge is not the clean run unless every dimension is kept too: the
    circuit that drops half of the input node's dimensions equals the hand-hooked reference."""
    name, model, task, data = fam
    g = model.graph
    ctx = ck.RunContext(batch_size=len(data), progress=False)
    keeps = Circuit.full(g).keep_dense()[None].repeat(2, 1, 1)
    dims = torch.ones(2, g.n_sources, model.d_model)
    dims[1, 0, : model.d_model // 2] = 0  # half of the input node's dimensions removed
    ev = evaluate_keeps(model, task, data, keeps, ctx, neurons=dims)
    assert ev.circuit_values[0].tolist() == ev.clean_values.tolist()
    batch = next(data.batches(len(data), model.pad_id))
    removed = removed_values(model, data, batch, "patching")
    want = reference_metric(model, batch, task.metric, removed, keeps[1].double(), dims[1].double())
    assert ev.circuit_values[1].tolist() == pytest.approx(want.tolist(), abs=tol(model, float(want.abs().max())))
    assert float((ev.circuit_values[1] - ev.clean_values).abs().max()) > 1e3 * tol(model, float(want.abs().max()))


def test_stacking_on_a_cpu_follows_the_pass_budget_and_changes_no_value(fam, monkeypatch):
    """On a CPU a stacked pass takes at most as many circuits as fit the per-pass budget; the values do not
    depend on how many circuits share a pass."""
    from circuitkit import evaluation

    name, model, task, data = fam
    g = model.graph
    ctx = ck.RunContext(batch_size=len(data), progress=False)
    keeps = random_keeps(g, (0.02, 0.2, 0.5, 0.8, 0.99), seed=8)
    batch = next(data.batches(len(data), model.pad_id))
    per_copy = batch.clean.numel() * g.n_heads * model.d_model * 8  # float64
    assert evaluation.copies_per_pass(model, batch) == max(1, evaluation.CPU_PASS_BYTES // per_copy)
    together = evaluate_keeps(model, task, data, keeps, ctx, circuits_per_pass=8)
    passes = count_passes(monkeypatch)
    monkeypatch.setattr(evaluation, "CPU_PASS_BYTES", 2 * per_copy)
    apart = evaluate_keeps(model, task, data, keeps, ctx, circuits_per_pass=8)
    assert passes == [2, 2, 1]
    scale = float(together.circuit_values.abs().max())
    assert float((apart.circuit_values - together.circuit_values).abs().max()) <= tol(model, scale)
