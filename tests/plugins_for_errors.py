"""Deliberately broken plugins for tests/test_errors.py."""

from dataclasses import dataclass

from circuitkit import hookimpl
from circuitkit.interfaces import Attributor, PluginConfig


@dataclass
class DupConfig(PluginConfig):
    pass


class Dup(Attributor):
    def attribute(self, model, task, data, ctx):
        raise AssertionError("never called")


def make_duplicate():
    class Duplicate:
        @hookimpl
        def circuitkit_register_methods(self, registry):
            registry.add("eap", Dup, DupConfig)

    return Duplicate()
