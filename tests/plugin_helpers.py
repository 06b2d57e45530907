"""Fake installed distributions for plugin tests: a dist-info directory (METADATA, entry_points.txt) and
modules, in a directory that a test puts on sys.path or PYTHONPATH. importlib.metadata finds them exactly
as it finds pip-installed ones."""

from __future__ import annotations

import importlib
import sys
from contextlib import contextmanager
from pathlib import Path

from circuitkit.plugins import clear_cache


def write_distribution(root: str | Path, dist: str, entry_points: dict[str, str], modules: dict[str, str]) -> Path:
    """Write distribution ``dist`` (version 0.1) declaring ``circuitkit`` entry points into ``root``."""
    root = Path(root)
    info = root / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[circuitkit]\n" + "".join(f"{k} = {v}\n" for k, v in entry_points.items()))
    for name, source in modules.items():
        (root / f"{name}.py").write_text(source)
    return root


@contextmanager
def on_sys_path(root: str | Path, modules: tuple[str, ...] = ()):
    """``root`` on sys.path (and the plugin cache cleared) inside the block; everything undone after."""
    sys.path.insert(0, str(root))
    importlib.invalidate_caches()
    clear_cache()
    try:
        yield
    finally:
        sys.path.remove(str(root))
        for name in [m for m in sys.modules if m.split(".")[0] in modules]:
            del sys.modules[name]
        importlib.invalidate_caches()
        clear_cache()


def empty_selector_plugin(name: str) -> str:
    """The source of a plugin module registering one selector, ``name``, that selects the empty circuit."""
    return f'''
from dataclasses import dataclass
from circuitkit import hookimpl
from circuitkit.interfaces import PluginConfig, Selector
from circuitkit.results import Circuit

@dataclass
class NothingConfig(PluginConfig):
    pass

class Nothing(Selector):
    def select(self, scores):
        return Circuit.empty(scores.graph)

@hookimpl
def circuitkit_register_selectors(registry):
    registry.add("{name}", Nothing, NothingConfig)
'''
