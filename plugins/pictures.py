"""Pictures reporter: ``reporter=[pictures]`` draws the run's circuit and faithfulness curves.

Writes ``circuit.<fmt>`` (the circuit as a graph, see :func:`circuitkit.plot.draw_circuit`) and, when an
evaluator produced a ``curve`` table (``faithfulness_curve``), ``curve.<fmt>`` (faithfulness against the
percentage of edges, see :func:`circuitkit.plot.plot_curves`) into the run directory. Needs matplotlib
(``pip install 'circuitkit[plots]'``); without it the reporter logs one line and draws nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from circuitkit import hookimpl
from circuitkit.errors import ConfigError
from circuitkit.interfaces import PluginConfig, Reporter
from circuitkit.results import RunResult

log = logging.getLogger("circuitkit")

FORMATS = ("svg", "png", "pdf")


@dataclass
class PicturesConfig(PluginConfig):
    """Options of the pictures reporter (``reporter.pictures.<option>=...``).

    Attributes:
        formats: file formats to write (svg, png, pdf).
        circuit: draw the circuit.
        curve: draw the faithfulness curve(s), when an evaluator measured one.
        max_edges: draw at most this many circuit edges (largest ``|score|`` first).
        dpi: resolution of PNG files.
    """

    formats: list[str] = field(default_factory=lambda: ["svg", "png"])
    circuit: bool = True
    curve: bool = True
    max_edges: int = 300
    dpi: int = 150


class Pictures(Reporter):
    config: PicturesConfig

    def __init__(self, config: PicturesConfig) -> None:
        super().__init__(config)
        bad = [f for f in config.formats if f not in FORMATS]
        if bad or not config.formats:
            raise ConfigError(f"reporter.pictures.formats must be a non-empty list of {', '.join(FORMATS)}; got {list(config.formats)}.")
        if config.max_edges < 1:
            raise ConfigError(f"reporter.pictures.max_edges must be at least 1, got {config.max_edges}.")

    def report(self, run: RunResult, run_dir: str) -> None:
        from circuitkit import plot

        if not plot.available():
            log.info("pictures: %s; no pictures drawn.", plot.INSTALL_HINT)
            return
        out = Path(run_dir)
        fmts = list(self.config.formats)
        written = []
        if self.config.circuit and run.circuit is not None:
            title = f"{run.meta.get('method', '?')} on {run.meta.get('task', '?')}: {run.circuit.n_edges} edges"
            written += plot.draw_circuit(run.circuit, *[out / f"circuit.{f}" for f in fmts], max_edges=self.config.max_edges, title=title, dpi=self.config.dpi)
        if self.config.curve:
            curves = {}
            target = None
            method = run.meta.get("method", "circuit")
            for name, ev in run.evals.items():
                for table, suffix in (("curve", ""), ("curve_signed", " (signed)")):
                    if ev.tables.get(table):
                        label = method if name == "faithfulness_curve" else f"{method} [{name}]"
                        curves[label + suffix] = ev.tables[table]
                target = target if target is not None else ev.values.get("target")
            if curves:
                written += plot.plot_curves(curves, *[out / f"curve.{f}" for f in fmts], target=target, title=f"{method} on {run.meta.get('task', '?')}", dpi=self.config.dpi)
        if written:
            log.info("pictures: wrote %s", ", ".join(p.name for p in written))


@hookimpl
def circuitkit_register_reporters(registry) -> None:  # noqa: ANN001
    registry.add("pictures", Pictures, PicturesConfig)
