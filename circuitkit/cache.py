"""Attribution cache: scores are reused when the model weights, the task data, the method and the code are the same.

A sweep over selectors or evaluators (``-m selector.n_edges=100,200,500``) then computes the scores once.
The key is a hash of:

- the model's weights hash, its dtype and the device type;
- the task data's content hash (token ids and answers) and the task's options;
- the method's options (every field of its config, defaults included), the run seed and the run-level
  settings a method reads (:func:`run_settings`: intervention, buffer precision, positions per pass);
- the code: the source of every ``.py`` file of the circuitkit package (engine, attribution, model,
  interventions, graph, data, ...), the source of the package (or single module) that defines the method's
  class and the task's class (and their base classes outside circuitkit and the standard library: for the
  builtin plugins, every file of ``circuitkit_plugins``), the installed versions of circuitkit, of the
  method's distribution, of torch, transformers and transformer_lens.

So an edited method, task or core file, in an editable install or a plugin under development, never gets
the scores of the code before the edit. Source is read once per process for the core and once per class
object for plugins: a module edited but not re-imported keeps its old hash, which is the code that runs.
A class without a source file (typed into a notebook) is keyed by its source where :mod:`inspect` finds
it, else by a token of the process, so it reuses scores only within that process.
A package with more than :data:`MAX_PACKAGE_FILES` ``.py`` files contributes only the defining module.
Entries are ``scores.json`` files written atomically, so concurrent jobs of a sweep can share one cache
directory. To clear the cache delete its directory (``rm -rf ~/.cache/circuitkit``, or the directory
``$CIRCUITKIT_CACHE_DIR`` / ``cache_dir`` names); ``cache=false`` turns it off for one run.

Settings (the shipped CLI config turns the cache on)::

    cache: true            # cache=false turns it off
    cache_dir: null        # default: $CIRCUITKIT_CACHE_DIR, else ~/.cache/circuitkit

``results.json`` records ``meta.scores_from_cache`` (true/false) and ``meta.scores_cache_key``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import json
import logging
import os
import sys
import uuid
from pathlib import Path
from typing import Any

import torch

from circuitkit.errors import CircuitkitError

log = logging.getLogger("circuitkit")

CACHE_ENV = "CIRCUITKIT_CACHE_DIR"
#: Bump when the cached files or the meaning of scores change.
CACHE_FORMAT = 2
#: A plugin package with more ``.py`` files than this contributes only the module defining the class.
MAX_PACKAGE_FILES = 500
#: Distributions whose versions are part of every key (they compute the model's forward and gradients).
KEY_DISTRIBUTIONS = ("circuitkit", "torch", "transformers", "transformer_lens")


def default_cache_dir() -> Path:
    """``$CIRCUITKIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/circuitkit``, else ``~/.cache/circuitkit``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "circuitkit"


def cache_dir_for(cache: bool, cache_dir: str | None = None) -> Path | None:
    """The cache directory a run's ``cache`` and ``cache_dir`` ask for, or None when caching is off.

    A config given to :func:`circuitkit.pipeline.run` without ``cache`` does not cache
    (:class:`circuitkit.config.RunConfig`); the CLI's config sets ``cache: true``.
    """
    if not cache:
        return None
    return Path(str(cache_dir)).expanduser() if cache_dir else default_cache_dir()


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"


def source_hash(files: list[Path], root: Path | None = None) -> str:
    """sha256 over the files' names (relative to ``root``) and bytes, in sorted order."""
    h = hashlib.sha256()
    for f in sorted(files):
        name = str(f.relative_to(root)) if root is not None else str(f)
        h.update(name.encode() + b"\0")
        try:
            h.update(f.read_bytes())
        except OSError:
            h.update(b"<unreadable>")
        h.update(b"\0")
    return h.hexdigest()[:32]


def _py_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*.py") if "__pycache__" not in p.parts]


@functools.lru_cache(maxsize=1)
def core_code_hash() -> str:
    """Hash of every ``.py`` file of the circuitkit package (read once per process)."""
    root = Path(__file__).resolve().parent
    return source_hash(_py_files(root), root)


def _module_sources(cls: type) -> tuple[str, str]:
    """``(label, hash)`` of the code ``cls`` runs: its top-level package's ``.py`` files (at most
    :data:`MAX_PACKAGE_FILES`), else its module's file, else (a class typed into a notebook) its source."""
    module_name = cls.__module__
    top = module_name.split(".")[0]
    pkg = sys.modules.get(top)
    paths = [Path(p) for p in getattr(pkg, "__path__", None) or []]
    if paths:
        files = [f for p in paths for f in _py_files(p)]
        if len(files) <= MAX_PACKAGE_FILES:
            return top, source_hash(files, paths[0].parent) if len(paths) == 1 else source_hash(files)
    mod = sys.modules.get(module_name)
    try:
        file = inspect.getsourcefile(mod) if mod is not None else None
    except TypeError:
        file = None
    if file and Path(file).is_file():
        return module_name, source_hash([Path(file)])
    return f"{module_name}.{cls.__qualname__}", hashlib.sha256(_class_source(cls).encode()).hexdigest()[:32]


def _class_source(cls: type) -> str:
    """The source of a class without a module file (typed into a notebook): the class's, else its functions'
    (notebooks keep cell sources where :mod:`inspect` finds them); else a token of this process and class,
    so such a class never reuses scores computed in another process."""
    try:
        return inspect.getsource(cls)
    except (OSError, TypeError):
        pass
    parts = []
    for name, attr in sorted(vars(cls).items()):
        func = getattr(attr, "__func__", attr)
        if inspect.isfunction(func):
            try:
                parts.append(f"{name}:{inspect.getsource(func)}")
            except (OSError, TypeError):
                return f"no-source:{os.getpid()}:{id(cls)}:{uuid.uuid4()}"
    return "\n".join(parts) if parts else f"no-source:{os.getpid()}:{id(cls)}:{uuid.uuid4()}"


_CLASS_CODE: dict[type, dict[str, str]] = {}


def _class_code(cls: type) -> dict[str, str]:
    """Source hashes of the packages defining ``cls`` and its bases, outside circuitkit and the standard
    library. Computed once per class object, so a re-imported (reloaded) module is hashed again."""
    if cls not in _CLASS_CODE:
        out: dict[str, str] = {}
        for c in cls.__mro__:
            top = c.__module__.split(".")[0]
            if top in ("builtins", "circuitkit") or top in sys.stdlib_module_names:
                continue
            label, digest = _module_sources(c)
            out[label] = digest
        _CLASS_CODE[cls] = out
    return _CLASS_CODE[cls]


def code_hashes(*objects: Any) -> dict[str, str]:
    """What the cache key records of the code: circuitkit's source and the source of the packages that
    define ``objects``' classes (a wrapped task's too), plus the versions of :data:`KEY_DISTRIBUTIONS`."""
    out = {"circuitkit-source": core_code_hash()}
    out.update({f"{d}-version": _version(d) for d in KEY_DISTRIBUTIONS})
    seen: set[int] = set()
    todo = list(objects)
    while todo:
        obj = todo.pop()
        if obj is None or id(obj) in seen:
            continue
        seen.add(id(obj))
        out.update(_class_code(type(obj)))
        todo.append(getattr(obj, "wrapped", None))
    return out


def _options(obj: Any, given: dict[str, Any] | None) -> dict[str, Any]:
    """The options a component runs with: its config's fields (defaults included) over the given ones."""
    out = dict(given or {})
    config = getattr(obj, "config", None)
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        out.update({k: v for k, v in dataclasses.asdict(config).items() if not (k == "name" and not v)})
    return out


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
    code: dict[str, str] | None = None,
) -> str:
    """The content hash naming one cache entry. ``extra``: run-level settings components may read
    (:func:`run_settings`, e.g. a buffer precision); ``code``: source hashes and versions (:func:`code_hashes`)."""
    payload = {
        "format": CACHE_FORMAT,
        "circuitkit": _version("circuitkit"),
        "code": code or {},
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


def run_settings(ctx: Any) -> dict[str, Any]:
    """The run-level settings of ``ctx`` that change a method's scores (part of the key): the buffer
    precision, the intervention and, when set, the positions per gradient pass."""
    iv = getattr(ctx, "intervention", None)
    out: dict[str, Any] = {
        "buffer_dtype": getattr(ctx, "buffer_dtype", None),
        "intervention": "patching" if iv is None else getattr(iv, "kind", None) or type(iv).__qualname__,
    }
    if getattr(ctx, "positions_per_pass", None) is not None:
        out["positions_per_pass"] = ctx.positions_per_pass
    return out


def cached_attribute(
    attributor: Any, model: Any, task: Any, data: Any, ctx: Any, cache_dir: str | Path | None, registry: Any = None
) -> tuple[Any, dict[str, Any]]:
    """``attributor.attribute(model, task, data, ctx)``, through the cache in ``cache_dir`` (None: no cache).

    Returns the scores and what results.json records about the cache: ``scores_from_cache`` (and
    ``scores_cache_key`` when caching). A cache that cannot be read or written never fails the run: the
    scores are computed (and the problem logged) instead.
    """
    from circuitkit.results import Scores

    if cache_dir is None:
        return attributor.attribute(model, task, data, ctx), {"scores_from_cache": False}
    method_cfg = _options(attributor, None)
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
        task=_options(getattr(task, "wrapped", task), None),
        seed=int(getattr(ctx, "seed", 0)),
        device_type=torch.device(model.device).type,
        dtype=str(model.dtype),
        plugin_version=plugin_version,
        extra=run_settings(ctx),
        code=code_hashes(attributor, task),
    )
    info: dict[str, Any] = {"scores_from_cache": False, "scores_cache_key": key}
    path = entry_path(cache_dir, key)
    if path.is_file():
        try:
            scores = Scores.load(path, graph=model.graph)
            if scores.meta.get("cache_key") == key:
                log.info("Attribution scores loaded from the cache (%s); cache=false recomputes them.", path)
                return scores, {**info, "scores_from_cache": True}
            log.warning("Ignoring cache entry %s: it was written for another key.", path)
        except (CircuitkitError, KeyError, TypeError, ValueError) as e:
            log.warning("Ignoring unreadable cache entry %s (%s); recomputing.", path, e)
    scores = attributor.attribute(model, task, data, ctx)
    if bool(torch.isfinite(scores.values).all()):
        try:
            # dataclasses.replace keeps the level and the node / neuron scores.
            dataclasses.replace(scores, meta={**scores.meta, "cache_key": key}).save(path)
        except CircuitkitError as e:
            log.warning(
                "Could not write the attribution cache (%s); the run goes on without it. Set cache_dir=... or cache=false.", e
            )
    return scores, info
