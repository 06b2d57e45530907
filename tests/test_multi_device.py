"""Models placed with Hugging Face device maps (``model.device_map`` / ``model.n_devices``).

This machine has no GPUs, so the code path is exercised on one CPU device only: a device map reaches
``from_pretrained``, and a model that accelerate dispatched module by module (``hf_device_map`` set,
accelerate's device-moving hooks on every module, as on a multi-GPU machine) is bridged without being moved
and gives exactly the scores and evaluations of the plain load. The configuration errors are in
tests/test_errors.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from helpers import outcomes

import circuitkit as ck
from circuitkit.pipeline import run

N_EXAMPLES = 8


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=1e-9, msg=lambda m, k=k: f"{k}: {m}")


@pytest.fixture(scope="module")
def plain(tiny_model_dir):
    return outcomes(ck.load_model(tiny_model_dir, device="cpu"))


def per_module_map(hf):
    """A device map naming every module of a GPT-2 model (each layer separately), all on the CPU."""
    names = ["transformer.wte", "transformer.wpe", "transformer.drop"]
    names += [f"transformer.h.{i}" for i in range(hf.config.n_layer)]
    return dict.fromkeys([*names, "transformer.ln_f", "lm_head"], "cpu")


@pytest.fixture
def dispatching(monkeypatch):
    """``from_pretrained`` as on a multi-GPU machine: with a ``device_map`` the model is dispatched by
    accelerate module by module (hooks on every module, ``hf_device_map`` set), here all on the CPU (with one
    device transformers just loads the model there). Records the device maps it was given; a dispatched
    model refuses to be moved."""
    from accelerate import dispatch_model
    from transformers import AutoModelForCausalLM

    original = AutoModelForCausalLM.from_pretrained
    calls = []

    def from_pretrained(path, **kwargs):
        device_map = kwargs.pop("device_map", None)
        calls.append(device_map)
        hf = original(path, **kwargs)
        if device_map is None:
            return hf
        hf = dispatch_model(hf, device_map=per_module_map(hf), force_hooks=True)

        def moved(*args, **kw):
            raise AssertionError("a model dispatched over devices was moved")

        hf.to = moved
        return hf

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", from_pretrained)
    return calls


@pytest.mark.parametrize("device_map", ["auto", "cpu", {"": "cpu"}])
def test_a_device_map_reaches_from_pretrained_and_changes_nothing(tiny_model_dir, monkeypatch, plain, device_map):
    if device_map == "auto" and torch.cuda.is_available():
        pytest.skip("with a GPU, device_map=auto places the model there: tests/test_gpu.py::test_device_map_on_one_gpu")
    from transformers import AutoModelForCausalLM

    original = AutoModelForCausalLM.from_pretrained
    seen = []

    def spy(path, **kwargs):
        seen.append(kwargs.get("device_map"))
        return original(path, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", spy)
    model = ck.load_model(tiny_model_dir, device_map=device_map)
    assert seen == [device_map]
    assert model.device == model.output_device == torch.device("cpu") and model.devices == [torch.device("cpu")]
    assert_same(outcomes(model), plain)


def test_a_dispatched_model_is_not_moved_and_gives_the_plain_results(tiny_model_dir, dispatching, plain):
    model = ck.load_model(tiny_model_dir, device_map="balanced")
    assert dispatching == ["balanced"]
    hf = model.bridge.original_model
    assert hf.hf_device_map == per_module_map(hf)
    assert str(model.bridge.cfg.device) == "cpu" and model.device == torch.device("cpu")
    assert_same(outcomes(model), plain)
    # Exact patching ran layers with the earlier blocks skipped: accelerate's device-moving forward of every
    # block is still in place afterwards.
    for block in model.bridge.blocks:
        oc = block.original_component
        assert hasattr(oc, "_hf_hook") and "forward" in oc.__dict__, "a block lost accelerate's forward hook"


def test_bridge_model_takes_a_model_dispatched_by_the_caller(tiny_model_dir, tokenizer, plain):
    from accelerate import dispatch_model
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(tiny_model_dir, local_files_only=True)
    hf = dispatch_model(hf, device_map=per_module_map(hf), force_hooks=True)
    hf.to = lambda *a, **k: pytest.fail("a dispatched model was moved")
    model = ck.bridge_model(hf, tokenizer, device="auto")
    assert getattr(model.bridge.cfg, "n_devices", 1) == 1 and model.device == torch.device("cpu")
    assert model.weights_hash == ck.load_model(tiny_model_dir, device="cpu").weights_hash
    assert_same(outcomes(model), plain)


def test_pipeline_run_with_a_device_map(tiny_model_dir, dispatching, tmp_path):
    def cfg(**model):
        return {
            "model": {"name": tiny_model_dir, **model},
            "method": {"name": "eap"},
            "task": {"name": "greater_than", "n_examples": N_EXAMPLES},
            "selector": {"name": "top_n", "n_edges": 20},
            "evaluator": {"faithfulness": {}},
            "progress": False,
            "cache": False,
        }

    device_map = {"transformer": "cpu", "lm_head": "cpu"}
    mapped = run(cfg(device_map=device_map), tmp_path / "mapped")
    assert dispatching == [device_map]
    assert mapped.status == "complete" and mapped.meta["config"]["model"]["device_map"] == device_map
    plain = run(cfg(device="cpu"), tmp_path / "plain")
    assert dispatching == [device_map, None]
    torch.testing.assert_close(mapped.scores.values, plain.scores.values, rtol=1e-6, atol=1e-9)
    assert mapped.evals["faithfulness"].values == pytest.approx(plain.evals["faithfulness"].values)
    saved = json.loads((tmp_path / "mapped" / "results.json").read_text())
    assert saved["meta"]["config"]["model"]["device_map"] == device_map


def test_command_line_run_with_a_device_map(tiny_model_dir, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    args = [f"model.name={tiny_model_dir}", "model.device_map=auto", "method=eap", "task.n_examples=4", "selector.n_edges=10"]
    p = subprocess.run(
        [sys.executable, "-m", "circuitkit", *args, "progress=false", f"hydra.run.dir={tmp_path}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["status"] == "complete" and results["meta"]["config"]["model"]["device_map"] == "auto"
