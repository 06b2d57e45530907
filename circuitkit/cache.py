"""Attribution cache: scores are reused when the model weights, the task data and the method are the same.

A sweep over selectors or evaluators (``-m selector.n_edges=100,200,500``) then computes the scores once.
The key is a hash of the model's weights hash, the task data's content hash, the task and method configs,
the run seed, the run-level extras (``RunContext.extra``), the device type and the circuitkit / method
plugin versions. Entries are ``scores.json``
files written atomically, so concurrent jobs of a sweep can share one cache directory.

Settings (the shipped CLI config turns the cache on)::

    cache: true            # cache=false turns it off
    cache_dir: null        # default: $CIRCUITKIT_CACHE_DIR, else ~/.cache/circuitkit

``results.json`` records ``meta.scores_from_cache`` (true/false) and ``meta.scores_cache_key``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from circuitkit.errors import CircuitkitError

log = logging.getLogger("circuitkit")

CACHE_ENV = "CIRCUITKIT_CACHE_DIR"
#: Bump when the cached files or the meaning of scores change.
CACHE_FORMAT = 1


def default_cache_dir() -> Path:
    """``$CIRCUITKIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/circuitkit``, else ``~/.cache/circuitkit``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "circuitkit"


def cache_dir_for(cfg: dict[str, Any]) -> Path | None:
    """The cache directory a run config asks for, or None when caching is off.

    A config without a ``cache`` key (a hand-made dict given to :func:`circuitkit.pipeline.run`) does not
    cache; the CLI's config sets ``cache: true``.
    """
    if not cfg.get("cache", False):
        return None
    given = cfg.get("cache_dir")
    return Path(str(given)).expanduser() if given else default_cache_dir()


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"


def attribution_key(
    *,
    weights_hash: str,
    data_hash: str,
    method: dict[str, Any],
    task: dict[str, Any] | None = None,
    seed: int = 0,
    device_type: str = "cpu",
    dtype: str = "",
    plugin_version: str = "",
    extra: dict[str, Any] | None = None,
) -> str:
    """The content hash naming one cache entry. ``extra``: run-level settings components may read
    (:attr:`circuitkit.interfaces.RunContext.extra`, e.g. a buffer precision)."""
    payload = {
        "format": CACHE_FORMAT,
        "circuitkit": _version("circuitkit"),
        "weights": weights_hash,
        "data": data_hash,
        "method": method,
        "task": task or {},
        "seed": seed,
        "device": device_type,
        "dtype": dtype,
        "plugin_version": plugin_version,
        "extra": extra or {},
    }
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def entry_path(cache_dir: str | Path, key: str) -> Path:
    return Path(cache_dir) / "scores" / key[:2] / f"{key}.json"


def cached_attribute(
    attributor: Any, model: Any, task: Any, data: Any, ctx: Any, cfg: dict[str, Any], meta: dict[str, Any], registry: Any = None
) -> Any:
    """``attributor.attribute(model, task, data, ctx)``, through the cache when ``cfg`` turns it on.

    Sets ``meta["scores_from_cache"]`` (and ``meta["scores_cache_key"]`` when caching). A cache that cannot
    be read or written never fails the run: the scores are computed (and the problem logged) instead.
    """
    from circuitkit.results import Scores

    cache_dir = cache_dir_for(cfg)
    meta["scores_from_cache"] = False
    if cache_dir is None:
        return attributor.attribute(model, task, data, ctx)
    ctx.cache_dir = str(cache_dir)
    method_cfg = dict(cfg.get("method") or {})
    plugin_version = ""
    if registry is not None:
        try:
            dist = registry.methods.get(method_cfg.get("name", "")).distribution
            plugin_version = f"{dist}=={_version(dist)}" if dist else ""
        except Exception:  # noqa: BLE001
            plugin_version = ""
    key = attribution_key(
        weights_hash=str(getattr(model, "weights_hash", "")),
        data_hash=data.content_hash(),
        method=method_cfg,
        task=dict(cfg.get("task") or {}),
        seed=int(getattr(ctx, "seed", 0)),
        device_type=torch.device(model.device).type,
        dtype=str(model.dtype),
        plugin_version=plugin_version,
        extra=dict(getattr(ctx, "extra", None) or {}),
    )
    meta["scores_cache_key"] = key
    path = entry_path(cache_dir, key)
    if path.is_file():
        try:
            scores = Scores.load(path, graph=model.graph)
            if scores.meta.get("cache_key") == key:
                meta["scores_from_cache"] = True
                log.info("Attribution scores loaded from the cache (%s); cache=false recomputes them.", path)
                return scores
            log.warning("Ignoring cache entry %s: it was written for another key.", path)
        except (CircuitkitError, KeyError, TypeError, ValueError) as e:
            log.warning("Ignoring unreadable cache entry %s (%s); recomputing.", path, e)
    scores = attributor.attribute(model, task, data, ctx)
    if bool(torch.isfinite(scores.values).all()):
        try:
            Scores(scores.graph, scores.values, {**scores.meta, "cache_key": key}).save(path)
        except CircuitkitError as e:
            log.warning(
                "Could not write the attribution cache (%s); the run goes on without it. Set cache_dir=... or cache=false.", e
            )
    return scores
