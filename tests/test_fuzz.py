"""Property-based tests (Hypothesis) of the files users hand to circuitkit: task files and circuit files.

Whatever the bytes, a task file either gives a run that completes, or one ``CircuitkitError`` whose message
is a single line (what the CLI prints after ``circuitkit: error:``), and the run directory is consistent
afterwards: ``results.json`` says ``complete`` with ``scores.json`` and ``circuit.json`` beside it, or
``failed`` with the error and no result files of a run that did not happen; no lock or staging directory
is left. A circuit file either loads or gives one such error. Runs call :func:`circuitkit.pipeline.run`
in-process with the tiny model (the file is read after the model is given), the cheap ``random`` method
and no evaluator, so a few hundred examples stay fast.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import tempfile
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from circuitkit.errors import CircuitkitError  # noqa: E402
from circuitkit.pipeline import run  # noqa: E402
from circuitkit.results import Circuit  # noqa: E402
from circuitkit.rundir import LOCK_NAME  # noqa: E402

FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)

# Pieces that make valid rows often enough for both outcomes to be exercised.
PROMPTS = ["The nurse said that", "The pilot said that", "When Mary and John went out, John gave it to", "a b", ""]
ANSWERS = [" she", " he", " Mary", " John", " Ouagadougou", "", " is| was"]
COLUMNS = ["clean", "corrupted", "correct", "incorrect"]

json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)
field_text = st.sampled_from(PROMPTS + ANSWERS) | st.text(max_size=15)
row_like = st.fixed_dictionaries(
    {
        "clean": field_text | json_value,
        "corrupted": field_text,
        "correct": st.sampled_from(ANSWERS) | st.lists(st.sampled_from(ANSWERS), max_size=2) | json_value,
    },
    optional={"incorrect": st.sampled_from(ANSWERS) | json_value, "extra": json_value},
)


@st.composite
def jsonl_files(draw) -> bytes:
    lines = draw(st.lists(row_like.map(json.dumps) | json_value.map(json.dumps) | st.text(max_size=30), max_size=6))
    text = "\n".join(lines)
    if draw(st.booleans()):
        text = "\ufeff" + text
    return text.encode("utf-8")


@st.composite
def csv_files(draw) -> bytes:
    header = draw(st.lists(st.sampled_from(COLUMNS + ["x", ""]), min_size=0, max_size=5)) or COLUMNS
    rows = draw(st.lists(st.lists(field_text, min_size=0, max_size=6), max_size=6))
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    text = buf.getvalue()
    if draw(st.booleans()):  # raw damage: stray quotes, NULs, cut anywhere
        cut = draw(st.integers(0, len(text)))
        text = text[:cut] + draw(st.sampled_from(['"', "\0", "\r", ",,", '"\n"'])) + text[cut:]
    return text.encode("utf-8")


task_files = st.one_of(
    st.tuples(st.sampled_from([".jsonl", ".csv"]), st.binary(max_size=200)),
    st.tuples(st.just(".jsonl"), jsonl_files()),
    st.tuples(st.just(".csv"), csv_files()),
)


def run_cfg(path: Path) -> dict:
    return {
        "method": {"name": "random"},
        "task": {"name": "custom", "path": str(path), "min_examples": 1},
        "selector": {"name": "top_n", "n_edges": 5},
        "evaluator": {},
        "reporter": {},
        "progress": False,
        "cache": False,
        "pictures": False,
    }


def assert_consistent(run_dir: Path, ok: bool) -> None:
    res = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
    names = {p.name for p in run_dir.iterdir()}
    assert LOCK_NAME not in names and not any(n.startswith((".staging-", ".replaced-")) for n in names), names
    if ok:
        assert res["status"] == "complete"
        scores = json.loads((run_dir / "scores.json").read_text(encoding="utf-8"))
        circuit = json.loads((run_dir / "circuit.json").read_text(encoding="utf-8"))
        assert len(scores["edges"]) == res["edges_in_graph"]
        assert sum(e["in_graph"] for e in circuit["edges"].values()) == res["edges_in_circuit"]
        assert res["meta"]["task_data_hash"]
    else:
        assert res["status"] == "failed" and res["meta"]["error"]
        assert "\n" not in res["meta"]["error"] and len(res["meta"]["error"]) <= 500
        assert not ({"scores.json", "circuit.json"} & names)


@FUZZ
@given(task_files)
def test_any_task_file_runs_or_fails_with_one_clear_line(tiny_model, file):
    suffix, content = file
    tmp = Path(tempfile.mkdtemp(prefix="ck-fuzz-"))
    try:
        path = tmp / f"data{suffix}"
        path.write_bytes(content)
        run_dir = tmp / "run"
        try:
            run(run_cfg(path), run_dir, model=tiny_model)
            ok = True
        except CircuitkitError as e:
            msg = str(e)
            assert msg and "\n" not in msg and "Traceback" not in msg, msg
            ok = False
        assert_consistent(run_dir, ok)
        event("run complete" if ok else "run failed")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_the_fuzzed_task_files_reach_both_outcomes(tiny_model, tmp_path):
    """The strategies are not vacuous: a valid file completes and a broken one fails, through the same code."""
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"clean": PROMPTS[0], "corrupted": PROMPTS[1], "correct": " she", "incorrect": " he"}) + "\n")
    run(run_cfg(good), tmp_path / "a", model=tiny_model)
    assert_consistent(tmp_path / "a", True)
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"clean,corrupted\n\xff\n")
    with pytest.raises(CircuitkitError):
        run(run_cfg(bad), tmp_path / "b", model=tiny_model)
    assert_consistent(tmp_path / "b", False)


@st.composite
def circuit_objects(draw, template: dict) -> object:
    """A real circuit file with random damage, or random JSON."""
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return draw(json_value)
    obj = json.loads(json.dumps(template))
    if kind == 1:  # damage cfg
        key = draw(st.sampled_from(["n_layers", "n_heads", "n_kv_heads", "d_model", "parallel_attn_mlp"]))
        obj["cfg"][key] = draw(json_value | st.integers(-5, 10**7))
    elif kind == 2:  # damage some edges
        names = list(obj["edges"])
        for _ in range(draw(st.integers(1, 3))):
            name = draw(st.sampled_from(names) | st.text(max_size=12))
            obj["edges"][name] = draw(json_value | st.fixed_dictionaries({"score": json_value, "in_graph": json_value}))
    else:  # damage the top level
        key = draw(st.sampled_from(["cfg", "edges", "nodes", "neurons", "level", "scored"]))
        obj[key] = draw(json_value)
    return obj


@pytest.fixture(scope="module")
def circuit_template(tiny_model) -> dict:
    c = Circuit.full(tiny_model.graph)
    c.d_model = tiny_model.d_model
    return c.to_json()


@FUZZ
@given(data=st.data())
def test_any_circuit_file_loads_or_fails_with_one_clear_line(tiny_model, circuit_template, data):
    kind = data.draw(st.sampled_from(["bytes", "json"]))
    if kind == "bytes":
        content = data.draw(st.binary(max_size=200))
    else:
        content = json.dumps(data.draw(circuit_objects(circuit_template))).encode()
    tmp = Path(tempfile.mkdtemp(prefix="ck-fuzz-"))
    try:
        path = tmp / "circuit.json"
        path.write_bytes(content)
        for graph in (None, tiny_model.graph):
            try:
                c = Circuit.load(path, graph)
            except CircuitkitError as e:
                assert str(e) and "\n" not in str(e), str(e)
                event("circuit rejected")
            else:
                assert c.edges.shape == (c.graph.n_edges,)
                event("circuit loaded")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
