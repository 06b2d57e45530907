"""Every registered component runs its kind's contract suite (circuitkit.testing), exactly as a third-party
plugin's tests would. The suites are generated from the registry, so components added later are covered
without touching this file."""

import functools
import json

import pytest

from circuitkit.plugins import get_registry
from circuitkit.registry import KINDS
from circuitkit.testing import CONTRACTS, contract_class


class _CustomTaskFile:
    """The ``custom`` task reads a file: give it one."""

    @pytest.fixture(scope="class")
    @classmethod
    def ck_options(cls, tmp_path_factory):
        rows = [
            {
                "clean": "When Mary and John went to the store, John gave a drink to",
                "corrupted": "When Mary and John went to the store, Anne gave a drink to",
                "correct": " Mary",
                "incorrect": " John",
            },
            {"clean": "The nurse said that", "corrupted": "The pilot said that", "correct": [" she"], "incorrect": [" he"]},
        ] * 3
        path = tmp_path_factory.mktemp("custom-task") / "data.jsonl"
        path.write_text("\n".join(json.dumps(r) for r in rows))
        return {"path": str(path)}


class _Threshold:
    """The ``threshold`` selector has no default threshold: one in the range of the contract's random scores
    (``randn * 1e-3``), which keeps about a third of the edges."""

    @pytest.fixture(scope="class")
    @classmethod
    def ck_options(cls):
        return {"threshold": 1e-3}


#: (kind, name) -> extra base classes / attributes for components that need more than their defaults
EXTRA_BASES = {("tasks", "custom"): (_CustomTaskFile,), ("selectors", "threshold"): (_Threshold,)}
#: known contract violations: (kind, name, test) -> reason. Strict: fixing the plugin fails the xfail.
KNOWN_VIOLATIONS: dict = {}


def _expect_failure(test, reason):
    """A copy of the contract's test marked xfail for one class only (marks on the original are shared)."""

    @functools.wraps(test)
    def wrapper(self, *args, **kwargs):
        return test(self, *args, **kwargs)

    return pytest.mark.xfail(reason=reason, strict=True)(wrapper)


GENERATED = {}
_registry = get_registry()
for _kind, _contract in CONTRACTS.items():
    for _name in _registry.kinds[_kind].names():
        _attrs = {"__module__": __name__}
        for (_k, _n, _test), _reason in KNOWN_VIOLATIONS.items():
            if (_k, _n) == (_kind, _name):
                _attrs[_test] = _expect_failure(getattr(_contract, _test), _reason)
        _cls = contract_class(_kind, _name, **_attrs)
        if (_kind, _name) in EXTRA_BASES:
            _cls = type(_cls.__name__, (*EXTRA_BASES[(_kind, _name)], _cls), {"__module__": __name__})
        GENERATED[(_kind, _name)] = _cls
        globals()[_cls.__name__] = _cls


def test_every_kind_has_a_contract():
    assert set(CONTRACTS) == set(KINDS)


def test_every_registered_component_has_a_suite():
    registry = get_registry()
    registered = {(k, n) for k in KINDS for n in registry.kinds[k].names()}
    assert registered == set(GENERATED)
    assert all(globals()[c.__name__] is c and c.__name__.startswith("Test") for c in GENERATED.values())


def test_gpt2_small_has_32491_edges():
    from circuitkit.testing import gpt2_small_graph

    assert gpt2_small_graph().n_edges == 32_491


def test_the_pytest_plugin_is_installed(request):
    assert request.config.pluginmanager.has_plugin("circuitkit"), (
        "circuitkit's pytest plugin (pytest11 entry point) is not loaded: reinstall with pip install -e ."
    )
