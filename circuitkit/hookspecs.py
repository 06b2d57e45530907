"""The plugin contract: every hook a circuitkit plugin can implement.

A plugin is a module (or object) registered under the ``circuitkit`` entry-point group whose functions
are marked with :data:`hookimpl` and named exactly like the specs below (a misspelt name is an error at
start-up). Each registration hook receives a :class:`~circuitkit.registry.ComponentRegistry` for one kind
of component and calls ``registry.add(name, cls, config_cls)`` (metrics and interventions have no options:
``registry.add(name, cls)``). Plugins import what they need from :mod:`circuitkit.api`.

Example::

    from circuitkit.api import hookimpl


    @hookimpl
    def circuitkit_register_methods(registry):
        registry.add("mymethod", MyAttributor, MyConfig)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from circuitkit.registry import ComponentRegistry

PROJECT = "circuitkit"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def circuitkit_register_methods(registry: ComponentRegistry) -> None:
    """Register attribution methods (:class:`~circuitkit.interfaces.Attributor` subclasses).

    Called once when the plugin manager is built, before any config is composed. The names become the
    choices of the ``method`` config group (``method=NAME``).
    """


@hookspec
def circuitkit_register_tasks(registry: ComponentRegistry) -> None:
    """Register tasks (:class:`~circuitkit.interfaces.Task` subclasses, configs subclass
    :class:`~circuitkit.interfaces.TaskConfig`). The names become the choices of ``task=NAME``."""


@hookspec
def circuitkit_register_selectors(registry: ComponentRegistry) -> None:
    """Register selectors (:class:`~circuitkit.interfaces.Selector` subclasses): ``selector=NAME``."""


@hookspec
def circuitkit_register_evaluators(registry: ComponentRegistry) -> None:
    """Register evaluators (:class:`~circuitkit.interfaces.Evaluator` subclasses):
    ``evaluator=[NAME,...]``; each chosen evaluator's numbers go into ``results.json`` under its name."""


@hookspec
def circuitkit_register_reporters(registry: ComponentRegistry) -> None:
    """Register reporters (:class:`~circuitkit.interfaces.Reporter` subclasses): ``reporter=[NAME]``.
    Reporters run after the result files are written and must never lose them."""


@hookspec
def circuitkit_register_metrics(registry: ComponentRegistry) -> None:
    """Register task metrics (:class:`~circuitkit.metrics.Metric` subclasses, registered without a config:
    ``registry.add(name, cls)``). The names become the choices of ``task.metric=NAME``; a metric declares
    what it reads (``Metric.reads``: the answer tokens' logits, their probabilities, or the full logits)."""


@hookspec
def circuitkit_register_interventions(registry: ComponentRegistry) -> None:
    """Register interventions (:class:`~circuitkit.interventions.Intervention` subclasses, registered without
    a config: ``registry.add(name, cls)``): what a removed edge carries in attribution and evaluation. The
    names become the choices of ``intervention=NAME``; each run prepares the chosen one with
    ``cls.prepare(model, data, batch_size)``."""
