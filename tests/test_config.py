"""The run's typed config (circuitkit/config.py), the presets of conf/, option checks in the config
dataclasses (the same error from the command line's config and from ``ck.build``), and the pipeline's stages."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import circuitkit as ck
from circuitkit.config import RunConfig, compose, model_presets, record, run_presets, to_objects, typed
from circuitkit.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


# ----- the schema ------------------------------------------------------------------------------------
def test_the_composed_config_is_typed_and_becomes_objects():
    cfg = compose(["method=eap_ig", "method.ig_steps=3", "task=ioi"])
    assert OmegaConf.get_type(cfg) is RunConfig
    run = to_objects(cfg)
    assert isinstance(run, RunConfig) and run.batch_size == 16 and run.cache is True  # the CLI caches
    eap_ig = ck.build("methods", "eap_ig").config
    assert type(run.method) is type(eap_ig) and run.method.ig_steps == 3 and run.method.name == "eap_ig"
    assert type(run.task).__name__ == "IOIConfig" and run.model.name == "bundled"
    assert set(run.evaluator) == {"faithfulness", "faithfulness_curve"} and run.reporter == {}
    assert type(run.evaluator["faithfulness_curve"]).__name__ == "FaithfulnessCurveConfig"


@pytest.mark.parametrize("override", ["batch_sizee=3", "batch_size=abc", "model.dtypee=float64", "bootstrap.level=high"])
def test_a_misspelt_key_or_a_wrong_type_is_refused_while_composing(override):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException):
        compose([override])


def test_config_yaml_sets_the_schemas_defaults_except_the_cache():
    """config.yaml documents each option with its value; the schema holds the same values (the defaults of a
    config given to pipeline.run), except that the command line turns the attribution cache on."""
    composed = OmegaConf.to_container(compose([]))
    schema = OmegaConf.to_container(OmegaConf.structured(RunConfig))
    groups = {"method", "task", "selector", "evaluator", "reporter"}
    differ = sorted(k for k in schema if k not in groups and composed[k] != schema[k])
    assert differ == ["cache"] and composed["cache"] is True and schema["cache"] is False


def test_a_mapping_gets_the_schemas_defaults_and_a_bad_key_one_message():
    node = typed({"method": {"name": "eap"}, "task": {"name": "ioi"}, "selector": {"name": "top_n", "n_edges": 5}})
    run = to_objects(node)
    assert run.method == {"name": "eap"} and run.seed == 0 and run.cache is False and run.intervention == "patching"
    assert run.bootstrap.n_resamples == 1000 and run.model.name == "bundled"
    with pytest.raises(ConfigError, match=r"^Bad run config: .*batch_sise"):
        typed({"batch_sise": 3})
    with pytest.raises(ConfigError, match="The run config has no method: choose one with method=NAME"):
        to_objects(typed({"task": {"name": "ioi"}, "selector": {"name": "top_n"}}))
    with pytest.raises(ConfigError, match="batch_size must be at least 1, got 0"):
        to_objects(typed({"method": {"name": "eap"}, "task": {"name": "ioi"}, "selector": {"name": "top_n"}, "batch_size": 0}))


def test_the_record_is_the_composed_config_without_empty_list_groups():
    cfg = compose(["reporter=[]", "evaluator=[faithfulness]"])
    rec = record(cfg)
    assert "reporter" not in rec and rec["evaluator"] == {"faithfulness": {"name": "faithfulness"}}
    full = OmegaConf.to_container(cfg, resolve=True)
    assert {k: v for k, v in full.items() if k != "reporter"} == rec
    json.dumps(rec)  # plain values only


# ----- presets -----------------------------------------------------------------------------------------
def test_model_presets_come_from_conf():
    presets = model_presets()
    assert set(presets) == {p.stem for p in (ROOT / "conf" / "model").glob("*.yaml")} >= {"bundled", "gpt2"}
    assert presets["gpt2"].name == "gpt2" and presets["bundled"].dtype == "float32"


def test_every_preset_composes_and_the_command_line_wins(monkeypatch, tmp_path):
    names = run_presets()
    assert {"mib", "paper/method", "paper/ioi", "paper/greater_than"} <= set(names)
    assert names == sorted(
        str(p.relative_to(ROOT / "conf" / "preset").with_suffix("")) for p in (ROOT / "conf" / "preset").rglob("*.yaml")
    )
    monkeypatch.chdir(tmp_path)  # the presets are found through the package, from any directory
    for name in names:
        run = to_objects(compose([f"preset={name}"]))
        assert isinstance(run, RunConfig), name
    mib = to_objects(compose(["preset=mib"]))
    curve = mib.evaluator["faithfulness_curve"]
    assert (
        curve.cpr_signed is True and curve.unit == "percent" and list(curve.budgets) == [0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100]
    )
    paper = to_objects(compose(["preset=paper/sva"]))
    assert (paper.model.name, paper.method.name, paper.method.ig_steps, paper.method.ig_points) == ("gpt2", "eap_ig", 5, "left")
    assert (paper.task.name, paper.task.metric, paper.selector.name, paper.selector.target) == ("sva", "prob_diff", "top_n", 0.85)
    mine = to_objects(compose(["preset=paper/ioi", "model=bundled", "method.ig_steps=2"]))
    assert (mine.model.name, mine.method.ig_steps, mine.method.ig_points, mine.task.name) == ("bundled", 2, "left", "ioi")


def test_the_presets_package_is_the_repositorys_conf_and_is_installed_with_its_yaml():
    import circuitkit_conf
    import tomllib

    assert Path(circuitkit_conf.__file__).resolve().parent == ROOT / "conf"
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert tool["package-dir"]["circuitkit_conf"] == "conf" and "circuitkit_conf" in tool["packages"]
    assert {"*.yaml", "**/*.yaml"} <= set(tool["package-data"]["circuitkit_conf"])
    primary = OmegaConf.load(ROOT / "circuitkit" / "conf" / "config.yaml")
    assert "pkg://circuitkit_conf" in primary.hydra.searchpath


# ----- option checks: one error for the command line's config and for ck.build --------------------------
BAD_OPTIONS = [
    ("methods", "eap_ig", "method", {"ig_steps": 0}, "method.ig_steps must be an integer of at least 1, got 0"),
    ("methods", "eap_ig", "method", {"ig_points": "middle"}, "method.ig_points must be one of right, left"),
    ("methods", "eap", "method", {"level": "head"}, "eap: method.level must be one of edge, node, neuron, got 'head'"),
    ("methods", "patching", "method", {"level": "head"}, "patching: method.level must be one of"),
    ("methods", "acdc", "method", {"tau": -1.0}, "method.tau must be a finite number >= 0"),
    ("methods", "eap_ig_activations", "method", {"interpolate": "x"}, "method.interpolate must be one of"),
    ("selectors", "top_n", "selector", {"n_edges": -1}, "selector.n_edges must be a non-negative integer, got -1"),
    ("selectors", "top_n", "selector", {"n_nodes": 2, "n_neurons": 3}, "set selector.n_nodes or selector.n_neurons, not both"),
    ("selectors", "greedy", "selector", {"n_edges": -2}, "selector.n_edges must be a non-negative integer, got -2"),
    ("selectors", "threshold", "selector", {"threshold": math.inf}, "selector.threshold must be a finite number"),
    (
        "evaluators",
        "faithfulness_curve",
        "evaluator.faithfulness_curve",
        {"unit": "bits"},
        "evaluator.faithfulness_curve.unit must be one of",
    ),
    (
        "evaluators",
        "faithfulness_curve",
        "evaluator.faithfulness_curve",
        {"budgets": [0.0]},
        "budgets must be percentages in (0, 100]",
    ),
    ("evaluators", "stability", "evaluator.stability", {"seeds": -1}, "evaluator.stability.seeds must be a whole number >= 0"),
    (
        "evaluators",
        "transfer",
        "evaluator.transfer",
        {"n_examples": 0},
        "evaluator.transfer.n_examples must be a positive number",
    ),
    ("reporters", "pictures", "reporter.pictures", {"formats": ["gif"]}, "reporter.pictures.formats must be a non-empty list"),
    ("tasks", "ioi", "task", {"orders": ["ABAB"]}, "task.orders=['ABAB'] for IOI: use ABBA and/or BABA"),
    ("tasks", "greater_than", "task", {"templates": [99]}, "greater_than has templates 0.."),
    ("tasks", "gender_pronoun", "task", {"kinds": ["pets"]}, "task.kinds=['pets'] for gender_pronoun"),
    ("tasks", "induction", "task", {"min_seq_len": 1}, "induction needs 2 <= task.min_seq_len"),
    ("methods", "random", "method", {"seed": True}, "method.seed must be an integer or null"),
]


def _override(value):
    """``value`` as a command-line override writes it."""
    if isinstance(value, list):
        return "[" + ",".join(str(v) for v in value) + "]"
    if isinstance(value, bool):
        return str(value).lower()
    return "inf" if value == math.inf else str(value)


@pytest.mark.parametrize(
    ("kind", "name", "prefix", "options", "message"), BAD_OPTIONS, ids=[f"{b[1]}-{next(iter(b[3]))}" for b in BAD_OPTIONS]
)
def test_a_bad_option_gives_the_same_error_from_ck_build_and_the_command_lines_config(kind, name, prefix, options, message):
    with pytest.raises(ConfigError) as api:
        ck.build(kind, name, **options)
    assert message in str(api.value)
    group = prefix.split(".")[0]
    choose = f"{group}=[{name}]" if "." in prefix else f"{group}={name}"
    overrides = [choose, *(f"{prefix}.{k}={_override(v)}" for k, v in options.items())]
    if kind == "methods" and options == {"seed": True}:  # the schema (an int) refuses it while composing
        from hydra.errors import ConfigCompositionException

        with pytest.raises(ConfigCompositionException, match="method.seed=true"):
            compose(overrides)
        return
    cfg = compose(overrides)
    with pytest.raises(ConfigError) as cli:
        to_objects(cfg)
    assert str(cli.value) == str(api.value)
    # The defaults pass their own checks (a default instance is stored in Hydra's ConfigStore).
    ck.build(kind, name)


# ----- the stages of a run ------------------------------------------------------------------------------
def test_the_stages_give_the_runs_results_and_leave_the_prepared_context_alone(tiny_model, tmp_path):
    from circuitkit.pipeline import attribute, evaluate, prepare, run, select

    cfg = {
        "method": {"name": "eap"},
        "task": {"name": "greater_than", "n_examples": 8},
        "selector": {"name": "top_n", "n_edges": 12},
        "evaluator": {"faithfulness": {}},
        "progress": False,
        "pictures": False,
        "bootstrap": {"n_resamples": 20},
    }
    result = run(cfg, tmp_path / "run", model=tiny_model)
    p = prepare(to_objects(typed(cfg)), model=tiny_model)
    before = dataclasses.replace(p.ctx)
    scores, cache_info = attribute(p)
    circuit = select(p, scores)
    evals = {name: res for name, res, _ in evaluate(p, scores, circuit)}
    assert cache_info == {"scores_from_cache": False}
    assert scores == result.scores and circuit.edges.tolist() == result.circuit.edges.tolist()
    assert evals["faithfulness"].values == result.evals["faithfulness"].values
    assert p.ctx.scores is None and p.ctx == before  # the stages did not change the prepared context
    saved = json.loads((tmp_path / "run" / "scores.json").read_text())
    assert saved["meta"]["task"] == "greater_than" and saved["meta"]["seed"] == 0
    meta = json.loads((tmp_path / "run" / "results.json").read_text())["meta"]
    # The config as it ran, defaults filled in; a run given a loaded model does not record a model section.
    assert meta["config"]["batch_size"] == 16 and meta["config"]["cache"] is False and meta["model"] == tiny_model.name
    assert "reporter" not in meta["config"] and "model" not in meta["config"]
