"""The W&B reporter, checked by reading back what it wrote to an offline run file."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("wandb")

import circuitkit_plugins.wandb_reporter as wr  # noqa: E402
from wandb_records import offline_runs  # noqa: E402

from circuitkit.errors import ConfigError  # noqa: E402
from circuitkit.interfaces import Evaluator, PluginConfig  # noqa: E402
from circuitkit.pipeline import run  # noqa: E402
from circuitkit.plugins import get_registry  # noqa: E402
from circuitkit.registry import Registry  # noqa: E402
from circuitkit.results import EvalResult  # noqa: E402


@dataclass
class CurveStubConfig(PluginConfig):
    pass


class CurveStub(Evaluator):
    """Stands in for a curve evaluator where none is installed: a fixed curve table plus CPR/CMD."""

    def evaluate(self, model, task, data, circuit, ctx):  # noqa: ANN001, ANN201
        rows = [{"fraction": f, "n_edges": int(f * circuit.graph.n_edges), "faithfulness": f**0.5} for f in (0.1, 0.3, 0.6, 1.0)]
        return EvalResult(self.config.name, {"cpr": 0.7, "cmd": 0.2}, tables={"curve": rows})


#: Options that keep the installed curve evaluator quick on a tiny model (those it has are used).
QUICK_CURVE = {"budgets": [10.0, 40.0, 100.0], "unit": "percent", "refine_steps": 0}


def registry_with_curve() -> tuple[Registry, str, dict]:
    """The installed components, plus a curve evaluator when none is installed; and its options."""
    import dataclasses

    base = get_registry()
    if "faithfulness_curve" in base.evaluators.entries:
        fields = {f.name for f in dataclasses.fields(base.evaluators.get("faithfulness_curve").config)}
        return base, "faithfulness_curve", {k: v for k, v in QUICK_CURVE.items() if k in fields}
    reg = Registry()
    for kind, comp in base.kinds.items():
        reg.kinds[kind].entries = dict(comp.entries)
    reg.evaluators.current_plugin = "tests"
    reg.evaluators.add("curve_stub", CurveStub, CurveStubConfig)
    return reg, "curve_stub", {}


def config(curve: str | None = None, curve_options: dict | None = None, **reporter) -> dict:
    evaluators = {"faithfulness": {}}
    if curve:
        evaluators[curve] = dict(curve_options or {})
    return {
        "seed": 0,
        "progress": False,
        "method": {"name": "eap"},
        "task": {"name": "greater_than", "n_examples": 4},
        "selector": {"name": "top_n", "n_edges": 10},
        "evaluator": evaluators,
        "reporter": {"wandb": {"project": "circuitkit-tests", "tags": ["test"], **reporter}},
    }


def md5_b64(path: Path) -> str:
    return base64.b64encode(hashlib.md5(path.read_bytes()).digest()).decode()


def test_offline_run_holds_config_summary_curve_scores_and_circuit_artifact(tiny_model, tmp_path, monkeypatch, caplog):
    # No WANDB_MODE and no login: the reporter must fall back to offline mode by itself.
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    # As if this were job 3 of a multirun sweep.
    monkeypatch.setattr(wr, "sweep_info", lambda: (str(tmp_path / "multirun" / "2025-01-31" / "12-00-00"), 3, "3"))
    registry, curve, curve_options = registry_with_curve()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    PIL = pytest.importorskip("PIL.Image")
    PIL.new("RGB", (8, 8), "white").save(run_dir / "circuit.png")  # the circuit picture another plugin would draw

    with caplog.at_level(logging.INFO, logger="circuitkit"):
        result = run(config(curve, curve_options), run_dir, model=tiny_model, registry=registry)

    assert result.status == "complete"
    assert not [r for r in caplog.records if "Reporter 'wandb' failed" in r.getMessage()], caplog.text
    fallback = [r.getMessage() for r in caplog.records if "wandb sync" in r.getMessage()]
    assert len(fallback) == 1 and "offline" in fallback[0]
    runs = offline_runs(Path(tmp_path) / "wandb")
    assert len(runs) == 1
    wb = runs[0]
    assert fallback[0].rstrip().endswith(str(wb.path.parent))  # the line names the directory to sync

    # Run identity: a sweep's jobs share a group and get readable names.
    assert wb.run.project == "circuitkit-tests"
    assert wb.run.run_group == "2025-01-31-12-00-00"
    assert wb.run.display_name == "eap-greater_than-tiny-gpt2-3"
    assert list(wb.run.tags) == ["test"]

    # Config: names and hyperparameters as flat, filterable keys.
    c = wb.config
    assert c["method"] == "eap" and c["task"] == "greater_than" and c["model"] == "tiny-gpt2" and c["selector"] == "top_n"
    assert c["selector.n_edges"] == 10 and c["task.n_examples"] == 4 and c["seed"] == 0
    assert sorted(c["evaluators"]) == sorted(["faithfulness", curve])
    assert c["model_weights_hash"] == result.meta["model_weights_hash"] and c["task_data_hash"] == result.meta["task_data_hash"]
    assert c["hydra.job_num"] == 3

    # Summary: every evaluator number, the circuit size and the seconds of each stage.
    results = json.loads((run_dir / "results.json").read_text())
    s = wb.summary
    assert s["faithfulness/faithfulness"] == pytest.approx(results["faithfulness"]["values"]["faithfulness"])
    assert s["edges_in_circuit"] == results["edges_in_circuit"]
    for key, value in results[curve]["values"].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            assert s[f"{curve}/{key}"] == pytest.approx(value)
    assert {f"seconds/{k}" for k in results["seconds"]} <= set(s)
    assert s["status"] == "complete"

    # The curve as a table and a line plot, the scores as a table, the picture as an image.
    keys = wb.history_keys()
    assert f"{curve}/curve/_type" in keys
    curve_row = next(row for row in wb.history if f"{curve}/curve/_type" in row)
    assert curve_row[f"{curve}/curve/_type"] == "table-file"
    assert curve_row[f"{curve}/curve/nrows"] == len(results[curve]["tables"]["curve"])
    table = json.loads((wb.files_dir / curve_row[f"{curve}/curve/path"]).read_text())
    assert "faithfulness" in table["columns"] and len(table["data"]) == len(results[curve]["tables"]["curve"])
    assert any(k.startswith(f"{curve}/curve_plot") for k in keys)  # the custom line chart
    assert "edge_scores/_type" in keys
    scores_row = next(row for row in wb.history if "edge_scores/_type" in row)
    assert scores_row["edge_scores/nrows"] == results["edges_in_graph"]
    assert "images/circuit/_type" in keys

    # circuit.json as a versioned artifact of type "circuit", byte for byte.
    arts = [a for a in wb.artifacts if a.type == "circuit"]
    assert len(arts) == 1
    art = arts[0]
    assert art.name == "circuit-eap-greater_than-tiny-gpt2"
    contents = {e.path: e.digest for e in art.manifest.contents}
    assert contents["circuit.json"] == md5_b64(run_dir / "circuit.json")
    assert "results.json" in contents
    assert json.loads(art.metadata)["method"] == "eap"


@pytest.mark.parametrize("where", ["log", "init"])
def test_a_wandb_failure_loses_no_local_result(tiny_model, tmp_path, monkeypatch, caplog, where):
    import wandb

    def broken(*args, **kwargs):
        raise RuntimeError("W&B went away")

    if where == "log":  # fails mid-run, after the W&B run has started
        monkeypatch.setattr(wandb.sdk.wandb_run.Run, "log", broken)
    else:
        monkeypatch.setattr(wandb, "init", broken)
    run_dir = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="circuitkit"):
        result = run(config(mode="offline"), run_dir, model=tiny_model)

    assert result.status == "complete"
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "complete" and results["faithfulness"]["values"]["faithfulness"] is not None
    assert (run_dir / "scores.json").is_file() and (run_dir / "circuit.json").is_file()
    warning = [r.getMessage() for r in caplog.records if "Reporter 'wandb' failed" in r.getMessage()]
    assert len(warning) == 1 and "W&B went away" in warning[0] and str(run_dir) in warning[0]
    assert wandb.run is None  # the W&B run was closed, not left hanging
    if where == "log":
        wb = offline_runs(Path(tmp_path) / "wandb")[0]
        assert wb.summary["faithfulness/faithfulness"] == pytest.approx(results["faithfulness"]["values"]["faithfulness"])
        assert any(a.type == "circuit" for a in wb.artifacts)  # what does not need log() still got through


def test_mode_choice_without_login_or_network(tmp_path, monkeypatch):
    import wandb

    rep = wr.WandbReporter(wr.WandbReporterConfig(name="wandb"))
    monkeypatch.setattr(wr, "_have_credentials", lambda wandb, url: False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    mode, reason = rep.choose_mode(wandb)
    assert mode == "offline" and "wandb login" in reason

    monkeypatch.setattr(wr, "_have_credentials", lambda wandb, url: True)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there
    mode, reason = rep.choose_mode(wandb)
    assert mode == "offline" and "cannot be reached" in reason

    monkeypatch.setenv("WANDB_MODE", "offline")  # an explicit WANDB_MODE is left to W&B
    assert rep.choose_mode(wandb) == (None, None)
    assert wr.WandbReporter(wr.WandbReporterConfig(name="wandb", mode="disabled")).choose_mode(wandb) == ("disabled", None)
    with pytest.raises(ConfigError, match="mode must be one of"):
        wr.WandbReporter(wr.WandbReporterConfig(name="wandb", mode="sometimes"))


def test_missing_wandb_is_a_clear_error_before_any_work(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ConfigError, match=r"pip install 'circuitkit\[wandb\]'"):
        wr.WandbReporter(wr.WandbReporterConfig(name="wandb"))
    with pytest.raises(ConfigError, match="needs the wandb package"):
        wr.import_wandb()


def test_names_and_groups():
    meta = {"method": "eap_ig", "task": "greater_than", "model": "EleutherAI/pythia-70m"}
    assert wr.run_name(meta, 2) == "eap_ig-greater_than-EleutherAI-pythia-70m-2"
    assert wr.run_name(meta, None) == "eap_ig-greater_than-EleutherAI-pythia-70m"
    assert wr.sweep_group("multirun/2025-01-31/12-00-00") == "2025-01-31-12-00-00"
    assert wr.sweep_info() == (None, None, None)  # outside a Hydra multirun


def _closed_port() -> int:
    """A loopback port nothing listens on (bound and released, so connecting to it is refused)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_online_mode_with_a_server_that_refuses_falls_back_offline_without_waiting(tiny_model, tmp_path, monkeypatch, caplog):
    """WANDB_MODE=online and a server that refuses connections: no online start is attempted (W&B would
    retry for over a minute), one warning, an offline run in the run directory, complete local files."""
    import wandb

    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.delenv("WANDB_DIR", raising=False)  # the wandb/ folder then goes into the run directory
    modes = []
    real_init = wandb.init

    def init(*args, **kwargs):
        modes.append(kwargs.get("mode"))
        return real_init(*args, **kwargs)

    monkeypatch.setattr(wandb, "init", init)
    run_dir = tmp_path / "run"
    cfg = {**config(), "pictures": False}
    try:
        with caplog.at_level(logging.WARNING, logger="circuitkit"):
            result = run(cfg, run_dir, model=tiny_model)
    finally:
        wandb.teardown()  # W&B keeps the settings it was first set up with (WANDB_MODE=online) per process
    assert result.status == "complete"
    assert modes == ["offline"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and "W&B" in r.getMessage()]
    assert len(warnings) == 1 and "did not accept a connection within 3 s" in warnings[0] and "wandb sync" in warnings[0]
    assert not [r for r in caplog.records if "Reporter 'wandb' failed" in r.getMessage()]
    assert len(offline_runs(run_dir)) == 1  # under the run directory, not the working directory
    assert json.loads((run_dir / "results.json").read_text())["status"] == "complete"
    assert (run_dir / "scores.json").is_file() and (run_dir / "circuit.json").is_file()


@pytest.mark.parametrize("order", [["wandb", "pictures"], ["pictures", "wandb"]])
def test_wandb_gets_the_pictures_whatever_the_reporter_order(tiny_model, tmp_path, monkeypatch, order):
    pytest.importorskip("matplotlib")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    base = config()
    cfg = {**base, "reporter": {name: (base["reporter"]["wandb"] if name == "wandb" else {}) for name in order}}
    run_dir = tmp_path / "run"
    run(cfg, run_dir, model=tiny_model)
    pngs = sorted(p.stem for p in run_dir.glob("*.png"))
    assert "circuit" in pngs
    (wb,) = offline_runs(tmp_path / "wandb")
    assert {f"images/{stem}/_type" for stem in pngs} <= wb.history_keys()
