"""The attribution cache: a second run with the same model, data and method reuses the scores."""

from __future__ import annotations

import json

import pytest

from circuitkit import cache
from circuitkit.pipeline import run


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
    assert cache.cache_dir_for({"cache": True}) == tmp_path / "env"
    assert cache.cache_dir_for({"cache": True, "cache_dir": str(tmp_path / "cfg")}) == tmp_path / "cfg"
    assert cache.cache_dir_for({"cache": False}) is None
    assert cache.cache_dir_for({}) is None  # a hand-made config does not cache unless asked
    monkeypatch.delenv(cache.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.default_cache_dir() == tmp_path / "xdg" / "circuitkit"


@pytest.mark.parametrize("change", ["weights", "data", "method", "seed", "device", "extra"])
def test_key_changes_with_every_input(change):
    base = dict(weights_hash="w", data_hash="d", method={"name": "eap"}, seed=0, device_type="cpu")
    other = dict(base)
    other.update(
        {
            "weights": {"weights_hash": "w2"},
            "data": {"data_hash": "d2"},
            "method": {"method": {"name": "eap_ig", "ig_steps": 5}},
            "seed": {"seed": 1},
            "device": {"device_type": "cuda"},
            "extra": {"extra": {"buffer_dtype": "bfloat16"}},
        }[change]
    )
    assert cache.attribution_key(**base) != cache.attribution_key(**other)
    assert cache.attribution_key(**base) == cache.attribution_key(**dict(base))
