"""The plugin module named by the entry point: one hook implementation per kind of component it adds.

circuitkit calls each hook once, with the registry of that kind; ``registry.add(name, cls, config)``
registers a component and puts its config dataclass into Hydra's ConfigStore as ``<group>/<name>``, so
``method=eap_corrupted method.alpha=0.5`` works with no YAML file. Metrics and interventions have no
options: ``registry.add(name, cls)``, chosen with ``task.metric=NAME`` and ``intervention=NAME``.
"""

from __future__ import annotations

from circuitkit.api import ComponentRegistry, hookimpl
from circuitkit_example.answer_margin import AnswerMargin
from circuitkit_example.eap_corrupted import EAPCorrupted, EAPCorruptedConfig
from circuitkit_example.halfway import Halfway
from circuitkit_example.repeat_word import RepeatWord, RepeatWordConfig


@hookimpl
def circuitkit_register_methods(registry: ComponentRegistry) -> None:
    registry.add("eap_corrupted", EAPCorrupted, EAPCorruptedConfig)


@hookimpl
def circuitkit_register_tasks(registry: ComponentRegistry) -> None:
    registry.add("repeat_word", RepeatWord, RepeatWordConfig)


@hookimpl
def circuitkit_register_metrics(registry: ComponentRegistry) -> None:
    registry.add("answer_margin", AnswerMargin)  # a metric has no options: no config dataclass


@hookimpl
def circuitkit_register_interventions(registry: ComponentRegistry) -> None:
    registry.add("halfway", Halfway)  # intervention=halfway
