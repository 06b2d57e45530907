"""The documentation: generated references up to date, every hook documented, links that resolve."""

import importlib.util
import re
from pathlib import Path

import pytest

from circuitkit import hookspecs

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = ["quickstart.md", "concepts.md", "configuration.md", "writing-plugins.md", "hooks.md", "results-format.md"]


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
