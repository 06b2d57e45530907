"""The documentation: generated references up to date, every hook documented, links that resolve."""

import importlib.util
import re
from pathlib import Path

import pytest

from circuitkit import hookspecs

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = [
    "quickstart.md",
    "concepts.md",
    "configuration.md",
    "writing-plugins.md",
    "hooks.md",
    "results-format.md",
    "analysis.md",
    "uncertainty.md",
]


def gen_reference():
    spec = importlib.util.spec_from_file_location("gen_reference", DOCS / "gen_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["configuration.md", "hooks.md"])
def test_generated_reference_is_up_to_date(name):
    text = gen_reference().FILES[name]()
    assert (DOCS / name).read_text() == text, f"docs/{name} is out of date: run python docs/gen_reference.py"


def test_every_hook_is_documented():
    text = (DOCS / "hooks.md").read_text()
    hooks = [n for n, f in vars(hookspecs).items() if n.startswith("circuitkit_") and callable(f)]
    assert hooks
    for hook in hooks:
        assert f"\n## {hook}\n" in text, hook
        assert (getattr(hookspecs, hook).__doc__ or "").strip(), f"{hook} has no docstring"


@pytest.mark.parametrize("page", PAGES)
def test_pages_exist_and_their_links_resolve(page):
    path = DOCS / page
    text = path.read_text()
    assert text.startswith(("#", "<!--"))
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if "://" in target:
            continue
        assert (path.parent / target).exists(), f"{page} links to {target}, which does not exist"


def python_blocks(page):
    return re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), flags=re.S)


def test_analysis_page_example_runs_and_matches_the_functions(capsys):
    """docs/analysis.md's example, run as written; its numbers checked against direct computations."""
    import math

    import numpy as np

    (code,) = python_blocks("analysis.md")
    ns: dict = {}
    exec(compile(code, "docs/analysis.md", "exec"), ns)
    out = capsys.readouterr().out.splitlines()
    analysis, eap, eap_ig, a, b = ns["analysis"], ns["eap"], ns["eap_ig"], ns["a"], ns["b"]
    x, y = eap.values.abs().numpy(), eap_ig.values.abs().numpy()
    assert ns["agreement"]["pearson"] == pytest.approx(float(np.corrcoef(x, y)[0, 1]), abs=1e-12)
    inter, union = int((a.edges & b.edges).sum()), int((a.edges | b.edges).sum())
    assert ns["ov"]["edge_iou"] == inter / union and ns["ov"]["edge_precision"] == inter / a.n_edges
    assert [r["n_edges"] for r in ns["rows"]] == [10, 20, 50]
    assert ns["rows"][2]["edge_iou"] == pytest.approx(ns["ov"]["edge_iou"])  # the same 50-edge circuits
    curve = ns["curve"]
    assert curve.values["cpr"] == pytest.approx(analysis.cpr(ns["x"], ns["f"])) and curve.values["cmd"] == pytest.approx(
        analysis.cmd(ns["x"], ns["f"])
    )
    assert len(out) == 1 + 1 + 3 + 1 and out[0].startswith("Pearson ") and out[-1].startswith("CPR ")
    assert all(math.isfinite(r["faithfulness_eap"]) for r in ns["rows"])


def test_bundled_gpt2_tokenizer_directory_loads_with_auto_tokenizer():
    from transformers import AutoTokenizer

    path = ROOT / "circuitkit" / "zoo" / "gpt2-tokenizer"
    tok = AutoTokenizer.from_pretrained(str(path))
    # The reference: the bundled model's tokenizer, saved by save_pretrained (tokenizer.json), and GPT-2's ids.
    ref = AutoTokenizer.from_pretrained(str(ROOT / "circuitkit" / "zoo" / "circuitkit-tiny"))
    assert tok("Hello world").input_ids == [15496, 995] and tok.eos_token_id == tok.bos_token_id == 50256 and len(tok) == 50257
    for text in ("When Mary and John went to the store, John gave a drink to", " 1745 to 17", "naïve café — ok?<|endoftext|>"):
        assert tok(text).input_ids == ref(text).input_ids, text
