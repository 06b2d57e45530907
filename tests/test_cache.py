"""The attribution cache: a second run with the same model, data and method reuses the scores."""

from __future__ import annotations

import dataclasses
import importlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import circuitkit as ck
from circuitkit import cache
from circuitkit.pipeline import run
from circuitkit.results import Circuit, Scores


def config(tmp_path, **top):
    cfg = {
        "seed": 0,
        "progress": False,
        "cache": True,
        "cache_dir": str(tmp_path / "cache"),
        "method": {"name": "eap"},
        "task": {"name": "greater_than", "n_examples": 4},
        "selector": {"name": "top_n", "n_edges": 10},
        "evaluator": {"faithfulness": {}},
    }
    cfg.update(top)
    return cfg


def meta(run_dir):
    return json.loads((run_dir / "results.json").read_text())["meta"]


def test_second_run_hits_the_cache_and_a_broken_entry_is_recomputed(tiny_model, tmp_path, caplog):
    first = run(config(tmp_path), tmp_path / "a", model=tiny_model)
    # A different selector (what a selector sweep changes) reuses the scores.
    second = run(config(tmp_path, selector={"name": "top_n", "n_edges": 20}), tmp_path / "b", model=tiny_model)
    assert meta(tmp_path / "a")["scores_from_cache"] is False
    assert meta(tmp_path / "b")["scores_from_cache"] is True
    assert meta(tmp_path / "a")["scores_cache_key"] == meta(tmp_path / "b")["scores_cache_key"]
    assert second.scores.values.tolist() == first.scores.values.tolist()
    assert json.loads((tmp_path / "b" / "results.json").read_text())["status"] == "complete"
    (entry,) = (tmp_path / "cache").rglob("*.json")
    assert not list((tmp_path / "cache").rglob("*.tmp"))

    entry.write_text('{"meta": {')  # a truncated entry is ignored, recomputed and rewritten
    run(config(tmp_path, cache=False), tmp_path / "c", model=tiny_model)
    assert meta(tmp_path / "c")["scores_from_cache"] is False and "scores_cache_key" not in meta(tmp_path / "c")
    run(config(tmp_path), tmp_path / "d", model=tiny_model)
    assert meta(tmp_path / "d")["scores_from_cache"] is False
    assert "recomputing" in caplog.text
    assert json.loads(entry.read_text())["meta"]["cache_key"] == meta(tmp_path / "d")["scores_cache_key"]


def test_cache_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "env"))
    assert cache.cache_dir_for(True) == tmp_path / "env"
    assert cache.cache_dir_for(True, str(tmp_path / "cfg")) == tmp_path / "cfg"
    assert cache.cache_dir_for(False, str(tmp_path / "cfg")) is None
    monkeypatch.delenv(cache.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.default_cache_dir() == tmp_path / "xdg" / "circuitkit"


@pytest.mark.parametrize("change", ["weights", "data", "method", "task", "seed", "device", "dtype", "extra", "code"])
def test_key_changes_with_every_input(change):
    base = dict(
        weights_hash="w",
        data_hash="d",
        method={"name": "eap"},
        task={"name": "ioi"},
        seed=0,
        device_type="cpu",
        dtype="torch.float32",
        code={"circuitkit-source": "a"},
    )
    other = dict(base)
    other.update(
        {
            "weights": {"weights_hash": "w2"},
            "data": {"data_hash": "d2"},
            "method": {"method": {"name": "eap_ig", "ig_steps": 5}},
            "seed": {"seed": 1},
            "device": {"device_type": "cuda"},
            "extra": {"extra": {"buffer_dtype": "bfloat16"}},
            "task": {"task": {"name": "ioi", "metric": "prob_diff"}},
            "dtype": {"dtype": "torch.float64"},
            "code": {"code": {"circuitkit-source": "b"}},
        }[change]
    )
    assert cache.attribution_key(**base) != cache.attribution_key(**other)
    assert cache.attribution_key(**base) == cache.attribution_key(**dict(base))


# ----- what the key covers, checked through cached_attribute ------------------------------------------


HAND_ROWS = [
    {
        "clean": "When Mary and John went to the store, John gave a drink to",
        "corrupted": "When Mary and John went to the store, Anne gave a drink to",
        "correct": " Mary",
        "incorrect": " John",
    },
    {"clean": "The key to the cabinets", "corrupted": "The keys to the cabinets", "correct": " is", "incorrect": " are"},
    {"clean": "Paris, the capital of", "corrupted": "London, the capital of", "correct": " France", "incorrect": " England"},
    {"clean": "The nurse said that", "corrupted": "The pilot said that", "correct": " she", "incorrect": " he"},
]


class ModelView:
    """The model with some attributes replaced (e.g. the dtype alone, keeping the weights hash)."""

    def __init__(self, model, **replaced):
        self._model, self._replaced = model, replaced

    def __getattr__(self, name):
        return self._replaced[name] if name in self._replaced else getattr(self._model, name)


@dataclass
class FixedConfig(ck.PluginConfig):
    value: float = 1.0


class Fixed(ck.Attributor):
    """Scores every edge ``config.value`` and counts its calls."""

    calls = 0

    def attribute(self, model, task, data, ctx):
        Fixed.calls += 1
        return Scores(model.graph, torch.full((model.graph.n_edges,), self.config.value), {"method": "fixed"})


def lookup(tmp_path, attributor, model, task, data, ctx=None):
    """(scores, whether they came from the cache) for one cached_attribute call."""
    ctx = ctx or ck.RunContext(batch_size=8, progress=False)
    scores, info = cache.cached_attribute(attributor, model, task, data, ctx, tmp_path / "cache")
    return scores, info["scores_from_cache"]


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture
def custom(tiny_model, tmp_path):
    """A custom task over a file, and a function building (task, data) from the file as it is now."""
    path = tmp_path / "pairs.jsonl"
    write_rows(path, HAND_ROWS)

    def build(**options):
        task = ck.build("tasks", "custom", path=str(path), **options)
        return task, task.build(tiny_model.tokenizer)

    return path, build


@pytest.mark.parametrize(
    "change",
    ["ig_steps", "ig_points", "level", "task options", "task data", "seed", "intervention", "buffer precision", "nothing"],
)
def test_every_input_of_the_scores_is_in_the_key(tiny_model, tmp_path, custom, change):
    """A real EAP-IG attribution is cached, then one thing changes: the cache misses and the fresh scores are
    returned (except when nothing changed: freshly built but equal components hit)."""
    path, build = custom
    base = {"ig_steps": 2}
    task, data = build()
    first, hit = lookup(tmp_path, ck.build("methods", "eap_ig", **base), tiny_model, task, data)
    assert not hit
    opts, ctx = dict(base), ck.RunContext(batch_size=8, progress=False)
    if change in ("ig_steps", "ig_points", "level"):
        opts[change] = {"ig_steps": 3, "ig_points": "left", "level": "node"}[change]
    elif change == "task options":
        task, data2 = build(metric="prob_diff")
        assert data2.content_hash() == data.content_hash()  # the same data: only the option differs
        data = data2
    elif change == "task data":
        pronoun = {
            "clean": "She went to the park and then",
            "corrupted": "He went to the park and then",
            "correct": " she",
            "incorrect": " he",
        }
        write_rows(path, [*HAND_ROWS[:3], pronoun])  # same options, one row of the file replaced
        task, data = build()
    elif change == "seed":
        ctx.seed = 1
    elif change == "intervention":
        from circuitkit.interventions import build_intervention

        ctx.intervention = build_intervention(tiny_model, data, "zero")
    elif change == "buffer precision":
        ctx.buffer_dtype = "float64"
    else:
        task, data = build()
    second, hit = lookup(tmp_path, ck.build("methods", "eap_ig", **opts), tiny_model, task, data, ctx)
    if change == "nothing":
        assert hit and second.values.tolist() == first.values.tolist()
        return
    assert not hit, change
    fresh = ck.build("methods", "eap_ig", **opts).attribute(tiny_model, task, data, ctx)
    assert second.values.tolist() == fresh.values.tolist()
    assert second.level == fresh.level and (fresh.nodes is None or second.nodes.tolist() == fresh.nodes.tolist())
    if change == "level":  # the same edge scores, with node scores added
        assert first.level == "edge" and second.level == "node"
    elif change not in ("seed", "intervention", "buffer precision"):  # these leave eap_ig's scores as they were
        assert second.values.tolist() != first.values.tolist()


@pytest.mark.parametrize("change", ["dtype", "device", "weights", "method option", "nothing"])
def test_model_dtype_device_and_weights_are_in_the_key(tiny_model, tmp_path, custom, change):
    """One attribute of the model changes at a time (the others, the weights hash included, stay equal)."""
    _, build = custom
    task, data = build()
    Fixed.calls = 0
    lookup(tmp_path, Fixed(FixedConfig(name="fixed")), tiny_model, task, data)
    model, value = tiny_model, 1.0
    if change == "dtype":
        model = ModelView(tiny_model, dtype=torch.float64)
    elif change == "device":
        model = ModelView(tiny_model, device=torch.device("meta"))
    elif change == "weights":
        model = ModelView(tiny_model, weights_hash=tiny_model.weights_hash + "0")
    elif change == "method option":
        value = 2.0
    scores, hit = lookup(tmp_path, Fixed(FixedConfig(name="fixed", value=value)), model, task, data)
    assert hit == (change == "nothing") and Fixed.calls == (1 if hit else 2)
    assert scores.values.tolist() == [value] * tiny_model.graph.n_edges


PLUGIN = """
from dataclasses import dataclass

import torch

import circuitkit as ck
from circuitkit.results import Scores


@dataclass
class Config(ck.PluginConfig):
    pass


class Method(ck.Attributor):
    def attribute(self, model, task, data, ctx):
        return Scores(model.graph, torch.arange(model.graph.n_edges, dtype=torch.float64) * FACTOR, {{}})


FACTOR = {factor}
"""


def test_a_changed_plugin_or_core_source_misses_the_cache(tiny_model, tmp_path, custom, monkeypatch):
    """A third-party method module is edited between two runs of one process (re-imported, as a new
    process would): the second run computes the new formula instead of returning the old scores."""
    _, build = custom
    task, data = build()
    src = tmp_path / "plugin_src"
    src.mkdir()
    (src / "ck_cache_test_plugin.py").write_text(PLUGIN.format(factor=1.0))
    monkeypatch.syspath_prepend(str(src))
    monkeypatch.delitem(sys.modules, "ck_cache_test_plugin", raising=False)
    mod = importlib.import_module("ck_cache_test_plugin")

    def method():
        return mod.Method(mod.Config(name="edited"))

    first, hit = lookup(tmp_path, method(), tiny_model, task, data)
    assert not hit and first.values[3] == 3.0
    again, hit = lookup(tmp_path, method(), tiny_model, task, data)
    assert hit and again.values.tolist() == first.values.tolist()

    (src / "ck_cache_test_plugin.py").write_text(PLUGIN.format(factor=2.0))
    mod = importlib.reload(mod)
    second, hit = lookup(tmp_path, method(), tiny_model, task, data)
    assert not hit and second.values[3] == 6.0

    # circuitkit's own source is part of every key, read once per process.
    root = Path(cache.__file__).parent
    assert cache.core_code_hash() == cache.source_hash(cache._py_files(root), root)
    assert {
        "engine/gradient.py",
        "engine/masking.py",
        "engine/wiring.py",
        "attribution.py",
        "model.py",
        "interventions.py",
        "graph.py",
        "data.py",
    } <= {p.relative_to(root).as_posix() for p in cache._py_files(root)}
    monkeypatch.setattr(cache, "core_code_hash", lambda: "edited")
    _, hit = lookup(tmp_path, method(), tiny_model, task, data)
    assert not hit


def test_source_hash_follows_content_and_names(tmp_path):
    for name, text in (("a.py", "x = 1\n"), ("b.py", "y = 2\n")):
        (tmp_path / name).write_text(text)
    files = cache._py_files(tmp_path)
    h = cache.source_hash(files, tmp_path)
    (tmp_path / "b.py").write_text("y = 3\n")
    assert cache.source_hash(files, tmp_path) != h
    (tmp_path / "b.py").write_text("y = 2\n")
    assert cache.source_hash(files, tmp_path) == h
    (tmp_path / "b.py").rename(tmp_path / "c.py")
    assert cache.source_hash(cache._py_files(tmp_path), tmp_path) != h


@pytest.mark.parametrize(
    ("level", "selector"),
    [("edge", {"n_edges": 10}), ("node", {"n_nodes": 3}), ("neuron", {"n_neurons": 20})],
)
def test_cached_scores_keep_their_level(tiny_model, tmp_path, level, selector):
    """Scores read back from the cache keep their level and node / neuron scores, so the second run selects
    the same circuit (node- and neuron-level selection needs them)."""
    cfg = config(tmp_path, method={"name": "eap", "level": level}, selector={"name": "top_n", **selector})
    first = run(cfg, tmp_path / "a", model=tiny_model)
    second = run(cfg, tmp_path / "b", model=tiny_model)
    assert meta(tmp_path / "a")["scores_from_cache"] is False
    assert meta(tmp_path / "b")["scores_from_cache"] is True
    assert second.scores.level == level
    for part in ("values", "nodes", "neurons"):
        a, b = getattr(first.scores, part), getattr(second.scores, part)
        assert (a is None) == (b is None) and (a is None or a.tolist() == b.tolist()), part
    assert (level == "edge") == (second.scores.nodes is None) and (level == "neuron") == (second.scores.neurons is not None)
    # Everything else read back as computed (stderr included); the meta differs by the cache's own keys.
    assert dataclasses.replace(second.scores, meta=first.scores.meta) == first.scores
    assert second.circuit.edges.tolist() == first.circuit.edges.tolist()
    assert Circuit.load(tmp_path / "b" / "circuit.json").edges.tolist() == first.circuit.edges.tolist()


NOTEBOOK_CELL = """
class Method:
    def attribute(self, model, task, data, ctx):
        return {factor}
"""


def notebook_class(factor, cell, keep_source=True):
    """A class defined the way a notebook cell defines it: in a module without a file, its source known only
    to linecache (where IPython puts each cell) or not at all."""
    import linecache
    import types

    module = types.ModuleType("ck_notebook_main")
    text = NOTEBOOK_CELL.format(factor=factor)
    if keep_source:
        linecache.cache[cell] = (len(text), None, text.splitlines(True), cell)
    exec(compile(text, cell, "exec"), module.__dict__)
    return module.Method


def test_a_class_without_a_source_file_is_keyed_by_its_source_or_never_shared():
    one, same, edited = notebook_class(1, "<cell-1>"), notebook_class(1, "<cell-2>"), notebook_class(2, "<cell-3>")
    assert cache._class_source(one) == cache._class_source(same) != cache._class_source(edited)
    assert "return 1" in cache._class_source(one)
    label, digest = cache._module_sources(one)  # the path cached_attribute takes for such a class
    assert label == "ck_notebook_main.Method" and digest != cache._module_sources(edited)[1]
    lost_a, lost_b = notebook_class(1, "<gone-1>", False), notebook_class(1, "<gone-2>", False)
    assert cache._class_source(lost_a).startswith("no-source:") and cache._class_source(lost_a) != cache._class_source(lost_b)
