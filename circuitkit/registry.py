"""Name -> (class, config dataclass) registries, one per component kind, and their Hydra ConfigStore
entries.

Each config is stored under its kind's group (``method/eap``, ``task/ioi``...), so ``method=eap`` picks
it, an unknown name lists the choices, and a misspelt key (``method.ig_stepz=3``) is rejected by Hydra's
structured-config checks. Evaluators and reporters can be combined, so each is stored in its own package
(``evaluator.faithfulness``...) and chosen as a list: ``evaluator=[faithfulness,completeness]``.

Metrics and interventions have no options: they are registered as a class alone (``registry.add(name,
cls)``) and chosen by name in another option (:data:`CHOSEN_BY`: ``task.metric=NAME``, ``intervention=NAME``),
so they have no config group.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from circuitkit.errors import ConfigError, PluginError, choices_hint
from circuitkit.interfaces import Attributor, Evaluator, PluginConfig, Reporter, Selector, Task, TaskConfig
from circuitkit.interventions import Intervention
from circuitkit.metrics import Metric

#: kind -> (config group, base class, config base class (None: registered without a config), combinable)
KINDS: dict[str, tuple[str, type, type | None, bool]] = {
    "methods": ("method", Attributor, PluginConfig, False),
    "tasks": ("task", Task, TaskConfig, False),
    "selectors": ("selector", Selector, PluginConfig, False),
    "evaluators": ("evaluator", Evaluator, PluginConfig, True),
    "reporters": ("reporter", Reporter, PluginConfig, True),
    "metrics": ("metric", Metric, None, False),
    "interventions": ("intervention", Intervention, None, False),
}

#: the option that chooses a component of a kind registered without a config
CHOSEN_BY: dict[str, str] = {"metrics": "task.metric", "interventions": "intervention"}


def config_kinds() -> list[str]:
    """The kinds whose components have a config (a Hydra config group each)."""
    return [k for k, v in KINDS.items() if v[2] is not None]


@dataclass(frozen=True)
class Entry:
    """One registered component."""

    name: str
    cls: type
    config: type | None  # None for the kinds registered without a config (metrics, interventions)
    plugin: str  # the plugin (entry point) that registered it
    distribution: str = ""

    @property
    def options(self) -> type:
        """The config dataclass, for the kinds registered with one (TypeError for metrics and interventions)."""
        if self.config is None:
            raise TypeError(f"'{self.name}' ({self.cls.__name__}) is registered without a config")
        return self.config


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

    def add(self, name: str, cls: type, config: type | None = None) -> None:
        """Register ``cls`` (built as ``cls(config_instance)``) under ``name``; metrics and interventions are
        registered without a config (``registry.add(name, cls)``).

        Raises:
            PluginError: on a duplicate name, a class of the wrong kind, or a config that is not a
                dataclass subclassing the kind's config base (or any config for a kind without one).
        """
        group, base, cfg_base, _ = KINDS[self.kind]
        who = self.current_plugin or "<unknown plugin>"
        if not isinstance(name, str) or not name.isidentifier():
            raise PluginError(
                f"Plugin '{who}' registers a {group} named {name!r}: names must be Python identifiers (letters, digits, _)."
            )
        if name in self.entries:
            other = self.entries[name].plugin
            raise PluginError(
                f"Two plugins register a {group} named '{name}': '{other}' and '{who}'. Uninstall or block one "
                "(CIRCUITKIT_BLOCK_PLUGINS=name), or rename it."
            )
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise PluginError(
                f"Plugin '{who}' registers {group} '{name}' with {cls!r}, which is not a subclass of {base.__name__}."
            )
        if cfg_base is None:
            if config is not None:
                raise PluginError(
                    f"Plugin '{who}' registers {group} '{name}' with config {config!r}: a {group} has no options; "
                    f"register it as registry.add({name!r}, cls)."
                )
        elif not (dataclasses.is_dataclass(config) and isinstance(config, type) and issubclass(config, cfg_base)):
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
            raise ConfigError(
                f"Unknown {self.group}: {choices_hint(name, self.names())}. Choose one with {self.group}=NAME."
            ) from None

    def default_config(self, name: str) -> Any:
        entry = self.get(name)
        if entry.config is None:
            raise ConfigError(f"The {self.group} '{name}' has no options.")
        return entry.config(name=name)

    def build(self, name: str, config: Any = None) -> Any:
        """Instantiate component ``name`` from a config (dataclass, dict, DictConfig or None); a component
        registered without a config is built as ``cls()``."""
        entry = self.get(name)
        if entry.config is None:
            if config:
                raise ConfigError(f"The {self.group} '{name}' has no options, got {', '.join(sorted(dict(config)))}.")
            return entry.cls()
        cfg = to_dataclass(entry.options, config, name)
        return entry.cls(cfg)


def to_dataclass(cls: type, config: Any, name: str) -> Any:
    """Turn ``config`` (None, a dataclass instance, a mapping or an OmegaConf node) into ``cls``."""
    if isinstance(config, cls):
        assert dataclasses.is_dataclass(config) and not isinstance(config, type)
        if not config.name:  # type: ignore[attr-defined]
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
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    values = dict(config)
    values["name"] = name
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(
            f"Unknown option(s) {', '.join(unknown)} for '{name}' ({cls.__name__}); valid: {', '.join(sorted(known))}."
        )
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
        """No configurable component (method, task, selector...) is registered."""
        return not any(self.kinds[k].entries for k in config_kinds())

    def store_configs(self) -> None:
        """Put every registered config into Hydra's ConfigStore under its group."""
        from hydra.core.config_store import ConfigStore

        cs = ConfigStore.instance()
        for kind in config_kinds():
            reg = self.kinds[kind]
            combinable = KINDS[reg.kind][3]
            for name, entry in reg.entries.items():
                node = entry.options(name=name)
                if combinable:
                    cs.store(group=reg.group, name=name, node=node, package=f"{reg.group}.{name}")
                else:
                    cs.store(group=reg.group, name=name, node=node)
