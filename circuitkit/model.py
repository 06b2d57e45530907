"""Loading models through TransformerLens 4's ``TransformerBridge``, and the hook names edge attribution
uses.

``load_model`` accepts the bundled model (``"bundled"``), a local directory written by
``save_pretrained`` (model and tokenizer), a Hugging Face Hub name, or an already-built HF model object.
The bridge is switched to split q/k/v inputs, per-head results and MLP-input hooks.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from circuitkit.errors import ConfigError, ModelLoadError
from circuitkit.graph import Graph

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
    """

    bridge: Any
    tokenizer: Any
    graph: Graph
    name: str
    weights_hash: str
    prepend_bos: bool = True

    @property
    def device(self) -> torch.device:
        return next(self.bridge.parameters()).device

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

    def unembed(self, resid: torch.Tensor) -> torch.Tensor:
        """Logits from the final residual stream (the bridge's own final norm and unembedding)."""
        return self.bridge.unembed(self.bridge.ln_final(resid))


def _weights_hash(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        t = p.detach().to("cpu").contiguous()
        h.update(str(tuple(t.shape)).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.dtype != torch.bool else t.numpy().tobytes())
    return h.hexdigest()[:16]


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
        raise ModelLoadError(f"Could not load the tokenizer in {path}: {e}. Re-save it with tokenizer.save_pretrained(dir).") from e


def _load_hf(name: str, dtype: torch.dtype) -> tuple[Any, Any, str]:
    """Load (hf_model, tokenizer, source) from the zoo, a directory or the hub."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

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
        tok = _tokenizer_from_dir(path)
        try:
            model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, dtype=dtype)
        except ValueError as e:
            raise ModelLoadError(f"{path} holds a model that is not a causal language model Transformers can load: {e}") from e
        return model, tok, str(path)
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    try:
        tok = AutoTokenizer.from_pretrained(name)
        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype)
    except (OSError, ConnectionError, TimeoutError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ModelLoadError(
            f"Could not load '{name}' from the Hugging Face Hub{' (HF_HUB_OFFLINE=1)' if offline else ''}: {msg}. "
            "If this machine is offline, save the model where the hub is reachable with "
            "model.save_pretrained(DIR) and tokenizer.save_pretrained(DIR), copy DIR here and run with "
            "model.name=/path/to/DIR; or use the bundled model (model=bundled)."
        ) from e
    except ValueError as e:
        raise ModelLoadError(f"'{name}' is not a causal language model that Transformers can load: {e}") from e
    return model, tok, name


def bridge_model(
    hf_model: Any,
    tokenizer: Any,
    *,
    name: str = "custom",
    device: str = "auto",
    prepend_bos: bool = True,
) -> CircuitModel:
    """Wrap an already-built Hugging Face causal LM in a configured ``TransformerBridge``.

    The tokenizer is round-tripped through a temporary directory, which the bridge requires.
    """
    import tempfile

    from transformer_lens.model_bridge import TransformerBridge

    dev = resolve_device(device)
    hf_model = hf_model.to(dev).eval()
    if getattr(hf_model.config, "architectures", None) is None:
        hf_model.config.architectures = [type(hf_model).__name__]
    if not Path(str(getattr(tokenizer, "name_or_path", "") or "")).is_dir():
        from transformers import AutoTokenizer

        with tempfile.TemporaryDirectory() as tmp:
            tokenizer.save_pretrained(tmp)
            tokenizer = AutoTokenizer.from_pretrained(tmp)
    arch = (hf_model.config.architectures or [type(hf_model).__name__])[0]
    try:
        with warnings.catch_warnings(), _quiet():
            warnings.simplefilter("ignore")
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
            f"the per-head q/k/v inputs, per-head outputs and MLP inputs that edge attribution needs: "
            f"{str(e).splitlines()[0]} Use a decoder-only causal LM such as GPT-2, Pythia/GPT-NeoX or OPT."
        ) from e
    for p in bridge.parameters():
        p.requires_grad_(False)
    cfg = bridge.cfg
    n_heads = int(cfg.n_heads)
    n_kv = getattr(cfg, "n_key_value_heads", None)
    n_kv = n_heads if n_kv is None else int(n_kv)
    if n_kv != n_heads:
        _check_kv_inputs(bridge, name, arch, n_heads, n_kv)
    graph = Graph(int(cfg.n_layers), n_heads, bool(getattr(cfg, "parallel_attn_mlp", False)), n_kv)
    if tokenizer.bos_token_id is None:
        prepend_bos = False
    return CircuitModel(bridge, tokenizer, graph, name, _weights_hash(hf_model), prepend_bos)


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

    hooks = [(f"blocks.0.attn.hook_{x}_input", grab) for x in "qkv"]
    dev = next(bridge.parameters()).device
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


def load_model(name: str = BUNDLED_NAME, *, device: str = "auto", dtype: str = "float32", prepend_bos: bool = True) -> CircuitModel:
    """Load a causal LM for circuit discovery.

    Args:
        name: ``"bundled"``, a local directory written by ``save_pretrained`` (model + tokenizer), or a
            Hugging Face Hub name such as ``"gpt2"``.
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        dtype: ``"float32"`` (default), ``"bfloat16"``, ``"float16"`` or ``"float64"``.
        prepend_bos: put the BOS token before every prompt (as TransformerLens does by default).

    Returns:
        A :class:`CircuitModel`.
    """
    if not name:
        raise ConfigError("model.name is empty. Use model=bundled, model.name=gpt2 or model.name=/path/to/dir.")
    resolve_device(device)  # fail before a long load
    torch_dtype = resolve_dtype(dtype)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass
    hf_model, tok, source = _load_hf(name, torch_dtype)
    return bridge_model(hf_model, tok, name=source if name != BUNDLED_NAME else BUNDLED_NAME, device=device, prepend_bos=prepend_bos)
