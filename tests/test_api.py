"""The plugin-author API (``circuitkit.api``): circuitkit's builtin plugins and the example plugin import
from it and from nowhere else in circuitkit, every name it exports exists and is documented in
docs/writing-plugins.md, and metrics and interventions are registered kinds like the others."""

import ast
from pathlib import Path

import pytest

import circuitkit.api as api

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_DIRS = [ROOT / "plugins", ROOT / "examples" / "circuitkit-example-plugin" / "circuitkit_example"]


def circuitkit_imports(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` of every import of a ``circuitkit`` module (not ``circuitkit_*``) in ``path``,
    at any depth (imports inside functions included)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "circuitkit" or node.module.startswith("circuitkit."):
                out.append(
                    (
                        node.lineno,
                        node.module
                        if node.module != "circuitkit"
                        else "circuitkit (" + ", ".join(a.name for a in node.names) + ")",
                    )
                )
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name == "circuitkit" or a.name.startswith("circuitkit.")]
    return out


@pytest.mark.parametrize("path", sorted(p for d in PLUGIN_DIRS for p in d.rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_plugins_import_only_the_api(path):
    bad = [(line, module) for line, module in circuitkit_imports(path) if module != "circuitkit.api"]
    assert not bad, f"{path.relative_to(ROOT)} imports circuitkit internals (use circuitkit.api): {bad}"


def test_the_import_check_sees_lazy_and_module_imports(tmp_path):
    source = tmp_path / "p.py"
    source.write_text("from circuitkit.api import Task\nimport circuitkit.engine\ndef f():\n    from circuitkit import engine\n")
    assert [m for _, m in circuitkit_imports(source)] == ["circuitkit.api", "circuitkit.engine", "circuitkit (engine)"]


def test_every_exported_name_exists_once_and_is_documented():
    names = api.__all__
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
    missing = [n for n in names if not hasattr(api, n)]
    assert not missing, missing
    page = (ROOT / "docs" / "writing-plugins.md").read_text()
    section = page[page.index("## The plugin-author API") :]
    undocumented = [n for n in names if f"`{n}`" not in section]
    assert not undocumented, f"not in docs/writing-plugins.md's API table: {undocumented}"


def test_no_engine_internals_are_exported():
    for name in api.__all__:
        assert not name.startswith("_"), name
        module = getattr(getattr(api, name), "__module__", "") or ""
        assert not module.startswith("circuitkit.engine.") or name in {
            "run_sources",
            "stacked_gradient_pass",
            "source_groups",
            "masked_metric",
            "information_flow_scores",
        }, f"{name} comes from {module}"


# ----- the contract suites of the two registered-without-config kinds fail on a component that breaks them


def test_metric_contract_catches_a_wrong_declaration(ck_tiny_model, ck_tiny_data):
    """A metric declaring ``answer_logits`` while it takes a softmax over the whole vocabulary fails the
    contract; the same metric declaring ``answer_probs`` passes it."""
    import torch

    from circuitkit.metrics import ANSWER_LOGITS, ANSWER_PROBS, Metric
    from circuitkit.testing import MetricContract

    class CorrectProb(Metric):
        reads = ANSWER_LOGITS

        def __call__(self, logits, batch):
            return torch.softmax(logits, -1).gather(1, batch.correct[:, :1])[:, 0]

    batch = next(ck_tiny_data.batches(len(ck_tiny_data), ck_tiny_model.pad_id))
    logits = torch.randn(len(batch), int(ck_tiny_model.bridge.cfg.d_vocab), generator=torch.Generator().manual_seed(0))
    contract = MetricContract()
    contract.test_one_finite_number_per_example((CorrectProb(), logits, batch))
    with pytest.raises(AssertionError, match="declares answer_logits, but depends on other tokens' logits"):
        contract.test_reads_only_what_it_declares((CorrectProb(), logits, batch))
    CorrectProb.reads = ANSWER_PROBS
    contract.test_reads_only_what_it_declares((CorrectProb(), logits, batch))


def test_intervention_contract_catches_values_that_ignore_positions(ck_tiny_model, ck_tiny_data):
    import torch

    from circuitkit.interventions import Intervention
    from circuitkit.testing import InterventionContract

    class FullOnly(Intervention):
        """Claims to take positions but returns every position."""

        def values(self, model, batch, positions=None):
            return super().values(model, batch)

    iv = FullOnly()
    batch = next(ck_tiny_data.batches(4, ck_tiny_model.pad_id))
    with torch.no_grad():
        values = iv.values(ck_tiny_model, batch)
    with pytest.raises((AssertionError, RuntimeError)):
        InterventionContract().test_values_at_positions_and_of_the_input((iv, batch, values), ck_tiny_model)
    FullOnly.takes_positions = False  # declared honestly, positions_per_pass is refused instead
    InterventionContract().test_values_at_positions_and_of_the_input((iv, batch, values), ck_tiny_model)
