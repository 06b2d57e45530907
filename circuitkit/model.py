"""Loading models through TransformerLens 4's ``TransformerBridge``, and the hook names edge attribution
uses.

``load_model`` accepts the bundled model (``"bundled"``), a local directory written by
``save_pretrained`` (model and tokenizer), a Hugging Face Hub name, or an already-built HF model object.
The bridge is switched to split q/k/v inputs, per-head results and MLP-input hooks.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from circuitkit.errors import ConfigError, ModelLoadError
from circuitkit.graph import Graph

if TYPE_CHECKING:
    from circuitkit.engine.fastpaths import Capabilities
    from circuitkit.engine.wiring import Wiring

log = logging.getLogger(__name__)

BUNDLED_NAME = "bundled"
ZOO_DIR = Path(__file__).parent / "zoo"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; a clear error if CUDA is asked for but absent."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"Unknown device '{device}'. Use 'auto', 'cpu', 'cuda' or 'cuda:N'.") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"device={device} was requested but CUDA is not available on this machine (torch "
            f"{torch.__version__}). Use device=auto or device=cpu."
        )
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"device={device} does not exist: this machine has {torch.cuda.device_count()} CUDA device(s).")
    return dev


#: ``model.device_map`` strategies, as accelerate names them.
DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
_PIP_ACCELERATE = 'pip install "circuitkit[multi-gpu]" (or pip install accelerate)'


def _require_accelerate(what: str) -> None:
    try:
        import accelerate  # noqa: F401
    except ImportError:
        raise ConfigError(
            f"{what} places the model with Hugging Face device maps, which need the accelerate package: "
            f"{_PIP_ACCELERATE}. Or leave model.device_map and model.n_devices unset to load on one device."
        ) from None


def _map_target(value: Any) -> torch.device | str:
    """One value of a device map as a ``torch.device`` (an int is a CUDA index), or ``"disk"`` / ``"meta"``."""
    if isinstance(value, bool):
        raise ConfigError(f"model.device_map has the value {value!r}; use a GPU index (0, 1, ...), 'cuda:N' or 'cpu'.")
    if isinstance(value, int):
        return torch.device("cuda", value)
    if isinstance(value, torch.device):
        return value
    if isinstance(value, str) and value.strip().lower() in ("disk", "meta"):
        return value.strip().lower()
    if isinstance(value, str):
        try:
            return torch.device(value)
        except RuntimeError:
            pass
    raise ConfigError(f"model.device_map has the value {value!r}; use a GPU index (0, 1, ...), 'cuda:N' or 'cpu'.")


def _check_targets(targets: list[torch.device | str], what: str) -> None:
    """Refuse offloaded (disk/meta) targets, CPU mixed with GPUs, and GPUs this machine lacks."""
    offloaded = sorted({t for t in targets if isinstance(t, str)})
    if offloaded:
        raise ConfigError(
            f"{what} puts modules on {', '.join(offloaded)}: circuitkit reads the weights directly and needs every "
            "module in memory on a GPU (or all on the CPU). Use GPU indices, 'cuda:N' or 'cpu' only."
        )
    devs = [t for t in targets if isinstance(t, torch.device)]
    if any(d.type == "cpu" for d in devs) and any(d.type != "cpu" for d in devs):
        raise ConfigError(
            f"{what} puts some modules on the CPU and others on GPUs; TransformerBridge runs a model split over "
            "GPUs or entirely on the CPU, not both. Map every module to a GPU (model.n_devices=N spreads the model "
            "over N GPUs), or use model.device=cpu."
        )
    for d in devs:
        if d.type == "cuda":
            if not torch.cuda.is_available():
                raise ConfigError(
                    f"{what} asks for {d} but CUDA is not available on this machine (torch {torch.__version__}). "
                    "Leave model.device_map unset (model.device=auto), or map every module to 'cpu'."
                )
            if d.index is not None and d.index >= torch.cuda.device_count():
                raise ConfigError(
                    f"{what} asks for {d}, which does not exist: this machine has {torch.cuda.device_count()} CUDA "
                    "device(s). Use indices 0 .. N-1."
                )


def resolve_device_map(device: str | None, device_map: Any = None, n_devices: int | None = None) -> tuple[Any, Any]:
    """``(device_map, max_memory)`` for ``from_pretrained`` from ``model.device_map`` / ``model.n_devices``;
    ``(None, None)`` when the model is loaded on one device (``device``).

    ``device_map`` is an accelerate strategy (``auto``, ``balanced``, ``balanced_low_0``, ``sequential``), one
    device (``cpu``, ``cuda:1``) or a mapping module name -> device (GPU index, ``cuda:N`` or ``cpu``).
    ``n_devices = N > 1`` means ``device_map="balanced"`` over ``cuda:0 .. cuda:N-1`` with ``max_memory``
    holding each of them at its free memory (and nothing else), as TransformerLens translates its own
    ``n_devices``. Either is an error together with an explicit (not ``auto``) ``device``, or with the other.
    Clear :class:`ConfigError` messages for everything this machine cannot do, before any loading.
    """
    if n_devices is not None and (isinstance(n_devices, bool) or not isinstance(n_devices, int) or n_devices < 1):
        raise ConfigError(
            f"model.n_devices must be a positive integer (the number of GPUs to split the model over), got {n_devices!r}."
        )
    split = n_devices is not None and n_devices > 1
    if device_map is not None and split:
        raise ConfigError(
            f"model.device_map={device_map!r} and model.n_devices={n_devices} both say where the model goes; set one "
            "of them (n_devices=N is device_map=balanced over the first N GPUs)."
        )
    if (device_map is not None or split) and device not in (None, "auto"):
        which = f"model.device_map={device_map!r}" if device_map is not None else f"model.n_devices={n_devices}"
        raise ConfigError(
            f"{which} and model.device={device} both say where the model goes; with a device map the model's "
            "placement comes from the map. Leave model.device at auto, or unset the map to load on one device."
        )
    if device_map is None and not split:
        return None, None
    if split:
        assert n_devices is not None
        if not torch.cuda.is_available():
            raise ConfigError(
                f"model.n_devices={n_devices} splits the model over {n_devices} GPUs, but CUDA is not available on "
                f"this machine (torch {torch.__version__}). Leave model.n_devices unset to run on one device."
            )
        have = torch.cuda.device_count()
        if have < n_devices:
            raise ConfigError(
                f"model.n_devices={n_devices} splits the model over {n_devices} GPUs, but this machine has {have} "
                f"CUDA device(s). Use model.n_devices={have} or fewer (CUDA_VISIBLE_DEVICES decides which are visible)."
            )
        _require_accelerate(f"model.n_devices={n_devices}")
        return "balanced", {i: int(torch.cuda.mem_get_info(i)[0]) for i in range(n_devices)}
    what = f"model.device_map={device_map!r}"
    if isinstance(device_map, str):
        if device_map not in DEVICE_MAP_STRATEGIES:
            try:
                target = _map_target(device_map)
            except ConfigError:
                raise ConfigError(
                    f"{what} is neither a placement strategy ({', '.join(DEVICE_MAP_STRATEGIES)}) nor a device "
                    "('cpu', 'cuda:N'), nor a mapping of module names to devices."
                ) from None
            _check_targets([target], what)
        _require_accelerate(what)
        return device_map, None
    if isinstance(device_map, int) and not isinstance(device_map, bool):
        _check_targets([_map_target(device_map)], what)
        _require_accelerate(what)
        return device_map, None
    if not isinstance(device_map, Mapping) or not device_map:
        raise ConfigError(
            f"{what} must be a placement strategy ({', '.join(DEVICE_MAP_STRATEGIES)}), a device, or a non-empty "
            "mapping of module names to devices, e.g. {transformer.h.0: 0, lm_head: 1}."
        )
    _check_targets([_map_target(v) for v in device_map.values()], what)
    _require_accelerate(what)
    return {str(k): v for k, v in device_map.items()}, None


def resolve_dtype(dtype: str) -> torch.dtype:
    try:
        return DTYPES[dtype]
    except KeyError:
        raise ConfigError(f"Unknown dtype '{dtype}'. Use one of: {', '.join(DTYPES)}.") from None


@dataclass
class CircuitModel:
    """A model ready for edge attribution.

    Attributes:
        bridge: the TransformerLens 4 ``TransformerBridge`` (hooks configured).
        tokenizer: the model's tokenizer.
        graph: the edge graph of this architecture.
        name: what the model was loaded from.
        weights_hash: a hash of the weights (part of every result's provenance and cache key).
        prepend_bos: whether prompts get the tokenizer's BOS token.
        verification: the outcome of the check at load against the model's own forward pass
            (:class:`circuitkit.verify.Verification`).
        unverified: None, or what failed that check when the model was loaded with
            ``allow_unverified=True`` (recorded in results.json as ``model_unverified``).
        fast_paths: whether passes may take their shortcuts (each checked once against the plain forward;
            :mod:`circuitkit.engine`); False: the exact path everywhere.
    """

    bridge: Any
    tokenizer: Any
    graph: Graph
    name: str
    weights_hash: str
    prepend_bos: bool = True
    verification: Any = None
    unverified: str | None = None
    fast_paths: bool = True

    @property
    def device(self) -> torch.device:
        """Where token ids go and where circuitkit keeps its buffers: the input embedding's device (with a
        model split over several GPUs, the other layers may live elsewhere; see :attr:`devices`)."""
        return self.input_device

    @property
    def input_device(self) -> torch.device:
        """The device of the input embedding."""
        return module_device(getattr(self.bridge, "embed", None)) or next(self.bridge.parameters()).device

    @property
    def output_device(self) -> torch.device:
        """The device of the unembedding (where logits are computed)."""
        return module_device(getattr(self.bridge, "unembed", None)) or self.input_device

    @property
    def devices(self) -> list[torch.device]:
        """Every device holding some of the model's parameters (more than one when it is split)."""
        return list(dict.fromkeys(p.device for p in self.bridge.parameters()))

    @property
    def dtype(self) -> torch.dtype:
        return next(self.bridge.parameters()).dtype

    @property
    def d_model(self) -> int:
        return int(self.bridge.cfg.d_model)

    @property
    def pad_id(self) -> int:
        tok = self.tokenizer
        for cand in (tok.pad_token_id, tok.eos_token_id, 0):
            if cand is not None:
                return int(cand)
        return 0

    # Hook names (TransformerLens 4 bridge, see module docstring).
    INPUT_HOOK = "blocks.0.hook_resid_pre"
    LOGITS_HOOK = "ln_final.hook_in"
    UNEMBED_HOOK = "unembed.hook_in"

    @staticmethod
    def resid_pre_hook(layer: int) -> str:
        """The residual stream entering ``layer``."""
        return f"blocks.{layer}.hook_resid_pre"

    @staticmethod
    def head_out_hook(layer: int) -> str:
        return f"blocks.{layer}.attn.hook_result"

    @staticmethod
    def mlp_out_hook(layer: int) -> str:
        return f"blocks.{layer}.hook_mlp_out"

    @staticmethod
    def head_in_hook(layer: int, qkv: str) -> str:
        return f"blocks.{layer}.attn.hook_{qkv}_input"

    @staticmethod
    def head_proj_hook(layer: int, qkv: str) -> str:
        """The per-head q, k or v projection (before positional rotation, if any)."""
        return f"blocks.{layer}.attn.{qkv}.hook_out"

    @staticmethod
    def mlp_in_hook(layer: int) -> str:
        return f"blocks.{layer}.hook_mlp_in"

    def attn_out_hook(self, layer: int) -> str:
        """Where a layer's attention output joins the residual stream: after its post-attention norm on
        models that have one (see :meth:`attn_post_norm`)."""
        return f"blocks.{layer}.ln1_post.hook_out" if self.attn_post_norm(layer) is not None else f"blocks.{layer}.attn.hook_out"

    @staticmethod
    def post_norm_in_hook(layer: int) -> str:
        """The input of the norm that follows a layer's attention, where it has one (:meth:`attn_post_norm`)."""
        return f"blocks.{layer}.ln1_post.hook_in"

    @cached_property
    def capabilities(self) -> Capabilities:
        """What each fast path was found to do on this model, checked once against the plain forward
        (:class:`circuitkit.engine.fastpaths.Capabilities`)."""
        from circuitkit.engine.fastpaths import Capabilities

        return Capabilities()

    @cached_property
    def wiring(self) -> Wiring:
        """Where each node of the graph is written and read in the bridge
        (:class:`circuitkit.engine.wiring.Wiring`), built once: every pass builds its hooks from it."""
        from circuitkit.engine.wiring import Wiring

        return Wiring.build(self)

    def attn_post_norm(self, layer: int) -> Any | None:
        """The norm a layer applies to its attention output before adding it to the residual stream
        (Gemma-2/3 and OLMo-2's ``post_attention_layernorm``), or None (the sum of the heads joins the
        residual stream as it is). A head's output node is then its share of the normed sum
        (:func:`circuitkit.engine.head_shares`)."""
        return getattr(self.bridge.blocks[layer], "ln1_post", None)

    def logit_transform(self, logits: torch.Tensor) -> torch.Tensor:
        """The output transform the model applies to its unembedding's output (Gemma-2/3's final logit
        soft-capping, Cohere's ``logit_scale``, Granite's ``logits_scaling``, ...), elementwise; ``logits``
        itself for models without one."""
        fn = output_logits_transform(self.bridge)
        return logits if fn is None else fn(logits)

    def unembed(self, resid: torch.Tensor) -> torch.Tensor:
        """The model's logits from the final residual stream (the bridge's own final norm and unembedding,
        then the model's output transform: :meth:`logit_transform`), on the unembedding's device."""
        normed = self.bridge.ln_final(to_module(resid, self.bridge.ln_final))
        return self.logit_transform(self.bridge.unembed(to_module(normed, self.bridge.unembed)))


def output_logits_transform(bridge: Any) -> Any | None:
    """The architecture adapter's post-unembedding transform (TransformerLens' ``apply_output_logits_
    transform``: soft-capping, logit scales), or None when it leaves logits unchanged (checked once on a
    probe and remembered on the bridge). Whether it reproduces the Hugging Face model's logits is part
    of the check at load (:mod:`circuitkit.verify`)."""
    cached = bridge.__dict__.get("_circuitkit_logit_fn", False)
    if cached is not False:
        return cached
    fn = getattr(getattr(bridge, "adapter", None), "apply_output_logits_transform", None)
    if fn is not None:
        probe = torch.linspace(-100.0, 100.0, 201, dtype=torch.float64)
        try:
            out = fn(probe.clone())
            if isinstance(out, torch.Tensor) and out.shape == probe.shape and torch.equal(out, probe):
                fn = None
        except Exception:  # noqa: BLE001 - keep it; the check at load compares with the model's logits
            pass
    bridge.__dict__["_circuitkit_logit_fn"] = fn
    return fn


def module_device(module: Any) -> torch.device | None:
    """The device of ``module``'s first parameter (None for a module without parameters)."""
    if module is None:
        return None
    p = next(module.parameters(), None)
    return None if p is None else p.device


def to_module(x: torch.Tensor, module: Any) -> torch.Tensor:
    """``x`` on ``module``'s device, for calling a submodule of a model split over several devices (``x``
    itself when it is already there, or when the module has no parameters)."""
    dev = module_device(module)
    return x if dev is None or x.device == dev else x.to(dev)


def dispatched_map(hf_model: Any) -> dict[str, Any] | None:
    """The ``hf_device_map`` of a model that accelerate dispatched over devices (None otherwise)."""
    return getattr(hf_model, "hf_device_map", None) or None


def _short_map(device_map: dict[str, Any], n: int = 4) -> str:
    items = [f"{k or '(all)'}: {v}" for k, v in device_map.items()]
    return ", ".join(items[:n]) + (f", ... ({len(items)} modules)" if len(items) > n else "")


def _target_name(value: Any) -> str:
    """A device-map value as a lower-case device name (an int is a CUDA index)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return f"cuda:{value}"
    return str(value).strip().lower()


def _check_dispatched(hf_model: Any, name: str) -> None:
    """Refuse a dispatch that offloaded weights (disk, meta, or the CPU beside GPUs), as accelerate does when
    the model does not fit on the GPUs it was given."""
    hf_map = {k: _target_name(v) for k, v in (dispatched_map(hf_model) or {}).items()}
    offloaded = {v for v in hf_map.values() if v in ("disk", "meta")}
    if "cpu" in hf_map.values() and any(v not in ("cpu", "disk", "meta") for v in hf_map.values()):
        offloaded.add("cpu")
    if offloaded:
        where = sorted(offloaded)
        mods = [k for k, v in hf_map.items() if v in offloaded]
        raise ModelLoadError(
            f"'{name}' does not fit on the GPUs it was given: the device map put {len(mods)} module(s) on "
            f"{' and '.join(where)} ({', '.join(mods[:3])}{', ...' if len(mods) > 3 else ''}). circuitkit needs every "
            "module on a GPU (or all on the CPU). Use more GPUs (model.n_devices=N), model.dtype=bfloat16, or a "
            "smaller model."
        )


def _weights_hash(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        t = p.detach().to("cpu").contiguous()
        h.update(str(tuple(t.shape)).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.dtype != torch.bool else t.numpy().tobytes())
    return h.hexdigest()[:16]


def _check_config_json(path: Path) -> None:
    """A model directory's config.json must be a JSON object (the tokenizer loader reads it too, so a broken
    one would otherwise be reported as a tokenizer problem)."""
    import json

    cfg_path = path / "config.json"
    try:
        obj = json.loads(cfg_path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        problem = "is not UTF-8 text"
    except json.JSONDecodeError as e:
        problem = f"is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})"
    except OSError as e:
        problem = f"cannot be read ({e.strerror or e})"
    else:
        if isinstance(obj, dict) and isinstance(obj.get("model_type", ""), str):
            return
        problem = "is not a JSON object with the model's settings (model_type, ...)"
    raise ModelLoadError(
        f"The model's {cfg_path} {problem}; the directory holds a damaged model. Re-save it with model.save_pretrained(dir)."
    )


def _tokenizer_from_dir(path: Path) -> Any:
    from transformers import AutoTokenizer

    has_tok = any((path / f).exists() for f in ("tokenizer.json", "vocab.json", "tokenizer.model", "tokenizer_config.json"))
    if not has_tok:
        raise ModelLoadError(
            f"The model directory {path} has no tokenizer files (tokenizer.json, vocab.json...). Save the "
            "tokenizer beside the model with tokenizer.save_pretrained(dir)."
        )
    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as e:  # noqa: BLE001 - any failure here is a bad directory
        raise ModelLoadError(
            f"Could not load the tokenizer in {path}: {e}. Re-save it with tokenizer.save_pretrained(dir)."
        ) from e


def _load_hf(name: str, dtype: torch.dtype, placement: dict[str, Any] | None = None) -> tuple[Any, Any, str]:
    """Load (hf_model, tokenizer, source) from the zoo, a directory or the hub. ``placement``: the
    ``device_map`` (and ``max_memory``) keyword arguments of ``from_pretrained``, if any."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    placement = placement or {}

    if name == BUNDLED_NAME:
        path = ZOO_DIR / "circuitkit-tiny"
        if not (path / "config.json").exists():
            raise ModelLoadError(
                f"The bundled model is missing from {path}. Reinstall circuitkit, or train it with "
                "`python -m circuitkit.zoo.train`."
            )
    else:
        path = Path(name).expanduser()
    if path.exists() or name.startswith(("/", "./", "../", "~")):
        if not path.is_dir() or not (path / "config.json").exists():
            raise ModelLoadError(
                f"model.name={name} is not a model directory (no config.json in {path}). Save one with "
                "model.save_pretrained(dir) and tokenizer.save_pretrained(dir)."
            )
        _check_config_json(path)
        tok = _tokenizer_from_dir(path)
        try:
            model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, dtype=dtype, **placement)
        except ValueError as e:
            if placement and "device" in str(e).lower():
                raise _placement_error(str(path), placement, e) from e
            raise ModelLoadError(f"{path} holds a model that is not a causal language model Transformers can load: {e}") from e
        return model, tok, str(path)
    # Never wait on a Hub that cannot be reached (circuitkit/hub.py): a cached model loads from the cache,
    # an uncached one fails at once.
    from circuitkit import hub

    offline = hub.offline_mode()
    local_only = offline
    if not offline:
        unreachable = hub.hub_unreachable()
        if unreachable is not None:
            if not hub.in_local_cache(name):
                raise ModelLoadError(
                    f"Could not load '{name}': the Hugging Face Hub cannot be reached ({unreachable}) and '{name}' is not "
                    "in the local Hugging Face cache. Save the model where the hub is reachable with "
                    "model.save_pretrained(DIR) and tokenizer.save_pretrained(DIR), copy DIR here and run with "
                    "model.name=/path/to/DIR; or use the bundled model (model=bundled)."
                )
            log.info("The Hugging Face Hub cannot be reached (%s); loading '%s' from the local cache.", unreachable, name)
            local_only = True
    try:
        tok = AutoTokenizer.from_pretrained(name, local_files_only=local_only)
        model = AutoModelForCausalLM.from_pretrained(name, local_files_only=local_only, dtype=dtype, **placement)
    except (OSError, ConnectionError, TimeoutError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ModelLoadError(
            f"Could not load '{name}' from the Hugging Face Hub{' (HF_HUB_OFFLINE=1)' if offline else ''}: {msg}. "
            "If this machine is offline, save the model where the hub is reachable with "
            "model.save_pretrained(DIR) and tokenizer.save_pretrained(DIR), copy DIR here and run with "
            "model.name=/path/to/DIR; or use the bundled model (model=bundled)."
        ) from e
    except ValueError as e:
        if placement and "device" in str(e).lower():
            raise _placement_error(name, placement, e) from e
        raise ModelLoadError(f"'{name}' is not a causal language model that Transformers can load: {e}") from e
    return model, tok, name


def _placement_error(name: str, placement: dict[str, Any], e: Exception) -> ModelLoadError:
    first = str(e).splitlines()[0] if str(e) else type(e).__name__
    return ModelLoadError(
        f"Transformers could not place '{name}' with device_map={placement['device_map']!r}: {first} A mapping "
        "must name a device for every module of the model (the names of model.named_modules(), e.g. "
        "model.embed_tokens, model.layers.0, ..., lm_head); or use device_map=auto / model.n_devices=N."
    )


def bridge_model(
    hf_model: Any,
    tokenizer: Any,
    *,
    name: str = "custom",
    device: str | None = "auto",
    prepend_bos: bool = True,
    allow_unverified: bool = False,
) -> CircuitModel:
    """Wrap an already-built Hugging Face causal LM in a configured ``TransformerBridge``.

    The wrapped model is checked once against the Hugging Face model's own forward pass
    (:func:`circuitkit.verify.check_model`): a model whose residual stream is not the sum of the graph's
    source outputs, or whose logits circuitkit does not reproduce, is refused with a
    :class:`ModelLoadError` unless ``allow_unverified`` (then a warning, and ``unverified`` says what
    failed).

    ``device``: where to move the model; None leaves it where it is. A model dispatched over several
    devices by accelerate (``from_pretrained(..., device_map=...)``, which sets ``hf_device_map``) is never
    moved: ``device`` must then be ``auto`` or None.

    The bridge gets a copy of the tokenizer (round-tripped through a temporary directory when it was not
    loaded from one, which the bridge requires); the model keeps ``tokenizer`` itself. Prompts start with
    the BOS token when ``prepend_bos`` and ``tokenizer`` has one (decided before wrapping, which would give a
    tokenizer without one its EOS token as BOS).
    """
    import tempfile

    from transformer_lens.model_bridge import TransformerBridge

    if dispatched_map(hf_model):
        if device not in (None, "auto"):
            raise ConfigError(
                f"'{name}' is split over devices by a device map ({_short_map(hf_model.hf_device_map)}), so it cannot "
                f"also be moved to device={device}. Leave the device at auto (or None), or load the model without "
                "a device map."
            )
        _check_dispatched(hf_model, name)
        dev = None
        hf_model = hf_model.eval()
    elif device is None:
        dev = next(hf_model.parameters()).device
        hf_model = hf_model.eval()
    else:
        dev = resolve_device(device)
        hf_model = hf_model.to(dev).eval()
    if getattr(hf_model.config, "architectures", None) is None:
        hf_model.config.architectures = [type(hf_model).__name__]
    # BOS is decided from the tokenizer as it was given: wrapping gives a tokenizer without a BOS token its
    # EOS token (or an added "<|endoftext|>") as BOS, in place, so the bridge gets a copy and the model keeps
    # the given tokenizer.
    given = tokenizer
    if given.bos_token_id is None:
        prepend_bos = False
    tokenizer = copy.deepcopy(given)
    loaded_from = str(getattr(tokenizer, "name_or_path", "") or "")  # "" for one built in memory (not ".")
    # The bridge reloads a tokenizer with a BOS token from its directory, so the copy's lives until it is booted.
    saved = tempfile.TemporaryDirectory()
    if not (loaded_from and Path(loaded_from).is_dir()):
        from transformers import AutoTokenizer

        tokenizer.save_pretrained(saved.name)
        tokenizer = AutoTokenizer.from_pretrained(saved.name)
    arch = (hf_model.config.architectures or [type(hf_model).__name__])[0]
    try:
        with saved, warnings.catch_warnings(), _quiet():
            warnings.simplefilter("ignore")
            # device=None: the bridge takes the placement from the model (for a dispatched model, from its
            # hf_device_map: cfg.device is the input embedding's device).
            bridge = TransformerBridge.boot_transformers(name, hf_model=hf_model, tokenizer=tokenizer, device=dev)
    except Exception as e:  # noqa: BLE001 - the bridge raises many types for unsupported models
        raise ModelLoadError(
            f"TransformerLens' TransformerBridge cannot wrap '{name}' (architecture {arch}): "
            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}. Use a causal LM architecture that "
            "TransformerLens 4 supports (GPT-2, GPT-NeoX/Pythia, Llama, Qwen, Gemma, ...)."
        ) from e
    try:
        bridge.set_use_split_qkv_input(True)
        bridge.set_use_attn_result(True)
        bridge.set_use_hook_mlp_in(True)
    except (NotImplementedError, AttributeError, ValueError) as e:
        raise ModelLoadError(
            f"'{name}' (architecture {arch}) loads in TransformerLens' TransformerBridge, but the bridge cannot give "
            f"the per-head q/k/v inputs, per-head outputs and MLP inputs that edge attribution needs "
            f"({str(e).splitlines()[0].rstrip('.')}). For some families (OPT, GPT-J among them) the bridge's attention "
            "has no hook before the q/k/v projections, so circuitkit cannot give each head its own input. Families "
            f"that work: {', '.join(WORKING_FAMILIES)} (docs/architectures.md lists the checks behind each)."
        ) from e
    _wire_capture_hooks(bridge)
    _check_mlp_inputs(bridge, name, arch, allow_unverified)
    for p in bridge.parameters():
        p.requires_grad_(False)
    cfg = bridge.cfg
    n_heads = int(cfg.n_heads)
    n_kv = getattr(cfg, "n_key_value_heads", None)
    n_kv = n_heads if n_kv is None else int(n_kv)
    if n_kv != n_heads:
        _check_kv_inputs(bridge, name, arch, n_heads, n_kv)
    graph = Graph(int(cfg.n_layers), n_heads, bool(getattr(cfg, "parallel_attn_mlp", False)), n_kv)
    _check_post_norms(bridge, name, arch, int(cfg.n_layers))
    model = CircuitModel(bridge, given, graph, name, _weights_hash(hf_model), prepend_bos)
    from circuitkit.verify import check_model

    check_model(model, allow_unverified=allow_unverified)
    return model


def _check_post_norms(bridge: Any, name: str, arch: str, n_layers: int) -> None:
    """A norm after the attention must be an RMSNorm (the per-head shares are written for it)."""
    for layer in range(n_layers):
        norm = getattr(bridge.blocks[layer], "ln1_post", None)
        if norm is not None and not (getattr(norm, "uses_rms_norm", False) and hasattr(norm.original_component, "weight")):
            raise ModelLoadError(
                f"'{name}' (architecture {arch}) normalises each attention output with a "
                f"{type(norm.original_component).__name__} before it joins the residual stream; circuitkit splits "
                "such a normed output between the heads for RMSNorm only (Gemma-2, Gemma-3, OLMo-2). Use a model "
                "without post-attention norms or with RMSNorm ones."
            )


#: Architecture families whose tiny models pass every check of ``tests/test_architectures.py`` (named in
#: the message that refuses a model; the test checks each name against its results).
WORKING_FAMILIES = (
    "GPT-2",
    "GPT-NeoX/Pythia",
    "Llama",
    "Mistral",
    "Qwen2",
    "Qwen3",
    "Gemma",
    "Gemma-2",
    "Gemma-3",
    "Phi-3",
    "OLMo",
    "OLMo-2",
    "StableLM",
    "SmolLM",
    "SmolLM3",
    "Bloom",
)


def _wire_capture_hooks(bridge: Any) -> None:
    """Install each block's capture hooks (the residual before the attention's norm, from which the
    per-head q/k/v inputs are formed, and the MLP-input hook). TransformerLens' generic block installs them
    on its first forward, but a block with its own forward (Bloom's) never does: its q/k/v inputs then
    start after the norm and its MLP-input hook is never called. Installing them is idempotent."""
    for block in getattr(bridge, "blocks", []):
        wire = getattr(block, "_maybe_wire_capture_hooks", None)
        if callable(wire):
            wire()


def _check_mlp_inputs(bridge: Any, name: str, arch: str, allow_unverified: bool = False) -> None:
    """Every MLP must read its input hook: a change there must change what the MLP is called with. Where attention
    and MLP share one input norm (Phi, Falcon's parallel blocks, GPT-J), TransformerLens' bridge puts the MLP-
    input hook on a norm the MLP never reads, and every edge into an MLP would silently score zero. Checked
    with two forwards of one token per layer. With ``allow_unverified`` a failure is a warning."""
    dev = module_device(getattr(bridge, "embed", None)) or next(bridge.parameters()).device
    tokens = torch.zeros(1, 2, dtype=torch.long, device=dev)
    box: dict[str, torch.Tensor] = {}

    def grab(module: Any, args: tuple, kwargs: dict) -> None:
        # What the MLP module is called with: its input, whatever its weights (an MLP with zero weights,
        # whose output never changes, still reads its input).
        x = args[0] if args else next((v for v in kwargs.values() if isinstance(v, torch.Tensor)), None)
        if isinstance(x, torch.Tensor) and "x" not in box:
            box["x"] = x.detach().clone()

    def shift(t: torch.Tensor, hook: Any) -> torch.Tensor:
        # Not a constant (a LayerNorm would remove it): a ramp over the model dimension.
        ramp = torch.linspace(-1.0, 1.0, t.shape[-1], device=t.device, dtype=t.dtype)
        return t + ramp * t.detach().abs().mean().clamp(min=1e-3)

    dead = []
    with torch.no_grad():
        for layer in range(int(bridge.cfg.n_layers)):
            mlp = bridge.blocks[layer].mlp
            seen = []
            for hooks in ([], [(CircuitModel.mlp_in_hook(layer), shift)]):
                box.clear()
                handle = mlp.register_forward_pre_hook(grab, with_kwargs=True)
                try:
                    with bridge.hooks(fwd_hooks=hooks):
                        bridge(tokens)
                finally:
                    handle.remove()
                seen.append(box.get("x"))
            plain, shifted = seen
            if plain is None or shifted is None or torch.equal(plain, shifted):
                dead.append(layer)
    if dead:
        error = ModelLoadError(
            f"'{name}' (architecture {arch}) loads in TransformerLens' TransformerBridge, but its MLP-input hook is not "
            f"what the MLP reads (layer{'s' if len(dead) > 1 else ''} {', '.join(map(str, dead))}): attention and MLP "
            "share one input norm here, and the bridge hooks a norm the MLP never uses, so every edge into an MLP "
            f"would score zero. Families that work: {', '.join(WORKING_FAMILIES)} (docs/architectures.md lists the "
            "checks behind each)."
        )
        if not allow_unverified:
            raise error
        log.warning("%s Going on (allow_unverified): edges into MLPs score zero.", error)


class _Seen(Exception):
    """Stops the shape check once the first attention layer's inputs have been seen."""


def _check_kv_inputs(bridge: Any, name: str, arch: str, n_heads: int, n_kv: int) -> None:
    """Grouped-query attention: the graph has one k and one v input per key/value head, so the bridge's
    k/v input hooks must have ``n_kv`` head slots (and the q input ``n_heads``). Checked on one token."""
    slots: dict[str, int] = {}

    def grab(t: torch.Tensor, hook: Any) -> torch.Tensor:
        slots[hook.name.rsplit("hook_", 1)[1][0]] = int(t.shape[2]) if t.dim() == 4 else -1
        if len(slots) == 3:
            raise _Seen
        return t

    hooks = [(CircuitModel.head_in_hook(0, x), grab) for x in "qkv"]
    dev = module_device(getattr(bridge, "embed", None)) or next(bridge.parameters()).device
    try:
        with torch.no_grad(), bridge.hooks(fwd_hooks=hooks):
            bridge(torch.zeros(1, 1, dtype=torch.long, device=dev))
    except _Seen:
        pass
    want = {"q": n_heads, "k": n_kv, "v": n_kv}
    if slots != want:
        got = ", ".join(f"{x}: {slots.get(x, 'none')}" for x in "qkv")
        raise ModelLoadError(
            f"'{name}' (architecture {arch}) uses grouped-query attention ({n_heads} query heads share {n_kv} "
            f"key/value head{'s' if n_kv != 1 else ''}), but the bridge's per-head q/k/v input hooks have {got} head slots; circuitkit needs "
            f"{n_heads} for q and {n_kv} for k and v (one per key/value head). Use a TransformerLens version whose "
            "bridge keeps key/value inputs grouped."
        )


@contextlib.contextmanager
def _quiet():
    """Silence the bridge's and transformers' informational logging while booting."""
    loggers = [logging.getLogger(n) for n in ("transformer_lens", "transformers", "root")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def load_model(
    name: str = BUNDLED_NAME,
    *,
    device: str = "auto",
    dtype: str = "float32",
    prepend_bos: bool = True,
    device_map: Any = None,
    n_devices: int | None = None,
    allow_unverified: bool = False,
) -> CircuitModel:
    """Load a causal LM for circuit discovery.

    Args:
        name: ``"bundled"``, a local directory written by ``save_pretrained`` (model + tokenizer), or a
            Hugging Face Hub name such as ``"gpt2"``.
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        dtype: ``"float32"`` (default), ``"bfloat16"``, ``"float16"`` or ``"float64"``.
        prepend_bos: put the BOS token before every prompt (as TransformerLens does by default).
        device_map: place the model with a Hugging Face device map (needs ``accelerate``): ``"auto"``,
            ``"balanced"``, ``"balanced_low_0"``, ``"sequential"``, one device, or a mapping module name ->
            device; passed to ``from_pretrained``. ``device`` must then be ``"auto"``.
        n_devices: split the model over ``cuda:0 .. cuda:N-1`` (``device_map="balanced"`` limited to those
            GPUs); 1 or None: one device.
        allow_unverified: go on (with a warning) when the model fails the check against its own forward
            pass (see :func:`bridge_model`), instead of refusing it.

    Returns:
        A :class:`CircuitModel`.
    """
    if not name:
        raise ConfigError("model.name is empty. Use model=bundled, model.name=gpt2 or model.name=/path/to/dir.")
    # Fail before a long load.
    hf_map, max_memory = resolve_device_map(device, device_map, n_devices)
    if hf_map is None:
        resolve_device(device)
    placement = {} if hf_map is None else {"device_map": hf_map, **({"max_memory": max_memory} if max_memory else {})}
    torch_dtype = resolve_dtype(dtype)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass
    hf_model, tok, source = _load_hf(name, torch_dtype, placement)
    # With a device map the model stays where it was placed (transformers dispatches it only when the map
    # names several devices; a map onto one device just loads it there).
    return bridge_model(
        hf_model,
        tok,
        name=source if name != BUNDLED_NAME else BUNDLED_NAME,
        device=device if hf_map is None else None,
        prepend_bos=prepend_bos,
        allow_unverified=allow_unverified,
    )
