"""Weights & Biases reporter: ``reporter=[wandb]``.

Sends a finished run to W&B after its local files are written:

- the config: ``method``, ``task``, ``model``, ``selector``, ``evaluators`` as plain filterable keys, every
  hyperparameter as ``<group>.<option>`` (``method.ig_steps``, ``selector.n_edges``...), plus the
  provenance hashes and versions;
- the summary: every number of every evaluator (``faithfulness/faithfulness``, ``<evaluator>/cpr``...),
  the circuit size and the seconds of each stage (``seconds/attribute``...);
- each evaluator table as a W&B table, and a ``curve`` table also as a line plot;
- the per-edge scores as a table (the ``max_score_rows`` largest by absolute score);
- ``circuit.json`` (with ``results.json``) as a versioned artifact of type ``circuit``;
- every ``*.png`` in the run directory (the circuit picture, the curve) as an image, and ``circuit.html``
  (the interactive explorer, :mod:`circuitkit.explorer`) as ``wandb.Html`` under ``explorer``.

Jobs of one Hydra multirun share a W&B group (named after the sweep directory) and are named
``<method>-<task>-<model>-<job number>``.

W&B never costs a result: with no login or no network the run is logged offline (one line says how to
``wandb sync`` it later), and a W&B error is reported as a warning after the local files are complete.
"""

from __future__ import annotations

import logging
import math
import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlparse

from circuitkit.api import ConfigError, PluginConfig, Reporter, RunResult, curve_axes, hookimpl, table_columns

log = logging.getLogger("circuitkit")

MODES = ("auto", "online", "offline", "disabled")
DEFAULT_BASE_URL = "https://api.wandb.ai"
INSTALL_HINT = "The W&B reporter needs the wandb package: pip install 'circuitkit[wandb]' (or pip install wandb)."


@dataclass
class WandbReporterConfig(PluginConfig):
    """Options of the W&B reporter (``reporter.wandb.<option>=...``).

    Attributes:
        project: W&B project.
        entity: W&B entity (user or team); None: your default entity.
        group: W&B group; None: the Hydra multirun sweep (one group per sweep), no group for single runs.
        run_name: W&B run name; None: ``<method>-<task>-<model>[-<job number>]`` (``name`` is the plugin's
            registered name, as for every component).
        mode: ``auto`` (online when logged in and the server answers, offline otherwise; ``WANDB_MODE``
            wins when set), ``online``, ``offline`` or ``disabled``.
        tags: W&B tags.
        notes: W&B notes.
        dir: where W&B writes its local files (its ``wandb/`` folder); None: ``WANDB_DIR``, else the run
            directory.
        max_score_rows: how many edges (largest ``|score|`` first) go into the score table.
        log_scores: log the per-edge score table.
        init_timeout: seconds to wait for the W&B server before falling back to offline mode.
        connect_timeout: seconds to wait for the W&B server to accept a connection before an online run
            starts (``mode=online``, ``WANDB_MODE=online`` or ``auto``); a server that refuses or does not
            answer in time means offline logging, with one warning.
    """

    project: str = "circuitkit"
    entity: Optional[str] = None  # noqa: UP045 - OmegaConf structured configs need typing.Optional here
    group: Optional[str] = None  # noqa: UP045
    run_name: Optional[str] = None  # noqa: UP045
    mode: str = "auto"
    tags: list[str] = field(default_factory=list)
    notes: Optional[str] = None  # noqa: UP045
    dir: Optional[str] = None  # noqa: UP045
    max_score_rows: int = 10000
    log_scores: bool = True
    init_timeout: float = 30.0
    connect_timeout: float = 3.0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"reporter.wandb.mode must be one of {', '.join(MODES)}; got '{self.mode}'.")


def import_wandb() -> Any:
    try:
        import wandb
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None
    return wandb


def _slug(text: str, limit: int = 60) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.")[:limit] or "run"


def _short_model(model: str) -> str:
    """A local model directory's base name; a Hub name (``org/name``) with ``/`` replaced by ``-``."""
    model = str(model).rstrip("/\\")
    if os.path.isabs(model) or os.path.exists(model):
        return Path(model).name
    return model.replace("/", "-")


def sweep_info() -> tuple[str | None, int | None, str | None]:
    """``(sweep directory, job number, job id)`` of the current Hydra multirun job; Nones outside one."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if not HydraConfig.initialized():
            return None, None, None
        hc = HydraConfig.get()
        if hc.mode != RunMode.MULTIRUN:
            return None, None, None
        sweep_dir = str(hc.sweep.dir)
        job: Any = hc.job  # a DictConfig at run time (typed as the JobConf dataclass)
        num = job.get("num")
        job_id = job.get("id")
        return sweep_dir, (int(num) if num is not None else None), (str(job_id) if job_id is not None else None)
    except Exception:  # noqa: BLE001 - no Hydra, or a Hydra without these fields
        return None, None, None


def sweep_group(sweep_dir: str) -> str:
    """A readable group name for a sweep directory: its last two path parts (``2025-01-31-12-00-00``)."""
    parts = [p for p in Path(sweep_dir).parts if p not in ("/", "\\")]
    return _slug("-".join(parts[-2:]), 120)


def run_name(meta: dict[str, Any], job_num: int | None) -> str:
    name = f"{meta.get('method', 'run')}-{meta.get('task', 'task')}-{_short_model(str(meta.get('model', 'model')))}"
    if job_num is not None:
        name += f"-{job_num}"
    return _slug(name, 120)


def wandb_config(run: RunResult) -> dict[str, Any]:
    """The run's resolved config as flat, filterable W&B config keys."""
    meta = run.meta
    cfg = meta.get("config") or {}
    out: dict[str, Any] = {
        "method": meta.get("method"),
        "task": meta.get("task"),
        "model": meta.get("model"),
        "selector": meta.get("selector"),
        "evaluators": sorted((cfg.get("evaluator") or {}).keys()),
    }
    for group in ("method", "task", "selector", "model"):
        for k, v in (cfg.get(group) or {}).items():
            if k != "name":
                out[f"{group}.{k}"] = v
    for ev, opts in (cfg.get("evaluator") or {}).items():
        for k, v in (opts or {}).items():
            if k != "name":
                out[f"evaluator.{ev}.{k}"] = v
    for k in (
        "seed",
        "batch_size",
        "n_examples",
        "n_dropped",
        "device",
        "model_weights_hash",
        "task_data_hash",
        "scores_from_cache",
    ):
        if k in meta:
            out[k] = meta[k]
    for k, v in (meta.get("versions") or {}).items():
        out[f"version.{k}"] = v
    return out


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def summary_numbers(run: RunResult) -> dict[str, Any]:
    """Every evaluator number (``<evaluator>/<key>``), the circuit size, the status and stage seconds."""
    out: dict[str, Any] = {"status": run.status}
    if run.circuit is not None:
        out["edges_in_circuit"] = run.circuit.n_edges
        out["edges_in_graph"] = run.circuit.graph.n_edges
    for name, ev in run.evals.items():
        for k, v in ev.values.items():
            if _number(v) or isinstance(v, bool):
                out[f"{name}/{k}"] = v
    for stage, s in run.seconds.items():
        if _number(s):
            out[f"seconds/{stage}"] = s
    if run.seconds:
        out["seconds/total"] = sum(s for s in run.seconds.values() if _number(s))
    return out


def _have_credentials(wandb: Any, base_url: str) -> bool:
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    try:  # wandb's own lookup (netrc), where this wandb version has it
        from wandb.sdk.lib.wbauth import read_netrc_auth

        if read_netrc_auth(host=base_url):
            return True
    except Exception:  # noqa: BLE001
        pass
    try:
        import netrc

        host = urlparse(base_url).hostname or ""
        rc = netrc.netrc(os.environ.get("NETRC") or None)
        if rc.authenticators(host):
            return True
    except Exception:  # noqa: BLE001 - no or unreadable netrc
        pass
    try:  # older wandb versions
        return bool(wandb.api.api_key)
    except Exception:  # noqa: BLE001
        return False


def _reachable(base_url: str, timeout: float = 3.0) -> bool:
    u = urlparse(base_url)
    host = u.hostname
    if not host:
        return False
    port = u.port or (443 if u.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class WandbReporter(Reporter):
    config: WandbReporterConfig
    publishes = True  # after the reporters that add pictures to the run directory

    def __init__(self, config: WandbReporterConfig) -> None:
        super().__init__(config)
        import importlib.util

        if importlib.util.find_spec("wandb") is None:  # fail before any computation
            raise ConfigError(INSTALL_HINT)

    # ----- mode -----------------------------------------------------------------------------------
    def choose_mode(self, wandb: Any) -> tuple[str | None, str | None]:
        """``(mode to pass to wandb.init, reason for falling back to offline)``; mode None lets WANDB_MODE decide."""
        mode = self.config.mode
        if mode != "auto":
            return mode, None
        if os.environ.get("WANDB_MODE") or os.environ.get("WANDB_DISABLED"):
            return None, None
        base_url = os.environ.get("WANDB_BASE_URL") or DEFAULT_BASE_URL
        if not _have_credentials(wandb, base_url):
            return "offline", "no W&B login found (run `wandb login` or set WANDB_API_KEY)"
        if not _reachable(base_url, self.config.connect_timeout):
            return "offline", f"the W&B server {base_url} cannot be reached"
        return "online", None

    def _online_unreachable(self, mode: str | None) -> str | None:
        """Why an online run cannot start (the server refuses or does not answer within
        ``connect_timeout``), or None. W&B itself retries for over a minute before giving up."""
        wants_online = mode == "online" or (mode is None and os.environ.get("WANDB_MODE", "").lower() == "online")
        if not wants_online:
            return None
        base_url = os.environ.get("WANDB_BASE_URL") or DEFAULT_BASE_URL
        if _reachable(base_url, self.config.connect_timeout):
            return None
        return f"the W&B server {base_url} did not accept a connection within {self.config.connect_timeout:g} s"

    def _init(self, wandb: Any, run: RunResult, run_dir: str) -> tuple[Any, str | None]:
        cfg = self.config
        sweep_dir, job_num, job_id = sweep_info()
        group = cfg.group or (sweep_group(sweep_dir) if sweep_dir else None)
        kwargs: dict[str, Any] = {
            "project": cfg.project,
            "entity": cfg.entity,
            "group": group,
            "name": cfg.run_name or run_name(run.meta, job_num),
            "tags": list(cfg.tags) or None,
            "notes": cfg.notes,
            "job_type": "circuit-discovery",
            "config": wandb_config(run),
            # WANDB_DIR is read now, not when W&B was first set up in this process; without either, W&B's
            # wandb/ folder goes into the run directory (not the working directory).
            "dir": cfg.dir or os.environ.get("WANDB_DIR") or str(Path(run_dir).resolve()),
        }
        if job_id is not None:
            kwargs["config"]["hydra.job_id"] = job_id
            kwargs["config"]["hydra.job_num"] = job_num
        kwargs["config"]["run_dir"] = str(Path(run_dir).resolve())
        if kwargs["dir"]:
            Path(kwargs["dir"]).mkdir(parents=True, exist_ok=True)
        mode, reason = self.choose_mode(wandb)
        unreachable = self._online_unreachable(mode)
        if unreachable:
            mode, reason = "offline", unreachable
        settings = wandb.Settings(init_timeout=float(cfg.init_timeout))
        try:
            return wandb.init(mode=mode, settings=settings, **kwargs), reason
        except Exception as e:  # noqa: BLE001 - server refused, timed out, login rejected...
            if mode == "offline" or (
                mode is None and os.environ.get("WANDB_MODE", "").lower() in ("offline", "dryrun", "disabled")
            ):
                raise
            reason = f"W&B could not start online ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
            return wandb.init(mode="offline", settings=wandb.Settings(), **kwargs), reason

    # ----- report ---------------------------------------------------------------------------------
    def report(self, run: RunResult, run_dir: str) -> None:
        wandb = import_wandb()
        wb, offline_reason = self._init(wandb, run, run_dir)
        if offline_reason:
            sync_dir = getattr(getattr(wb, "settings", None), "sync_dir", None) or "<the offline run directory under ./wandb>"
            log.warning("W&B: %s; logging offline. Upload later with: wandb sync %s", offline_reason, sync_dir)
        failed: list[str] = []
        steps = [
            ("summary", self._log_summary),
            ("tables", self._log_tables),
            ("uncertainty", self._log_uncertainty),
            ("scores", self._log_scores),
            ("images", self._log_images),
            ("artifact", self._log_artifact),
        ]
        try:
            for step, fn in steps:
                try:
                    fn(wandb, wb, run, Path(run_dir))
                except Exception as e:  # noqa: BLE001 - keep logging what can be logged
                    failed.append(f"{step} ({type(e).__name__}: {e})")
                    log.debug("W&B step %s failed", step, exc_info=True)
        finally:
            wb.finish(exit_code=1 if failed else 0)
        if failed:
            raise RuntimeError(f"W&B logging failed for: {'; '.join(failed)}")

    def _log_summary(self, wandb: Any, wb: Any, run: RunResult, run_dir: Path) -> None:
        wb.summary.update(summary_numbers(run))

    def _log_tables(self, wandb: Any, wb: Any, run: RunResult, run_dir: Path) -> None:
        for ev_name, ev in run.evals.items():
            for table_name, rows in (ev.tables or {}).items():
                if not rows:
                    continue
                cols = table_columns(rows)
                table = wandb.Table(columns=cols, data=[[row.get(c) for c in cols] for row in rows])
                payload = {f"{ev_name}/{table_name}": table}
                axes = curve_axes(rows) if table_name == "curve" else None
                if axes is not None:
                    x, y = axes
                    payload[f"{ev_name}/curve_plot"] = wandb.plot.line(table, x, y, title=f"{ev_name}: {y} vs {x}")
                wb.log(payload)

    def _log_uncertainty(self, wandb: Any, wb: Any, run: RunResult, run_dir: Path) -> None:
        """Bootstrap intervals as ``<evaluator>/<value>_ci_low`` / ``_ci_high`` summary numbers, and each
        evaluator's per-example metrics as a table ``<evaluator>/per_example`` (one row per example)."""
        for ev_name, ev in run.evals.items():
            for key, ci in (ev.intervals or {}).items():
                if ci is not None:
                    wb.summary[f"{ev_name}/{key}_ci_low"], wb.summary[f"{ev_name}/{key}_ci_high"] = ci
            per = {k: v for k, v in (ev.per_example or {}).items() if v and not isinstance(v[0], list)}
            if per:
                cols = list(per)
                n = min(len(v) for v in per.values())
                rows = [[i, *(per[c][i] for c in cols)] for i in range(n)]
                wb.log({f"{ev_name}/per_example": wandb.Table(columns=["example", *cols], data=rows)})

    def _log_scores(self, wandb: Any, wb: Any, run: RunResult, run_dir: Path) -> None:
        if not self.config.log_scores or run.scores is None:
            return
        scores = run.scores
        in_circuit = run.circuit.edges if run.circuit is not None else None
        top = scores.top(min(max(self.config.max_score_rows, 0), scores.graph.n_edges), absolute=True)
        rows = []
        for name, value in top:
            src, _, dst = name.partition("->")
            kept = bool(in_circuit[scores.graph.index_of(name)]) if in_circuit is not None else None
            se = None if scores.stderr is None else float(scores.stderr[scores.graph.index_of(name)])
            rows.append([name, src, dst, value, abs(value), kept, se if se is None or se == se else None])
        cols = ["edge", "source", "destination", "score", "abs_score", "in_circuit", "stderr"]
        table = wandb.Table(columns=cols, data=rows)
        wb.log({"edge_scores": table})

    def _log_images(self, wandb: Any, wb: Any, run: RunResult, run_dir: Path) -> None:
        images = {f"images/{p.stem}": wandb.Image(str(p)) for p in sorted(run_dir.glob("*.png"))}
        page = run_dir / "circuit.html"
        if page.is_file():  # self-contained: no W&B stylesheet injected, nothing fetched
            images["explorer"] = wandb.Html(page.read_text(encoding="utf-8"), inject=False)
        if images:
            wb.log(images)

    def _log_artifact(self, wandb: Any, wb: Any, run: RunResult, run_dir: Path) -> None:
        circuit = run_dir / "circuit.json"
        if not circuit.is_file():
            return
        meta = run.meta
        name = _slug(f"circuit-{meta.get('method')}-{meta.get('task')}-{_short_model(str(meta.get('model')))}", 120)
        numbers = {k: v for k, v in summary_numbers(run).items() if not k.startswith("seconds/")}
        art = wandb.Artifact(
            name,
            type="circuit",
            description=f"{meta.get('method')} circuit for {meta.get('task')} on {meta.get('model')}",
            metadata={
                **{k: meta.get(k) for k in ("method", "task", "model", "selector", "model_weights_hash", "task_data_hash")},
                **numbers,
            },
        )
        art.add_file(str(circuit), name="circuit.json")
        results = run_dir / "results.json"
        if results.is_file():
            art.add_file(str(results), name="results.json")
        wb.log_artifact(art)


@hookimpl
def circuitkit_register_reporters(registry) -> None:  # noqa: ANN001
    registry.add("wandb", WandbReporter, WandbReporterConfig)
