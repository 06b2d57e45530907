"""Attribution's memory estimate and the out-of-memory advice, on the CPU with a memory limit
(``CIRCUITKIT_MEMORY_LIMIT``). How close the estimate comes to a measured peak is benchmarks/memory_estimate.py's
job (a peak resident set is a process-wide measurement, not a unit test's)."""

from __future__ import annotations

import pytest
import torch

import circuitkit as ck
from circuitkit.attribution import gradient_attribution
from circuitkit.engine import memory
from circuitkit.errors import CircuitkitError, ConfigError
from circuitkit.testing_models import tiny_llama


@pytest.fixture(scope="module")
def setup(tokenizer):
    model = tiny_llama(2, 4, 2, 32, tokenizer=tokenizer)
    task = ck.build("tasks", "greater_than", n_examples=6)
    data = task.build(model.tokenizer, prepend_bos=model.prepend_bos)
    return model, task, data


def saved_bytes(model, batch: int, positions: int) -> int:
    """Bytes of the tensors a forward/backward through the bridge keeps for its backward pass (weights excluded),
    counted here with autograd's saved-tensor hooks on a batch of that shape."""
    params = {p.untyped_storage().data_ptr() for p in model.bridge.parameters()}
    seen = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            seen[s.data_ptr()] = s.nbytes()
        return t

    tokens = torch.randint(0, 1000, (batch, positions), generator=torch.Generator().manual_seed(1))
    hooks = [(model.INPUT_HOOK, lambda t, hook: t.detach().clone().requires_grad_(True))]
    hooks += [(model.mlp_in_hook(layer), lambda t, hook: t.clone()) for layer in range(model.graph.n_layers)]
    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with model.bridge.hooks(fwd_hooks=hooks):
            model.bridge(tokens)
    return sum(seen.values())


@pytest.mark.parametrize("batch,positions", [(3, 12), (5, 40)])
def test_activation_estimate_scales_from_the_probes(setup, batch, positions):
    """The probes (one example of 8 and of 16 tokens) predict the activations of other batch sizes and lengths.
    The count here runs the full unembedding as well (the estimate's passes read only the answer position):
    that is the one part the estimate leaves out, and it is bounded by the logits' own bytes."""
    model, task, data = setup
    est, _ = memory.activation_bytes(model, batch, positions)
    got = saved_bytes(model, batch, positions)
    logits = batch * positions * int(model.bridge.cfg.d_vocab) * 4
    assert got - 2 * logits <= est <= got, (est, got, logits)
    assert est >= 0.8 * (got - 2 * logits)


def test_memory_limit_parses_units(monkeypatch):
    monkeypatch.setenv(memory.MEMORY_LIMIT_ENV, "1.5GiB")
    assert memory.memory_limit() == int(1.5 * 2**30)
    monkeypatch.setenv(memory.MEMORY_LIMIT_ENV, "2000000")
    assert memory.memory_limit() == 2_000_000
    assert memory.available_bytes(torch.device("cpu")) <= 2_000_000
    monkeypatch.setenv(memory.MEMORY_LIMIT_ENV, "lots")
    with pytest.raises(ConfigError, match="CIRCUITKIT_MEMORY_LIMIT='lots' is not a memory size"):
        memory.memory_limit()


def test_out_of_memory_advice_names_settings_that_fit_and_they_do(setup, monkeypatch):
    """Under a limit below what one batch needs, attribution stops before any work with the settings that would
    fit (each with its estimate); the run with the positions-per-pass advice then passes the check and gives the
    scores of the unlimited run."""
    model, task, data = setup
    ctx = ck.RunContext(batch_size=len(data), progress=False)
    alphas = [0.5, 1.0]
    width = max(len(x) for x in data.clean_ids)
    full = memory.attribution_memory(model, len(data), width, interpolates=True, per_example=True)
    small = memory.attribution_memory(model, len(data), width, positions=2, interpolates=True, per_example=True)
    assert small.total < full.total
    monkeypatch.setenv(memory.MEMORY_LIMIT_ENV, str((small.total + full.total) // 2))
    with pytest.raises(CircuitkitError) as err:
        gradient_attribution(model, task, data, ctx, alphas, method="eap_ig")
    msg = str(err.value)
    assert "CIRCUITKIT_MEMORY_LIMIT" in msg and "Each of these would fit:" in msg and "device map" in msg
    k = int(msg.split("positions_per_pass=")[1].split(" ")[0])
    assert 1 <= k < width
    grouped = ck.RunContext(batch_size=len(data), progress=False)
    grouped.positions_per_pass = k
    limited = gradient_attribution(model, task, data, grouped, alphas, method="eap_ig")
    monkeypatch.delenv(memory.MEMORY_LIMIT_ENV)
    plain = gradient_attribution(model, task, data, ctx, alphas, method="eap_ig")
    scale = float(plain.values.abs().max())
    eps = torch.finfo(model.dtype).eps
    assert float((limited.values - plain.values).abs().max()) <= model.graph.n_layers * model.d_model * eps * scale
