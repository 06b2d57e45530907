"""``python -m circuitkit.list``, blocking plugins (environment variable, ``--block``, ``plugins.block``) and
the error when no plugin is registered at all."""

import json
import os
import subprocess
import sys
from importlib import metadata

import pytest
from plugin_helpers import empty_selector_plugin, on_sys_path, write_distribution

from circuitkit import listing as ck_list
from circuitkit.overrides import plugin_block_from_overrides
from circuitkit.plugins import BLOCK_ENV, clear_cache, get_registry

GOOD = empty_selector_plugin("ck_test_nothing")


@pytest.fixture
def third_party(tmp_path):
    """Two fake installed distributions: a working plugin and one that fails to import."""
    write_distribution(tmp_path, "ck-test-good", {"ck_test_good": "ck_test_good_mod"}, {"ck_test_good_mod": GOOD})
    write_distribution(
        tmp_path, "ck-test-bad", {"ck_test_bad": "ck_test_bad_mod"}, {"ck_test_bad_mod": "import ck_no_such_module\n"}
    )
    with on_sys_path(tmp_path, modules=("ck_test_good_mod", "ck_test_bad_mod")):
        yield tmp_path


def listing(capsys, *argv):
    code = ck_list.main(["--json", *argv])
    return code, json.loads(capsys.readouterr().out)


def test_lists_every_plugin_with_its_components_and_distribution(capsys):
    code, out = listing(capsys)
    assert code == 0 and out["registry"]["ok"]
    names = {ep.name for ep in metadata.entry_points(group="circuitkit")}
    plugins = {p["name"]: p for p in out["plugins"]}
    assert set(plugins) == names
    registry = get_registry()
    for kind, reg in registry.kinds.items():
        for name, entry in reg.entries.items():
            p = plugins[entry.plugin]
            assert name in p["components"][reg.group] and p["distribution"] == entry.distribution, (kind, name)
    assert plugins["eap"] == {
        **plugins["eap"],
        "distribution": "circuitkit",
        "status": "ok",
        "components": {"method": ["eap"]},
        "module": "circuitkit_plugins.eap",
    }


def test_text_output(capsys):
    assert ck_list.main(["-v"]) == 0
    text = capsys.readouterr().out
    assert "eap " in text and "method=eap_ig" in text and "module: circuitkit_plugins.eap" in text
    assert "Choices per config group" in text and "registry: " in text


def test_third_party_and_broken_plugins(third_party, capsys):
    code, out = listing(capsys)
    plugins = {p["name"]: p for p in out["plugins"]}
    good, bad = plugins["ck_test_good"], plugins["ck_test_bad"]
    assert (good["distribution"], good["version"], good["components"]) == (
        "ck-test-good",
        "0.1",
        {"selector": ["ck_test_nothing"]},
    )
    assert bad["status"] == "error" and "ck_no_such_module" in bad["error"]
    assert plugins["eap"]["status"] == "ok"  # one broken plugin does not hide the others
    assert code == 1 and not out["registry"]["ok"] and f"{BLOCK_ENV}=ck_test_bad" in out["registry"]["status"]

    code, out = listing(capsys, "--block", "ck_test_bad")
    assert code == 0 and out["registry"]["ok"]
    assert {p["name"]: p["status"] for p in out["plugins"]}["ck_test_bad"] == "blocked"
    assert "ck_test_nothing" in get_registry(["ck_test_bad"]).selectors.names()


def test_environment_variable_blocks(monkeypatch, capsys):
    monkeypatch.setenv(BLOCK_ENV, "eap, top_n")
    clear_cache()
    try:
        code, out = listing(capsys)
        status = {p["name"]: p["status"] for p in out["plugins"]}
        assert status["eap"] == status["top_n"] == "blocked" and status["eap_ig"] == "ok"
        registry = get_registry()
        assert "eap" not in registry.methods.names() and "top_n" not in registry.selectors.names()
        assert "eap_ig" in registry.methods.names()
    finally:
        monkeypatch.delenv(BLOCK_ENV)
        clear_cache()


def test_pipeline_honours_plugins_block(tmp_path):
    from circuitkit.errors import ConfigError
    from circuitkit.pipeline import run

    cfg = {
        "method": {"name": "eap"},
        "task": {"name": "greater_than", "n_examples": 4},
        "selector": {"name": "top_n", "n_edges": 10},
        "evaluator": {},
        "progress": False,
        "plugins": {"block": ["eap"]},
    }
    with pytest.raises(ConfigError, match="Unknown method: 'eap'"):
        run(cfg, tmp_path, model=object())  # components are built (and fail) before the model is used
    # The run's block applies to lookups during the run only, not to whatever runs next in the process.
    from circuitkit.plugins import get_registry

    assert "eap" in get_registry().methods.names()


@pytest.mark.parametrize(
    "args, block",
    [
        (["plugins.block=[a,b]", "-m", "--cfg", "job", "hydra.run.dir=/x"], ["a", "b"]),
        (["+plugins.block=c"], ["c"]),
        (["++plugins.block=[c]", "plugins.block=d"], ["c", "d"]),
        (["plugins.block=[a],[b,c]"], ["a", "b", "c"]),  # multirun sweep: the union
        (["plugins.block=[]"], []),
        (["~plugins.block"], []),
        (["plugins.block=[a"], []),  # Hydra reports the syntax error itself
    ],
)
def test_plugins_block_is_read_from_the_command_line(args, block):
    assert plugin_block_from_overrides(args) == block


def run_module(module, *args, env=None):
    e = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=e, timeout=300)


def test_no_plugins_at_all_is_a_clear_error(tmp_path):
    every = ",".join(sorted({ep.name for ep in metadata.entry_points(group="circuitkit")}))
    p = run_module("circuitkit", "task.n_examples=4", f"hydra.run.dir={tmp_path}", env={BLOCK_ENV: every})
    assert p.returncode == 1
    assert "No circuitkit plugins are registered" in p.stderr and "pip install" in p.stderr and BLOCK_ENV in p.stderr
    assert "Traceback" not in p.stderr

    p = run_module("circuitkit.list", env={BLOCK_ENV: every})
    assert p.returncode == 1
    assert "blocked" in p.stdout and "registry: ERROR: No circuitkit plugins are registered" in p.stdout
