"""The run's typed configuration: the schema every run's config is checked against.

:class:`RunConfig` is stored in Hydra's ConfigStore as ``base_config`` (:func:`store_schema`); the primary
config (``circuitkit/conf/config.yaml``) names it first in its defaults list, so Hydra merges the YAML's
values, the chosen plugins' configs and the command line's overrides onto it: a misspelt top-level key or a
value of the wrong type is refused while composing. :func:`circuitkit.pipeline.run` applies the same schema
to a plain mapping (the Python API), filling in what it leaves out from the defaults below, and turns the
result into objects with ``OmegaConf.to_object``: the components' configs become their dataclasses (whose
``__post_init__`` checks their options), the rest :class:`RunConfig`, :class:`ModelConfig` and
:class:`~circuitkit.uncertainty.BootstrapConfig`.

The defaults here are those of a config given to :func:`~circuitkit.pipeline.run` without the key; the
command line's values are those of ``config.yaml`` (the same, except that it turns the attribution cache
on), where each option is documented.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from circuitkit.errors import ConfigError
from circuitkit.uncertainty import BootstrapConfig

#: The name of the schema in Hydra's ConfigStore (first in config.yaml's defaults list).
SCHEMA_NAME = "base_config"
#: Groups chosen as lists (``evaluator=[a,b]``): a mapping name -> options in the config.
COMBINABLE = ("evaluator", "reporter")


@dataclass
class ModelConfig:
    """Which model to load.

    Attributes:
        name: ``bundled``, a Hugging Face Hub name (``gpt2``) or a local directory saved with
            ``save_pretrained`` (model and tokenizer).
        device: ``auto`` (CUDA when present), ``cpu``, ``cuda``, ``cuda:N``.
        dtype: ``float32``, ``bfloat16``, ``float16`` or ``float64``.
        prepend_bos: put the tokenizer's BOS token before every prompt.
        device_map: place the model with a Hugging Face device map (needs ``accelerate``; ``device`` stays
            ``auto``): ``auto``, ``balanced``, ``balanced_low_0`` or ``sequential`` (accelerate's
            strategies over the visible GPUs), one device, or a mapping module name -> GPU index covering
            every module, as ``from_pretrained`` takes it (``'{model.embed_tokens:0,model.layers.0:0,...}'``).
            null: one device (``device``). Multi-GPU runs: see docs/concepts.md, "Large models".
        n_devices: split the model over ``cuda:0 .. cuda:N-1`` (``device_map=balanced`` limited to those
            GPUs); null or 1: one device.
        allow_unverified: go on when the model fails circuitkit's check at load against its own forward
            pass (the residual stream as the sum of the graph's node outputs, the model's own logits); the
            run then warns and records the failure in results.json (``model_unverified``).
        fast_paths: take the shortcuts that give the plain forward's numbers up to float rounding (each
            checked once per model against the plain forward; see docs/concepts.md, "Fast paths"); false:
            the exact path everywhere.
    """

    name: str = "bundled"
    device: str = "auto"
    dtype: str = "float32"
    prepend_bos: bool = True
    device_map: Any = None
    n_devices: int | None = None
    allow_unverified: bool = False
    fast_paths: bool = True


@dataclass
class PluginsConfig:
    """Attributes:
    block: plugins (entry-point names) the run leaves out, like ``CIRCUITKIT_BLOCK_PLUGINS``.
    """

    block: list[str] = field(default_factory=list)


@dataclass
class RunConfig:
    """One run: the components (each its plugin's config dataclass, or a mapping with its ``name``), the
    model and the run-level settings. Every option is described in config.yaml and docs/configuration.md.

    Attributes:
        method, task, selector: the chosen method, task and selector (required).
        evaluator, reporter: the chosen evaluators and reporters, name -> options.
        cache: reuse attribution scores (circuitkit/cache.py). False when a config given to
            :func:`circuitkit.pipeline.run` leaves it out; the command line's config turns it on.
    """

    method: Any = None
    task: Any = None
    selector: Any = None
    evaluator: dict[str, Any] = field(default_factory=dict)
    reporter: dict[str, Any] = field(default_factory=dict)
    model: ModelConfig = field(default_factory=ModelConfig)
    pictures: bool = True
    seed: int = 0
    batch_size: int = 16
    buffer_dtype: str | None = None
    positions_per_pass: int | None = None
    progress: bool = True
    bootstrap: BootstrapConfig = field(default_factory=BootstrapConfig)
    intervention: str = "patching"
    output_dir: str | None = None
    overwrite: bool = False
    cache: bool = False
    cache_dir: str | None = None
    plugins: PluginsConfig = field(default_factory=PluginsConfig)

    def __post_init__(self) -> None:
        for group in ("method", "task", "selector"):
            if not _name_of(getattr(self, group)):
                raise ConfigError(f"The run config has no {group}: choose one with {group}=NAME (a mapping with its 'name').")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {self.batch_size}.")
        self.bootstrap.check()


def _name_of(component: Any) -> str:
    if isinstance(component, dict):
        return str(component.get("name") or "")
    return str(getattr(component, "name", "") or "")


def store_schema() -> None:
    """Store :class:`RunConfig` in Hydra's ConfigStore as ``base_config`` (config.yaml's first default)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name=SCHEMA_NAME, node=RunConfig)


def store_configs(block: list[str] | tuple[str, ...] = ()) -> None:
    """Put the schema and every registered plugin's config (as ``GROUP/NAME``) into Hydra's ConfigStore:
    what composing circuitkit's config needs besides the YAML files."""
    from circuitkit.plugins import get_registry

    store_schema()
    get_registry(list(block)).store_configs()


def typed(cfg: Any) -> Any:
    """``cfg`` (the composed Hydra config, a mapping or a :class:`RunConfig`) over the schema: a DictConfig
    with every key, of checked types. A wrong key or type is a :class:`ConfigError`."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(cfg, RunConfig):
        return OmegaConf.structured(cfg)
    try:
        return OmegaConf.merge(OmegaConf.structured(RunConfig), cfg)
    except OmegaConfBaseException as e:
        raise ConfigError(f"Bad run config: {_first_line(e)}") from None


def to_objects(node: Any) -> RunConfig:
    """The typed config as objects (``OmegaConf.to_object``): component configs stored in Hydra's ConfigStore
    become their dataclasses, whose ``__post_init__`` checks their options; mappings (the Python API) stay
    mappings, for the registry to turn into dataclasses."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        out = OmegaConf.to_object(node)
    except OmegaConfBaseException as e:
        cause = e.__cause__ or e.__context__
        if isinstance(cause, ConfigError):
            raise cause from None
        raise ConfigError(f"Bad run config: {_first_line(e)}") from None
    assert isinstance(out, RunConfig)
    return out


def record(node: Any) -> dict[str, Any]:
    """The config as results.json records it: plain values, interpolations resolved; a list group with
    nothing chosen (``reporter=[]``) is left out, as Hydra composes it."""
    from omegaconf import OmegaConf

    out: dict[str, Any] = OmegaConf.to_container(node, resolve=True)  # type: ignore[assignment]
    assert isinstance(out, dict)
    for group in COMBINABLE:
        if not out.get(group):
            out.pop(group, None)
    return out


#: The package holding the presets (the repository's conf/ directory; on Hydra's search path).
PRESETS_PACKAGE = "circuitkit_conf"


def _preset_names(group: str) -> list[str]:
    """The YAML configs of ``group`` in the presets package (``paper/ioi`` for preset/paper/ioi.yaml)."""
    from importlib.resources import files

    root = files(PRESETS_PACKAGE).joinpath(group)
    out: list[str] = []

    def walk(node: Any, prefix: str) -> None:
        for child in node.iterdir():
            if child.is_dir():
                walk(child, f"{prefix}{child.name}/")
            elif child.name.endswith(".yaml"):
                out.append(prefix + child.name[: -len(".yaml")])

    if root.is_dir():
        walk(root, "")
    return sorted(out)


def model_presets() -> dict[str, ModelConfig]:
    """``model=NAME`` presets (conf/model/NAME.yaml) as :class:`ModelConfig`."""
    from importlib.resources import files

    from omegaconf import OmegaConf

    out = {}
    for name in _preset_names("model"):
        text = files(PRESETS_PACKAGE).joinpath("model").joinpath(f"{name}.yaml").read_text(encoding="utf-8")
        node = OmegaConf.merge(OmegaConf.structured(ModelConfig), OmegaConf.create(text))
        out[name] = OmegaConf.to_object(node)
    return out  # type: ignore[return-value]


def run_presets() -> list[str]:
    """The ``preset=NAME`` choices (conf/preset/NAME.yaml): ``mib``, ``paper/ioi``, ..."""
    return _preset_names("preset")


def compose(overrides: list[str] | tuple[str, ...] = (), block: list[str] | tuple[str, ...] = ()) -> Any:
    """The config ``python -m circuitkit OVERRIDES`` would run (Hydra's compose API; nothing runs): e.g.
    ``compose(["preset=mib"]).evaluator.faithfulness_curve`` are MIB's curve settings. ``block``: plugins
    left out, as ``plugins.block``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    store_configs(block)
    with initialize_config_module(config_module="circuitkit.conf", version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides))


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
