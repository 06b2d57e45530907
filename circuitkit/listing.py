"""``python -m circuitkit.list`` (``circuitkit/list.py`` runs this module): the installed plugins, the
components each registers, and where each comes from.

Every entry point of the ``circuitkit`` group is loaded and its hooks are called on its own, so one
broken plugin is reported (and the others still listed) instead of stopping the listing. Then the
registry the CLI would use is built from all of them together, which also catches clashes between
plugins (two plugins registering the same name).

Usage::

    python -m circuitkit.list                 # table of plugins, then the choices of each config group
    python -m circuitkit.list -v              # also the module each entry point names
    python -m circuitkit.list --json          # machine-readable
    python -m circuitkit.list --block eap     # as with CIRCUITKIT_BLOCK_PLUGINS=eap / plugins.block=[eap]

The exit status is 1 when a plugin fails to load or the registry cannot be built (or is empty), else 0.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata

from circuitkit.errors import CircuitkitError, PluginError
from circuitkit.plugins import (
    BLOCK_ENV,
    ENTRY_POINT_GROUP,
    blocked_from_env,
    build_registry,
    check_hooks,
    get_registry,
    installed_entry_points,
    load_entry_point,
    new_plugin_manager,
)
from circuitkit.registry import CHOSEN_BY, KINDS


@dataclass
class PluginInfo:
    """One entry point of the ``circuitkit`` group.

    Attributes:
        name: the entry point's name (what blocking refers to).
        module: the module (or object) it names.
        distribution, version: the installed distribution that declares it.
        status: ``ok``, ``blocked`` or ``error``.
        error: why it failed (status ``error``).
        components: config group -> names registered (``{"method": ["eap"]}``).
    """

    name: str
    module: str
    distribution: str
    version: str
    status: str = "ok"
    error: str = ""
    components: dict[str, list[str]] = field(default_factory=dict)


def _inspect_one(ep: metadata.EntryPoint, dist: str) -> PluginInfo:
    """Load ``ep`` alone into a fresh plugin manager (the loader :func:`circuitkit.plugins.make_plugin_manager`
    uses) and call its registration hooks."""
    info = PluginInfo(ep.name, ep.value, dist, ep.dist.version if ep.dist else "")
    pm = new_plugin_manager()
    try:
        load_entry_point(pm, ep)
    except PluginError as e:
        cause = e.__cause__
        info.status, info.error = "error", f"import failed: {type(cause).__name__}: {cause}" if cause else str(e)
        return info
    try:
        check_hooks(pm)
        registry = build_registry(pm)
    except CircuitkitError as e:
        info.status, info.error = "error", str(e)
        return info
    for reg in registry.kinds.values():
        if reg.entries:
            info.components[reg.group] = reg.names()
    return info


def inspect_plugins(block: Iterable[str] = ()) -> list[PluginInfo]:
    """Every installed ``circuitkit`` entry point with its status and components, sorted by name."""
    blocked = set(blocked_from_env()) | set(block)
    out: list[PluginInfo] = []
    seen: dict[str, str] = {}
    for ep in installed_entry_points():
        dist = ep.dist.name if ep.dist else ""
        if ep.name in blocked:
            out.append(PluginInfo(ep.name, ep.value, dist, ep.dist.version if ep.dist else "", status="blocked"))
            continue
        if ep.name in seen:
            out.append(
                PluginInfo(
                    ep.name,
                    ep.value,
                    dist,
                    ep.dist.version if ep.dist else "",
                    status="error",
                    error=f"ignored: distribution '{seen[ep.name]}' declares a plugin of the same name, which is loaded instead",
                )
            )
            continue
        seen[ep.name] = dist
        out.append(_inspect_one(ep, dist))
    return out


def registry_status(block: Iterable[str] = ()) -> tuple[bool, str]:
    """Whether the registry the CLI would build from all unblocked plugins together builds, and why not."""
    try:
        registry = get_registry(list(block))
    except CircuitkitError as e:
        return False, str(e)
    n = sum(len(reg.entries) for reg in registry.kinds.values())
    return True, f"{n} components registered"


def _format(plugins: Sequence[PluginInfo], ok: bool, status: str, verbose: bool) -> str:
    lines = [f"circuitkit plugins (entry-point group '{ENTRY_POINT_GROUP}'): {len(plugins)} installed", ""]
    rows = [("PLUGIN", "DISTRIBUTION", "COMPONENTS")]
    for p in plugins:
        where = f"{p.distribution} {p.version}".strip() or "?"
        if p.status == "blocked":
            what = f"blocked ({BLOCK_ENV} / plugins.block)"
        elif p.status == "error":
            what = f"FAILED: {p.error}"
        else:
            what = ", ".join(f"{group}={n}" for group, names in p.components.items() for n in names) or "(registers nothing)"
        rows.append((p.name, where, what))
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    for r, info in zip(rows, [None, *plugins], strict=True):
        lines.append(f"  {r[0]:<{w0}}  {r[1]:<{w1}}  {r[2]}")
        if verbose and info is not None:
            lines.append(f"  {'':<{w0}}  {'':<{w1}}  module: {info.module}")
    lines.append("")
    if ok:
        lines.append("Choices per config group (python -m circuitkit GROUP=NAME):")
        by_group: dict[str, list[str]] = {}
        for p in plugins:
            for group, names in p.components.items():
                by_group.setdefault(group, []).extend(names)
        for kind, (group, _, _, combinable) in KINDS.items():
            names = sorted(by_group.get(group, []))
            hint = f"  ({group}=[a,b])" if combinable else f"  ({CHOSEN_BY[kind]}=NAME)" if kind in CHOSEN_BY else ""
            lines.append(f"  {group:<12} {', '.join(names) or '(none)'}{hint}")
        lines.append("")
    lines.append(("registry: " if ok else "registry: ERROR: ") + status)
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m circuitkit.list", description="List the installed circuitkit plugins and their components."
    )
    ap.add_argument("--json", action="store_true", help="print JSON: {'plugins': [...], 'registry': {'ok', 'status'}}")
    ap.add_argument("-v", "--verbose", action="store_true", help="also show the module each entry point names")
    ap.add_argument("--block", action="append", default=[], metavar="NAME[,NAME]", help=f"block plugins, as {BLOCK_ENV} does")
    args = ap.parse_args(argv)
    block = [n.strip() for b in args.block for n in b.split(",") if n.strip()]
    plugins = inspect_plugins(block)
    ok, status = registry_status(block)
    if args.json:
        print(json.dumps({"plugins": [asdict(p) for p in plugins], "registry": {"ok": ok, "status": status}}, indent=1))
    else:
        print(_format(plugins, ok, status, args.verbose))
    return 0 if ok and all(p.status != "error" for p in plugins) else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # e.g. piped into head
        sys.stderr.close()
        sys.exit(0)
