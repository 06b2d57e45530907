"""Name -> (class, config dataclass) registries, one per component kind, and their Hydra ConfigStore
entries.

Each config is stored under its kind's group (``method/eap``, ``task/ioi``...), so ``method=eap`` picks
it, an unknown name lists the choices, and a misspelt key (``method.ig_stepz=3``) is rejected by Hydra's
structured-config checks. Evaluators and reporters can be combined, so each is stored in its own package
(``evaluator.faithfulness``...) and chosen as a list: ``evaluator=[faithfulness,completeness]``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from circuitkit.errors import ConfigError, PluginError, choices_hint
from circuitkit.interfaces import Attributor, Evaluator, PluginConfig, Reporter, Selector, Task, TaskConfig

#: kind -> (config group, base class, config base class, combinable)
KINDS: dict[str, tuple[str, type, type, bool]] = {
    "methods": ("method", Attributor, PluginConfig, False),
    "tasks": ("task", Task, TaskConfig, False),
    "selectors": ("selector", Selector, PluginConfig, False),
    "evaluators": ("evaluator", Evaluator, PluginConfig, True),
    "reporters": ("reporter", Reporter, PluginConfig, True),
}


@dataclass(frozen=True)
class Entry:
    """One registered component."""

    name: str
    cls: type
    config: type
    plugin: str  # the plugin (entry point) that registered it
    distribution: str = ""


@dataclass
class ComponentRegistry:
    """The components of one kind. Plugins call :meth:`add`."""

    kind: str
    entries: dict[str, Entry] = field(default_factory=dict)
    current_plugin: str = ""
    current_distribution: str = ""

    @property
    def group(self) -> str:
        return KINDS[self.kind][0]

    def add(self, name: str, cls: type, config: type) -> None:
        """Register ``cls`` (built as ``cls(config_instance)``) under ``name``.

        Raises:
            PluginError: on a duplicate name, a class of the wrong kind, or a config that is not a
                dataclass subclassing the kind's config base.
        """
        group, base, cfg_base, _ = KINDS[self.kind]
        who = self.current_plugin or "<unknown plugin>"
        if not isinstance(name, str) or not name.isidentifier():
            raise PluginError(f"Plugin '{who}' registers a {group} named {name!r}: names must be Python identifiers (letters, digits, _).")
        if name in self.entries:
            other = self.entries[name].plugin
            raise PluginError(
                f"Two plugins register a {group} named '{name}': '{other}' and '{who}'. Uninstall or block one "
                "(CIRCUITKIT_BLOCK_PLUGINS=name), or rename it."
            )
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise PluginError(f"Plugin '{who}' registers {group} '{name}' with {cls!r}, which is not a subclass of {base.__name__}.")
        if not (dataclasses.is_dataclass(config) and isinstance(config, type) and issubclass(config, cfg_base)):
            raise PluginError(
                f"Plugin '{who}' registers {group} '{name}' with config {config!r}: it must be a dataclass "
                f"subclassing circuitkit.interfaces.{cfg_base.__name__}."
            )
        self.entries[name] = Entry(name, cls, config, who, self.current_distribution)

    def names(self) -> list[str]:
        return sorted(self.entries)

    def get(self, name: str) -> Entry:
        try:
            return self.entries[name]
        except KeyError:
            raise ConfigError(f"Unknown {self.group}: {choices_hint(name, self.names())}. Choose one with {self.group}=NAME.") from None

    def default_config(self, name: str) -> Any:
        entry = self.get(name)
        return entry.config(name=name)

    def build(self, name: str, config: Any = None) -> Any:
        """Instantiate component ``name`` from a config (dataclass, dict, DictConfig or None)."""
        entry = self.get(name)
        cfg = to_dataclass(entry.config, config, name)
        return entry.cls(cfg)


def to_dataclass(cls: type, config: Any, name: str) -> Any:
    """Turn ``config`` (None, a dataclass instance, a mapping or an OmegaConf node) into ``cls``."""
    if isinstance(config, cls):
        if not config.name:
            config = dataclasses.replace(config, name=name)
        return config
    if config is None:
        return cls(name=name)
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(config, DictConfig):
            config = OmegaConf.to_container(config, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    if dataclasses.is_dataclass(config):
        config = dataclasses.asdict(config)
    values = dict(config)
    values["name"] = name
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"Unknown option(s) {', '.join(unknown)} for '{name}' ({cls.__name__}); valid: {', '.join(sorted(known))}.")
    return cls(**values)


class Registry:
    """All components, by kind: ``registry.methods``, ``registry.tasks``..."""

    def __init__(self) -> None:
        self.kinds = {k: ComponentRegistry(k) for k in KINDS}

    def __getattr__(self, kind: str) -> ComponentRegistry:
        kinds = self.__dict__.get("kinds", {})
        if kind in kinds:
            return kinds[kind]
        raise AttributeError(kind)

    def by_group(self, group: str) -> ComponentRegistry:
        for reg in self.kinds.values():
            if reg.group == group:
                return reg
        raise KeyError(group)

    def is_empty(self) -> bool:
        return not any(reg.entries for reg in self.kinds.values())

    def store_configs(self) -> None:
        """Put every registered config into Hydra's ConfigStore under its group."""
        from hydra.core.config_store import ConfigStore

        cs = ConfigStore.instance()
        for reg in self.kinds.values():
            combinable = KINDS[reg.kind][3]
            for name, entry in reg.entries.items():
                node = entry.config(name=name)
                if combinable:
                    cs.store(group=reg.group, name=name, node=node, package=f"{reg.group}.{name}")
                else:
                    cs.store(group=reg.group, name=name, node=node)
