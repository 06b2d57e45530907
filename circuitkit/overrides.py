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


def _default_choices() -> dict[str, list[str]]:
    """group -> component names chosen by the defaults list of circuitkit's primary config."""
    from pathlib import Path

    import yaml

    conf = yaml.safe_load((Path(__file__).parent / "conf" / "config.yaml").read_text(encoding="utf-8"))
    out: dict[str, list[str]] = {}
    for item in conf.get("defaults", []):
        if isinstance(item, dict):
            for group, value in item.items():
                out[str(group)] = _names(value)
    return out


def blocked_choice(args: Iterable[str], block: Iterable[str]) -> str | None:
    """A message when the run would use a component of a blocked plugin (the defaults, or ``group=name``
    among ``args``), which Hydra would otherwise report only as a config it cannot find; else None."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from circuitkit.errors import CircuitkitError
    from circuitkit.plugins import BLOCK_ENV, blocked_from_env, build_registry, get_registry, make_plugin_manager

    blocked = set(block) | set(blocked_from_env())
    if not blocked:
        return None
    chosen = _default_choices()
    parser = OverridesParser.create()
    for arg in args:
        if arg.startswith("-") or "=" not in arg:
            continue
        try:
            (override,) = parser.parse_overrides([arg])
        except Exception:  # noqa: BLE001 - Hydra reports it
            continue
        group = override.key_or_group.lstrip("+~")
        if "." in group or override.value() is None:
            continue
        values = list(override.sweep_iterator()) if override.is_sweep_override() else [override.value()]
        chosen[group] = [n for v in values for n in _names(v)]
    available = get_registry(list(block))
    try:  # which plugin registers each name, when every plugin loads
        every = build_registry(make_plugin_manager(block=[]))
    except CircuitkitError:
        every = None
    for group, names in chosen.items():
        try:
            have = available.by_group(group)
        except KeyError:
            continue
        for name in names:
            if name in have.entries:
                continue
            owner = None
            if every is not None:
                try:
                    entry = every.by_group(group).entries.get(name)
                except KeyError:
                    entry = None
                owner = entry.plugin if entry is not None else None
            elif name in blocked:
                owner = name
            if owner in blocked:
                how = f"{BLOCK_ENV}" if owner in blocked_from_env() and owner not in set(block) else "plugins.block"
                others = ", ".join(sorted(have.entries)) or "(none)"
                return (
                    f"{group}={name} comes from plugin '{owner}', which is blocked ({how}). Choose another {group} "
                    f"(available: {others}), e.g. {group}={sorted(have.entries)[0] if have.entries else 'NAME'}, or unblock '{owner}'."
                )
    return None
