"""``python -m circuitkit``: plugin manager -> registry -> ConfigStore (schema + plugin configs) -> Hydra main
(config.yaml + presets) -> :func:`circuitkit.pipeline.run`.

Examples::

    python -m circuitkit method=eap_ig task=greater_than
    python -m circuitkit -m method=eap,eap_ig task=ioi,greater_than
    python -m circuitkit model.name=/path/to/saved/model selector.n_edges=500
    python -m circuitkit plugins.block=[some_plugin] ...   # leave out an installed plugin

The installed plugins and what they register: ``python -m circuitkit.list`` (circuitkit/list.py).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from circuitkit.errors import CircuitkitError

log = logging.getLogger("circuitkit")


def _store_configs(block: tuple[str, ...] | list[str] = ()) -> None:
    """Put the run's schema (circuitkit.config.RunConfig, as ``base_config``) and every registered plugin's
    config into Hydra's ConfigStore; the model presets and the run presets are YAML files (conf/)."""
    from circuitkit.config import store_configs

    store_configs(block)


def _task_function(cfg) -> float | None:  # noqa: ANN001
    from hydra.core.hydra_config import HydraConfig

    from circuitkit.pipeline import run
    from circuitkit.rundir import Terminated, read_status

    hc = HydraConfig.get()
    run_dir = cfg.get("output_dir") or hc.runtime.output_dir
    try:
        result = run(cfg, run_dir, extra_files=_hydra_files(cfg, hc))
    except CircuitkitError as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"circuitkit: error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt as e:
        what = f"terminated ({e.args[0]})" if isinstance(e, Terminated) else "interrupted"
        if read_status(Path(run_dir)) == "complete":  # overwrite=true: the earlier run stays
            where = f"the complete earlier run in {run_dir} is unchanged"
        else:
            where = f"results.json in {run_dir} says 'interrupted'"
        print(f"circuitkit: {what}; no results were presented as complete ({where}).", file=sys.stderr)
        raise SystemExit(128 + e.signum if isinstance(e, Terminated) else 130) from None
    f = result.evals.get("faithfulness")
    value = f.values.get("faithfulness") if f is not None else None
    summary = _summary(f)
    print(f"circuitkit: {result.meta['method']} on {result.meta['task']}: {summary}")
    for line in summary_lines(result):
        print(f"circuitkit: {line}")
    print(f"circuitkit: results in {run_dir}")
    return value


def summary_lines(result) -> list[str]:  # noqa: ANN001
    """The printed summary beyond the faithfulness line: how the circuit's size was chosen, the
    faithfulness curve with CPR and CMD."""
    from circuitkit.uncertainty import fmt_interval

    lines = []
    sel = result.circuit.selection if result.circuit is not None else None
    if sel:
        total = sel["edges_in_graph"]
        if sel.get("reached"):
            exact = "" if sel.get("exact") else " (bisection stopped early: an upper bound)"
            lines.append(
                f"smallest circuit reaching faithfulness {sel['target']:g}: {sel['edges_in_circuit']:,} of {total:,} edges "
                f"({100 * sel['fraction_of_graph']:.2g}% of the graph; {sel['selector']} n_edges={sel['requested_edges']}), "
                f"faithfulness {sel['faithfulness']:.4g}{exact}"
            )
        else:
            lines.append(f"target faithfulness {sel['target']:g} not reached: {sel.get('note', '')}")
    curve = result.evals.get("faithfulness_curve")
    if curve is not None and curve.tables.get("curve"):
        unit = "%" if curve_unit(result) == "percent" else ""
        pts = " ".join(
            f"{r['budget']:g}{unit}:" + ("n/a" if r["faithfulness"] is None else f"{r['faithfulness']:.2f}")
            for r in curve.tables["curve"]
        )
        v = curve.values
        areas = ", ".join(
            f"{k.upper()} {fmt_interval(v[k], curve.intervals.get(k), 4)}" for k in ("cpr", "cmd") if v.get(k) is not None
        )
        lines.append(f"faithfulness curve (edge budget: faithfulness) {pts}" + (f"; {areas}" if areas else ""))
    return lines


def curve_unit(result) -> str:  # noqa: ANN001
    cfg = result.meta.get("config", {}).get("evaluator", {}) or {}
    node = cfg.get("faithfulness_curve") or {}
    return node.get("unit", "percent") if isinstance(node, dict) else "percent"


def _summary(f) -> str:  # noqa: ANN001
    """``name=value`` for each value of the faithfulness result; ``faithfulness=0.91 [0.86, 0.95]`` where a
    bootstrap interval was computed."""
    from circuitkit.uncertainty import fmt_interval

    if f is None:
        return ""
    parts = []
    for k, v in f.values.items():
        if k in f.intervals and f.intervals[k] is not None:
            parts.append(f"{k}={fmt_interval(v, f.intervals[k], 4)}")
        else:
            parts.append(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}")
    return ", ".join(parts)


def _hydra_files(cfg, hc) -> dict[str, str]:  # noqa: ANN001
    """Hydra's ``.hydra/`` files, written by the run once it holds its directory (``hydra.output_subdir`` is
    null in circuitkit's config, so Hydra does not write them before the directory is checked)."""
    from omegaconf import OmegaConf

    if hc.output_subdir is not None:  # the user asked Hydra to write them
        return {}
    return {
        ".hydra/config.yaml": OmegaConf.to_yaml(cfg),
        ".hydra/hydra.yaml": OmegaConf.to_yaml(OmegaConf.create({"hydra": OmegaConf.to_container(hc)})),
        ".hydra/overrides.yaml": OmegaConf.to_yaml(hc.overrides.task),
    }


def _own_flags(args: list[str]) -> bool:
    """``--help``/``-h`` and ``--version``/``-V`` print circuitkit's text (circuitkit/cli_help.py), not Hydra's;
    True when one was handled."""
    from circuitkit import cli_help

    if any(a in cli_help.HELP_FLAGS for a in args):
        from circuitkit.overrides import plugin_block_from_overrides

        print(cli_help.help_text(plugin_block_from_overrides(args)))
        return True
    if any(a in cli_help.VERSION_FLAGS for a in args):
        print(cli_help.version_text())
        return True
    return False


def main() -> None:
    import hydra

    from circuitkit.overrides import blocked_choice, plugin_block_from_overrides

    if _own_flags(sys.argv[1:]):
        return
    try:
        # plugins.block=[...] must act before composing: a broken plugin would fail the registry here.
        block = plugin_block_from_overrides(sys.argv[1:])
        _store_configs(block)
        blocked = blocked_choice(sys.argv[1:], block)
        if blocked:
            raise CircuitkitError(blocked)
    except CircuitkitError as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"circuitkit: error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    import circuitkit.rundir  # noqa: F401 - registers ${circuitkit.uid:} of the run directory pattern

    hydra.main(config_path="conf", config_name="config", version_base="1.3")(_task_function)()


if __name__ == "__main__":
    main()
