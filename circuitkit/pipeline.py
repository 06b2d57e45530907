"""One run: task -> attributor -> selector -> evaluators -> reporters, writing results as it goes.

``scores.json`` is written as soon as attribution finishes and ``circuit.json`` as soon as selection
does, so a later failure never loses what was computed; ``results.json`` records ``"status"``.
"""

from __future__ import annotations

import logging
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from circuitkit.errors import CircuitkitError, ConfigError
from circuitkit.interfaces import RunContext
from circuitkit.interventions import build_intervention, check_intervention
from circuitkit.model import CircuitModel, load_model
from circuitkit.plugins import get_registry, run_block
from circuitkit.registry import Registry
from circuitkit.results import RunResult, write_json

log = logging.getLogger("circuitkit")


@dataclass
class ModelConfig:
    """Which model to load.

    Attributes:
        name: ``bundled``, a Hugging Face Hub name (``gpt2``) or a local directory saved with
            ``save_pretrained`` (model and tokenizer).
        device: ``auto`` (CUDA when present), ``cpu``, ``cuda``, ``cuda:N``.
        dtype: ``float32``, ``bfloat16``, ``float16`` or ``float64``.
        prepend_bos: put the tokenizer's BOS token before every prompt.
        device_map: place the model with a Hugging Face device map (needs ``accelerate``; ``device`` stays
            ``auto``): ``auto``, ``balanced``, ``balanced_low_0`` or ``sequential`` (accelerate's
            strategies over the visible GPUs), one device, or a mapping module name -> GPU index covering
            every module, as ``from_pretrained`` takes it (``'{model.embed_tokens:0,model.layers.0:0,...}'``).
            null: one device (``device``). Multi-GPU runs: see docs/concepts.md, "Large models".
        n_devices: split the model over ``cuda:0 .. cuda:N-1`` (``device_map=balanced`` limited to those
            GPUs); null or 1: one device.
        allow_unverified: go on when the model fails circuitkit's check at load against its own forward
            pass (the residual stream as the sum of the graph's node outputs, the model's own logits); the
            run then warns and records the failure in results.json (``model_unverified``).
        fast_paths: take the shortcuts that give the plain forward's numbers up to float rounding (each
            checked once per model against the plain forward; see docs/concepts.md, "Fast paths"); false:
            the exact path everywhere.
    """

    name: str = "bundled"
    device: str = "auto"
    dtype: str = "float32"
    prepend_bos: bool = True
    device_map: Any = None
    n_devices: int | None = None
    allow_unverified: bool = False
    fast_paths: bool = True


MODEL_PRESETS = {"bundled": ModelConfig(name="bundled"), "gpt2": ModelConfig(name="gpt2")}


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("circuitkit", "torch", "transformer_lens", "transformers"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "unknown"
    return out


def _plain(cfg: Any) -> dict[str, Any]:
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except ImportError:  # pragma: no cover
        pass
    return dict(cfg)


def _reporters(cfg: dict[str, Any], registry: Registry) -> list[Any]:
    """The reporters chosen in ``reporter=[...]``, plus ``pictures`` (circuit.svg/png, curve.png,
    circuit.html) unless listed there already or turned off with ``pictures=false``."""
    chosen = _selected(cfg, "reporter")
    if cfg.get("pictures", True) and "pictures" not in [n for n, _ in chosen] and "pictures" in registry.reporters.names():
        chosen = [("pictures", {}), *chosen]
    return [registry.reporters.build(n, o) for n, o in chosen]


def _selected(cfg: dict[str, Any], group: str) -> list[tuple[str, dict[str, Any]]]:
    """``[(name, options)]`` chosen for a combinable group (a mapping name -> options, or None)."""
    node = cfg.get(group) or {}
    if not isinstance(node, dict):
        raise ConfigError(f"'{group}' must be a list of names, e.g. {group}=[faithfulness]; got {node!r}.")
    return [(name, opts or {}) for name, opts in node.items()]


#: Longest error text recorded in results.json (user data such as a prompt can be megabytes).
MAX_ERROR_CHARS = 500


def run(
    cfg: Any,
    run_dir: str | Path,
    *,
    model: CircuitModel | None = None,
    registry: Registry | None = None,
    extra_files: dict[str, str] | None = None,
) -> RunResult:
    """Execute one run described by ``cfg`` (the composed Hydra config, or an equivalent dict).

    The run holds ``run_dir`` for itself while it runs (circuitkit/rundir.py): a directory in use by another
    run, or holding a complete run (unless ``cfg["overwrite"]``), is refused before anything is written.
    ``extra_files`` (relative path -> text, e.g. Hydra's ``.hydra/config.yaml``) are written with the results.
    """
    from circuitkit.rundir import open_run_dir, terminate_as_interrupt

    cfg = _plain(cfg)
    option = "output_dir" if cfg.get("output_dir") else "hydra.run.dir"
    rd = open_run_dir(run_dir, overwrite=bool(cfg.get("overwrite", False)), option=option)
    try:
        if rd.replaced is not None and rd.staging is None:
            log.info("Replacing the earlier run in %s, which did not complete (status %s).", rd.final, rd.replaced)
        with terminate_as_interrupt(), run_block(_blocked(cfg)):
            return _run(cfg, rd, model=model, registry=registry, extra_files=extra_files or {})
    finally:
        rd.close()


def _run(cfg: dict[str, Any], rd: Any, *, model: CircuitModel | None, registry: Registry | None, extra_files: dict[str, str]) -> RunResult:
    from circuitkit.results import atomic_write_text
    from circuitkit.rundir import Terminated

    run_dir = rd.out
    seconds: dict[str, float] = {}
    result = RunResult(meta={"config": cfg, "versions": versions()}, seconds=seconds, status="running")
    for rel, text in extra_files.items():
        atomic_write_text(run_dir / rel, text)
    _write_results(result, run_dir)
    try:
        reporters = _execute(cfg, run_dir, result, model=model, registry=registry)
    except KeyboardInterrupt as e:
        result.status = "interrupted"
        if isinstance(e, Terminated):
            result.meta["signal"] = signal_name(e.signum)
        _write_results(result, run_dir)
        raise
    except Exception as e:
        result.status = "failed"
        text = str(e).splitlines()[0] if str(e) else type(e).__name__
        result.meta["error"] = text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3] + "..."
        _write_results(result, run_dir)
        raise
    result.status = "complete"
    _write_results(result, run_dir)
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


def _blocked(cfg: dict[str, Any]) -> list[str]:
    """The plugins the run's ``plugins.block`` leaves out."""
    return [str(n) for n in ((cfg.get("plugins") or {}).get("block") or [])]


def _execute(cfg: dict[str, Any], run_dir: Path, result: RunResult, *, model: CircuitModel | None, registry: Registry | None) -> list[Any]:
    """The run's stages, filling ``result`` as they finish (scores.json, circuit.json written on the way);
    returns the reporters to run once the result files are complete."""
    registry = registry or get_registry(_blocked(cfg))
    ctx = RunContext(
        batch_size=int(cfg.get("batch_size", 16)), progress=bool(cfg.get("progress", True)), seed=int(cfg.get("seed", 0))
    )
    ctx.extra["buffer_dtype"] = cfg.get("buffer_dtype")
    from circuitkit.uncertainty import bootstrap_config

    ctx.bootstrap = cfg.get("bootstrap")
    ctx.bootstrap = bootstrap_config(ctx)  # bad options fail here, before any computation
    # The selector's search, the curve and the faithfulness of the chosen circuit share evaluation work.
    from circuitkit.evaluation import EvaluationCache

    ctx.evaluations = EvaluationCache()
    if cfg.get("positions_per_pass") is not None:
        ctx.extra["positions_per_pass"] = cfg.get("positions_per_pass")
    intervention = cfg.get("intervention") or "patching"
    check_intervention(intervention)
    ctx.extra["intervention"] = intervention
    if ctx.batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {ctx.batch_size}.")
    method_name = cfg["method"]["name"]
    task_name = cfg["task"]["name"]
    selector_name = cfg["selector"]["name"]
    # Build every component first, so a bad option fails before any computation.
    attributor = registry.methods.build(method_name, cfg["method"])
    ctx.attributor = attributor
    task = registry.tasks.build(task_name, cfg["task"])
    selector = registry.selectors.build(selector_name, cfg["selector"])
    evaluators = [registry.evaluators.build(n, o) for n, o in _selected(cfg, "evaluator")]
    reporters = _reporters(cfg, registry)
    level = getattr(attributor.config, "level", None)
    if isinstance(level, str):  # node/neuron-level methods need a selector that chooses nodes/neurons
        selector.check_level(level)

    torch.manual_seed(ctx.seed)
    seconds = result.seconds
    t0 = time.perf_counter()
    if model is None:
        mc = cfg.get("model", {})
        model = load_model(
            mc.get("name", "bundled"),
            device=mc.get("device", "auto"),
            dtype=mc.get("dtype", "float32"),
            prepend_bos=mc.get("prepend_bos", True),
            device_map=mc.get("device_map"),
            n_devices=mc.get("n_devices"),
            allow_unverified=bool(mc.get("allow_unverified", False)),
        )
        model.fast_paths = bool(mc.get("fast_paths", True))
    seconds["load_model"] = time.perf_counter() - t0
    selector.validate(model.graph)

    # A task whose metric is ``kl`` needs the model (its clean distribution) to compute the metric.
    from circuitkit.objectives import bind_objective

    task = bind_objective(task, model)
    t0 = time.perf_counter()
    data = task.build(model.tokenizer, prepend_bos=model.prepend_bos)
    check_fits_model(model, data)
    seconds["build_task"] = time.perf_counter() - t0
    if intervention != "patching":
        t0 = time.perf_counter()
        ctx.intervention = build_intervention(model, data, intervention, ctx.batch_size)
        seconds["intervention"] = time.perf_counter() - t0
    meta = result.meta  # the attribution cache adds to it (scores_from_cache)
    meta.update({
        "method": method_name,
        "task": task_name,
        "selector": selector_name,
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
        "seed": ctx.seed,
        "intervention": intervention,
        "batch_size": ctx.batch_size,
        "device": str(model.device),
        "versions": versions(),
        "config": cfg,
    })
    _write_results(result, run_dir)
    if data.n_dropped:
        log.info("Task %s: kept %d examples, dropped %d candidates: %s.", task_name, len(data), data.n_dropped, data.drop_summary())

    t0 = time.perf_counter()
    # --- attribution cache (circuitkit/cache.py): same weights, data and method -> reuse scores ---
    from circuitkit.cache import cached_attribute

    scores = cached_attribute(attributor, model, task, data, ctx, cfg, meta, registry)
    # --- end attribution cache ---
    seconds["attribute"] = time.perf_counter() - t0
    scores.meta.update(
        {k: meta[k] for k in ("method", "task", "model", "model_weights_hash", "task_data_hash", "seed", "versions")}
    )
    scores.check_finite()
    result.scores = scores
    scores.save(run_dir / "scores.json")
    ctx.scores = scores

    t0 = time.perf_counter()
    # A selector may measure candidate circuits (top_n without n_edges: the smallest reaching a target).
    circuit = selector.select_in_run(scores, model, task, data, ctx)
    seconds["select"] = time.perf_counter() - t0
    result.circuit = circuit
    circuit.d_model = model.d_model
    circuit.save(run_dir / "circuit.json")

    for ev in evaluators:
        t0 = time.perf_counter()
        res = ev.evaluate(model, task, data, circuit, ctx)
        seconds[f"evaluate_{res.name}"] = time.perf_counter() - t0
        result.evals[res.name] = res
    return reporters


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
        ids = [max(row) for rows in (data.clean_ids, data.corrupted_ids, data.correct_ids, data.incorrect_ids) for row in rows if row]
        top = max(ids + [model.pad_id], default=-1)
        if top >= d_vocab:
            raise DataError(
                f"The tokenizer gives token id {top}, but the model's vocabulary has only {d_vocab} tokens (ids 0 to "
                f"{d_vocab - 1}): the model and its tokenizer do not belong together. Save the model with the "
                "tokenizer it was trained with (tokenizer.save_pretrained(dir)), or resize its embeddings "
                "(model.resize_token_embeddings(len(tokenizer)))."
            )


def _write_results(result: RunResult, run_dir: Path) -> None:
    try:
        write_json(run_dir / "results.json", result.results_json())
    except CircuitkitError:
        raise
    except (TypeError, ValueError) as e:  # pragma: no cover - a non-JSON value in a plugin's result
        raise CircuitkitError(f"results.json could not be written: {e}") from e


__all__ = ["ModelConfig", "MODEL_PRESETS", "run", "versions", "asdict", "field"]
