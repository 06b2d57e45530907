"""Checks of circuitkit against the Hugging Face model itself, per architecture family.

Everything here is computed with plain PyTorch hooks on a *separately loaded* Hugging Face model (never
through circuitkit's engine or TransformerLens' bridge): source outputs (a head's output is its slice of
the attention's output projection; behind a norm after the attention, its share of the normed sum), and
single-edge patches (an edit of one destination's input only: a head's q, k or v projection recomputed
from the changed residual, an MLP's input norm or input, the final norm's input). :func:`check_family`
compares circuitkit, loaded from a saved directory as a user would, with these references and returns
the errors with their tolerances; ``tests/test_architectures.py`` asserts them and
``benchmarks/architectures_table.py`` writes ``docs/architectures.md`` from them.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from circuitkit.data import Batch, Example
from circuitkit.interfaces import RunContext, Task, TaskConfig

#: Hand-written prompts (longer than the sliding windows of the tiny Mistral and Gemma models).
EXAMPLES = [
    Example(
        "When Mary and John went to the store, John gave a drink to",
        "When Mary and John went to the store, Anne gave a drink to",
        (" Mary",),
        (" John",),
    ),
    Example("The key to the old cabinets in the hall", "The keys to the old cabinets in the hall", (" is",), (" are",)),
    Example(
        "After Tom and Anna left the party, Tom said to", "After Tom and Anna left the party, Paul said to", (" Anna",), (" Tom",)
    ),
    Example("Paris is a large city, the capital of", "London is a large city, the capital of", (" France",), (" England",)),
]


class ExamplesTask(Task):
    """Serves :data:`EXAMPLES` with the logit difference."""

    def generate(self, tokenizer: Any, split: str) -> Any:
        return iter(EXAMPLES)


@dataclass(frozen=True)
class Spec:
    """Where things are in a family's Hugging Face model (module paths relative to a decoder layer).

    Attributes:
        layers: path of the decoder layers' ModuleList.
        attn_norm: the norm the attention reads the residual through (None: none).
        proj: ``{"q": path, "k": path, "v": path}`` separate projections, or ``{"qkv": path}`` fused.
        layout: fused layout: ``"split"`` (all q heads, then k heads, then v heads) or ``"interleaved"``
            (per head q, k, v).
        o_proj: the attention's output projection (its input is the heads' concatenated values).
        mlp_in: ``("add", path)``: the MLP reads the residual through this module only (a pre-MLP norm,
            or the MLP itself); ``("renorm", norm, mlp)``: the MLP reads ``norm(residual)`` with a norm it
            shares with the attention (parallel blocks).
        mlp_out: the module whose output is the MLP node's output.
        final_norm: the final norm (path from the model root).
        post_attn_norm: the norm after the attention (Gemma-2/3, OLMo-2), else None.
        norm_offset: the norm scales are ``1 + w`` (Gemma).
        parallel: attention and MLP read the same residual.
        n_kv: key/value heads.
        refused: circuitkit refuses the family (what the message must say is tested).
        softmax_float32: the attention softmax runs in float32 whatever the model's dtype (Bloom): finite
            differences then need a larger step.
        float32_internals: the Hugging Face code computes some of the forward pass in float32 whatever the
            model's dtype (RMSNorm and OLMo's LayerNorm upcast to float32; rotary tables, Phi's attention):
            a float64 model's results are then float32-rounded, and tolerances use float32's eps.
    """

    layers: str = "model.layers"
    attn_norm: str | None = "input_layernorm"
    proj: dict[str, str] = field(default_factory=lambda: {x: f"self_attn.{x}_proj" for x in "qkv"})
    layout: str = "split"
    o_proj: str = "self_attn.o_proj"
    mlp_in: tuple[str, ...] = ("add", "post_attention_layernorm")
    mlp_out: str = "mlp"
    final_norm: str = "model.norm"
    post_attn_norm: str | None = None
    norm_offset: bool = False
    parallel: bool = False
    n_kv: int = 4
    refused: bool = False
    softmax_float32: bool = False
    float32_internals: bool = True


_NEOX: dict[str, Any] = {
    "layers": "gpt_neox.layers",
    "proj": {"qkv": "attention.query_key_value"},
    "layout": "interleaved",
    "o_proj": "attention.dense",
    "final_norm": "gpt_neox.final_layer_norm",
}
_GEMMA2: dict[str, Any] = {
    "n_kv": 2,
    "mlp_in": ("add", "pre_feedforward_layernorm"),
    "mlp_out": "post_feedforward_layernorm",
    "post_attn_norm": "post_attention_layernorm",
    "norm_offset": True,
}

#: Family -> where its parts are. Families and their tiny models: :mod:`circuitkit.testing_families`.
SPECS: dict[str, Spec] = {
    "gpt2": Spec(
        layers="transformer.h",
        attn_norm="ln_1",
        proj={"qkv": "attn.c_attn"},
        o_proj="attn.c_proj",
        mlp_in=("add", "ln_2"),
        final_norm="transformer.ln_f",
        float32_internals=False,
    ),
    "gpt_neox_parallel": Spec(**_NEOX, parallel=True, float32_internals=False),
    "gpt_neox_sequential": Spec(**_NEOX, float32_internals=False),
    "llama": Spec(n_kv=2),
    "mistral": Spec(n_kv=2),
    "qwen2": Spec(n_kv=2),
    "qwen3": Spec(n_kv=2),
    "gemma": Spec(n_kv=2, norm_offset=True),
    "gemma2": Spec(**_GEMMA2),
    "gemma3": Spec(**_GEMMA2),
    "olmo": Spec(),
    "olmo2": Spec(
        attn_norm=None, mlp_in=("add", "mlp"), mlp_out="post_feedforward_layernorm", post_attn_norm="post_attention_layernorm"
    ),
    "phi": Spec(
        o_proj="self_attn.dense",
        mlp_in=("renorm", "input_layernorm", "mlp"),
        final_norm="model.final_layernorm",
        parallel=True,
        refused=True,
    ),
    "phi3": Spec(proj={"qkv": "self_attn.qkv_proj"}),
    "falcon": Spec(
        layers="transformer.h",
        proj={"qkv": "self_attention.query_key_value"},
        o_proj="self_attention.dense",
        mlp_in=("renorm", "input_layernorm", "mlp"),
        final_norm="transformer.ln_f",
        parallel=True,
        n_kv=1,
        refused=True,
    ),
    "stablelm": Spec(),
    "smollm": Spec(n_kv=2),
    "smollm3": Spec(n_kv=2),
    "bloom": Spec(
        layers="transformer.h",
        proj={"qkv": "self_attention.query_key_value"},
        layout="interleaved",
        o_proj="self_attention.dense",
        mlp_out="mlp.dense_4h_to_h",
        final_norm="transformer.ln_f",
        softmax_float32=True,
        float32_internals=False,
    ),
    "opt": Spec(refused=True),
    "gptj": Spec(refused=True, parallel=True),
}

#: Display names for the table.
TITLES = {
    "gpt2": "GPT-2",
    "gpt_neox_parallel": "GPT-NeoX / Pythia (parallel)",
    "gpt_neox_sequential": "GPT-NeoX (sequential)",
    "llama": "Llama",
    "mistral": "Mistral (sliding window)",
    "qwen2": "Qwen2",
    "qwen3": "Qwen3",
    "gemma": "Gemma",
    "gemma2": "Gemma-2 (sliding window)",
    "gemma3": "Gemma-3 (sliding window)",
    "olmo": "OLMo",
    "olmo2": "OLMo-2",
    "phi": "Phi",
    "phi3": "Phi-3",
    "falcon": "Falcon (MQA, parallel)",
    "stablelm": "StableLM",
    "smollm": "SmolLM (Llama-shaped)",
    "smollm3": "SmolLM3",
    "bloom": "Bloom",
    "opt": "OPT",
    "gptj": "GPT-J",
}


#: Edges whose exact patching and EAP scores are checked (every kind: into q, k, v, an MLP, the logits).
def checked_edges(family: str) -> list[str]:
    spec = SPECS[family]
    kv = (lambda layer, h: f"a{layer}.h{h}") if spec.n_kv == 4 else (lambda layer, g: f"a{layer}.kv{g}")
    edges = [
        "a0.h0->a1.h1<q>",
        f"input->{kv(1, 0)}<k>",
        f"m0->{kv(1, spec.n_kv - 1)}<v>",
        "a0.h1->m1",
        "input->m0",
        "a0.h0->logits",
        "a1.h3->logits",
        "m1->logits",
    ]
    if not spec.parallel:
        edges.append("a0.h2->m0")
    return edges


def expected_edges(n_layers: int, n_heads: int, n_kv: int, parallel: bool) -> int:
    """The graph's edge count from its definition: a layer's q/k/v inputs (``n_heads + 2 n_kv``) read every
    source before the layer, its MLP those and (sequential blocks) the layer's heads, the logits every source."""
    total = 0
    for layer in range(n_layers):
        before = 1 + layer * (n_heads + 1)
        total += before * (n_heads + 2 * n_kv) + before + (0 if parallel else n_heads)
    return total + 1 + n_layers * (n_heads + 1)


def _get(root: torch.nn.Module, path: str) -> Any:
    mod: Any = root
    for part in path.split("."):
        mod = getattr(mod, part)
    return mod


def _first(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _with_first(args: tuple, kwargs: dict, x: torch.Tensor) -> tuple[tuple, dict]:
    if args:
        return (x, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": x}


class HFReference:
    """Source outputs and single-destination edits computed with hooks on a Hugging Face model."""

    def __init__(self, hf: torch.nn.Module, spec: Spec) -> None:
        self.hf, self.spec = hf, spec
        cfg: Any = hf.config
        self.n_heads = 4
        self.layers = _get(hf, spec.layers)
        self.n_layers = len(self.layers)
        self.d_model = int(getattr(cfg, "hidden_size", None) or cfg.n_embd)
        self.d_head = self.d_model // self.n_heads

    # -- sources -------------------------------------------------------------------------------------
    def _head_outputs(self, layer: int, z: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``[b, p, heads, d]`` from the heads' values ``z`` (the output projection's input) and its output."""
        o = _get(self.layers[layer], self.spec.o_proj)
        dh = self.d_head
        z = z.reshape(*z.shape[:-1], self.n_heads, dh)
        if type(o).__name__ == "Conv1D":  # GPT-2: weight [in, out]
            w = o.weight.reshape(self.n_heads, dh, -1)
            heads = torch.einsum("bphe,hed->bphd", z, w)
        else:
            w = o.weight.reshape(-1, self.n_heads, dh)
            heads = torch.einsum("bphe,dhe->bphd", z, w)
        if self.spec.post_attn_norm is None:
            return heads
        # Behind a norm: each head's share of the normed sum (normaliser of the whole output, bias split).
        norm = _get(self.layers[layer], self.spec.post_attn_norm)
        bias = getattr(o, "bias", None)
        if bias is not None:
            heads = heads + bias / self.n_heads
        eps: Any = getattr(norm, "variance_epsilon", None) or getattr(norm, "eps", 1e-6)
        inv = torch.rsqrt(out.double().pow(2).mean(-1, keepdim=True) + eps)
        w = norm.weight.double() + (1.0 if self.spec.norm_offset else 0.0)
        return (heads.double() * (inv * w).unsqueeze(-2)).to(heads.dtype)

    @torch.no_grad()
    def sources(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every source node's output ``[b, p, d]`` by name (``input``, ``a0.h1``, ``m0``, ...), and
        ``attn{layer}``: what the attention block adds to the residual stream."""
        box: dict[str, torch.Tensor] = {}
        handles = []

        def pre(key: str) -> Callable:
            def hook(mod: Any, args: tuple, kwargs: dict) -> None:
                box[key] = _first(args, kwargs).detach().clone()

            return hook

        def post(key: str) -> Callable:
            def hook(mod: Any, args: tuple, out: Any) -> None:
                box[key] = (out[0] if isinstance(out, tuple) else out).detach().clone()

            return hook

        try:
            handles.append(self.layers[0].register_forward_pre_hook(pre("input"), with_kwargs=True))
            for layer, block in enumerate(self.layers):
                o = _get(block, self.spec.o_proj)
                handles.append(o.register_forward_pre_hook(pre(f"z{layer}"), with_kwargs=True))
                handles.append(o.register_forward_hook(post(f"o{layer}")))
                if self.spec.post_attn_norm is not None:
                    handles.append(_get(block, self.spec.post_attn_norm).register_forward_hook(post(f"attn{layer}")))
                handles.append(_get(block, self.spec.mlp_out).register_forward_hook(post(f"m{layer}")))
            self.hf(tokens)
        finally:
            for h in handles:
                h.remove()
        out = {"input": box["input"]}
        for layer in range(self.n_layers):
            heads = self._head_outputs(layer, box[f"z{layer}"], box[f"o{layer}"])
            for h in range(self.n_heads):
                out[f"a{layer}.h{h}"] = heads[:, :, h]
            out[f"m{layer}"] = box[f"m{layer}"]
            out[f"attn{layer}"] = box.get(f"attn{layer}", box[f"o{layer}"])
        return out

    # -- edits -----------------------------------------------------------------------------------------
    def _qkv_index(self, x: str, slot: int, n_out: int) -> slice:
        """Columns of head ``slot``'s ``x`` in the projection output (``n_out`` columns)."""
        dh, H, K = self.d_head, self.n_heads, self.spec.n_kv
        if "qkv" not in self.spec.proj:
            return slice(slot * dh, (slot + 1) * dh)
        if self.spec.layout == "interleaved":
            start = slot * 3 * dh + "qkv".index(x) * dh
        else:
            start = {"q": 0, "k": H * dh, "v": (H + K) * dh}[x] + slot * dh
        assert start + dh <= n_out
        return slice(start, start + dh)

    @torch.no_grad()
    def logits(
        self, tokens: torch.Tensor, edits: Sequence[tuple[str, torch.Tensor]] = (), z_edits: dict | None = None
    ) -> torch.Tensor:
        """The model's logits with ``edits``: ``(destination, added)`` pairs, ``added [b, p, d]`` added to
        that destination's input only (``a1.h2<q>``, ``a1.kv0<k>``, ``m0``, ``logits``); ``z_edits``
        ``{(layer, head): values}`` replace a head's values at the output projection's input (the head
        corrupted inside the model)."""
        spec = self.spec
        handles = []
        resid: dict[int, torch.Tensor] = {}

        def keep_resid(layer: int) -> Callable:
            def hook(mod: Any, args: tuple, kwargs: dict) -> None:
                resid[layer] = _first(args, kwargs)

            return hook

        def attn_in(layer: int, x: torch.Tensor) -> torch.Tensor:
            return x if spec.attn_norm is None else _get(self.layers[layer], spec.attn_norm)(x)

        try:
            for layer, block in enumerate(self.layers):
                handles.append(block.register_forward_pre_hook(keep_resid(layer), with_kwargs=True))
            for dst, added in edits:
                if dst == "logits":
                    norm = _get(self.hf, spec.final_norm)
                    handles.append(
                        norm.register_forward_pre_hook(
                            lambda m, a, k, add=added: _with_first(a, k, _first(a, k) + add), with_kwargs=True
                        )
                    )
                elif "<" in dst:
                    node, x = dst[:-1].split("<")
                    layer_s, slot_s = node[1:].split(".kv" if ".kv" in node else ".h")
                    layer, slot = int(layer_s), int(slot_s)
                    mod = _get(self.layers[layer], spec.proj.get(x, spec.proj.get("qkv", "")))

                    def edit_proj(m: Any, a: tuple, out: torch.Tensor, layer=layer, x=x, slot=slot, add=added) -> torch.Tensor:
                        full = m.forward(attn_in(layer, resid[layer] + add))  # the module's own forward, no hooks
                        cols = self._qkv_index(x, slot, out.shape[-1])
                        out = out.clone()
                        out[..., cols] = full[..., cols]
                        return out

                    handles.append(mod.register_forward_hook(edit_proj))
                else:
                    layer = int(dst[1:])
                    kind, *paths = spec.mlp_in
                    if kind == "add":
                        handles.append(
                            _get(self.layers[layer], paths[0]).register_forward_pre_hook(
                                lambda m, a, k, add=added: _with_first(a, k, _first(a, k) + add), with_kwargs=True
                            )
                        )
                    else:
                        norm = _get(self.layers[layer], paths[0])

                        def renorm(m: Any, a: tuple, k: dict, layer=layer, add=added, norm=norm) -> tuple:
                            return _with_first(a, k, norm(resid[layer] + add))

                        handles.append(_get(self.layers[layer], paths[1]).register_forward_pre_hook(renorm, with_kwargs=True))
            for (layer, head), values in (z_edits or {}).items():
                dh = self.d_head

                def put_z(m: Any, a: tuple, k: dict, head=head, values=values, dh=dh) -> tuple:
                    z = _first(a, k).clone()
                    z[..., head * dh : (head + 1) * dh] = values
                    return _with_first(a, k, z)

                handles.append(_get(self.layers[layer], spec.o_proj).register_forward_pre_hook(put_z, with_kwargs=True))
            return self.hf(tokens).logits
        finally:
            for h in handles:
                h.remove()

    @torch.no_grad()
    def head_values(self, tokens: torch.Tensor, layer: int, head: int) -> torch.Tensor:
        box = {}

        def grab(m: Any, a: tuple, k: dict) -> None:
            box["z"] = _first(a, k)[..., head * self.d_head : (head + 1) * self.d_head].clone()

        h = _get(self.layers[layer], self.spec.o_proj).register_forward_pre_hook(grab, with_kwargs=True)
        try:
            self.hf(tokens)
        finally:
            h.remove()
        return box["z"]


def _metric(task: Task, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    rows = torch.arange(len(batch))
    return task.metric(logits[rows, batch.last], batch).double()


def _destination(edge: str) -> tuple[str, str]:
    src, dst = edge.split("->")
    return src, dst


@dataclass
class Check:
    """One comparison: circuitkit's value against the reference, and the tolerance it must meet."""

    name: str
    error: float
    tolerance: float
    detail: str = ""

    @property
    def ok(self) -> bool:
        return math.isfinite(self.error) and self.error <= self.tolerance


@dataclass
class FamilyReport:
    """What :func:`check_family` measured for one family."""

    family: str
    status: str  # "supported", "refused" or "fails"
    checks: list[Check] = field(default_factory=list)
    message: str = ""  # the refusal or load error
    notes: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    fast_paths: dict[str, bool] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)


def _float_tol(n_layers: int, d_model: int, dtype: torch.dtype, scale: float) -> float:
    """Two computations of one value of magnitude ``scale`` that differ in kernels or summation order: each
    layer's sums over ``d_model`` terms round by up to ``d_model * eps`` relative."""
    eps = torch.finfo(dtype).eps
    return n_layers * d_model * eps * max(scale, 1.0)


def check_family(family: str, *, dtype: torch.dtype = torch.float64, workdir: str | Path | None = None) -> FamilyReport:
    """Build ``family``'s tiny model, save it, load it with :func:`circuitkit.load_model` as a user would,
    and compare circuitkit with hooks on the separately loaded Hugging Face model (see the module
    docstring). Checks: the edge count, the faithfulness endpoints against the model's own logits, exact
    patching and EAP (against central finite differences, Richardson-extrapolated) of the edges of
    :func:`checked_edges`, and for pre-norm families node patching of two heads against corrupting the head
    inside the model; behind a norm after the attention, that the heads' shares sum to the block's output
    (clean and corrupted runs) and how far node patching is from corrupting the head inside the model."""
    import circuitkit as ck
    from circuitkit.attribution import exact_patching
    from circuitkit.errors import ModelLoadError
    from circuitkit.evaluation import evaluate_keeps
    from circuitkit.nodes import exact_node_patching
    from circuitkit.results import Circuit
    from circuitkit.testing_families import save_family

    start = time.perf_counter()
    spec = SPECS[family]
    report = FamilyReport(family, "supported")
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        path = save_family(family, Path(tmp) / family, dtype=dtype)
        try:
            model = ck.load_model(str(path), device="cpu", dtype=str(dtype).split(".")[-1])
        except ModelLoadError as e:
            report.status = "refused" if spec.refused else "fails"
            report.message = str(e)
            report.seconds = time.perf_counter() - start
            return report
        from transformers import AutoModelForCausalLM

        hf = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype).eval()
    ref = HFReference(hf, spec)
    g = model.graph
    L, d = g.n_layers, model.d_model
    checks = report.checks
    want = expected_edges(L, g.n_heads, spec.n_kv, spec.parallel)
    checks.append(Check("edge count", abs(g.n_edges - want), 0, f"{g.n_edges} edges, formula {want}"))

    task = ExamplesTask(TaskConfig(name="examples", metric="logit_diff", n_examples=len(EXAMPLES)))
    data = task.build(model.tokenizer, prepend_bos=model.prepend_bos)
    ctx = RunContext(batch_size=len(EXAMPLES), progress=False)
    batch = next(iter(data.batches(len(EXAMPLES), model.pad_id)))
    clean_m = _metric(task, ref.logits(batch.clean), batch)
    corr_m = _metric(task, ref.logits(batch.corrupted), batch)
    scale = float(max(clean_m.abs().max(), corr_m.abs().max()))
    internal = torch.float32 if spec.float32_internals else dtype
    tol = _float_tol(L, d, internal, scale)

    # Faithfulness endpoints against the model's own logits.
    ev = evaluate_keeps(model, task, data, torch.stack([Circuit.empty(g).keep_dense(), Circuit.full(g).keep_dense()]), ctx)
    checks.append(Check("clean metric vs HF logits", abs(ev.clean - float(clean_m.mean())), tol))
    checks.append(Check("corrupted metric vs HF logits", abs(ev.corrupted - float(corr_m.mean())), tol))
    checks.append(Check("empty circuit = corrupted (HF)", abs(ev.circuits[0] - float(corr_m.mean())), tol))
    checks.append(Check("full circuit = clean (HF)", abs(ev.circuits[1] - float(clean_m.mean())), tol))

    # Exact patching and EAP of single edges against patches on the HF model.
    clean_src, corr_src = ref.sources(batch.clean), ref.sources(batch.corrupted)
    edges = checked_edges(family)
    idx = torch.tensor([g.index_of(e) for e in edges])
    exact = exact_patching(model, task, data, ctx, edges=idx, edges_per_pass=4)
    eap = ck.build("methods", "eap").attribute(model, task, data, ctx)
    worst_patch = worst_eap = eap_tol_max = 0.0
    for edge in edges:
        src, dst = _destination(edge)
        diff = corr_src[src] - clean_src[src]

        def f(frac: float, dst: str = dst, diff: torch.Tensor = diff) -> float:
            return float(_metric(task, ref.logits(batch.clean, [(dst, frac * diff)]), batch).mean())

        hand = float(clean_m.mean()) - f(1.0)
        err = abs(exact[edge] - hand)
        worst_patch = max(worst_patch, err)
        checks.append(Check(f"patching {edge}", err, tol, f"circuitkit {exact[edge]:.6g}, HF {hand:.6g}"))
        # Central differences at h and h/2, Richardson-extrapolated; their disagreement bounds the error.
        # Rounding of each metric value (float32 where parts of the forward run in float32) is divided by
        # the step, so those families take a larger one.
        low = spec.softmax_float32 or spec.float32_internals
        h = 1e-2 if low else 1e-3
        rounding = 10 * torch.finfo(torch.float32).eps * scale if low else tol
        d1 = (f(h) - f(-h)) / (2 * h)
        d2 = (f(h / 2) - f(-h / 2)) / h
        fd = -(4 * d2 - d1) / 3  # the score is the metric's drop: minus the derivative
        eap_tol = abs(d1 - d2) + rounding / h
        eap_tol_max = max(eap_tol_max, eap_tol)
        err = abs(eap[edge] - fd)
        worst_eap = max(worst_eap, err)
        checks.append(Check(f"EAP {edge} vs finite differences", err, eap_tol, f"circuitkit {eap[edge]:.6g}, FD {fd:.6g}"))
    report.notes.update(
        {"metric scale": scale, "patching max error": worst_patch, "EAP max error": worst_eap, "EAP tolerance": eap_tol_max}
    )

    # Nodes: every outgoing edge of a head corrupted at once.
    nodes = exact_node_patching(model, task, data, ctx)
    names = g.source_names
    if spec.post_attn_norm is None:
        for layer, head in ((0, 0), (L - 1, 2)):
            z = ref.head_values(batch.corrupted, layer, head)
            inside = float(clean_m.mean()) - float(
                _metric(task, ref.logits(batch.clean, z_edits={(layer, head): z}), batch).mean()
            )
            got = float(nodes[names.index(f"a{layer}.h{head}")])
            checks.append(
                Check(
                    f"node a{layer}.h{head} = head corrupted inside the model",
                    abs(got - inside),
                    tol,
                    f"circuitkit {got:.6g}, HF {inside:.6g}",
                )
            )
    else:
        from circuitkit import engine

        for name, tokens, hf_src in (("clean", batch.clean, clean_src), ("corrupted", batch.corrupted, corr_src)):
            run = engine.run_sources(model, tokens)
            assert run.sources is not None
            for layer in range(L):
                first = g.src_head(layer, 0)
                total = run.sources[first : first + g.n_heads].sum(0)
                block = hf_src[f"attn{layer}"]
                err = float((total - block).abs().max())
                checks.append(
                    Check(
                        f"layer {layer} head shares sum to the normed attention output ({name})",
                        err,
                        _float_tol(L, d, internal, float(block.abs().max())),
                    )
                )
        gaps = []
        for layer, head in ((0, 0), (L - 1, 2)):
            z = ref.head_values(batch.corrupted, layer, head)
            inside = float(clean_m.mean()) - float(
                _metric(task, ref.logits(batch.clean, z_edits={(layer, head): z}), batch).mean()
            )
            got = float(nodes[names.index(f"a{layer}.h{head}")])
            gaps.append(abs(got - inside))
        report.notes["all outgoing edges vs head inside the model (max gap)"] = max(gaps)
    report.fast_paths = {k: o.status == "ok" for k, o in model.capabilities.checked().items()}
    report.seconds = time.perf_counter() - start
    return report
