"""Every bad input gets one clear message (docs/errors.md lists them): what was wrong and what to do.

Each test asserts the message, not only that something failed. Most go through the Python API (fast);
the command-line ones check the one-line message, the exit code and the absence of a traceback.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
import types

import pytest
import torch

import circuitkit as ck
from circuitkit import hookimpl
from circuitkit.data import Example, TaskData, tokenize_examples
from circuitkit.errors import CircuitkitError, ConfigError, ModelLoadError
from circuitkit.graph import Graph
from circuitkit.plugins import build_registry, make_plugin_manager
from circuitkit.results import Circuit, Scores, write_json


def cli(*args, env=None, timeout=300):
    e = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", **(env or {})}
    return subprocess.run([sys.executable, "-m", "circuitkit", *args], capture_output=True, text=True, env=e, timeout=timeout)


def one_clear_line(p):
    assert p.returncode != 0
    assert "Traceback" not in p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("circuitkit: error:")]
    assert len(lines) == 1, p.stderr
    return lines[0]


class _Hand(ck.Task):
    examples: list = []

    def generate(self, tokenizer, split):
        return iter(self.examples)


def hand_task(examples, **cfg):
    t = _Hand(ck.TaskConfig(name="hand", **cfg))
    t.examples = examples
    return t


GOOD = Example("The nurse said that", "The pilot said that", (" she",), (" he",))


# ----- names and options -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kind, name, choice",
    [
        ("methods", "eap_igg", "eap_ig"),
        ("tasks", "gretaer_than", "greater_than"),
        ("selectors", "topn", "top_n"),
        ("evaluators", "faithfullness", "faithfulness"),
    ],
)
def test_unknown_component_name_lists_the_choices(kind, name, choice):
    with pytest.raises(CircuitkitError) as e:
        ck.build(kind, name)
    assert f"'{name}' is not one of:" in str(e.value) and choice in str(e.value) and f"did you mean '{choice}'" in str(e.value)


def test_unknown_option_of_a_component_lists_valid_options():
    with pytest.raises(CircuitkitError, match=r"Unknown option\(s\) ig_stepz for 'eap_ig'.*valid: .*ig_steps"):
        ck.build("methods", "eap_ig", ig_stepz=3)


def test_misspelt_config_key_on_the_command_line(tiny_model_dir, tmp_path):
    p = cli(f"model.name={tiny_model_dir}", "method.ig_stepz=3", f"hydra.run.dir={tmp_path}")
    assert p.returncode != 0 and "ig_stepz" in p.stderr and "Traceback" not in p.stderr


def test_unknown_method_on_the_command_line_lists_choices(tmp_path):
    p = cli("method=eap_igg", f"hydra.run.dir={tmp_path}")
    assert p.returncode != 0 and "eap_ig" in p.stderr and "clean_corrupted" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.parametrize("steps", [0, -2])
def test_ig_steps_below_one(steps):
    with pytest.raises(CircuitkitError, match="ig_steps must be an integer of at least 1"):
        ck.build("methods", "eap_ig", ig_steps=steps)


def test_unknown_metric_name(tokenizer):
    with pytest.raises(CircuitkitError, match="Unknown metric: 'logit_dif' is not one of"):
        hand_task([GOOD], metric="logit_dif").build(tokenizer)


def test_batch_size_below_one(tiny_model):
    data = tokenize_examples("hand", [GOOD], tiny_model.tokenizer)
    with pytest.raises(CircuitkitError, match="batch_size must be at least 1"):
        next(data.batches(0))


@pytest.mark.parametrize("n, message", [(10**6, "larger than the graph, which has 110 edges"), (-1, "non-negative integer")])
def test_n_edges_out_of_range(tiny_model, n, message):
    with pytest.raises(CircuitkitError, match=message):
        ck.build("selectors", "top_n", n_edges=n).validate(tiny_model.graph)


# ----- data --------------------------------------------------------------------------------------
def test_missing_task_path(tokenizer):
    with pytest.raises(CircuitkitError, match="task=custom needs a file: add task.path="):
        ck.build("tasks", "custom").build(tokenizer)


def test_task_path_that_does_not_exist(tokenizer, tmp_path):
    with pytest.raises(CircuitkitError, match="does not exist or is not a file"):
        ck.build("tasks", "custom", path=str(tmp_path / "nope.jsonl")).build(tokenizer)


def test_malformed_jsonl_row_is_named(tokenizer, tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text(json.dumps({"clean": "a", "corrupted": "b", "correct": " c"}) + "\n{not json\n")
    with pytest.raises(CircuitkitError, match=r"d.jsonl, line 2 is not valid JSON"):
        ck.build("tasks", "custom", path=str(f)).build(tokenizer)


def test_malformed_csv_row_is_named(tokenizer, tmp_path):
    f = tmp_path / "d.csv"
    f.write_text('clean,corrupted,correct,incorrect\nThe nurse said that,The pilot said that, she, he\n"x","y"," z"," w",extra\n')
    with pytest.raises(CircuitkitError, match=r"d.csv, line 3 has a different number of fields"):
        ck.build("tasks", "custom", path=str(f)).build(tokenizer)


def test_csv_without_a_required_column(tokenizer, tmp_path):
    f = tmp_path / "d.csv"
    f.write_text("clean,corrupted\na,b\n")
    with pytest.raises(CircuitkitError, match="the header lacks column\\(s\\) correct"):
        ck.build("tasks", "custom", path=str(f)).build(tokenizer)


def test_length_mismatch_names_the_example(tokenizer):
    bad = Example("Kabul, the capital of", "Paris, the capital of", (" Afghanistan",), (" France",))
    with pytest.raises(
        CircuitkitError,
        match=r"example 1 \(clean='Kabul, the capital of'.* has clean and corrupted prompts that tokenize to different lengths \(7 vs 6 tokens\)",
    ):
        tokenize_examples("hand", [GOOD, bad], tokenizer)


def test_multi_token_answer_names_the_example(tokenizer):
    bad = Example("The nurse said that", "The pilot said that", (" Ouagadougou",), (" he",))
    with pytest.raises(
        CircuitkitError,
        match=r"example 0 .* has answers that are not single tokens of this tokenizer \(' Ouagadougou'\): ' Ouagadougou' -> \['ĠOu', ",
    ):
        tokenize_examples("hand", [bad], tokenizer)


def test_empty_answer_is_rejected(tokenizer):
    bad = Example("The nurse said that", "The pilot said that", ("",), (" he",))
    with pytest.raises(CircuitkitError, match=r"are not single tokens"):
        tokenize_examples("hand", [bad], tokenizer)


def test_empty_dataset_after_filtering(tokenizer):
    bad = Example("Kabul, the capital of", "Paris, the capital of", (" Afghanistan",), (" France",))
    task = hand_task([bad] * 10, n_examples=8)
    with pytest.raises(
        CircuitkitError,
        match=r"only 0 usable examples for this tokenizer \(need at least 4\); 10 were dropped because of: clean and corrupted prompts tokenize to different lengths",
    ):
        task.build(tokenizer)


# ----- models ------------------------------------------------------------------------------------
def test_hub_unreachable_says_how_to_use_a_local_directory(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CircuitkitError, match=r"Could not load 'gpt2' from the Hugging Face Hub.*model.name=/path/to/DIR"):
        ck.load_model("gpt2", device="cpu")


def test_local_model_directory_without_tokenizer(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=8, vocab_size=100)).save_pretrained(tmp_path)
    with pytest.raises(CircuitkitError, match="has no tokenizer files.*tokenizer.save_pretrained"):
        ck.load_model(str(tmp_path), device="cpu")


def test_path_that_is_not_a_model_directory(tmp_path):
    with pytest.raises(CircuitkitError, match="is not a model directory \\(no config.json"):
        ck.load_model(str(tmp_path), device="cpu")


def test_model_the_bridge_cannot_use(tmp_path, tokenizer):
    from transformers import BertConfig, BertForMaskedLM

    BertForMaskedLM(
        BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    ).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    with pytest.raises(CircuitkitError, match="cannot give the per-head q/k/v inputs.*Families that work: GPT-2"):
        ck.load_model(str(tmp_path), device="cpu")


def test_grouped_query_attention_bridge_without_kv_inputs_per_kv_head(tokenizer, monkeypatch):
    """A grouped-query model loads with a graph per key/value head; a bridge whose k/v input hooks do not
    have one slot per key/value head is refused with the slot counts (simulated: the bridge's config
    claims one key/value head where its hooks have two)."""
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import LlamaConfig, LlamaForCausalLM

    m = LlamaForCausalLM(
        LlamaConfig(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=len(tokenizer),
            max_position_embeddings=32,
        )
    )
    assert ck.bridge_model(m, tokenizer, device="cpu").graph == Graph(1, 4, n_kv_heads=2)
    boot = TransformerBridge.boot_transformers

    def boot_claiming_one_kv_head(*args, **kwargs):
        bridge = boot(*args, **kwargs)
        bridge.cfg.n_key_value_heads = 1
        return bridge

    monkeypatch.setattr(TransformerBridge, "boot_transformers", boot_claiming_one_kv_head)
    with pytest.raises(CircuitkitError, match="grouped-query attention.*q: 4, k: 2, v: 2 head slots.*1 for k and v"):
        ck.bridge_model(m, tokenizer, device="cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown where CUDA is absent")
def test_cuda_requested_but_absent():
    with pytest.raises(
        CircuitkitError, match="device=cuda was requested but CUDA is not available.*Use device=auto or device=cpu"
    ):
        ck.load_model("bundled", device="cuda")


def test_cuda_index_that_does_not_exist():
    from circuitkit.model import resolve_device

    with pytest.raises(CircuitkitError, match="cuda"):
        resolve_device("cuda:99")


@pytest.mark.parametrize("device, message", [("tpu9", "Unknown device 'tpu9'")])
def test_unknown_device(device, message):
    from circuitkit.model import resolve_device

    with pytest.raises(CircuitkitError, match=message):
        resolve_device(device)


def test_unknown_dtype():
    from circuitkit.model import resolve_dtype

    with pytest.raises(CircuitkitError, match="Unknown dtype 'float8'. Use one of"):
        resolve_dtype("float8")


# ----- device maps (tests/test_multi_device.py runs the working cases) ------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown where CUDA is absent")
def test_n_devices_without_cuda():
    with pytest.raises(
        ConfigError,
        match=r"model.n_devices=2 splits the model over 2 GPUs, but CUDA is not available.*Leave model.n_devices unset",
    ):
        ck.load_model("bundled", n_devices=2)


def test_n_devices_more_than_present(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(
        ConfigError, match=r"model.n_devices=4 .* this machine has 1 CUDA device\(s\). Use model.n_devices=1 or fewer"
    ):
        ck.load_model("bundled", n_devices=4)


@pytest.mark.parametrize("n", [0, -1, "two", True])
def test_n_devices_not_a_positive_integer(n):
    with pytest.raises(ConfigError, match="model.n_devices must be a positive integer"):
        ck.load_model("bundled", n_devices=n)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"device_map": "auto", "device": "cpu"},
            r"model.device_map='auto' and model.device=cpu both say where the model goes.*Leave model.device at auto",
        ),
        ({"n_devices": 2, "device": "cuda:0"}, r"model.n_devices=2 and model.device=cuda:0 both say where the model goes"),
        ({"device_map": "auto", "n_devices": 2}, r"both say where the model goes; set one of them"),
    ],
)
def test_device_map_together_with_a_device(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        ck.load_model("bundled", **kwargs)


def test_device_map_without_accelerate(monkeypatch):
    monkeypatch.setitem(sys.modules, "accelerate", None)  # import accelerate -> ImportError
    with pytest.raises(ConfigError, match=r"need the accelerate package: pip install \"circuitkit\[multi-gpu\]\""):
        ck.load_model("bundled", device_map="auto")


@pytest.mark.parametrize(
    "device_map, message",
    [
        ("fastest", r"is neither a placement strategy \(auto, balanced, balanced_low_0, sequential\) nor a device"),
        ({"transformer": 0, "lm_head": "disk"}, r"puts modules on disk: circuitkit reads the weights directly"),
        ({"transformer": 0, "lm_head": "cpu"}, r"puts some modules on the CPU and others on GPUs"),
        ({"transformer": "cpu", "lm_head": "tpu"}, r"has the value 'tpu'; use a GPU index"),
        ([0, 1], r"must be a placement strategy .* or a non-empty mapping"),
        pytest.param(
            {"transformer": 0, "lm_head": 1},
            r"asks for cuda:0 but CUDA is not available",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown where CUDA is absent"),
        ),
    ],
)
def test_bad_device_map(device_map, message):
    with pytest.raises(ConfigError, match=message):
        ck.load_model("bundled", device_map=device_map)


@pytest.mark.parametrize("offload", ["cpu", "disk"])
def test_dispatched_model_that_did_not_fit_on_the_gpus(tokenizer, offload):
    """accelerate's ``device_map=auto`` offloads what does not fit on the GPUs (simulated: the map is set by
    hand, as accelerate records it)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    m = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=8, vocab_size=len(tokenizer)))
    m.hf_device_map = {"transformer.wte": 0, "transformer.h.0": 0, "transformer.ln_f": offload, "lm_head": offload}
    with pytest.raises(
        ModelLoadError,
        match=rf"does not fit on the GPUs it was given: the device map put 2 module\(s\) on {offload}.*model.n_devices=N",
    ):
        ck.bridge_model(m, tokenizer)


def test_device_map_that_transformers_cannot_apply(tiny_model_dir, monkeypatch):
    """With several GPUs, accelerate refuses a mapping that leaves modules out (simulated: that refusal)."""
    from transformers import AutoModelForCausalLM

    def refuse(path, **kwargs):
        assert kwargs["device_map"] == {"transformer": "cpu"}
        raise ValueError("The device_map provided does not give any device for the following parameters: lm_head.weight")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", refuse)
    with pytest.raises(
        ModelLoadError,
        match=r"Transformers could not place .* with device_map=\{'transformer': 'cpu'\}: The device_map provided does not give "
        r"any device for the following parameters: lm_head.weight A mapping must name a device for every module",
    ):
        ck.load_model(tiny_model_dir, device_map={"transformer": "cpu"})


def test_dispatched_model_with_an_explicit_device(tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    m = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=8, vocab_size=len(tokenizer)))
    m.hf_device_map = {"transformer": 0, "lm_head": 1}
    with pytest.raises(ConfigError, match=r"is split over devices by a device map .* cannot also be moved to device=cpu"):
        ck.bridge_model(m, tokenizer, device="cpu")


# ----- circuits, scores and metrics --------------------------------------------------------------
def test_circuit_file_of_another_architecture(tmp_path):
    Circuit.full(Graph(12, 12)).save(tmp_path / "c.json")
    with pytest.raises(
        CircuitkitError, match="a circuit for a model with 12 layers and 12 heads, but this model has 2 layers and 4 heads"
    ):
        Circuit.load(tmp_path / "c.json", Graph(2, 4))


def test_truncated_circuit_file(tmp_path):
    (tmp_path / "c.json").write_text('{"cfg": {"n_layers": 2')
    with pytest.raises(CircuitkitError, match="is not valid JSON.*truncated"):
        Circuit.load(tmp_path / "c.json")


def test_nan_scores_are_reported():
    g = Graph(1, 2)
    v = torch.zeros(g.n_edges, dtype=torch.float64)
    v[3] = float("nan")
    with pytest.raises(CircuitkitError, match=r"1 edge scores are NaN or infinite \(e.g. " + g.edge_names[3].replace("<", "\\<")):
        Scores(g, v).check_finite()


def test_nan_metric_during_evaluation(tiny_model):
    task = hand_task([GOOD] * 4)
    task.metric = lambda logits, batch: torch.full((len(batch),), float("nan"))
    data = task.build(tiny_model.tokenizer)
    with pytest.raises(CircuitkitError, match="metric is NaN or infinite during evaluation"):
        ck.build("evaluators", "faithfulness").evaluate(
            tiny_model, task, data, Circuit.full(tiny_model.graph), ck.RunContext(progress=False)
        )


def test_clean_and_corrupted_metric_equal_makes_faithfulness_undefined(tiny_model):
    same = Example("The nurse said that", "The nurse said that", (" she",), (" he",))
    task = hand_task([same] * 4)
    # Tasks reject a pair with the same ids (no counterfactual), so the data is put together by hand.
    tok = tiny_model.tokenizer
    ids = [tok.bos_token_id] + tok.encode(same.clean)
    data = TaskData("hand", [same] * 4, [ids] * 4, [ids] * 4, [tok.encode(" she")] * 4, [tok.encode(" he")] * 4)
    with pytest.raises(CircuitkitError, match="clean and corrupted prompts with the same token ids"):
        task.build(tok)
    res = ck.build("evaluators", "faithfulness").evaluate(
        tiny_model, task, data, Circuit.full(tiny_model.graph), ck.RunContext(progress=False)
    )
    assert res.values["faithfulness"] is None
    assert "faithfulness is undefined: the clean and corrupted metrics are equal" in res.notes[0]


# ----- files -------------------------------------------------------------------------------------
def test_output_directory_not_writable(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CircuitkitError, match="Cannot write .*Choose a writable output directory"):
        write_json(blocker / "sub" / "results.json", {"a": 1})


def test_disk_full_while_writing_leaves_nothing_partial(tmp_path, monkeypatch):
    target = tmp_path / "scores.json"

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(
        CircuitkitError, match="No space left on device \\(is the disk full\\?\\). Nothing partial was left behind"
    ):
        write_json(target, {"a": 1})
    assert list(tmp_path.iterdir()) == []


def test_output_dir_not_writable_on_the_command_line(tiny_model_dir, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    p = cli(
        f"model.name={tiny_model_dir}",
        "task.n_examples=4",
        "selector.n_edges=10",
        "progress=false",
        f"hydra.run.dir={tmp_path / 'run'}",
        f"output_dir={blocker / 'out'}",
    )
    assert "Choose a writable output directory" in one_clear_line(p)


def test_interrupt_during_attribution(tiny_model_dir, tmp_path):
    """Ctrl-C during attribution: a clear message, exit code 130, and results.json says 'interrupted'
    (no scores.json presented as complete)."""
    out = tmp_path / "run"
    slow = tmp_path / "slowplug"
    slow.mkdir()
    (slow / "sitecustomize.py").write_text(
        "import time, circuitkit.attribution as a\n"
        "orig = a.gradient_attribution\n"
        "def slow(*args, **kw):\n"
        "    open(r'%s', 'w').write('started')\n"
        "    time.sleep(60)\n"
        "    return orig(*args, **kw)\n"
        "a.gradient_attribution = slow\n" % (tmp_path / "started")
    )
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "disabled",
        "PYTHONPATH": f"{slow}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "circuitkit",
            f"model.name={tiny_model_dir}",
            "method=eap",
            "task.n_examples=4",
            "selector.n_edges=10",
            "progress=false",
            f"hydra.run.dir={out}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        # As from a terminal: a test run started in the background by a non-interactive shell ignores SIGINT,
        # and the child would inherit that.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 120
    while not (tmp_path / "started").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "circuitkit: interrupted" in err and "Traceback" not in err
    assert json.loads((out / "results.json").read_text())["status"] == "interrupted"
    assert not (out / "scores.json").exists()


# ----- plugins -----------------------------------------------------------------------------------
def test_plugin_that_raises_in_its_hook():
    class Broken:
        @hookimpl
        def circuitkit_register_methods(self, registry):
            raise RuntimeError("boom")

    pm = make_plugin_manager(block=[], extra_plugins=[Broken()])
    with pytest.raises(
        CircuitkitError,
        match=r"raised in circuitkit_register_methods: RuntimeError: boom\. Fix or uninstall it, or block it with CIRCUITKIT_BLOCK_PLUGINS=",
    ):
        build_registry(pm)


def test_two_plugins_registering_the_same_name():
    from plugins_for_errors import make_duplicate

    pm = make_plugin_manager(block=[], extra_plugins=[make_duplicate()])
    with pytest.raises(CircuitkitError, match="Two plugins register a method named 'eap'"):
        build_registry(pm)


def test_plugin_hook_with_a_misspelt_name():
    mod = types.ModuleType("misspelt_plugin")

    @hookimpl
    def circuitkit_register_method(registry):  # missing the final 's'
        pass

    mod.circuitkit_register_method = circuitkit_register_method
    with pytest.raises(
        CircuitkitError, match=r"circuitkit_register_method.*Hook names must be one of: .*circuitkit_register_methods"
    ):
        make_plugin_manager(extra_plugins=[mod])


def test_wandb_failure_keeps_local_results(tiny_model, tmp_path, monkeypatch):
    """A reporter that raises never loses the run: results.json is complete and a warning says so."""
    from circuitkit.pipeline import run
    from circuitkit.plugins import get_registry

    registry = get_registry()
    cfg = {
        "method": {"name": "eap"},
        "task": {"name": "greater_than", "n_examples": 4},
        "selector": {"name": "top_n", "n_edges": 10},
        "evaluator": {"faithfulness": {}},
        "reporter": {},
        "progress": False,
        "cache": False,
    }
    if "wandb" in registry.reporters.names():
        import wandb

        cfg["reporter"] = {"wandb": {"mode": "offline"}}
        monkeypatch.setattr(wandb, "init", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("W&B is down")))
    res = run(cfg, tmp_path, model=tiny_model, registry=registry)
    assert json.loads((tmp_path / "results.json").read_text())["status"] == "complete"
    assert res.evals["faithfulness"].values["faithfulness"] is not None


def assert_refused_before_computation(run_dir):
    """The failure is recorded (status and error), and nothing was computed: no scores, no model loaded."""
    res = json.loads((run_dir / "results.json").read_text())
    assert res["status"] == "failed" and res["meta"]["error"]
    assert "load_model" not in res["seconds"] and not (run_dir / "scores.json").exists()


def test_unknown_intervention_and_level_on_the_command_line(tiny_model_dir, tmp_path):
    p = cli(f"model.name={tiny_model_dir}", "intervention=resample", f"hydra.run.dir={tmp_path / 'a'}")
    assert "intervention must be one of patching, zero, mean, mean_positional, got 'resample'" in one_clear_line(p)
    assert_refused_before_computation(tmp_path / "a")
    p = cli(f"model.name={tiny_model_dir}", "method=eap", "method.level=head", f"hydra.run.dir={tmp_path / 'b'}")
    assert "method.level must be one of edge, node, neuron, got 'head'" in one_clear_line(p)
    p = cli(
        f"model.name={tiny_model_dir}",
        "method=eap",
        "method.level=node",
        "task.n_examples=4",
        "progress=false",
        f"hydra.run.dir={tmp_path / 'c'}",
    )
    assert "selector.n_nodes=<k>" in one_clear_line(p)
    assert_refused_before_computation(tmp_path / "c")
    p = cli(
        f"model.name={tiny_model_dir}", "method=eap", "selector=greedy", "method.level=neuron", f"hydra.run.dir={tmp_path / 'd'}"
    )
    assert "greedy selects edges, but method.level=neuron" in one_clear_line(p)
