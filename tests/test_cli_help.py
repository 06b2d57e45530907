"""``python -m circuitkit --help`` / ``--version``: circuitkit's groups, choices (from the plugin registry,
third-party plugins included), options and examples; versions and the installed plugins."""

import os
import subprocess
import sys
from importlib import metadata

from plugin_helpers import empty_selector_plugin, write_distribution

from circuitkit.plugins import get_registry

THIRD_PARTY = empty_selector_plugin("ck_help_nothing")


def cli(*args, pythonpath=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "circuitkit", *args], capture_output=True, text=True, env=env, timeout=120)


def group_line(text, group):
    return next(line for line in text.splitlines() if line.startswith(f"  {group} "))


def test_help_shows_groups_choices_options_and_examples(tmp_path):
    write_distribution(tmp_path, "ck-help-plugin", {"ck_help": "ck_help_mod"}, {"ck_help_mod": THIRD_PARTY})
    p = cli("--help", pythonpath=tmp_path)
    assert p.returncode == 0 and p.stderr == "", p.stderr
    text = p.stdout
    assert "powered by Hydra" not in text and text.startswith(f"circuitkit {metadata.version('circuitkit')}:")
    registry = get_registry()
    for kind, group in (
        ("methods", "method"),
        ("tasks", "task"),
        ("selectors", "selector"),
        ("evaluators", "evaluator"),
        ("reporters", "reporter"),
    ):
        line = group_line(text, group)
        for name in registry.kinds[kind].names():
            assert name in line, (group, name)
    assert "ck_help_nothing" in group_line(text, "selector")  # a third-party plugin's component
    assert "eap_ig*" in group_line(text, "method") and "top_n*" in group_line(text, "selector")  # the defaults
    assert "faithfulness*" in group_line(text, "evaluator") and "faithfulness_curve*" in group_line(text, "evaluator")
    assert "bundled*" in group_line(text, "model") and "patching*" in group_line(text, "intervention")
    for option in (
        "selector.target=0.85",
        "selector.n_edges=N",
        "task.n_examples=64",
        "method.ig_steps=5",
        "batch_size=16",
        "seed=0",
    ):
        assert f"  {option} " in text or f"  {option}\n" in text, option
    assert "Examples:" in text and "python -m circuitkit -m method=eap,eap_ig" in text and "--hydra-help" in text
    # -h is the same, and a blocked plugin's components are left out.
    p = cli("-h", "plugins.block=[ck_help]", pythonpath=tmp_path)
    assert p.returncode == 0 and "ck_help_nothing" not in p.stdout and "top_n*" in p.stdout


def test_version_shows_circuitkit_dependencies_and_plugins_with_their_distributions(tmp_path):
    write_distribution(tmp_path, "ck-help-plugin", {"ck_help": "ck_help_mod"}, {"ck_help_mod": THIRD_PARTY})
    p = cli("--version", pythonpath=tmp_path)
    assert p.returncode == 0 and p.stderr == "", p.stderr
    lines = p.stdout.splitlines()
    assert (
        lines[0].startswith(f"circuitkit {metadata.version('circuitkit')} (python ")
        and f"torch {metadata.version('torch')}" in lines[0]
    )
    assert "Hydra" not in lines[0]
    builtin = next(line for line in lines if line.startswith(f"  circuitkit {metadata.version('circuitkit')}: "))
    assert all(n in builtin for n in ("eap_ig", "top_n", "faithfulness_curve"))
    assert "  ck-help-plugin 0.1: ck_help" in lines
    n = len(metadata.entry_points(group="circuitkit")) + 1
    assert f"plugins (entry-point group 'circuitkit'): {n} installed" in lines
