"""The command line, run as users run it: ``python -m circuitkit`` in a subprocess."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def cli(*args, cwd=None, env=None, timeout=300):
    e = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "circuitkit", *args], capture_output=True, text=True, cwd=cwd, env=e, timeout=timeout
    )


def test_run_writes_the_three_result_files(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    p = cli(
        f"model.name={tiny_model_dir}",
        "method=eap_ig",
        "task=greater_than",
        "task.n_examples=8",
        "selector.n_edges=30",
        "progress=false",
        f"hydra.run.dir={out}",
    )
    assert p.returncode == 0, p.stderr
    scores = json.loads((out / "scores.json").read_text())
    circuit = json.loads((out / "circuit.json").read_text())
    results = json.loads((out / "results.json").read_text())
    assert scores["meta"]["method"] == "eap_ig" and len(scores["edges"]) == results["edges_in_graph"]
    assert set(circuit) >= {"nodes", "edges"} and all({"score", "in_graph"} <= set(v) for v in circuit["edges"].values())
    assert results["status"] == "complete"
    f = results["faithfulness"]["values"]
    assert {"clean_metric", "corrupted_metric", "circuit_metric", "faithfulness", "edges_in_circuit", "edges_in_graph"} <= set(f)
    assert 0 < results["edges_in_circuit"] <= 30
    assert {"attribute", "select", "evaluate_faithfulness"} <= set(results["seconds"])
    assert results["meta"]["versions"]["torch"] and results["meta"]["model_weights_hash"] and results["meta"]["task_data_hash"]
    assert "faithfulness=" in p.stdout


def test_custom_task_from_jsonl(tiny_model_dir, tmp_path):
    rows = [
        {
            "clean": "When Mary and John went to the store, John gave a drink to",
            "corrupted": "When Mary and John went to the store, Anne gave a drink to",
            "correct": " Mary",
            "incorrect": " John",
        },
        {"clean": "The nurse said that", "corrupted": "The pilot said that", "correct": " she", "incorrect": " he"},
    ] * 3
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "run"
    p = cli(
        f"model.name={tiny_model_dir}",
        "method=eap",
        "task=custom",
        f"task.path={path}",
        "selector.n_edges=10",
        "progress=false",
        f"hydra.run.dir={out}",
    )
    assert p.returncode == 0, p.stderr
    assert json.loads((out / "results.json").read_text())["meta"]["n_examples"] == 6


@pytest.mark.parametrize(
    "args, message",
    [
        (["method=eap_igg"], "eap_ig"),  # Hydra lists the choices
        (["task=nope"], "greater_than"),
        (["method.ig_stepz=3"], "ig_stepz"),
        (["method.ig_steps=0"], "ig_steps must be an integer of at least 1"),
        (["selector.n_edges=100000"], "larger than the graph"),
        (["task=custom"], "task=custom needs a file"),
        (["model.name=/does/not/exist"], "is not a model directory"),
        (["model.device=cuda"] if not __import__("torch").cuda.is_available() else ["model.device=cuda:99"], "cuda"),
        (["model.n_devices=99"], "model.n_devices=99 splits the model over 99 GPUs"),
        (["model.device_map=auto", "model.device=cpu"], "both say where the model goes"),
    ],
)
def test_bad_input_gets_one_clear_message(tiny_model_dir, tmp_path, args, message):
    base = [f"model.name={tiny_model_dir}"] if not any(a.startswith("model.name") for a in args) else []
    p = cli(*base, "task.n_examples=4", "selector.n_edges=20", "progress=false", f"hydra.run.dir={tmp_path}", *args)
    assert p.returncode != 0
    assert message in p.stderr
    assert "Traceback" not in p.stderr


def test_hub_unreachable_says_how_to_use_a_local_directory(tmp_path):
    p = cli("model=gpt2", "progress=false", f"hydra.run.dir={tmp_path}", env={"HF_HUB_OFFLINE": "1"})
    assert p.returncode != 0
    assert "Hugging Face Hub" in p.stderr and "model.name=/path/to/DIR" in p.stderr
    assert "Traceback" not in p.stderr


def test_full_error_shows_traceback(tiny_model_dir, tmp_path):
    p = cli(f"model.name={tiny_model_dir}", "selector.n_edges=100000", f"hydra.run.dir={tmp_path}", env={"HYDRA_FULL_ERROR": "1"})
    assert p.returncode != 0 and "Traceback" in p.stderr


def test_multirun(tiny_model_dir, tmp_path):
    p = cli(
        "-m",
        f"model.name={tiny_model_dir}",
        "method=eap,eap_ig",
        "task.n_examples=4",
        "selector.n_edges=10",
        "progress=false",
        f"hydra.sweep.dir={tmp_path}",
    )
    assert p.returncode == 0, p.stderr
    results = sorted(Path(tmp_path).glob("*/results.json"))
    assert len(results) == 2
    assert {json.loads(r.read_text())["meta"]["method"] for r in results} == {"eap", "eap_ig"}


def test_kl_objective_from_the_command_line(tiny_model_dir, tmp_path):
    """task.metric=kl works with the builtin gradient methods and the evaluators (EAP-IG-KL)."""
    out = tmp_path / "run"
    p = cli(
        f"model.name={tiny_model_dir}",
        "method=eap_ig",
        "task=greater_than",
        "task.metric=kl",
        "task.n_examples=4",
        "selector.n_edges=20",
        "progress=false",
        f"hydra.run.dir={out}",
    )
    assert p.returncode == 0, p.stderr
    f = json.loads((out / "results.json").read_text())["faithfulness"]["values"]
    assert f["clean_metric"] == pytest.approx(0.0, abs=1e-6)  # -KL(clean || clean)
    assert f["corrupted_metric"] < 0


def test_node_level_run_with_mean_ablation(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    p = cli(
        f"model.name={tiny_model_dir}",
        "method=eap_ig",
        "method.level=node",
        "selector.n_nodes=6",
        "intervention=mean",
        "task=greater_than",
        "task.n_examples=8",
        "progress=false",
        f"hydra.run.dir={out}",
    )
    assert p.returncode == 0, p.stderr
    results = json.loads((out / "results.json").read_text())
    scores = json.loads((out / "scores.json").read_text())
    circuit = json.loads((out / "circuit.json").read_text())
    assert results["meta"]["intervention"] == "mean" and results["level"] == "node"
    assert 0 < results["nodes_in_circuit"] <= 6
    assert scores["level"] == "node" and len(scores["nodes"]) == 11  # input, 2 layers x (4 heads + MLP)
    assert circuit["level"] == "node"
    kept = {n for n, v in circuit["nodes"].items() if v["in_graph"]} - {"logits"}
    top = sorted(scores["nodes"], key=lambda n: -abs(scores["nodes"][n]))[:6]
    assert kept <= set(top)
    assert results["faithfulness"]["values"]["faithfulness"] is not None


def test_neuron_level_run(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    p = cli(
        f"model.name={tiny_model_dir}",
        "method=eap",
        "method.level=neuron",
        "selector.n_neurons=40",
        "task.n_examples=8",
        "progress=false",
        f"hydra.run.dir={out}",
    )
    assert p.returncode == 0, p.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["level"] == "neuron" and 0 < results["neurons_in_circuit"] <= 40
    assert results["faithfulness"]["values"]["neurons_in_circuit"] == results["neurons_in_circuit"]
