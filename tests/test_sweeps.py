"""Sweeps: ``python -m circuitkit -m ...`` with the joblib and submitit-local launchers, compared afterwards.

Both 2x2 sweeps (method=eap,eap_ig x selector.n_edges=10,20) start together in one fixture, as users run
them: ``python -m circuitkit -m ...`` in a subprocess.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

GRID = {("eap", 10), ("eap", 20), ("eap_ig", 10), ("eap_ig", 20)}


def sweep_args(model_dir: str, sweep_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "circuitkit", "-m",
        f"model.name={model_dir}", "method=eap,eap_ig", "selector.n_edges=10,20",
        "task.n_examples=4", "progress=false", f"hydra.sweep.dir={sweep_dir}", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def sweeps(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("sweeps")
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(root / "wandb"),
        "WANDB_CONFIG_DIR": str(root / "wandb-config"),
        "WANDB_CACHE_DIR": str(root / "wandb-cache"),
        "WANDB_DATA_DIR": str(root / "wandb-data"),
        "CIRCUITKIT_CACHE_DIR": str(root / "cache"),
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    jobs = {
        # The joblib sweep also reports to W&B, to check that a sweep's jobs share a group. One joblib
        # worker keeps the test cheap; submitit's jobs below are separate processes.
        "joblib": sweep_args(
            tiny_model_dir, root / "joblib", "hydra/launcher=joblib", "hydra.launcher.n_jobs=1", "reporter=[wandb]"
        ),
        "submitit": sweep_args(
            tiny_model_dir, root / "submitit", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10"
        ),
    }
    procs = {
        name: subprocess.Popen(args, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for name, args in jobs.items()
    }
    out = {}
    try:
        for name, p in procs.items():
            text, _ = p.communicate(timeout=400)
            out[name] = (p.returncode, text)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
    return root, out


def check_grid(sweep_dir: Path, launcher_target: str) -> list[dict]:
    results = [json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/results.json"))]
    assert len(results) == 4
    assert all(r["status"] == "complete" for r in results)
    got = {(r["meta"]["method"], r["meta"]["config"]["selector"]["n_edges"]) for r in results}
    assert got == GRID
    assert all(isinstance(r["meta"]["scores_from_cache"], bool) for r in results)
    for job in sweep_dir.glob("*/.hydra/hydra.yaml"):
        assert launcher_target in job.read_text()
    return results


def test_joblib_2x2(sweeps):
    root, out = sweeps
    rc, text = out["joblib"]
    assert rc == 0, text[-3000:]
    check_grid(root / "joblib", "JoblibLauncher")


def test_joblib_jobs_share_a_wandb_group(sweeps):
    from wandb_records import offline_runs

    root, out = sweeps
    assert out["joblib"][0] == 0, out["joblib"][1][-3000:]
    runs = offline_runs(root / "wandb")
    assert len(runs) == 4
    assert len({r.run.run_group for r in runs}) == 1 and runs[0].run.run_group.endswith("joblib")
    model = json.loads(next((root / "joblib").glob("*/results.json")).read_text())["meta"]["model"]
    names = {r.run.display_name for r in runs}
    assert names == {f"{m}-greater_than-{Path(model).name}-{n}" for n, (m, _) in enumerate(sorted(GRID))}
    assert all(r.config["hydra.job_num"] in range(4) for r in runs)


def test_submitit_local_2x2(sweeps):
    root, out = sweeps
    rc, text = out["submitit"]
    assert rc == 0, text[-3000:]
    check_grid(root / "submitit", "submitit_launcher.LocalLauncher")
    assert list((root / "submitit" / ".submitit").glob("*/*_result.pkl"))


def test_compare_prints_a_table_and_plots_curves(sweeps, tmp_path, capsys):
    from circuitkit.compare import main

    root, out = sweeps
    assert out["joblib"][0] == 0
    sweep = tmp_path / "sweep"
    shutil.copytree(root / "joblib", sweep)
    # Give each run a faithfulness curve where no curve evaluator produced one.
    for i, path in enumerate(sorted(sweep.glob("*/results.json"))):
        res = json.loads(path.read_text())
        if not any(isinstance(v, dict) and (v.get("tables") or {}).get("curve") for v in res.values()):
            res["curve_eval"] = {
                "values": {"cpr": 0.5 + i / 10, "cmd": 0.1 * i},
                "tables": {"curve": [{"n_edges": n, "faithfulness": min(1.0, n / (20 + 10 * i))} for n in (5, 10, 20, 40)]},
                "notes": [],
            }
            path.write_text(json.dumps(res))
    png, table = tmp_path / "curves.png", tmp_path / "runs.csv"
    assert main([str(sweep), "--out", str(png), "--csv", str(table), "--sort", "faithfulness"]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    header = lines[0].split()
    assert header[:7] == ["run", "method", "task", "model", "status", "faithfulness", "edges"]
    assert {"CPR", "CMD", "seconds"} <= set(header)
    rows = [line.split() for line in lines[2:6]]
    assert {(r[1], r[0]) for r in rows} == {(m, str(n)) for n, (m, _) in enumerate(sorted(GRID))}
    faith = [float(r[5]) for r in rows]
    assert faith == sorted(faith, reverse=True)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"plotted to {png}" in text
    assert len(table.read_text().splitlines()) == 5

    assert main([str(tmp_path / "nothing-here")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_slurm_launcher_config_is_found_without_flags():
    from hydra import compose, initialize_config_module

    from circuitkit.__main__ import _store_configs

    _store_configs()
    with initialize_config_module(config_module="circuitkit.conf", version_base="1.3"):
        cfg = compose(
            "config",
            overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=30"],
            return_hydra_config=True,
        )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.partition == "gpu" and launcher.timeout_min == 30
    assert launcher.gpus_per_node == 1 and launcher.cpus_per_task and launcher.mem_gb
