"""Reading ``plugins.block`` from the command line before Hydra composes the config.

The CLI must build the plugin registry *before* composing: the registered config dataclasses are the
choices of the config groups. A plugin that fails to import, raises in its hook or registers a duplicate
name therefore has to be blocked before composition, so ``python -m circuitkit`` reads
``plugins.block=[name,...]`` from its arguments first, with Hydra's own override parser (it accepts
``plugins.block=name``, ``plugins.block=[a,b]``, ``+plugins.block=...``, ``++plugins.block=...`` and, in
multirun sweeps, the union of every swept list). The composed ``plugins.block`` then blocks the same
plugins in each job. A block list written only in a config file (``--config-dir``) is read after
composition: it hides the plugins' components from the run but cannot rescue a plugin that fails to load.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

KEY = "plugins.block"


def _names(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return [s.strip() for s in str(value).split(",") if s.strip()]


def plugin_block_from_overrides(args: Iterable[str]) -> list[str]:
    """The plugin names that ``plugins.block`` overrides among the command-line ``args`` block.

    Arguments that are not overrides (``-m``, ``--cfg job``...) and overrides Hydra cannot parse are
    ignored here (Hydra reports the latter itself).
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType

    parser = OverridesParser.create()
    names: list[str] = []
    for arg in args:
        if arg.startswith("-") or "=" not in arg or KEY not in arg:
            continue
        try:
            (override,) = parser.parse_overrides([arg])
        except Exception:  # noqa: BLE001 - Hydra reports bad overrides with its own message
            continue
        if override.key_or_group != KEY or override.type == OverrideType.DEL:
            continue
        if override.is_sweep_override():
            for value in override.sweep_iterator():
                names += _names(value)
        else:
            names += _names(override.value())
    return sorted(set(names))
