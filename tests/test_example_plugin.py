"""The example third-party plugin (examples/circuitkit-example-plugin), installed with pip as a user would,
run through the CLI and the Python API, and its own test-suite (circuitkit's contracts) run with pytest.

pip installs it into a directory of its own (``--target``), put on ``sys.path`` / ``PYTHONPATH`` only by
these tests, so the shared environment and the other tests never see it.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from plugin_helpers import on_sys_path, write_distribution

import circuitkit as ck
from circuitkit.plugins import get_registry

pytest_plugins = ["pytester"]

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "circuitkit-example-plugin"
BROKEN_PLUGIN = "ck_test_broken"


@pytest.fixture(scope="module")
def example_site(tmp_path_factory):
    """The example plugin, pip-installed (not editable) into a fresh directory."""
    tmp = tmp_path_factory.mktemp("example-plugin")
    src = tmp / "src"
    shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", ".pytest_cache"))
    site = tmp / "site"
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(src)]
    if importlib.util.find_spec("setuptools") is not None:  # build offline with the installed setuptools
        cmd[5:5] = ["--no-build-isolation", "--no-index"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    return site


@pytest.fixture
def example_installed(example_site):
    """The example plugin importable and discoverable in this process, for one test."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads only cost
    try:
        with on_sys_path(example_site, modules=("circuitkit_example",)):
            yield example_site
    finally:
        torch.set_num_threads(threads)


def test_pip_install_declares_the_entry_point(example_site):
    (info,) = example_site.glob("circuitkit_example_plugin-*.dist-info")
    assert "[circuitkit]\ncircuitkit_example = circuitkit_example.plugin" in (info / "entry_points.txt").read_text()


def test_python_api(example_installed, ck_tiny_model, ck_tiny_task, ck_tiny_data, ck_tokenizer):
    registry = get_registry()
    entry = registry.methods.get("eap_corrupted")
    assert (entry.plugin, entry.distribution) == ("circuitkit_example", "circuitkit-example-plugin")
    assert registry.tasks.get("repeat_word").plugin == "circuitkit_example"

    ctx = ck.RunContext(batch_size=8, progress=False)
    scores = ck.build("methods", "eap_corrupted", alpha=0.5).attribute(ck_tiny_model, ck_tiny_task, ck_tiny_data, ctx)
    assert scores.meta["alpha"] == 0.5 and len(scores) == ck_tiny_model.graph.n_edges
    assert torch.isfinite(scores.values).all()
    data = ck.build("tasks", "repeat_word", n_examples=5, repeats=3).build(ck_tokenizer)
    assert len(data) == 5 and data.examples[0].clean.count(data.examples[0].meta["word"]) == 3


def test_hydra_configs_come_from_the_dataclasses(example_installed):
    from hydra.errors import ConfigCompositionException

    from circuitkit.testing import compose_config

    cfg = compose_config(["method=eap_corrupted", "method.alpha=0.25", "task=repeat_word", "task.repeats=3"])
    assert cfg.method == {"name": "eap_corrupted", "alpha": 0.25}
    assert cfg.task.repeats == 3 and cfg.task.n_examples == 32 and cfg.task.metric == "logit_diff"
    with pytest.raises(ConfigCompositionException):
        compose_config(["method=eap_corrupted", "method.alpah=0.25"])


def test_the_example_packages_own_tests_pass(example_installed, pytester):
    """What a plugin author runs: the example's tests subclass circuitkit's contracts and use the ck_*
    fixtures of circuitkit's pytest plugin."""
    result = pytester.runpytest_inprocess(str(EXAMPLE / "tests"), "-p", "no:cacheprovider", "-q")
    outcomes = result.parseoutcomes()
    assert result.ret == 0 and outcomes.get("passed", 0) >= 20, result.stdout.str()[-3000:]
    assert not outcomes.get("skipped") and not outcomes.get("failed")


def test_cli_runs_the_example_plugin_and_config_blocks_a_broken_plugin(example_site, tiny_model_dir, tmp_path):
    """``python -m circuitkit`` with the example's method and task (and options overridden), while another
    installed plugin is broken and blocked with ``plugins.block`` on the command line."""
    broken = tmp_path / "broken"
    write_distribution(
        broken,
        "ck-test-broken",
        {BROKEN_PLUGIN: "ck_test_broken_mod"},
        {"ck_test_broken_mod": "raise ImportError('deliberately broken')\n"},
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(example_site), str(broken)]),
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "disabled",
        "OMP_NUM_THREADS": "1",
    }
    out = tmp_path / "run"
    args = [
        sys.executable,
        "-m",
        "circuitkit",
        "method=eap_corrupted",
        "method.alpha=0.5",
        "task=repeat_word",
        "task.repeats=3",
        "task.n_examples=6",
        "task.metric=answer_margin",
        "intervention=halfway",
        f"model.name={tiny_model_dir}",
        "selector.n_edges=20",
        "progress=false",
        "cache=false",
        f"hydra.run.dir={out}",
    ]
    p = subprocess.run([*args, f"plugins.block=[{BROKEN_PLUGIN}]"], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "complete"
    assert results["meta"]["method"] == "eap_corrupted" and results["meta"]["task"] == "repeat_word"
    assert results["meta"]["config"]["method"]["alpha"] == 0.5 and results["meta"]["config"]["task"]["repeats"] == 3
    assert results["meta"]["intervention"] == "halfway" and results["meta"]["config"]["task"]["metric"] == "answer_margin"
    assert results["meta"]["config"]["plugins"]["block"] == [BROKEN_PLUGIN]
    assert json.loads((out / "scores.json").read_text())["meta"]["alpha"] == 0.5

    # Without the block the broken plugin stops the CLI with one line that names the fix.
    p = subprocess.run([*args, "--cfg", "job"], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 1
    assert f"Plugin '{BROKEN_PLUGIN}'" in p.stderr and f"CIRCUITKIT_BLOCK_PLUGINS={BROKEN_PLUGIN}" in p.stderr
    assert "Traceback" not in p.stderr
