"""Every hook of circuitkit/hookspecs.py, implemented by a plugin registered without an entry point
(``make_plugin_manager(extra_plugins=[...])`` + ``build_registry``), with its effect checked: the component
lands in the registry under the plugin's name, builds from its config, works, and its config reaches
Hydra's ConfigStore under the right group and package."""

import dataclasses
import types

import numpy as np
import pytest
import torch

from circuitkit import hookimpl, hookspecs
from circuitkit.data import Example
from circuitkit.errors import PluginError
from circuitkit.interfaces import Attributor, Evaluator, PluginConfig, Reporter, RunContext, Selector, Task, TaskConfig
from circuitkit.interventions import Intervention
from circuitkit.metrics import ANSWER_LOGITS, Metric
from circuitkit.plugins import build_registry, make_plugin_manager
from circuitkit.results import Circuit, EvalResult, RunResult, Scores


@dataclasses.dataclass
class ConstConfig(PluginConfig):
    value: float = 1.0


class ConstMethod(Attributor):
    def attribute(self, model, task, data, ctx):
        return Scores(model.graph, torch.full((model.graph.n_edges,), self.config.value), {"method": self.config.name})


@dataclasses.dataclass
class EchoConfig(TaskConfig):
    word: str = " Mary"
    n_examples: int = 2


class EchoTask(Task):
    def generate(self, tokenizer, split):
        for _ in range(self.config.n_examples):
            yield Example(
                "When Mary and John left, John thanked", "When Mary and John left, Anne thanked", (self.config.word,), (" John",)
            )


class FirstEdges(Selector):
    def select(self, scores):
        return Circuit.from_mask(scores.graph, np.arange(scores.graph.n_edges) < self.config.value, scores)


class CountEdges(Evaluator):
    def evaluate(self, model, task, data, circuit, ctx):
        return EvalResult(self.config.name, {"edges": circuit.n_edges, "value": self.config.value})


class FileReporter(Reporter):
    def report(self, run, run_dir):
        with open(f"{run_dir}/reported.txt", "w") as f:
            f.write(f"{run.status} {self.config.value}")


def plugin(hook, register):
    """A plugin module implementing one hook."""
    mod = types.ModuleType(f"ck_test_{hook}")
    setattr(mod, hook, hookimpl(register))
    return mod


def registry_with(hook, register):
    return build_registry(make_plugin_manager(extra_plugins=[plugin(hook, register)]))


def check_methods(reg, ck_tiny_model, ck_tiny_task, ck_tiny_data, tmp_path):
    s = reg.methods.build("ck_const", {"value": 2.5}).attribute(
        ck_tiny_model, ck_tiny_task, ck_tiny_data, RunContext(progress=False)
    )
    assert s.meta["method"] == "ck_const" and float(s.values[0]) == 2.5


def check_tasks(reg, ck_tiny_model, ck_tiny_task, ck_tiny_data, tmp_path):
    data = reg.tasks.build("ck_echo", {"n_examples": 3}).build(ck_tiny_model.tokenizer)
    assert len(data) == 3 and data.task == "ck_echo"


def check_selectors(reg, ck_tiny_model, ck_tiny_task, ck_tiny_data, tmp_path):
    g = ck_tiny_model.graph
    c = reg.selectors.build("ck_first", {"value": 5}).select(Scores(g, torch.ones(g.n_edges)))
    assert (g.prune(c.edges) == c.edges).all() and c.n_edges <= 5


def check_evaluators(reg, ck_tiny_model, ck_tiny_task, ck_tiny_data, tmp_path):
    g = ck_tiny_model.graph
    res = reg.evaluators.build("ck_count", {}).evaluate(ck_tiny_model, ck_tiny_task, ck_tiny_data, Circuit.full(g), RunContext())
    assert res.values == {"edges": g.n_edges, "value": 1.0}


def check_reporters(reg, ck_tiny_model, ck_tiny_task, ck_tiny_data, tmp_path):
    reg.reporters.build("ck_file", {"value": 3.0}).report(RunResult(meta={}), str(tmp_path))
    assert (tmp_path / "reported.txt").read_text() == "complete 3.0"


class BestAnswerLogit(Metric):
    """The correct answer's logit, declared as reading the answer logits only."""

    reads = ANSWER_LOGITS

    def __init__(self):
        self.widths = []  # the width of the logits each call received

    def __call__(self, logits, batch):
        self.widths.append(logits.shape[1])
        return logits.gather(1, batch.correct[:, :1])[:, 0]


def check_metrics(reg, ck_tiny_model, ck_tiny_task, ck_tiny_data, tmp_path):
    """A task choosing the metric by name gets it; the engine honours its declaration (answer columns only)
    and gives the values of the full logits."""
    from circuitkit import engine

    assert isinstance(reg.metrics.build("ck_best"), BestAnswerLogit)
    task = ck_tiny_task.__class__(dataclasses.replace(ck_tiny_task.config, metric="ck_best"))
    with pytest.MonkeyPatch.context() as mp:  # the task looks its metric up in this test's registry
        mp.setattr("circuitkit.plugins.get_registry", lambda *a, **k: reg)
        metric = task.metric
    assert isinstance(metric, BestAnswerLogit)
    batch = next(ck_tiny_data.batches(8))
    final = engine.run_sources(ck_tiny_model, batch.clean).final
    full = engine.answer_logits(ck_tiny_model, final, batch.last)
    got = engine.answer_metric(ck_tiny_model, final, batch, metric)
    n_answers = len(torch.cat([batch.correct.flatten(), batch.incorrect.flatten()]).unique())
    assert metric.widths == [n_answers] < [full.shape[1]]
    want = full.gather(1, batch.correct[:, :1])[:, 0]
    assert torch.allclose(got, want, rtol=0, atol=32 * torch.finfo(want.dtype).eps * float(want.abs().max()))


class Scaled(Intervention):
    """A removed edge carries twice the corrupted run's source output (positions included)."""

    def values(self, model, batch, positions=None):
        return 2 * super().values(model, batch, positions)


def check_interventions(reg, ck_tiny_model, ck_tiny_task, ck_tiny_data, tmp_path):
    """``intervention=NAME`` builds the registered class through ``prepare`` and the engine uses its values:
    the removed edges of an exact single-edge patch carry them."""
    from circuitkit import engine
    from circuitkit.interventions import build_intervention, removed_values

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("circuitkit.plugins.get_registry", lambda *a, **k: reg)
        iv = build_intervention(ck_tiny_model, ck_tiny_data, "ck_scaled")
    assert isinstance(iv, Scaled) and iv.kind == "ck_scaled" and not iv.uses_corrupted
    batch = next(ck_tiny_data.batches(4))
    corrupted = engine.run_sources(ck_tiny_model, batch.corrupted).sources
    assert torch.equal(removed_values(ck_tiny_model, batch, iv), 2 * corrupted)


#: hook -> (kind, name, the hook implementation, its check)
CASES = {
    "circuitkit_register_methods": (
        "methods",
        "ck_const",
        lambda registry: registry.add("ck_const", ConstMethod, ConstConfig),
        check_methods,
    ),
    "circuitkit_register_tasks": (
        "tasks",
        "ck_echo",
        lambda registry: registry.add("ck_echo", EchoTask, EchoConfig),
        check_tasks,
    ),
    "circuitkit_register_selectors": (
        "selectors",
        "ck_first",
        lambda registry: registry.add("ck_first", FirstEdges, ConstConfig),
        check_selectors,
    ),
    "circuitkit_register_evaluators": (
        "evaluators",
        "ck_count",
        lambda registry: registry.add("ck_count", CountEdges, ConstConfig),
        check_evaluators,
    ),
    "circuitkit_register_reporters": (
        "reporters",
        "ck_file",
        lambda registry: registry.add("ck_file", FileReporter, ConstConfig),
        check_reporters,
    ),
    "circuitkit_register_metrics": (
        "metrics",
        "ck_best",
        lambda registry: registry.add("ck_best", BestAnswerLogit),
        check_metrics,
    ),
    "circuitkit_register_interventions": (
        "interventions",
        "ck_scaled",
        lambda registry: registry.add("ck_scaled", Scaled),
        check_interventions,
    ),
}


def hookspec_names():
    return sorted(n for n, f in vars(hookspecs).items() if n.startswith("circuitkit_") and callable(f))


def test_every_hookspec_has_a_test():
    assert sorted(CASES) == hookspec_names()


@pytest.mark.parametrize("hook", sorted(CASES))
def test_hook(hook, ck_tiny_model, ck_tiny_task, ck_tiny_data, tmp_path):
    from hydra.core.config_store import ConfigStore

    kind, name, register, check = CASES[hook]
    registry = registry_with(hook, register)
    entry = registry.kinds[kind].get(name)
    assert entry.plugin == f"ck_test_{hook}"
    for other_kind, reg in registry.kinds.items():  # registered for its own kind only
        assert (name in reg.entries) == (other_kind == kind)
    assert "eap" in registry.methods.entries  # installed plugins are still there
    check(registry, ck_tiny_model, ck_tiny_task, ck_tiny_data, tmp_path)

    registry.store_configs()
    group = registry.kinds[kind].group
    if registry.kinds[kind].entries[name].config is None:  # metrics, interventions: no config group
        assert group not in ConfigStore.instance().repo
        return
    stored = ConfigStore.instance().repo[group][f"{name}.yaml"]
    assert stored.node.name == name
    assert stored.package == (f"{group}.{name}" if group in ("evaluator", "reporter") else None)


def test_a_misspelt_hook_is_an_error_naming_the_hooks():
    mod = types.ModuleType("ck_test_typo")
    mod.circuitkit_register_method = hookimpl(lambda registry: None)
    with pytest.raises(PluginError, match="circuitkit_register_methods"):
        make_plugin_manager(extra_plugins=[mod])


def test_a_hook_that_raises_names_the_plugin():
    def register(registry):
        raise RuntimeError("boom")

    with pytest.raises(PluginError, match="Plugin 'ck_test_circuitkit_register_methods' raised in circuitkit_register_methods"):
        registry_with("circuitkit_register_methods", register)


def test_a_duplicate_name_is_an_error():
    with pytest.raises(PluginError, match="Two plugins register a method named 'eap'"):
        registry_with("circuitkit_register_methods", lambda registry: registry.add("eap", ConstMethod, ConstConfig))
