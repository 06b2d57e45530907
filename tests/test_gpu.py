"""The GPU path: ``device=auto`` picks CUDA, and every engine path gives on the GPU the results it gives on the
CPU. These tests need a CUDA device and are skipped where there is none (the CPU results they compare with
are checked against exact patching and finite differences in the other test files)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from helpers import outcomes

import circuitkit as ck
from circuitkit import engine

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

N_EXAMPLES = 8


def assert_close_to(gpu: dict[str, torch.Tensor], cpu: dict[str, torch.Tensor], rel: float, floor: float = 0.0) -> None:
    """Every outcome within ``rel`` of its largest magnitude, or of ``floor`` where that is larger (GPU kernels
    sum in another order)."""
    assert gpu.keys() == cpu.keys()
    for k in cpu:
        a, b = gpu[k].detach().cpu().double(), cpu[k].detach().cpu().double()
        assert a.shape == b.shape, k
        scale = max(float(b.abs().max()), floor)
        err = float((a - b).abs().max())
        assert err <= rel * scale, f"{k}: max difference {err:.3g} against a scale of {scale:.3g}"


def metric_scale(out: dict[str, torch.Tensor]) -> float:
    """The magnitude of the task metric (clean, corrupted and circuit values). Scores are changes of the
    metric: in float32 their rounding error scales with the metric, not with the scores, and a random model's
    exact-patching scores are far smaller than its metric."""
    return float(out["evaluation"].abs().max())


@pytest.fixture(scope="module")
def on_cpu(tiny_model_dir):
    return outcomes(ck.load_model(tiny_model_dir, device="cpu"), N_EXAMPLES)


def test_auto_device_is_the_gpu_and_results_match_the_cpu(tiny_model_dir, on_cpu):
    model = ck.load_model(tiny_model_dir, device="auto")
    assert model.device.type == "cuda" and model.devices == [model.device]
    assert_close_to(outcomes(model, N_EXAMPLES), on_cpu, rel=1e-4, floor=metric_scale(on_cpu))


def test_float64_on_the_gpu_matches_the_cpu_to_rounding(tiny_model_dir):
    cpu = outcomes(ck.load_model(tiny_model_dir, device="cpu", dtype="float64"), N_EXAMPLES)
    gpu = outcomes(ck.load_model(tiny_model_dir, device="cuda", dtype="float64"), N_EXAMPLES)
    assert_close_to(gpu, cpu, rel=1e-9)


def test_grouped_query_attention_on_the_gpu_matches_the_cpu(tokenizer):
    from circuitkit.testing_models import tiny_llama

    task = ck.build("tasks", "greater_than", n_examples=N_EXAMPLES)
    out = {}
    for device in ("cpu", "cuda"):
        model = tiny_llama(2, 4, 2, 32, tokenizer=tokenizer, dtype=torch.float64, device=device)
        assert model.device.type == device
        data = task.build(model.tokenizer)
        ctx = ck.RunContext(batch_size=4, progress=False)
        out[device] = {
            name: ck.build("methods", name, **opts).attribute(model, task, data, ctx).values
            for name, opts in (("eap", {}), ("eap_ig", {"ig_steps": 3}), ("patching", {}))
        }
    # Llama's rotary embedding computes its angles in float32 whatever the model's dtype, and the CPU and the GPU
    # round them differently (about 1e-7), so float64 agrees to about 1e-6 here, not to float64 rounding.
    assert_close_to(out["cuda"], out["cpu"], rel=1e-5)


def test_low_precision_buffers_on_the_gpu(tiny_model_dir):
    model = ck.load_model(tiny_model_dir, device="cuda")
    task = ck.build("tasks", "greater_than", n_examples=N_EXAMPLES)
    data = task.build(model.tokenizer)
    full = ck.build("methods", "eap_ig", ig_steps=3).attribute(model, task, data, ck.RunContext(batch_size=4, progress=False))
    for dtype in ("bfloat16", "float16"):
        ctx = ck.RunContext(batch_size=4, progress=False)
        ctx.buffer_dtype = dtype
        low = ck.build("methods", "eap_ig", ig_steps=3).attribute(model, task, data, ctx)
        scale = float(full.values.abs().max())
        assert float((low.values - full.values).abs().max()) < 2e-2 * scale, dtype


def test_bfloat16_model_on_the_gpu_ranks_edges_like_float32(tiny_model_dir):
    task = ck.build("tasks", "greater_than", n_examples=N_EXAMPLES)
    scores = {}
    for dtype in ("float32", "bfloat16"):
        model = ck.load_model(tiny_model_dir, device="cuda", dtype=dtype)
        assert model.dtype == getattr(torch, dtype)
        data = task.build(model.tokenizer)
        scores[dtype] = (
            ck.build("methods", "eap").attribute(model, task, data, ck.RunContext(batch_size=4, progress=False)).values
        )
    a, b = scores["float32"].double(), scores["bfloat16"].double()
    assert torch.isfinite(b).all()
    assert float(torch.nn.functional.cosine_similarity(a, b, dim=0)) > 0.98


def test_memory_estimate_reads_the_gpus_free_memory(tiny_model_dir):
    model = ck.load_model(tiny_model_dir, device="cuda")
    free, total = torch.cuda.mem_get_info(model.device)
    seen = engine.available_bytes(model.device)
    assert 0 < seen <= total and abs(seen - free) < 2**30
    with pytest.raises(ck.CircuitkitError, match="cuda"):
        engine.check_fits(model, 2 * total, "eap")


def test_device_map_on_one_gpu(tiny_model_dir, on_cpu):
    """``model.device_map=auto`` (Hugging Face places the model through accelerate) on a machine with one GPU."""
    model = ck.load_model(tiny_model_dir, device_map="auto")
    assert model.device.type == "cuda" and model.output_device == model.device and model.devices == [model.device]
    assert_close_to(outcomes(model, N_EXAMPLES), on_cpu, rel=1e-4, floor=metric_scale(on_cpu))


def test_a_model_split_between_a_gpu_and_the_cpu_is_refused_clearly(tiny_model_dir):
    device_map = {
        "transformer.wte": 0,
        "transformer.wpe": 0,
        "transformer.drop": 0,
        "transformer.h": "cpu",
        "transformer.ln_f": 0,
        "lm_head": 0,
    }
    with pytest.raises(ck.CircuitkitError, match="some modules on the CPU and others on GPUs"):
        ck.load_model(tiny_model_dir, device_map=device_map)


def test_main_job_on_the_gpu_matches_the_cpu(tmp_path):
    """``python -m circuitkit method=eap_ig task=greater_than`` on the bundled model, on the GPU (device auto)
    and on the CPU: the same circuit and faithfulness."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    results = {}
    for device in ("auto", "cpu"):
        out = tmp_path / device
        p = subprocess.run(
            [
                sys.executable,
                "-m",
                "circuitkit",
                "method=eap_ig",
                "task=greater_than",
                f"model.device={device}",
                "cache=false",
                "progress=false",
                f"hydra.run.dir={out}",
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
        assert p.returncode == 0, p.stderr
        results[device] = (json.loads((out / "results.json").read_text()), json.loads((out / "circuit.json").read_text()))
    (gpu, gpu_circuit), (cpu, cpu_circuit) = results["auto"], results["cpu"]
    assert gpu["meta"]["device"].startswith("cuda") and cpu["meta"]["device"] == "cpu"
    assert gpu["faithfulness"]["values"]["faithfulness"] == pytest.approx(cpu["faithfulness"]["values"]["faithfulness"], abs=1e-3)
    kept = [{e for e, v in c["edges"].items() if v["in_graph"]} for c in (gpu_circuit, cpu_circuit)]
    assert len(kept[0] ^ kept[1]) <= 0.02 * len(kept[1]), "the GPU and CPU circuits differ by more than 2% of their edges"
