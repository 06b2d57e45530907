"""The plugin module named by the entry point: one hook implementation per kind of component it adds.

circuitkit calls each hook once, with the registry of that kind; ``registry.add(name, cls, config)``
registers a component and puts its config dataclass into Hydra's ConfigStore as ``<group>/<name>``, so
``method=eap_corrupted method.alpha=0.5`` works with no YAML file.
"""

from __future__ import annotations

from circuitkit import hookimpl
from circuitkit.registry import ComponentRegistry
from circuitkit_example.eap_corrupted import EAPCorrupted, EAPCorruptedConfig
from circuitkit_example.repeat_word import RepeatWord, RepeatWordConfig


@hookimpl
def circuitkit_register_methods(registry: ComponentRegistry) -> None:
    registry.add("eap_corrupted", EAPCorrupted, EAPCorruptedConfig)


@hookimpl
def circuitkit_register_tasks(registry: ComponentRegistry) -> None:
    registry.add("repeat_word", RepeatWord, RepeatWordConfig)
