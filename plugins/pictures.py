"""Pictures reporter: the run's circuit and faithfulness curve as files, written by every run by default.

Writes into the run directory:

- ``circuit.html``: the interactive explorer (:mod:`circuitkit.explorer`; one self-contained file, no
  dependency beyond circuitkit itself);
- ``circuit.<fmt>``: the circuit as a graph (:func:`circuitkit.plot.draw_circuit`);
- ``curve.<fmt>``: faithfulness against the percentage of edges, when an evaluator produced a ``curve``
  table (``faithfulness_curve``; :func:`circuitkit.plot.plot_curves`).

The pipeline adds this reporter to every run (``pictures=false`` turns it off); list it as
``reporter=[pictures]`` to set its options. The static pictures need matplotlib (a base dependency); where it
cannot be imported the reporter logs one warning, still writes ``circuit.html``, and the run's result files
are complete.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from circuitkit.api import (
    PLOT_INSTALL_HINT,
    ConfigError,
    PluginConfig,
    Reporter,
    RunResult,
    draw_circuit,
    explorer_for_run,
    hookimpl,
    plot_curves,
    plots_available,
)

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
        html: write ``circuit.html``, the interactive explorer.
        html_max_edges: ranked edges stored in ``circuit.html`` for its top-n slider (the strongest; every
            edge of GPT-2 small by default).
        html_max_draw: edges the explorer draws at once (the strongest of its selection).
    """

    formats: list[str] = field(default_factory=lambda: ["svg", "png"])
    circuit: bool = True
    curve: bool = True
    max_edges: int = 300
    dpi: int = 150
    html: bool = True
    html_max_edges: int = 50_000
    html_max_draw: int = 1500

    def __post_init__(self) -> None:
        bad = [f for f in self.formats if f not in FORMATS]
        if bad or not self.formats:
            raise ConfigError(
                f"reporter.pictures.formats must be a non-empty list of {', '.join(FORMATS)}; got {list(self.formats)}."
            )
        for key in ("max_edges", "html_max_edges", "html_max_draw"):
            if getattr(self, key) < 1:
                raise ConfigError(f"reporter.pictures.{key} must be at least 1, got {getattr(self, key)}.")


class Pictures(Reporter):
    config: PicturesConfig

    def report(self, run: RunResult, run_dir: str) -> None:
        out = Path(run_dir)
        written = []
        if self.config.html and run.circuit is not None:
            page = explorer_for_run(
                run, out / "circuit.html", max_stored=self.config.html_max_edges, max_draw=self.config.html_max_draw
            )
            written += [page] if page is not None else []
        if not plots_available():
            log.warning("pictures: %s; no circuit.svg/png or curve.png drawn (the result files are complete).", PLOT_INSTALL_HINT)
            if written:
                log.info("pictures: wrote %s", ", ".join(p.name for p in written))
            return
        fmts = list(self.config.formats)
        if self.config.circuit and run.circuit is not None:
            title = f"{run.meta.get('method', '?')} on {run.meta.get('task', '?')}: {run.circuit.n_edges} edges"
            written += draw_circuit(
                run.circuit,
                *[out / f"circuit.{f}" for f in fmts],
                max_edges=self.config.max_edges,
                title=title,
                dpi=self.config.dpi,
            )
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
                written += plot_curves(
                    curves,
                    *[out / f"curve.{f}" for f in fmts],
                    target=target,
                    title=f"{method} on {run.meta.get('task', '?')}",
                    dpi=self.config.dpi,
                )
        if written:
            log.info("pictures: wrote %s", ", ".join(p.name for p in written))


@hookimpl
def circuitkit_register_reporters(registry) -> None:  # noqa: ANN001
    registry.add("pictures", Pictures, PicturesConfig)
