"""The plugin manager: hookspecs, entry points, blocking by name, and the registry they fill.

Plugins are found through the ``circuitkit`` entry-point group (builtin ones too). A plugin can be blocked
with ``CIRCUITKIT_BLOCK_PLUGINS=name1,name2`` (or ``plugins.block=[...]`` in the config).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from importlib import metadata
from typing import Any

import pluggy

from circuitkit import hookspecs
from circuitkit.errors import CircuitkitError, PluginError
from circuitkit.registry import KINDS, Registry

ENTRY_POINT_GROUP = "circuitkit"
BLOCK_ENV = "CIRCUITKIT_BLOCK_PLUGINS"

_CACHE: dict[tuple[str, ...], Registry] = {}


def blocked_from_env() -> list[str]:
    return [n.strip() for n in os.environ.get(BLOCK_ENV, "").split(",") if n.strip()]


#: The plugins a run blocks with ``plugins.block`` (set by the pipeline for the run it executes), so that
#: components looking up other components (a curve's selector, a transfer's tasks) see the run's registry.
_RUN_BLOCK: tuple[str, ...] = ()


@contextlib.contextmanager
def run_block(block: Iterable[str]) -> Iterator[None]:
    """During the context, :func:`get_registry` called without a list leaves out ``block`` (a run's
    ``plugins.block``); afterwards the previous setting is back."""
    global _RUN_BLOCK
    saved, _RUN_BLOCK = _RUN_BLOCK, tuple(block)
    try:
        yield
    finally:
        _RUN_BLOCK = saved


def new_plugin_manager() -> pluggy.PluginManager:
    """An empty plugin manager that knows circuitkit's hookspecs."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    return pm


def installed_entry_points() -> list[metadata.EntryPoint]:
    """Every entry point of the ``circuitkit`` group, sorted by name (a name declared by two distributions
    appears twice; the first one is loaded)."""
    try:
        eps = metadata.entry_points(group=ENTRY_POINT_GROUP)
    except Exception as e:  # noqa: BLE001
        raise PluginError(f"Could not read the installed plugins' entry points: {e}") from e
    return sorted(eps, key=lambda e: e.name)


def load_entry_point(pm: pluggy.PluginManager, ep: metadata.EntryPoint) -> None:
    """Load the plugin(s) named ``ep.name`` of the ``circuitkit`` group into ``pm`` through pluggy
    (``load_setuptools_entrypoints(group, name=...)``, which skips a blocked or already loaded name).

    Raises:
        PluginError: naming the plugin, its module and distribution when it fails to import (the
            original exception is the error's ``__cause__``).
    """
    try:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP, name=ep.name)
    except Exception as e:  # noqa: BLE001 - any import failure of a plugin
        dist = ep.dist.name if ep.dist else "?"
        raise PluginError(
            f"Plugin '{ep.name}' ({ep.value}, from distribution '{dist}') failed to import: {type(e).__name__}: {e}. "
            f"Fix or uninstall it, or block it with {BLOCK_ENV}={ep.name}."
        ) from e


def check_hooks(pm: pluggy.PluginManager) -> None:
    """``pm.check_pending()``, with an error that lists the hook names (a misspelt hook is caught here)."""
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as e:
        raise PluginError(
            f"{e}. Hook names must be one of: {', '.join(sorted(n for n in dir(hookspecs) if n.startswith('circuitkit_')))}."
        ) from None


def plugin_distributions(pm: pluggy.PluginManager) -> dict[str, str]:
    """Plugin name -> the distribution that installed it, for the plugins loaded from entry points."""
    return {name: dist.metadata["name"] for plugin, dist in pm.list_plugin_distributions() if (name := pm.get_name(plugin))}


def make_plugin_manager(block: Iterable[str] = (), extra_plugins: Iterable[Any] = ()) -> pluggy.PluginManager:
    """Build a plugin manager with every installed ``circuitkit`` entry point, minus the blocked ones
    (never imported), plus ``extra_plugins`` (registered directly, e.g. in tests)."""
    pm = new_plugin_manager()
    for name in block:
        pm.set_blocked(name)
    for ep in installed_entry_points():
        if not (pm.is_blocked(ep.name) or pm.has_plugin(ep.name)):
            load_entry_point(pm, ep)
    for plugin in extra_plugins:
        pm.register(plugin)
    check_hooks(pm)
    return pm


def build_registry(pm: pluggy.PluginManager) -> Registry:
    """Call every registration hook, one plugin at a time so errors name the plugin."""
    registry = Registry()
    dists = plugin_distributions(pm)
    for kind in KINDS:
        reg = registry.kinds[kind]
        hook_name = f"circuitkit_register_{kind}"
        for impl in reversed(getattr(pm.hook, hook_name).get_hookimpls()):
            reg.current_plugin = impl.plugin_name
            reg.current_distribution = dists.get(impl.plugin_name, "")
            try:
                impl.function(registry=reg)
            except CircuitkitError:
                raise
            except Exception as e:  # noqa: BLE001
                raise PluginError(
                    f"Plugin '{impl.plugin_name}' raised in {hook_name}: {type(e).__name__}: {e}. Fix or uninstall it, or "
                    f"block it with {BLOCK_ENV}={impl.plugin_name}."
                ) from e
        reg.current_plugin = ""
        reg.current_distribution = ""
    return registry


def get_registry(block: Iterable[str] | None = None, *, require: bool = True) -> Registry:
    """The registry of all installed, unblocked plugins (cached per block list). Without ``block``, the
    current run's ``plugins.block`` (:func:`run_block`) applies."""
    names = tuple(sorted(set(blocked_from_env()) | set(_RUN_BLOCK if block is None else block)))
    if names not in _CACHE:
        _CACHE[names] = build_registry(make_plugin_manager(names))
    registry = _CACHE[names]
    if require and registry.is_empty():
        raise PluginError(
            "No circuitkit plugins are registered: no methods, tasks or selectors are available. Install "
            "circuitkit with its builtin plugins (pip install -e . from the repository, or pip install circuitkit), "
            f"and check that {BLOCK_ENV} does not block them."
        )
    return registry


def clear_cache() -> None:
    _CACHE.clear()
