"""Independent reference computations for tests: single-edge patches written directly with bridge hooks,
not through circuitkit.engine."""

from __future__ import annotations

import torch

import circuitkit as ck
from circuitkit.data import Batch, Example
from circuitkit.evaluation import evaluate_keeps
from circuitkit.interfaces import Task, TaskConfig
from circuitkit.model import CircuitModel


def source_hook(model: CircuitModel, name: str) -> tuple[str, int | None]:
    """Hook name and head index of a source node's output."""
    if name == "input":
        return "blocks.0.hook_resid_pre", None
    if name.startswith("a"):
        layer, head = name[1:].split(".h")
        return f"blocks.{int(layer)}.attn.hook_result", int(head)
    return f"blocks.{int(name[1:])}.hook_mlp_out", None


def dest_hook(model: CircuitModel, name: str) -> tuple[str, int | None]:
    """Hook name and head index of a destination's input."""
    if name == "logits":
        return "ln_final.hook_in", None
    if "<" in name:
        node, qkv = name[:-1].split("<")
        # a1.h2<q> is query head 2's input; a1.kv0<k> (grouped-query attention) key/value head 0's
        layer, head = node[1:].split(".kv" if ".kv" in node else ".h")
        return f"blocks.{int(layer)}.attn.hook_{qkv}_input", int(head)
    return f"blocks.{int(name[1:])}.hook_mlp_in", None


def capture(model: CircuitModel, tokens: torch.Tensor, hook_name: str, head: int | None) -> torch.Tensor:
    box = {}

    def grab(t, hook):
        box["x"] = (t[:, :, head] if head is not None else t).detach().clone()
        return t

    with model.bridge.hooks(fwd_hooks=[(hook_name, grab)]):
        model.bridge(tokens)
    return box["x"]


def patched_metric(
    model: CircuitModel, batch: Batch, metric, edge: str, fraction: float = 1.0, removed: torch.Tensor | None = None
) -> torch.Tensor:
    """Metric per example when ``fraction`` of the corrupted-minus-clean difference of one edge's source
    is added to its destination's input (fraction=1: the edge carries its corrupted value). ``removed``
    ``[batch, pos, d]`` replaces the corrupted value (zero or mean ablation)."""
    src, dst = edge.split("->")
    s_hook, s_head = source_hook(model, src)
    d_hook, d_head = dest_hook(model, dst)
    if removed is None:
        removed = capture(model, batch.corrupted, s_hook, s_head)
    diff = removed - capture(model, batch.clean, s_hook, s_head)

    def add(t, hook):
        t = t.clone()
        if d_head is not None:
            t[:, :, d_head] = t[:, :, d_head] + fraction * diff
        else:
            t = t + fraction * diff
        return t

    with model.bridge.hooks(fwd_hooks=[(d_hook, add)]):
        logits = model.bridge(batch.clean)
    rows = torch.arange(len(batch))
    return metric(logits[rows, batch.last], batch)


def plain_metric(model: CircuitModel, tokens: torch.Tensor, batch: Batch, metric) -> torch.Tensor:
    logits = model.bridge(tokens)
    return metric(logits[torch.arange(len(batch)), batch.last], batch)


def input_gradient_scores(model: CircuitModel, batch: Batch, metric, alpha: float) -> dict[str, torch.Tensor]:
    """d(sum metric)/d(input of each destination) at input embeddings corrupted + alpha (clean - corrupted),
    computed with torch.autograd.grad on tensors captured at the destination hooks."""
    clean_in = capture(model, batch.clean, "blocks.0.hook_resid_pre", None)
    corr_in = capture(model, batch.corrupted, "blocks.0.hook_resid_pre", None)
    x = corr_in + alpha * (clean_in - corr_in)
    inputs = {}

    def set_input(t, hook):
        return x.clone().requires_grad_(True)

    def grab(name):
        def f(t, hook):
            t = t.clone()
            inputs[name] = t
            return t

        return f

    g = model.graph
    hooks = [("blocks.0.hook_resid_pre", set_input)]
    for layer in range(g.n_layers):
        for q in "qkv":
            hooks.append((f"blocks.{layer}.attn.hook_{q}_input", grab(f"{layer}{q}")))
        hooks.append((f"blocks.{layer}.hook_mlp_in", grab(f"{layer}m")))
    hooks.append(("ln_final.hook_in", grab("logits")))
    with torch.enable_grad(), model.bridge.hooks(fwd_hooks=hooks):
        logits = model.bridge(batch.clean)
        m = metric(logits[torch.arange(len(batch)), batch.last], batch).sum()
        names = list(inputs)
        grads = torch.autograd.grad(m, [inputs[n] for n in names], allow_unused=True)
    return {n: (gr if gr is not None else torch.zeros_like(inputs[n])) for n, gr in zip(names, grads)}


# A few hand-written examples (single-token answers for GPT-2's tokenizer) and a task serving them.
HAND_EXAMPLES = [
    Example(
        "When Mary and John went to the store, John gave a drink to",
        "When Mary and John went to the store, Anne gave a drink to",
        (" Mary",),
        (" John",),
    ),
    Example("The key to the cabinets", "The keys to the cabinets", (" is",), (" are",)),
    Example("After Tom and Anna left, Tom said to", "After Tom and Anna left, Paul said to", (" Anna",), (" Tom",)),
    Example("Paris, the capital of", "London, the capital of", (" France",), (" England",)),
]


class HandTask(Task):
    """Serves ``HAND_EXAMPLES`` (or the examples given)."""

    def __init__(self, config: TaskConfig, examples: list[Example] | None = None) -> None:
        super().__init__(config)
        self.examples = list(examples or HAND_EXAMPLES)

    def generate(self, tokenizer, split):  # noqa: ANN001, ANN201
        return iter(self.examples)


OUTCOME_METHODS = [
    ("eap", {}),
    ("eap_ig", {"ig_steps": 2}),
    ("patching", {}),
    ("patching", {"level": "node"}),
    ("eap_ig_activations", {"ig_steps": 1}),
    ("information_flow_routes", {}),
]


def outcomes(model: CircuitModel, n_examples: int = 8) -> dict[str, torch.Tensor]:
    """Scores of several methods and the evaluation of a few circuits: every engine path (gradient passes,
    stacked passes, exact patching from a later layer, masked forwards, the unembedding)."""
    task = ck.build("tasks", "greater_than", n_examples=n_examples)
    data = task.build(model.tokenizer)
    out = {}
    for name, options in OUTCOME_METHODS:
        s = ck.build("methods", name, **options).attribute(model, task, data, ck.RunContext(batch_size=4, progress=False))
        out[f"{name}{options}"] = s.values if s.nodes is None else s.nodes
    g = model.graph
    keeps = (torch.rand(3, g.n_sources, g.n_destinations, generator=torch.Generator().manual_seed(0)) < 0.5).double()
    ev = evaluate_keeps(model, task, data, keeps, ck.RunContext(batch_size=4, progress=False))
    out["evaluation"] = torch.tensor([ev.clean, ev.corrupted, *ev.circuits])
    return out


def float_tol(model: CircuitModel, scale: float | torch.Tensor) -> float:
    """Absolute tolerance for two computations of the same value of magnitude ``scale`` in this model's dtype
    that differ in kernels or order of summation: each layer's sums over ``d_model`` terms may round by up to
    ``d_model * eps`` relative, so ``n_layers * d_model * eps * scale`` (eps of the model's dtype). It holds
    on any CPU's kernels, and a real error (a wrong edge, a missing term) is orders of magnitude larger on
    these tiny models."""
    eps = torch.finfo(model.dtype).eps
    return float(model.graph.n_layers * model.d_model * eps * max(float(scale), eps))
