"""Run directories: one run at a time, a complete run never changed by a later one, every end recorded.

Most tests call :func:`circuitkit.pipeline.run` in-process with the tiny model; the command-line ones check
what a user sees (one ``circuitkit: error:`` line) and that the directory's files are byte-for-byte kept.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from circuitkit.errors import CircuitkitError
from circuitkit.pipeline import run
from circuitkit.rundir import LOCK_NAME, RunDirError, RunLock, open_run_dir


def cli(*args, env=None, timeout=300, **kw):
    e = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "circuitkit", *args], capture_output=True, text=True, env=e, timeout=timeout, **kw
    )


def one_clear_line(p):
    assert p.returncode != 0
    assert "Traceback" not in p.stderr, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("circuitkit: error:")]
    assert len(lines) == 1, p.stderr
    return lines[0]


def cfg(**over):
    c = {
        "method": {"name": "eap"},
        "task": {"name": "greater_than", "n_examples": 4},
        "selector": {"name": "top_n", "n_edges": 10},
        "evaluator": {"faithfulness": {}},
        "reporter": {},
        "progress": False,
        "cache": False,
        "pictures": False,
    }
    c.update(over)
    return c


def snapshot(d):
    """Every file below ``d`` with its bytes and modification time."""
    return {str(p.relative_to(d)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def complete_run_dir(tmp_path_factory, tiny_model_dir):
    """A directory holding one complete run made by the command line (with Hydra's .hydra files and log)."""
    out = tmp_path_factory.mktemp("complete") / "run"
    p = cli(
        f"model.name={tiny_model_dir}",
        "method=eap",
        "task.n_examples=4",
        "selector.n_edges=10",
        "evaluator=[faithfulness]",
        "pictures=false",
        "progress=false",
        f"hydra.run.dir={out}",
    )
    assert p.returncode == 0, p.stderr
    return out


# ----- a complete run is never changed ---------------------------------------------------------------
def test_a_later_run_on_a_complete_run_refuses_and_changes_nothing(complete_run_dir, tiny_model_dir):
    assert json.loads((complete_run_dir / "results.json").read_text())["status"] == "complete"
    assert (complete_run_dir / ".hydra" / "config.yaml").is_file()
    before = snapshot(complete_run_dir)
    # a run that would fail (prompts too long is one the issue saw destroy a run), and one that would succeed
    for extra in (["selector.n_edges=20"], ["task.n_examples=0"]):
        p = cli(
            f"model.name={tiny_model_dir}",
            "method=eap",
            "task.n_examples=4",
            "progress=false",
            f"hydra.run.dir={complete_run_dir}",
            *extra,
        )
        line = one_clear_line(p)
        assert "already holds a complete run" in line and "overwrite=true" in line
        assert snapshot(complete_run_dir) == before
    assert not (complete_run_dir / LOCK_NAME).exists()


def test_overwrite_replaces_only_when_the_new_run_completes(tiny_model, tmp_path, monkeypatch):
    run(cfg(), tmp_path, model=tiny_model)
    before = snapshot(tmp_path)
    # overwrite=true, but the new run fails: the old run stays exactly as it was
    with pytest.raises(CircuitkitError):
        run(cfg(overwrite=True, selector={"name": "top_n", "n_edges": 10**6}), tmp_path, model=tiny_model)
    assert snapshot(tmp_path) == before
    # ... and interrupted
    import circuitkit_plugins.eap as eap

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(eap, "gradient_attribution", interrupt)
        with pytest.raises(KeyboardInterrupt):
            run(cfg(overwrite=True), tmp_path, model=tiny_model)
    assert snapshot(tmp_path) == before
    # overwrite=true and it completes: every file is the new run's, nothing staged is left
    run(cfg(overwrite=True, selector={"name": "top_n", "n_edges": 20}), tmp_path, model=tiny_model)
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["status"] == "complete" and res["meta"]["config"]["selector"]["n_edges"] == 20
    circuit = json.loads((tmp_path / "circuit.json").read_text())
    assert sum(e["in_graph"] for e in circuit["edges"].values()) == res["edges_in_circuit"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["circuit.json", "results.json", "scores.json"]


def test_an_incomplete_earlier_run_is_replaced_not_mixed(tiny_model, tmp_path):
    (tmp_path / "results.json").write_text(json.dumps({"status": "failed", "meta": {"error": "old"}}))
    (tmp_path / "scores.json").write_text("{}")  # the earlier run's, which got as far as attribution
    (tmp_path / "circuit.png").write_bytes(b"old picture")
    (tmp_path / "circuit.html").write_text("old explorer")
    with pytest.raises(CircuitkitError):
        run(cfg(task={"name": "custom", "path": str(tmp_path / "missing.jsonl")}), tmp_path, model=tiny_model)
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["status"] == "failed" and "missing.jsonl" in res["meta"]["error"]
    assert not (tmp_path / "scores.json").exists() and not (tmp_path / "circuit.png").exists()
    assert not (tmp_path / "circuit.html").exists()


# ----- one run at a time -----------------------------------------------------------------------------
def test_a_second_run_on_a_directory_in_use_refuses_naming_the_holder(tiny_model_dir, tmp_path):
    lock = RunLock(tmp_path)
    lock.acquire()
    try:
        p = cli(f"model.name={tiny_model_dir}", "method=eap", "task.n_examples=4", "progress=false", f"hydra.run.dir={tmp_path}")
        line = one_clear_line(p)
        assert f"is in use by another run (pid {os.getpid()} on {socket.gethostname()}, started " in line
        assert not (tmp_path / "results.json").exists() and not (tmp_path / ".hydra").exists()
    finally:
        lock.release()
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    (tmp_path / LOCK_NAME).write_text(json.dumps({"host": socket.gethostname(), "pid": pid, "started": "earlier"}))
    rd = open_run_dir(tmp_path)
    try:
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    finally:
        rd.close()


def test_a_lock_held_by_another_live_process_is_refused(tmp_path):
    code = (
        "import sys, time; from circuitkit.rundir import RunLock; l = RunLock(sys.argv[1]); l.acquire(); "
        "print('held', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunDirError, match=rf"in use by another run \(pid {holder.pid} on "):
            open_run_dir(tmp_path)
    finally:
        holder.kill()
        holder.wait()
    open_run_dir(tmp_path).close()  # free again once the holder is gone (its lock file is still there)


def test_default_run_directories_of_jobs_started_together_differ():
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    import circuitkit.rundir  # noqa: F401 - registers the resolver, as python -m circuitkit does
    from circuitkit.__main__ import _store_configs

    _store_configs()
    dirs = set()
    for _ in range(2):
        with initialize_config_module("circuitkit.conf", version_base="1.3"):
            c = compose("config", return_hydra_config=True)
            run_dir = OmegaConf.select(c, "hydra.run.dir")
            sweep_dir = OmegaConf.select(c, "hydra.sweep.dir")
        dirs.add(run_dir)
        assert run_dir.startswith("outputs/") and sweep_dir.startswith("multirun/")
    assert len(dirs) == 2


# ----- every end is recorded ---------------------------------------------------------------------------
def test_failures_before_attribution_are_recorded(tiny_model, tmp_path):
    with pytest.raises(CircuitkitError):
        run(cfg(task={"name": "custom", "path": str(tmp_path / "nope.jsonl")}), tmp_path / "a", model=tiny_model)
    res = json.loads((tmp_path / "a" / "results.json").read_text())
    assert res["status"] == "failed" and "does not exist" in res["meta"]["error"]
    with pytest.raises(CircuitkitError):
        run(cfg(model={"name": str(tmp_path / "no-model")}), tmp_path / "b")
    res = json.loads((tmp_path / "b" / "results.json").read_text())
    assert res["status"] == "failed" and "is not a model directory" in res["meta"]["error"]
    assert res["meta"]["config"]["model"]["name"] == str(tmp_path / "no-model")


def test_sigterm_records_interrupted(tiny_model, tmp_path, monkeypatch):
    import circuitkit_plugins.eap as eap

    def terminated(*a, **k):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends
        raise AssertionError("SIGTERM was not turned into an interruption")

    monkeypatch.setattr(eap, "gradient_attribution", terminated)
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        run(cfg(), tmp_path, model=tiny_model)
    assert signal.getsignal(signal.SIGTERM) == previous  # restored after the run
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["status"] == "interrupted" and res["meta"]["signal"] == "SIGTERM"
    assert not (tmp_path / "scores.json").exists() and not (tmp_path / LOCK_NAME).exists()


def test_sigterm_on_the_command_line(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    slow = tmp_path / "slowplug"
    slow.mkdir()
    (slow / "sitecustomize.py").write_text(
        "import time, circuitkit.attribution as a\n"
        "def slow(*args, **kw):\n"
        "    open(r'%s', 'w').write('started')\n"
        "    time.sleep(60)\n"
        "a.gradient_attribution = slow\n" % (tmp_path / "started")
    )
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "disabled",
        "PYTHONPATH": f"{slow}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }
    args = [
        sys.executable,
        "-m",
        "circuitkit",
        f"model.name={tiny_model_dir}",
        "method=eap",
        "task.n_examples=4",
        "progress=false",
        f"hydra.run.dir={out}",
    ]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 120
    while not (tmp_path / "started").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "circuitkit: terminated (SIGTERM)" in err and "Traceback" not in err
    res = json.loads((out / "results.json").read_text())
    assert res["status"] == "interrupted" and res["meta"]["signal"] == "SIGTERM"


def test_result_files_honour_the_umask(tiny_model, tmp_path):
    old = os.umask(0o027)
    try:
        run(cfg(), tmp_path, model=tiny_model)
    finally:
        os.umask(old)
    for name in ("results.json", "scores.json", "circuit.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o640, name


def test_run_dir_whose_parent_is_a_file(tiny_model_dir, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    p = cli(f"model.name={tiny_model_dir}", f"hydra.run.dir={blocker / 'run'}")
    line = one_clear_line(p)
    assert f"{blocker} is a file, not a directory" in line and "hydra.run.dir=" in line
    p = cli("-m", f"model.name={tiny_model_dir}", "method=eap,eap_ig", f"hydra.sweep.dir={blocker / 'sweep'}")
    assert f"{blocker} is a file, not a directory" in one_clear_line(p)
