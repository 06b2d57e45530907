"""Contract test-suites and pytest fixtures for circuitkit plugins.

Every component kind has a contract: a class of pytest tests that a plugin's test file subclasses, naming
the registered component::

    from circuitkit.testing import AttributorContract, TaskContract

    class TestMyMethod(AttributorContract):
        name = "mymethod"

    class TestMyTask(TaskContract):
        name = "mytask"
        options = {"n_examples": 16}    # options passed to the component (default: its defaults)

- every contract of a kind with options: registered under ``name`` with a class of the right kind and a config dataclass; the
  config instantiates with its defaults, leaves ``name`` to the registry, and composes through Hydra with
  circuitkit's primary config (``method=NAME``, ``evaluator=[NAME]``...), and the component builds from
  the composed node;
- :class:`AttributorContract`: scores cover every edge of the graph, are finite and not all zero; the same
  seed gives the same scores; batch sizes 1, 3 and 8 give the same scores (rtol 1e-5 of the largest
  score, on the float64 model);
- :class:`TaskContract`: builds examples for the GPT-2 tokenizer (as many as asked for, for generators);
  clean/corrupted pairs tokenize to the same length; every answer is one token; correct and incorrect
  answers are disjoint; the same seed gives the same examples; the metric gives one finite number per
  example;
- :class:`SelectorContract`: on random scores over GPT-2 small's graph (32,491 edges) the circuit is
  connected (``graph.prune(mask) == mask``) and the same scores give the same circuit; a selector that
  measures circuits (``measures_circuits()``, e.g. ``top_n`` without ``n_edges``) is run through
  ``select_in_run`` on ``ck_tiny_model`` and ``ck_tiny_data`` instead, over that model's graph;
- :class:`EvaluatorContract`: evaluates the empty and the full circuit into JSON-serialisable results; when
  it reports ``clean_metric``, ``corrupted_metric`` and ``circuit_metric``, the empty circuit scores the
  corrupted metric and the full one the clean metric (and faithfulness 0 and 1) — otherwise that test
  is skipped, with the reason;
- :class:`MetricContract`: one finite number per example on random logits (a metric that needs the model,
  ``kl``, bound to ``ck_tiny_model``), the same for the same logits, and what it declares it reads
  (``Metric.reads``) is all it reads: the same values on the answer tokens' columns (``answer_logits``), or
  on those plus the log of the other tokens' probability mass (``answer_probs``);
- :class:`InterventionContract`: prepared for ``ck_tiny_model`` and ``ck_tiny_data``, its values cover every
  source of a batch, are finite and the same when asked again; at chosen positions they equal the full values
  there (or ``positions_per_pass`` is refused when it declares ``takes_positions = False``); the input node's
  values equal ``values[0]``; under it the full circuit gives the clean metric and the empty circuit the
  run's baseline;
- :class:`ReporterContract`: builds from its default config (``report()`` talks to outside services and
  is not exercised).

The module is also a pytest plugin (entry point ``circuitkit`` in the ``pytest11`` group), so once
circuitkit is installed every test session has these fixtures; disable with ``-p no:circuitkit``:

- ``ck_tokenizer``: the GPT-2 tokenizer shipped with circuitkit (offline);
- ``ck_tiny_model``: a random 2-layer, 4-head, ``d_model=32`` GPT-2 (float32, CPU), 110 edges;
- ``ck_tiny_model64``: the same model in float64 (the batch-size check runs on it);
- ``ck_tiny_model_dir``: the same model saved with ``save_pretrained`` (for ``model.name=DIR`` runs);
- ``ck_tiny_task`` / ``ck_tiny_data``: eight hand-written clean/corrupted pairs of mixed lengths
  (logit difference), and their tokenization for ``ck_tiny_model``;
- ``ck_registry``: the registry of installed plugins.

Everything is built from configs: no download, a few seconds on a CPU.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
import torch

from circuitkit.data import Example, TaskData, encode
from circuitkit.graph import Graph
from circuitkit.interfaces import PluginConfig, RunContext, Task, TaskConfig
from circuitkit.registry import KINDS, ComponentRegistry, Entry
from circuitkit.results import Circuit, EvalResult, Scores

__all__ = [
    "AttributorContract",
    "CONTRACTS",
    "ComponentContract",
    "EvaluatorContract",
    "InterventionContract",
    "MetricContract",
    "RegisteredContract",
    "ReporterContract",
    "SelectorContract",
    "TaskContract",
    "TINY_EXAMPLES",
    "TinyTask",
    "compose_config",
    "contract_class",
    "gpt2_small_graph",
]

# ----- a small task --------------------------------------------------------------------------------

#: Clean/corrupted pairs of different lengths (so batches are padded), each pair the same length in
#: GPT-2 tokens, every answer one GPT-2 token.
TINY_EXAMPLES: tuple[Example, ...] = (
    Example(
        "When Anna and Tom went to the park, Tom gave a ball to",
        "When Anna and Tom went to the park, Sam gave a ball to",
        (" Anna",),
        (" Tom",),
    ),
    Example(
        "The trip lasted from the year 1745 to the year 17",
        "The trip lasted from the year 1701 to the year 17",
        (" 80",),
        (" 01",),
    ),
    Example("The book on the shelves", "The books on the shelves", (" is",), (" are",)),
    Example("London is the capital of", "Paris is the capital of", (" England",), (" France",)),
    Example("The queen said that", "The king said that", (" she",), (" he",)),
    Example("red green blue red green", "one six nine red green", (" blue",), ()),
    Example("After Lisa and Mark ate, Mark thanked", "After Lisa and Mark ate, Jack thanked", (" Lisa",), (" Mark",)),
    Example("Birds fly and fish", "Birds fly and dogs", (" swim",), (" bark",)),
)


class TinyTask(Task):
    """A task over :data:`TINY_EXAMPLES` (logit difference), for testing methods and evaluators."""

    on_invalid = "error"

    def generate(self, tokenizer: Any, split: str) -> Iterator[Example]:
        return iter(TINY_EXAMPLES)


def gpt2_small_graph() -> Graph:
    """The graph of GPT-2 small (12 layers, 12 heads): 32,491 edges. Topology only, no weights."""
    return Graph(12, 12)


# ----- fixtures (registered through the pytest11 entry point) --------------------------------------


@pytest.fixture(scope="session")
def ck_tokenizer() -> Any:
    """The GPT-2 tokenizer shipped with circuitkit (no download)."""
    from circuitkit.testing_models import gpt2_tokenizer

    return gpt2_tokenizer()


@pytest.fixture(scope="session")
def ck_tiny_model(ck_tokenizer: Any) -> Any:
    """A random GPT-2 with 2 layers, 4 heads and ``d_model=32`` (float32, CPU): 110 edges."""
    from circuitkit.testing_models import tiny_gpt2

    return tiny_gpt2(n_layers=2, n_heads=4, d_model=32, seed=0, tokenizer=ck_tokenizer)


@pytest.fixture(scope="session")
def ck_tiny_model64(ck_tokenizer: Any) -> Any:
    """``ck_tiny_model`` in float64: for checks that must not drown in float32 rounding."""
    from circuitkit.testing_models import tiny_gpt2

    return tiny_gpt2(n_layers=2, n_heads=4, d_model=32, seed=0, dtype=torch.float64, tokenizer=ck_tokenizer)


@pytest.fixture(scope="session")
def ck_tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, ck_tokenizer: Any) -> str:
    """``ck_tiny_model``'s architecture saved with ``save_pretrained`` (model and tokenizer)."""
    from circuitkit.testing_models import tiny_gpt2

    path = tmp_path_factory.mktemp("ck-tiny-model")
    tiny_gpt2(n_layers=2, n_heads=4, d_model=32, seed=0, tokenizer=ck_tokenizer, save_to=path)
    return str(path)


@pytest.fixture(scope="session")
def ck_tiny_task() -> TinyTask:
    """A :class:`TinyTask` with all eight examples."""
    return TinyTask(TaskConfig(name="ck_tiny", n_examples=len(TINY_EXAMPLES), metric="logit_diff"))


@pytest.fixture(scope="session")
def ck_tiny_data(ck_tiny_task: TinyTask, ck_tiny_model: Any) -> TaskData:
    """``ck_tiny_task`` tokenized for ``ck_tiny_model``."""
    return ck_tiny_task.build(ck_tiny_model.tokenizer, prepend_bos=ck_tiny_model.prepend_bos)


@pytest.fixture
def ck_registry() -> Any:
    """The registry of the installed, unblocked plugins."""
    from circuitkit.plugins import get_registry

    return get_registry()


# ----- Hydra -------------------------------------------------------------------------------------


def compose_config(overrides: list[str] | tuple[str, ...] = ()) -> Any:
    """Compose circuitkit's primary config with ``overrides``, as the CLI would (no run, no model).

    Every registered config and the model presets are put into Hydra's ConfigStore first.
    """
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from circuitkit.__main__ import _store_configs

    _store_configs()
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="circuitkit.conf", version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def _plain(value: Any) -> Any:
    """Tuples as lists, recursively (what a config looks like after a round trip through OmegaConf)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


# ----- contracts ---------------------------------------------------------------------------------


class RegisteredContract:
    """What every contract shares: the component under test is looked up by ``name`` in the registry of
    the installed plugins. Subclass one of the kind-specific contracts, not this one.

    Attributes:
        name: the registered name of the component under test (required).
        options: options the component is built with (merged over its config's defaults). For options
            that need files or fixtures, override the ``ck_options`` fixture instead.
    """

    kind: ClassVar[str] = ""
    name: ClassVar[str] = ""
    options: ClassVar[dict[str, Any]] = {}

    @pytest.fixture(scope="class", autouse=True)
    @classmethod
    def _ck_one_thread(cls) -> Iterator[None]:
        """Tiny models gain nothing from intra-op threads, and lose much on a busy machine: one thread."""
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        yield
        torch.set_num_threads(before)

    @pytest.fixture(scope="class")
    @classmethod
    def ck_options(cls) -> dict[str, Any]:
        """Options for building the component (override to compute them, e.g. from ``tmp_path_factory``)."""
        return dict(cls.options)

    # -- helpers --
    @classmethod
    def _components(cls) -> ComponentRegistry:
        from circuitkit.plugins import get_registry

        return get_registry().kinds[cls.kind]

    @classmethod
    def _group(cls) -> str:
        return KINDS[cls.kind][0]

    @classmethod
    def entry(cls) -> Entry:
        """The registry entry under test (fails the test with advice when it is missing)."""
        if not cls.name:
            pytest.fail(f"{cls.__name__}: set the class attribute name = '<registered {cls._group()} name>'.")
        reg = cls._components()
        if cls.name not in reg.entries:
            pytest.fail(
                f"{cls.__name__}: no {cls._group()} named '{cls.name}' is registered (registered: "
                f"{', '.join(reg.names()) or 'none'}). Is the plugin installed (pip install -e .) with an entry point "
                "in the 'circuitkit' group, and not blocked (CIRCUITKIT_BLOCK_PLUGINS)? After changing entry points, "
                "reinstall the package and call circuitkit.plugins.clear_cache() in long-lived processes."
            )
        return reg.entries[cls.name]

    @classmethod
    def build(cls, options: dict[str, Any] | None = None) -> Any:
        """Build the component from its config defaults plus ``options``."""
        cls.entry()
        return cls._components().build(cls.name, dict(options or {}))


class ComponentContract(RegisteredContract):
    """Checks shared by every kind registered with a config dataclass (methods, tasks, selectors,
    evaluators, reporters): the config's defaults, its Hydra composition, and building from it."""

    # -- tests --
    def test_registered_with_a_config_dataclass(self) -> None:
        entry = self.entry()
        _, base, cfg_base, _ = KINDS[self.kind]
        assert issubclass(entry.cls, base), f"{entry.cls} is not a {base.__name__}"
        assert cfg_base is not None and dataclasses.is_dataclass(entry.config) and issubclass(entry.options, cfg_base)
        assert entry.plugin, "the registry does not know which plugin registered it"

    def test_config_instantiates_with_defaults(self) -> None:
        from omegaconf import OmegaConf

        entry = self.entry()
        try:
            cfg = entry.options(name=self.name)
        except TypeError as e:
            pytest.fail(f"{entry.options.__name__} needs a default for every field (Hydra builds it from defaults): {e}")
        node = OmegaConf.structured(cfg)  # what the ConfigStore holds; fails on types OmegaConf cannot hold
        assert node.name == self.name

    def test_name_option_is_the_registered_name(self) -> None:
        """``name`` belongs to circuitkit (the registry sets it to the registered name): a config must not
        redefine it as an option of its own, which could never be set."""
        entry = self.entry()
        field = {f.name: f for f in dataclasses.fields(entry.options)}["name"]
        base = {f.name: f for f in dataclasses.fields(PluginConfig)}["name"]
        assert field.default == base.default and field.type in (str, "str"), (
            f"{entry.options.__name__} redefines the reserved field 'name' ({field.type}, default {field.default!r}); "
            "the registry always overwrites it with the registered name. Rename the option."
        )
        built = self.build()
        assert built.config.name == self.name

    def test_config_composes_with_hydra(self, ck_options: dict[str, Any]) -> None:
        from omegaconf import OmegaConf

        entry = self.entry()
        group = self._group()
        combinable = KINDS[self.kind][3]
        cfg = compose_config([f"{group}=[{self.name}]" if combinable else f"{group}={self.name}"])
        node = cfg[group][self.name] if combinable else cfg[group]
        composed = OmegaConf.to_container(node, resolve=True)
        defaults = _plain(dataclasses.asdict(entry.options(name=self.name)))
        assert composed == defaults, f"composed {group} config {composed} differs from the dataclass defaults {defaults}"
        merged = OmegaConf.merge(node, ck_options) if ck_options else node
        built = self._components().build(self.name, merged)
        component: Any = built
        assert isinstance(built, entry.cls) and component.config.name == self.name


class AttributorContract(ComponentContract):
    """Contract of an attribution method (``circuitkit_register_methods``), on ``ck_tiny_model``."""

    kind = "methods"
    #: batch sizes whose scores must agree
    batch_sizes: ClassVar[tuple[int, ...]] = (1, 3, 8)
    rtol: ClassVar[float] = 1e-5

    @classmethod
    def attribute(cls, model: Any, task: Task, data: TaskData, batch_size: int, options: dict[str, Any], seed: int = 0) -> Scores:
        torch.manual_seed(seed)
        ctx = RunContext(batch_size=batch_size, progress=False, seed=seed)
        return cls.build(options).attribute(model, task, data, ctx)

    @pytest.fixture(scope="class")
    @classmethod
    def ck_reference_scores(
        cls, ck_tiny_model: Any, ck_tiny_task: Task, ck_tiny_data: TaskData, ck_options: dict[str, Any]
    ) -> Scores:
        return cls.attribute(ck_tiny_model, ck_tiny_task, ck_tiny_data, max(cls.batch_sizes), ck_options)

    def test_scores_cover_every_edge_and_are_finite(self, ck_reference_scores: Scores, ck_tiny_model: Any) -> None:
        s = ck_reference_scores
        g = ck_tiny_model.graph
        assert isinstance(s, Scores), f"attribute() returned {type(s).__name__}, not circuitkit.results.Scores"
        assert s.graph == g, f"scores are over {s.graph}, the model's graph is {g}"
        assert tuple(s.values.shape) == (g.n_edges,)
        bad = [g.edge_names[i] for i in (~torch.isfinite(s.values)).nonzero().flatten()[:5].tolist()]
        assert not bad, f"non-finite scores, e.g. for {bad}"
        assert bool((s.values != 0).any()), "every score is 0 on a random model whose clean and corrupted runs differ"
        json.dumps(s.to_json(), allow_nan=False)  # scores.json can be written

    def test_deterministic_for_a_seed(
        self,
        ck_reference_scores: Scores,
        ck_tiny_model: Any,
        ck_tiny_task: Task,
        ck_tiny_data: TaskData,
        ck_options: dict[str, Any],
    ) -> None:
        again = self.attribute(ck_tiny_model, ck_tiny_task, ck_tiny_data, max(self.batch_sizes), ck_options)
        diff = (again.values - ck_reference_scores.values).abs().max().item()
        assert torch.equal(again.values, ck_reference_scores.values), f"two runs with seed 0 differ by up to {diff:g}"

    def test_scores_do_not_depend_on_the_batch_size(
        self, ck_tiny_model64: Any, ck_tiny_task: Task, ck_tiny_data: TaskData, ck_options: dict[str, Any]
    ) -> None:
        """In float64, so that the check sees the algorithm (examples averaged, not batches), not rounding."""
        sizes = sorted(self.batch_sizes, reverse=True)
        ref = self.attribute(ck_tiny_model64, ck_tiny_task, ck_tiny_data, sizes[0], ck_options).values
        scale = float(ref.abs().max())
        for b in sizes[1:]:
            other = self.attribute(ck_tiny_model64, ck_tiny_task, ck_tiny_data, b, ck_options).values
            worst = (other - ref).abs().max().item()
            assert torch.allclose(other, ref, rtol=self.rtol, atol=self.rtol * scale, equal_nan=True), (
                f"batch_size={b} and batch_size={sizes[0]} give scores differing by up to {worst:g} "
                f"(largest |score| {scale:g}); scores must be averaged over examples, not over batches"
            )


class TaskContract(ComponentContract):
    """Contract of a task (``circuitkit_register_tasks``), with the GPT-2 tokenizer."""

    kind = "tasks"
    options: ClassVar[dict[str, Any]] = {"n_examples": 16}

    @pytest.fixture(scope="class")
    @classmethod
    def ck_task_data(cls, ck_tokenizer: Any, ck_options: dict[str, Any]) -> tuple[Task, TaskData]:
        task = cls.build(ck_options)
        return task, task.build(ck_tokenizer)

    def test_builds_examples_for_the_gpt2_tokenizer(self, ck_task_data: tuple[Task, TaskData]) -> None:
        task, data = ck_task_data
        assert isinstance(data, TaskData) and len(data) >= 1
        assert len(data) <= task.config.n_examples
        if task.on_invalid == "drop":  # a generator: it must produce as many usable examples as asked for
            assert len(data) == task.config.n_examples, (
                f"asked for {task.config.n_examples} examples, got {len(data)} usable ones with the GPT-2 tokenizer "
                f"({len(data.dropped)} dropped: {sorted({r for _, r in data.dropped})[:2]}); generate more candidates"
            )

    def test_pairs_have_equal_length_and_single_token_answers(
        self, ck_task_data: tuple[Task, TaskData], ck_tokenizer: Any
    ) -> None:
        _, data = ck_task_data
        for ex in data.examples:
            clean, corrupted = encode(ck_tokenizer, ex.clean), encode(ck_tokenizer, ex.corrupted)
            assert len(clean) == len(corrupted), f"{ex.clean!r} and {ex.corrupted!r}: {len(clean)} vs {len(corrupted)} tokens"
            assert ex.clean != ex.corrupted, f"clean and corrupted are the same prompt: {ex.clean!r}"
            assert ex.correct, f"no correct answer for {ex.clean!r}"
            for a in ex.correct + ex.incorrect:
                assert len(encode(ck_tokenizer, a)) == 1, f"answer {a!r} of {ex.clean!r} is not one GPT-2 token"
            assert not set(ex.correct) & set(ex.incorrect), f"answers both correct and incorrect for {ex.clean!r}"

    def test_same_seed_gives_the_same_examples(
        self, ck_task_data: tuple[Task, TaskData], ck_tokenizer: Any, ck_options: dict[str, Any]
    ) -> None:
        _, data = ck_task_data
        again = self.build(ck_options).build(ck_tokenizer)
        assert again.content_hash() == data.content_hash(), "building the task twice with the same seed gave different examples"

    def test_metric_gives_one_finite_number_per_example(self, ck_task_data: tuple[Task, TaskData], ck_tokenizer: Any) -> None:
        task, data = ck_task_data
        batch = next(data.batches(4, ck_tokenizer.eos_token_id or 0))
        logits = torch.randn(len(batch), len(ck_tokenizer), generator=torch.Generator().manual_seed(0))
        m = task.metric(logits, batch)
        assert tuple(m.shape) == (len(batch),), f"the metric returned shape {tuple(m.shape)}, expected ({len(batch)},)"
        assert bool(torch.isfinite(m).all())


class SelectorContract(ComponentContract):
    """Contract of a selector (``circuitkit_register_selectors``), on GPT-2 small's graph."""

    kind = "selectors"
    seeds: ClassVar[tuple[int, ...]] = (0, 1, 2)

    @staticmethod
    def random_scores(graph: Graph, seed: int) -> Scores:
        values = torch.randn(graph.n_edges, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        return Scores(graph, values * 1e-3, {"method": "random", "seed": seed})

    def test_accepts_the_gpt2_small_graph(self, ck_options: dict[str, Any]) -> None:
        self.build(ck_options).validate(gpt2_small_graph())

    @staticmethod
    def selecting(selector: Any, request: Any) -> tuple[Graph, Any]:
        """The graph to test on and ``scores -> circuit``: GPT-2 small's graph and ``select``, or for a
        selector that measures circuits ``ck_tiny_model``'s graph and ``select_in_run`` on ``ck_tiny_data``."""
        if not selector.measures_circuits():
            return gpt2_small_graph(), selector.select
        model = request.getfixturevalue("ck_tiny_model")
        task, data = request.getfixturevalue("ck_tiny_task"), request.getfixturevalue("ck_tiny_data")

        def select(scores: Scores) -> Circuit:
            ctx = RunContext(batch_size=4, progress=False, seed=0, scores=scores)
            return selector.select_in_run(scores, model, task, data, ctx)

        return model.graph, select

    def test_circuits_are_connected_on_random_scores(self, ck_options: dict[str, Any], request: Any) -> None:
        selector = self.build(ck_options)
        g, select = self.selecting(selector, request)
        for seed in self.seeds:
            c = select(self.random_scores(g, seed))
            assert isinstance(c, Circuit), f"select() returned {type(c).__name__}, not circuitkit.results.Circuit"
            assert c.graph == g
            assert c.edges.dtype == bool and c.edges.shape == (g.n_edges,)
            dangling = int((c.edges & ~g.prune(c.edges)).sum())
            assert dangling == 0, f"seed {seed}: {dangling} of the circuit's {c.n_edges} edges dangle (graph.prune(mask) != mask)"

    def test_same_scores_give_the_same_circuit(self, ck_options: dict[str, Any], request: Any) -> None:
        g, select_a = self.selecting(self.build(ck_options), request)
        _, select_b = self.selecting(self.build(ck_options), request)
        scores = self.random_scores(g, 7)
        a = select_a(scores)
        b = select_b(scores)
        assert (a.edges == b.edges).all()


class EvaluatorContract(ComponentContract):
    """Contract of an evaluator (``circuitkit_register_evaluators``), on ``ck_tiny_model``."""

    kind = "evaluators"
    rtol: ClassVar[float] = 1e-5

    @pytest.fixture(scope="class")
    @classmethod
    def ck_endpoint_results(
        cls, ck_tiny_model: Any, ck_tiny_task: Task, ck_tiny_data: TaskData, ck_options: dict[str, Any]
    ) -> dict[str, EvalResult]:
        g = ck_tiny_model.graph
        scores = SelectorContract.random_scores(g, 0)
        out = {}
        for label, circuit in (("empty", Circuit.empty(g)), ("full", Circuit(g, Circuit.full(g).edges, scores))):
            torch.manual_seed(0)
            ctx = RunContext(batch_size=3, progress=False, seed=0, scores=scores)
            out[label] = cls.build(ck_options).evaluate(ck_tiny_model, ck_tiny_task, ck_tiny_data, circuit, ctx)
        return out

    def test_results_are_json(self, ck_endpoint_results: dict[str, EvalResult]) -> None:
        for label, res in ck_endpoint_results.items():
            assert isinstance(res, EvalResult), f"{label} circuit: evaluate() returned {type(res).__name__}, not EvalResult"
            assert res.name, "EvalResult.name is empty (it keys the evaluator's section of results.json)"
            for k, v in res.values.items():
                assert v is None or isinstance(v, (int, float)), f"{label} circuit: value {k}={v!r} is not a number or None"
            json.dumps(res.to_json(), allow_nan=False)

    def test_empty_circuit_is_corrupted_and_full_circuit_is_clean(self, ck_endpoint_results: dict[str, EvalResult]) -> None:
        keys = {"clean_metric", "corrupted_metric", "circuit_metric"}
        have = set(ck_endpoint_results["full"].values)
        if not keys <= have:
            pytest.skip(f"'{self.name}' does not report {', '.join(sorted(keys - have))}: no endpoint to check")
        for label, target in (("empty", "corrupted_metric"), ("full", "clean_metric")):
            v = {k: float(x) for k, x in ck_endpoint_results[label].values.items() if isinstance(x, (int, float))}
            scale = max(abs(v["clean_metric"]), abs(v["corrupted_metric"]), 1e-6)
            assert math.isclose(v["circuit_metric"], v[target], rel_tol=self.rtol, abs_tol=self.rtol * scale), (
                f"the {label} circuit's metric is {v['circuit_metric']:g}, expected the {target.split('_')[0]} metric {v[target]:g}"
            )
            if v.get("faithfulness") is not None:
                want = 0.0 if label == "empty" else 1.0
                assert math.isclose(v["faithfulness"], want, abs_tol=1e-4), (
                    f"the {label} circuit's faithfulness is {v['faithfulness']:g}, expected {want}"
                )


class ReporterContract(ComponentContract):
    """Contract of a reporter (``circuitkit_register_reporters``).

    Reporters send runs to outside services (W&B...), so :meth:`~circuitkit.interfaces.Reporter.report`
    is not exercised here: only the registration, the config and building from the defaults are. Test
    ``report()`` in the plugin's own tests, against an offline or fake service.
    """

    kind = "reporters"

    def test_builds_from_its_default_config(self, ck_options: dict[str, Any]) -> None:
        entry = self.entry()
        reporter = entry.cls(entry.options(name=self.name))
        assert callable(getattr(reporter, "report", None))
        assert isinstance(self.build(ck_options), entry.cls)


class MetricContract(RegisteredContract):
    """Contract of a task metric (``circuitkit_register_metrics``), on random logits over GPT-2's vocabulary
    for ``ck_tiny_data``'s answers (a metric that needs the model, ``kl``, is bound to ``ck_tiny_model``).

    The metric's declaration :attr:`~circuitkit.metrics.Metric.reads` is checked against what it computes:
    ``answer_logits`` must give the same values when the logits of every other token change, and on the
    answer tokens' columns alone (ids renumbered); ``answer_probs`` the same values on the answer columns
    followed by the log of the other tokens' probability mass. ``logits`` (the full vocabulary) declares
    nothing to check.
    """

    kind = "metrics"

    @classmethod
    def build(cls, options: dict[str, Any] | None = None) -> Any:
        cls.entry()
        return cls._components().build(cls.name)

    @pytest.fixture(scope="class")
    @classmethod
    def ck_metric_inputs(cls, ck_tiny_model: Any, ck_tiny_data: TaskData) -> tuple[Any, torch.Tensor, Any]:
        """(the metric, bound to ``ck_tiny_model`` if it needs a model; float64 logits ``[8, vocab]``; the batch)."""
        metric = cls.build().bind(ck_tiny_model)
        batch = next(ck_tiny_data.batches(len(ck_tiny_data), ck_tiny_model.pad_id))
        vocab = int(ck_tiny_model.bridge.cfg.d_vocab)
        logits = 3 * torch.randn(len(batch), vocab, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        return metric, logits.to(ck_tiny_model.dtype), batch

    def test_registered_as_a_metric(self) -> None:
        from circuitkit.metrics import READS, Metric

        entry = self.entry()
        assert isinstance(entry.cls, type) and issubclass(entry.cls, Metric), f"{entry.cls} is not a circuitkit.metrics.Metric"
        assert entry.config is None and entry.plugin
        assert entry.cls.reads in READS, f"{entry.cls.__name__}.reads is {entry.cls.reads!r}, not one of {', '.join(READS)}"

    def test_one_finite_number_per_example(self, ck_metric_inputs: tuple[Any, torch.Tensor, Any]) -> None:
        metric, logits, batch = ck_metric_inputs
        values = metric(logits, batch)
        assert isinstance(values, torch.Tensor) and tuple(values.shape) == (len(batch),), (
            f"the metric returned {type(values).__name__} of shape {tuple(getattr(values, 'shape', ()))}, expected ({len(batch)},)"
        )
        assert bool(torch.isfinite(values).all())
        assert torch.equal(metric(logits.clone(), batch), values), "the same logits gave different values"

    def test_reads_only_what_it_declares(self, ck_metric_inputs: tuple[Any, torch.Tensor, Any]) -> None:
        from circuitkit.data import Batch
        from circuitkit.metrics import ANSWER_LOGITS, ANSWER_PROBS

        metric, logits, batch = ck_metric_inputs
        if metric.reads not in (ANSWER_LOGITS, ANSWER_PROBS):
            pytest.skip(f"'{self.name}' reads the logits of the whole vocabulary: no declaration to check")
        k = batch.correct.numel()
        ids, inverse = torch.unique(torch.cat([batch.correct.flatten(), batch.incorrect.flatten()]), return_inverse=True)
        renumbered = Batch(
            **{**batch.__dict__, "correct": inverse[:k].view_as(batch.correct), "incorrect": inverse[k:].view_as(batch.incorrect)}
        )
        others = torch.ones(logits.shape[1], dtype=torch.bool)
        others[ids] = False
        want = metric(logits, batch)
        eps = torch.finfo(logits.dtype).eps
        tol = 64 * eps * max(1.0, float(want.abs().max()))
        if metric.reads == ANSWER_LOGITS:
            moved = logits.clone()
            moved[:, others] += torch.randn(int(others.sum()), generator=torch.Generator().manual_seed(1), dtype=logits.dtype)
            assert torch.equal(metric(moved, batch), want), "declares answer_logits, but depends on other tokens' logits"
            got = metric(logits[:, ids], renumbered)
        else:
            rest = torch.logsumexp(logits[:, others], dim=-1, keepdim=True)
            got = metric(torch.cat([logits[:, ids], rest], dim=1), renumbered)
        assert torch.allclose(got, want, rtol=0, atol=tol), (
            f"declares {metric.reads}, but gives {got.tolist()} on the answer columns vs {want.tolist()} on the full logits"
        )


class InterventionContract(RegisteredContract):
    """Contract of an intervention (``circuitkit_register_interventions``), prepared for ``ck_tiny_model``
    with ``ck_tiny_data`` as the run's data: the shape and finiteness of the values, the same values when
    asked again, values at chosen positions (``takes_positions``) equal to the full values there, the input
    node's values (``input_values``) equal to ``values[0]``, and circuits measured under it: the full circuit
    gives the clean metric whatever removed edges carry, the empty circuit the run's baseline."""

    kind = "interventions"
    batch_size: ClassVar[int] = 4

    @classmethod
    def build(cls, options: dict[str, Any] | None = None) -> Any:
        cls.entry()
        return cls._components().build(cls.name)

    @pytest.fixture(scope="class")
    @classmethod
    def ck_prepared(cls, ck_tiny_model: Any, ck_tiny_data: TaskData) -> tuple[Any, Any, torch.Tensor]:
        """(the intervention prepared for the run, the first batch, its values for that batch)."""
        from circuitkit.interventions import build_intervention

        cls.entry()
        torch.manual_seed(0)
        iv = build_intervention(ck_tiny_model, ck_tiny_data, cls.name, cls.batch_size)
        batch = next(ck_tiny_data.batches(cls.batch_size, ck_tiny_model.pad_id)).to(ck_tiny_model.device)
        with torch.no_grad():
            return iv, batch, iv.values(ck_tiny_model, batch)

    def test_registered_as_an_intervention(self) -> None:
        from circuitkit.interventions import Intervention

        entry = self.entry()
        assert isinstance(entry.cls, type) and issubclass(entry.cls, Intervention), (
            f"{entry.cls} is not a circuitkit.interventions.Intervention"
        )
        assert entry.config is None and entry.plugin

    def test_values_cover_every_source_and_are_finite(
        self, ck_prepared: tuple[Any, Any, torch.Tensor], ck_tiny_model: Any
    ) -> None:
        iv, batch, values = ck_prepared
        assert iv.kind == self.name, f"the prepared intervention says kind={iv.kind!r}"
        want = (ck_tiny_model.graph.n_sources, *batch.clean.shape, ck_tiny_model.d_model)
        assert tuple(values.shape) == want, f"values() returned shape {tuple(values.shape)}, expected {want}"
        assert bool(torch.isfinite(values).all())
        with torch.no_grad():
            assert torch.equal(iv.values(ck_tiny_model, batch), values), "asked twice, values() gave different tensors"

    def test_values_at_positions_and_of_the_input(self, ck_prepared: tuple[Any, Any, torch.Tensor], ck_tiny_model: Any) -> None:
        from circuitkit.errors import ConfigError
        from circuitkit.interventions import removed_values

        iv, batch, values = ck_prepared
        tol = 16 * torch.finfo(values.dtype).eps * max(1.0, float(values.abs().max()))
        at = slice(1, 3)
        with torch.no_grad():
            if iv.takes_positions:
                part = removed_values(ck_tiny_model, batch, iv, positions=at)
                assert torch.allclose(part, values[:, :, at], rtol=0, atol=tol), (
                    "values at positions 1..2 differ from the full values there"
                )
            else:
                with pytest.raises(ConfigError, match="positions_per_pass"):
                    removed_values(ck_tiny_model, batch, iv, positions=at)
            inputs = iv.input_values(ck_tiny_model, batch)
        assert torch.allclose(inputs, values[0], rtol=0, atol=tol), "input_values() differs from values()[0] (the input node)"

    def test_full_circuit_is_clean_and_empty_circuit_is_the_baseline(
        self, ck_prepared: tuple[Any, Any, torch.Tensor], ck_tiny_model: Any, ck_tiny_task: Task, ck_tiny_data: TaskData
    ) -> None:
        from circuitkit.evaluation import evaluate_keeps

        iv = ck_prepared[0]
        g = ck_tiny_model.graph
        keeps = torch.stack([Circuit.empty(g).keep_dense(), Circuit.full(g).keep_dense()])
        ctx = RunContext(batch_size=self.batch_size, progress=False, intervention=iv)
        ev = evaluate_keeps(ck_tiny_model, ck_tiny_task, ck_tiny_data, keeps, ctx)
        scale = max(abs(ev.clean), abs(ev.corrupted), 1e-6)
        tol = 1e-4 * scale
        assert math.isclose(ev.circuits[1], ev.clean, abs_tol=tol), (
            f"the full circuit scores {ev.circuits[1]:g}, the clean run {ev.clean:g}"
        )
        assert math.isclose(ev.circuits[0], ev.corrupted, abs_tol=tol), (
            f"the empty circuit scores {ev.circuits[0]:g}, the baseline {ev.corrupted:g}"
        )


#: kind -> its contract
CONTRACTS: dict[str, type[RegisteredContract]] = {
    "methods": AttributorContract,
    "tasks": TaskContract,
    "selectors": SelectorContract,
    "evaluators": EvaluatorContract,
    "reporters": ReporterContract,
    "metrics": MetricContract,
    "interventions": InterventionContract,
}


def contract_class(kind: str, name: str, **attributes: Any) -> type:
    """A ``Test...`` subclass of ``kind``'s contract for component ``name`` (for generated suites)::

    globals().update({c.__name__: c for c in [contract_class("methods", n) for n in names]})
    """
    contract = CONTRACTS[kind]
    cls_name = f"Test_{KINDS[kind][0]}_{name}"
    return type(
        cls_name, (contract,), {"name": name, "__module__": attributes.pop("__module__", contract.__module__), **attributes}
    )
