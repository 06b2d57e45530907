"""The bundled model's training command (circuitkit.zoo.train), run for a few steps."""

import json

import torch
from safetensors.torch import load_file

import circuitkit as ck
from circuitkit.zoo import train


def run(out):
    threads = torch.get_num_threads()  # training sets one thread for the process; put it back
    try:
        train.main(
            ["--out", str(out), "--steps", "3", "--tasks", "ioi,induction", "--pool", "60", "--eval-examples", "16", "--eval-every", "0"]
        )
    finally:
        torch.set_num_threads(threads)


def test_training_writes_a_loadable_model_and_its_report_and_is_reproducible(tmp_path):
    run(tmp_path / "a")
    run(tmp_path / "b")
    report = json.loads((tmp_path / "a" / "training_report.json").read_text())
    assert report["args"]["steps"] == 3 and report["architecture"]["n_layer"] == train.ARCH["n_layer"]
    assert set(report["held_out"]) == {"ioi", "induction"}
    assert all(r["n"] == 16 and 0.0 <= r["accuracy"] <= 1.0 for r in report["held_out"].values())
    a, b = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(tmp_path / "b" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # same command, same weights
    assert all(t.dtype == torch.float16 for t in a.values())
    model = ck.load_model(str(tmp_path / "a"))
    assert model.graph.n_heads == train.ARCH["n_head"] and model.graph.n_layers == train.ARCH["n_layer"]
