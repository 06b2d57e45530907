"""One run, in stages: prepare -> attribute -> select -> evaluate, each writing what it computed.

- :func:`prepare`: the typed config (:mod:`circuitkit.config`) becomes the components (their options
  checked before any computation), the run context, the model and the task's data, and the provenance
  results.json records.
- :func:`attribute`: the method's scores, through the attribution cache, with their provenance.
- :func:`select`: the selector's circuit (a selector may measure candidate circuits).
- :func:`evaluate`: each evaluator's result.

:func:`run` holds the run directory and writes as the stages finish: ``results.json`` (status
``running``) once the directory is held and again once prepared, ``scores.json`` as soon as attribution
finishes and ``circuit.json`` as soon as selection does, so a later failure never loses what was computed;
``results.json`` records ``"status"``. Reporters run once the result files are complete.
"""

from __future__ import annotations

import dataclasses
import logging
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from circuitkit.config import ModelConfig, RunConfig, model_presets, record, to_objects, typed
from circuitkit.errors import CircuitkitError
from circuitkit.interfaces import Attributor, Evaluator, Reporter, RunContext, Selector, Task
from circuitkit.interventions import build_intervention, check_intervention
from circuitkit.model import CircuitModel, load_model
from circuitkit.plugins import get_registry, run_block
from circuitkit.registry import Registry
from circuitkit.results import Circuit, EvalResult, RunResult, Scores, write_json

log = logging.getLogger("circuitkit")


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("circuitkit", "torch", "transformer_lens", "transformers"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "unknown"
    return out


#: Longest error text recorded in results.json (user data such as a prompt can be megabytes).
MAX_ERROR_CHARS = 500


@dataclass
class Prepared:
    """What :func:`prepare` gives the later stages: the run's components, model, data and context."""

    config: RunConfig
    registry: Registry
    attributor: Attributor
    task: Task
    selector: Selector
    evaluators: list[Evaluator]
    reporters: list[Reporter]
    ctx: RunContext
    model: CircuitModel
    data: Any
    #: What results.json records about the run (method, model and data hashes, seed, ...).
    provenance: dict[str, Any] = field(default_factory=dict)
    #: Seconds of the stages so far (load_model, build_task, intervention).
    seconds: dict[str, float] = field(default_factory=dict)


def run(
    cfg: Any,
    run_dir: str | Path,
    *,
    model: CircuitModel | None = None,
    registry: Registry | None = None,
    extra_files: dict[str, str] | None = None,
) -> RunResult:
    """Execute one run described by ``cfg``: the composed Hydra config, a :class:`~circuitkit.config.RunConfig`
    or a mapping with its keys (those left out take :class:`~circuitkit.config.RunConfig`'s defaults).

    The run holds ``run_dir`` for itself while it runs (circuitkit/rundir.py): a directory in use by another
    run, or holding a complete run (unless ``overwrite``), is refused before anything is written. A config
    of the wrong shape (an unknown key, a value of the wrong type) is refused before that.
    ``model``: an already loaded model (``model`` in the config is then not loaded). ``extra_files``
    (relative path -> text, e.g. Hydra's ``.hydra/config.yaml``) are written with the results.
    """
    from circuitkit.rundir import open_run_dir, terminate_as_interrupt

    node = typed(cfg)
    option = "output_dir" if node.output_dir else "hydra.run.dir"
    rd = open_run_dir(run_dir, overwrite=bool(node.overwrite), option=option)
    try:
        if rd.replaced is not None and rd.staging is None:
            log.info("Replacing the earlier run in %s, which did not complete (status %s).", rd.final, rd.replaced)
        with terminate_as_interrupt(), run_block([str(n) for n in node.plugins.block]):
            return _run(node, rd, model=model, registry=registry, extra_files=extra_files or {})
    finally:
        rd.close()


def _run(node: Any, rd: Any, *, model: CircuitModel | None, registry: Registry | None, extra_files: dict[str, str]) -> RunResult:
    from circuitkit.results import atomic_write_text
    from circuitkit.rundir import Terminated

    run_dir = rd.out
    config = record(node)
    if model is not None:  # a loaded model was given: the config's model section was not used
        config.pop("model", None)
    result = RunResult(meta={"config": config, "versions": versions()}, seconds={}, status="running")
    for rel, text in extra_files.items():
        atomic_write_text(run_dir / rel, text)
    write_results(result, run_dir)
    try:
        reporters = _stages(node, run_dir, result, model=model, registry=registry)
    except KeyboardInterrupt as e:
        result.status = "interrupted"
        if isinstance(e, Terminated):
            result.meta["signal"] = signal_name(e.signum)
        write_results(result, run_dir)
        raise
    except Exception as e:
        result.status = "failed"
        text = str(e).splitlines()[0] if str(e) else type(e).__name__
        result.meta["error"] = text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3] + "..."
        write_results(result, run_dir)
        raise
    result.status = "complete"
    write_results(result, run_dir)
    rd.commit()
    # Reporters that publish the run elsewhere (W&B) run after those that add files to it (pictures).
    for rep in sorted(reporters, key=lambda r: bool(getattr(r, "publishes", False))):
        try:
            rep.report(result, str(rd.final))
        except Exception as e:  # noqa: BLE001 - a reporter must never lose the run
            log.warning(
                "Reporter '%s' failed (%s: %s); the local result files in %s are complete.",
                rep.config.name,
                type(e).__name__,
                e,
                rd.final,
            )
    return result


def signal_name(signum: int) -> str:
    import signal

    try:
        return signal.Signals(signum).name
    except ValueError:  # pragma: no cover
        return str(signum)


def _stages(
    node: Any, run_dir: Path, result: RunResult, *, model: CircuitModel | None, registry: Registry | None
) -> list[Reporter]:
    """The stages, each one's output written as it finishes; returns the reporters to run once the result
    files are complete."""
    prepared = prepare(to_objects(node), model=model, registry=registry)
    result.seconds.update(prepared.seconds)
    result.meta.update(prepared.provenance)
    write_results(result, run_dir)

    t0 = time.perf_counter()
    scores, cache_info = attribute(prepared)
    result.seconds["attribute"] = time.perf_counter() - t0
    result.meta.update(cache_info)
    result.scores = scores
    scores.save(run_dir / "scores.json")

    t0 = time.perf_counter()
    circuit = select(prepared, scores)
    result.seconds["select"] = time.perf_counter() - t0
    result.circuit = circuit
    circuit.save(run_dir / "circuit.json")

    for name, res, seconds in evaluate(prepared, scores, circuit):
        result.seconds[f"evaluate_{name}"] = seconds
        result.evals[name] = res
    return prepared.reporters


def prepare(config: RunConfig, *, model: CircuitModel | None = None, registry: Registry | None = None) -> Prepared:
    """Build the run's components (a bad option fails here, before any computation), seed torch, load the
    model (unless given), build the task's data and the intervention."""
    from circuitkit.cache import cache_dir_for
    from circuitkit.evaluation import EvaluationCache
    from circuitkit.objectives import bind_objective

    registry = registry or get_registry([str(n) for n in config.plugins.block])
    check_intervention(config.intervention)
    cache_dir = cache_dir_for(config.cache, config.cache_dir)
    attributor = registry.methods.build(_name(config.method), config.method)
    task = registry.tasks.build(_name(config.task), config.task)
    selector = registry.selectors.build(_name(config.selector), config.selector)
    evaluators = [registry.evaluators.build(n, o) for n, o in config.evaluator.items()]
    reporters = [registry.reporters.build(n, o) for n, o in _reporters(config, registry).items()]
    level = getattr(attributor.config, "level", None)
    if isinstance(level, str):  # node/neuron-level methods need a selector that chooses nodes/neurons
        selector.check_level(level)

    torch.manual_seed(config.seed)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    if model is None:
        model = _load(config.model)
    seconds["load_model"] = time.perf_counter() - t0
    selector.validate(model.graph)

    # A task whose metric is ``kl`` needs the model (its clean distribution) to compute the metric.
    task = bind_objective(task, model)
    t0 = time.perf_counter()
    data = task.build(model.tokenizer, prepend_bos=model.prepend_bos)
    check_fits_model(model, data)
    seconds["build_task"] = time.perf_counter() - t0
    intervention = None
    if config.intervention != "patching":
        t0 = time.perf_counter()
        intervention = build_intervention(model, data, config.intervention, config.batch_size)
        seconds["intervention"] = time.perf_counter() - t0
    ctx = RunContext(
        batch_size=config.batch_size,
        progress=config.progress,
        seed=config.seed,
        cache_dir=None if cache_dir is None else str(cache_dir),
        intervention=intervention,
        buffer_dtype=config.buffer_dtype,
        positions_per_pass=config.positions_per_pass,
        # The selector's search, the curve and the faithfulness of the chosen circuit share evaluation work.
        evaluations=EvaluationCache(),
        bootstrap=config.bootstrap,
        attributor=attributor,
    )
    provenance = {
        "method": _name(config.method),
        "task": _name(config.task),
        "selector": _name(config.selector),
        "model": model.name,
        "model_weights_hash": model.weights_hash,
        **({"model_unverified": model.unverified} if getattr(model, "unverified", None) else {}),
        "task_data_hash": data.content_hash(),
        "n_examples": len(data),
        "n_dropped": data.n_dropped,
        "dropped_by_reason": dict(data.drop_counts),
        "task_info": data.info,
        "prepend_bos": bool(model.prepend_bos),
        "bos_token": getattr(model.tokenizer, "bos_token", None) if model.prepend_bos else None,
        "seed": config.seed,
        "intervention": config.intervention,
        "batch_size": config.batch_size,
        "device": str(model.device),
    }
    if data.n_dropped:
        log.info(
            "Task %s: kept %d examples, dropped %d candidates: %s.",
            provenance["task"],
            len(data),
            data.n_dropped,
            data.drop_summary(),
        )
    return Prepared(config, registry, attributor, task, selector, evaluators, reporters, ctx, model, data, provenance, seconds)


#: What scores.json records of the run, besides the method's own metadata.
SCORES_PROVENANCE = ("method", "task", "model", "model_weights_hash", "task_data_hash", "seed")


def attribute(p: Prepared) -> tuple[Scores, dict[str, Any]]:
    """The method's scores (from the attribution cache when the same scores were computed before), with the
    run's provenance in their metadata; and what results.json records about the cache."""
    from circuitkit.cache import cache_dir_for, cached_attribute

    cache_dir = cache_dir_for(p.config.cache, p.config.cache_dir)
    scores, cache_info = cached_attribute(p.attributor, p.model, p.task, p.data, p.ctx, cache_dir, p.registry)
    meta = {**scores.meta, **{k: p.provenance[k] for k in SCORES_PROVENANCE}, "versions": versions()}
    scores = dataclasses.replace(scores, meta=meta)
    scores.check_finite()
    return scores, cache_info


def select(p: Prepared, scores: Scores) -> Circuit:
    """The selector's circuit from ``scores`` (a selector may measure candidate circuits: top_n without
    n_edges chooses the smallest reaching a target)."""
    circuit = p.selector.select_in_run(scores, p.model, p.task, p.data, dataclasses.replace(p.ctx, scores=scores))
    return dataclasses.replace(circuit, d_model=p.model.d_model)


def evaluate(p: Prepared, scores: Scores, circuit: Circuit) -> Any:
    """Yield ``(name, result, seconds)`` for each evaluator, in the order chosen."""
    ctx = dataclasses.replace(p.ctx, scores=scores)
    for ev in p.evaluators:
        t0 = time.perf_counter()
        res: EvalResult = ev.evaluate(p.model, p.task, p.data, circuit, ctx)
        yield res.name, res, time.perf_counter() - t0


def _name(component: Any) -> str:
    return str(component["name"] if isinstance(component, dict) else component.name)


def _reporters(config: RunConfig, registry: Registry) -> dict[str, Any]:
    """The reporters chosen in ``reporter=[...]`` (name -> options), plus ``pictures`` (circuit.svg/png,
    curve.png, circuit.html) unless listed there already or turned off with ``pictures=false``."""
    chosen = dict(config.reporter)
    if config.pictures and "pictures" not in chosen and "pictures" in registry.reporters.names():
        chosen = {"pictures": {}, **chosen}
    return chosen


def _load(mc: ModelConfig) -> CircuitModel:
    model = load_model(
        mc.name,
        device=mc.device,
        dtype=mc.dtype,
        prepend_bos=mc.prepend_bos,
        device_map=mc.device_map,
        n_devices=mc.n_devices,
        allow_unverified=bool(mc.allow_unverified),
    )
    model.fast_paths = bool(mc.fast_paths)
    return model


def check_fits_model(model: CircuitModel, data: Any) -> None:
    """Raise a :class:`DataError` when the task's token ids cannot go through ``model``: prompts longer
    than its context, or ids its embedding does not have (a tokenizer larger than the model's vocabulary)."""
    from circuitkit.data import _describe
    from circuitkit.errors import DataError

    cfg = model.bridge.cfg
    n_ctx = getattr(cfg, "n_ctx", None)
    if isinstance(n_ctx, int) and n_ctx > 0 and len(data):
        i = max(range(len(data)), key=lambda k: len(data.clean_ids[k]))
        longest = len(data.clean_ids[i])
        if longest > n_ctx:
            n_long = sum(len(ids) > n_ctx for ids in data.clean_ids)
            raise DataError(
                f"Task '{data.task}': {n_long} example(s) are longer than the model's context of {n_ctx} tokens; the "
                f"longest, {_describe(i, data.examples[i])}, has {longest} tokens. Shorten the prompts or use a model "
                "with a longer context."
            )
    d_vocab = getattr(cfg, "d_vocab", None)
    if isinstance(d_vocab, int) and d_vocab > 0:
        ids = [
            max(row) for rows in (data.clean_ids, data.corrupted_ids, data.correct_ids, data.incorrect_ids) for row in rows if row
        ]
        top = max(ids + [model.pad_id], default=-1)
        if top >= d_vocab:
            raise DataError(
                f"The tokenizer gives token id {top}, but the model's vocabulary has only {d_vocab} tokens (ids 0 to "
                f"{d_vocab - 1}): the model and its tokenizer do not belong together. Save the model with the "
                "tokenizer it was trained with (tokenizer.save_pretrained(dir)), or resize its embeddings "
                "(model.resize_token_embeddings(len(tokenizer)))."
            )


def write_results(result: RunResult, run_dir: Path) -> None:
    """Write ``result`` as ``run_dir/results.json`` (atomically)."""
    try:
        write_json(run_dir / "results.json", result.results_json())
    except CircuitkitError:
        raise
    except (TypeError, ValueError) as e:  # pragma: no cover - a non-JSON value in a plugin's result
        raise CircuitkitError(f"results.json could not be written: {e}") from e


__all__ = [
    "ModelConfig",
    "Prepared",
    "RunConfig",
    "attribute",
    "evaluate",
    "model_presets",
    "prepare",
    "run",
    "select",
    "versions",
]
