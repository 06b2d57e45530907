"""Bad inputs that used to end in a raw traceback or a misleading message (docs/errors.md, rows 54-70).

Most go through the Python API (fast); the command-line ones check the single ``circuitkit: error:`` line,
the exit code and the failure recorded in results.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import circuitkit as ck
from circuitkit.errors import CircuitkitError, DataError, ModelLoadError
from circuitkit.pipeline import run
from circuitkit.results import Circuit

GOOD = {"clean": "The nurse said that", "corrupted": "The pilot said that", "correct": " she", "incorrect": " he"}


def cli(*args, env=None, timeout=300):
    e = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", **(env or {})}
    return subprocess.run([sys.executable, "-m", "circuitkit", *args], capture_output=True, text=True, env=e, timeout=timeout)


def one_clear_line(p):
    assert p.returncode == 1, p.stderr
    assert "Traceback" not in p.stderr, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("circuitkit: error:")]
    assert len(lines) == 1, p.stderr
    return lines[0]


def custom(tokenizer, path):
    return ck.build("tasks", "custom", path=str(path), min_examples=1).build(tokenizer)


def jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# ----- raw tracebacks ------------------------------------------------------------------------------
def test_prompts_longer_than_the_models_context(tiny_model_dir, tmp_path):
    long = "The nurse said that " * 20  # about 80 tokens; the tiny model has 64 positions
    path = jsonl(tmp_path / "long.jsonl", [GOOD, {**GOOD, "clean": long + "she", "corrupted": long + "he"}])
    out = tmp_path / "run"
    p = cli(
        f"model.name={tiny_model_dir}",
        "task=custom",
        f"task.path={path}",
        "task.min_examples=1",
        "progress=false",
        f"hydra.run.dir={out}",
    )
    line = one_clear_line(p)
    assert "1 example(s) are longer than the model's context of 64 tokens" in line and "long.jsonl, line 2" in line
    res = json.loads((out / "results.json").read_text())
    assert res["status"] == "failed" and "longer than the model's context" in res["meta"]["error"]


def test_model_whose_vocabulary_is_smaller_than_its_tokenizer(tokenizer, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=4, n_embd=32, vocab_size=1000, n_positions=64)).save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    cfg = {
        "model": {"name": str(tmp_path / "m"), "device": "cpu"},
        "method": {"name": "eap"},
        "task": {"name": "greater_than", "n_examples": 4},
        "selector": {"name": "top_n", "n_edges": 5},
        "evaluator": {},
        "progress": False,
        "cache": False,
        "pictures": False,
    }
    with pytest.raises(
        DataError, match=r"token id \d+, but the model's vocabulary has only 1000 tokens .*do not belong together"
    ):
        run(cfg, tmp_path / "run")
    assert json.loads((tmp_path / "run" / "results.json").read_text())["status"] == "failed"


def test_task_file_that_is_not_utf8(tokenizer, tiny_model_dir, tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("clean,corrupted,correct,incorrect\nLe caf\xe9 est,Le th\xe9 est, bon, mauvais\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1\.csv is not UTF-8 text \(byte 0xe9 on line 2\)\. Save it as UTF-8"):
        custom(tokenizer, path)
    p = cli(f"model.name={tiny_model_dir}", "task=custom", f"task.path={path}", f"hydra.run.dir={tmp_path / 'run'}")
    assert "is not UTF-8 text" in one_clear_line(p)


def test_circuit_file_that_is_not_utf8_or_a_directory(tmp_path):
    bad = tmp_path / "circuit.json"
    bad.write_bytes(b'{"cfg": "\xff"}')
    with pytest.raises(CircuitkitError, match=r"circuit\.json is not UTF-8 text \(byte 0xff at offset 9\)"):
        Circuit.load(bad)
    with pytest.raises(CircuitkitError, match="is a directory; give the path of the .json file in it"):
        Circuit.load(tmp_path)


def test_compare_skips_unreadable_results_and_compares_the_rest(tmp_path, capsys):
    from circuitkit.compare import main

    good = {
        "status": "complete",
        "meta": {"method": "eap", "task": "ioi", "model": "m"},
        "faithfulness": {"values": {"faithfulness": 0.5}},
    }
    for name, content in {
        "good": json.dumps(good).encode(),
        "list": b"[1, 2, 3]",
        "latin1": b'{"status": "caf\xe9"}',
        "truncated": json.dumps(good).encode()[:25],
        "meta-not-object": json.dumps({**good, "meta": [1]}).encode(),
    }.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_bytes(content)
    assert main([str(tmp_path), "--no-plot"]) == 0
    out, err = capsys.readouterr()
    assert "good" in out and "0.5" in out
    warnings = [ln for ln in err.splitlines() if ln.startswith("circuitkit.compare: warning: skipping")]
    assert len(warnings) == 4, err
    assert any("a JSON list, not an object" in w for w in warnings)
    assert any("is not UTF-8 text" in w for w in warnings)
    assert any("it may be truncated" in w for w in warnings)
    assert "Traceback" not in err
    # nothing readable at all: one error
    assert main([str(tmp_path / "list")]) == 1
    assert "none of the 1 run(s) found has a readable results.json" in capsys.readouterr().err


# ----- misleading messages -------------------------------------------------------------------------
def test_every_bad_row_is_reported_in_one_message(tokenizer, tmp_path):
    rows = [
        GOOD,
        {**GOOD, "corrupted": "The airline pilot said that"},  # line 2: lengths differ
        {**GOOD, "correct": " Ouagadougou"},  # line 3: not one token
    ]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{not json\n" + json.dumps({**GOOD, "clean": 3}) + "\n")
    with pytest.raises(DataError) as e:
        custom(tokenizer, path)
    msg = str(e.value)
    assert msg.startswith("Task 'custom': 4 examples are unusable: [1] ")
    assert (
        "d.jsonl, line 2 (clean='The nurse said that', corrupted='The airline pilot said that') has clean and corrupted prompts that tokenize to different lengths (5 vs 6 tokens)"
        in msg
    )
    assert (
        "d.jsonl, line 3 (clean='The nurse said that', corrupted='The pilot said that') has answers that are not single tokens of this tokenizer (' Ouagadougou')"
        in msg
    )
    assert "d.jsonl, line 4 is not valid JSON" in msg and "d.jsonl, line 5: column 'clean' must be a string, got 3" in msg
    assert msg.index("line 2") < msg.index("line 3") < msg.index("line 4") < msg.index("line 5")


def test_many_bad_rows_are_reported_up_to_a_limit(tokenizer, tmp_path):
    path = jsonl(tmp_path / "d.jsonl", [GOOD] + [{**GOOD, "correct": " Ouagadougou"}] * 25)
    with pytest.raises(
        DataError, match=r"^Task 'custom': 25 examples are unusable \(the first 10 shown\): \[1\] .*line 2 .*\[10\] .*line 11 "
    ) as e:
        custom(tokenizer, path)
    assert "[11]" not in str(e.value)


def test_a_huge_prompt_is_quoted_only_briefly(tokenizer, tmp_path):
    huge = "a" * 2_000_000  # the message's size must not follow the prompt's
    path = jsonl(tmp_path / "d.jsonl", [GOOD, {**GOOD, "clean": huge}])
    with pytest.raises(DataError) as e:
        custom(tokenizer, path)
    assert len(str(e.value)) < 1000 and "(2,000,000 characters)" in str(e.value)


def test_empty_task_file(tokenizer, tmp_path):
    (tmp_path / "e.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match=r"e\.jsonl has no rows \(the file is empty\)\. Add rows with columns clean"):
        custom(tokenizer, tmp_path / "e.jsonl")
    (tmp_path / "h.csv").write_text("clean,corrupted,correct,incorrect\n")
    with pytest.raises(DataError, match=r"h\.csv has no rows \(the file is empty or holds only the header\)"):
        custom(tokenizer, tmp_path / "h.csv")


def test_task_file_with_a_utf8_byte_order_mark(tokenizer, tmp_path):
    (tmp_path / "bom.csv").write_bytes(
        b"\xef\xbb\xbf" + b"clean,corrupted,correct,incorrect\nThe nurse said that,The pilot said that, she, he\n" * 1
    )
    data = custom(tokenizer, tmp_path / "bom.csv")
    assert len(data) == 1 and data.examples[0].clean == "The nurse said that"
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + json.dumps(GOOD).encode() + b"\n")
    assert custom(tokenizer, tmp_path / "bom.jsonl").examples[0].correct == (" she",)


def test_a_row_without_incorrect_among_rows_that_have_it(tokenizer, tmp_path):
    no_incorrect = {k: v for k, v in GOOD.items() if k != "incorrect"}
    path = jsonl(tmp_path / "d.jsonl", [GOOD, no_incorrect, GOOD])
    with pytest.raises(
        DataError,
        match=r"d\.jsonl, line 2 has no 'incorrect' answer, but 2 other row\(s\) have one \(e\.g\. line 1\); one file has one metric",
    ):
        custom(tokenizer, path)
    # a file where no row has one is fine (one metric: the correct answer's logit)
    assert len(custom(tokenizer, jsonl(tmp_path / "none.jsonl", [no_incorrect] * 2))) == 2


def test_corrupt_model_config_is_not_reported_as_a_tokenizer_problem(tiny_model_dir, tmp_path):
    import shutil

    d = tmp_path / "m"
    shutil.copytree(tiny_model_dir, d)
    (d / "config.json").write_text('{"model_type": "gpt2", "n_layer": 2,')
    with pytest.raises(
        ModelLoadError, match=r"config\.json is not valid JSON .*damaged model\. Re-save it with model\.save_pretrained"
    ) as e:
        ck.load_model(str(d), device="cpu")
    assert "tokenizer" not in str(e.value)


def test_a_blocked_builtin_says_it_is_blocked(tmp_path):
    p = cli("plugins.block=[top_n]", f"hydra.run.dir={tmp_path / 'a'}")
    line = one_clear_line(p)
    assert "selector=top_n comes from plugin 'top_n', which is blocked (plugins.block)" in line and "selector=greedy" in line
    p = cli("method=eap", f"hydra.run.dir={tmp_path / 'b'}", env={"CIRCUITKIT_BLOCK_PLUGINS": "eap"})
    assert "method=eap comes from plugin 'eap', which is blocked (CIRCUITKIT_BLOCK_PLUGINS)" in one_clear_line(p)


def test_every_test_file_docs_errors_names_exists():
    """docs/errors.md says which test asserts each row: the files it names exist."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    text = (root / "docs" / "errors.md").read_text(encoding="utf-8")
    named = set(re.findall(r"tests/(test_\w+\.py)", text))
    assert {"test_rundir.py", "test_bad_inputs.py", "test_fuzz.py", "test_wandb.py"} <= named
    assert [n for n in sorted(named) if not (root / "tests" / n).is_file()] == []
