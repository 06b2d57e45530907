"""The check at load that circuitkit's view of a model is the model's own.

Every score circuitkit computes rests on two identities: the residual stream entering the final norm is
the input node's output plus the sum of every head's and MLP's output (as the graph defines them), and
logits are what the Hugging Face model itself computes from that residual stream (final norm,
unembedding, then any output transform such as soft-capping). :func:`verify_model` checks both on a few
random tokens against the Hugging Face model's own forward pass, once per model (the result is kept in
memory by weights hash, dtype and device), before any result is built on them:

- ``decomposition``: the final norm's input equals the sum of the source outputs of the same pass (plus
  the attention output biases that belong to no head: ``b_O`` of layers without a norm after the attention,
  a constant of the model), in a clean and a corrupted run;
- ``logits``: :meth:`~circuitkit.model.CircuitModel.unembed` of that residual equals the model's logits,
  and so do the answer-column fast path and the chunked softmax normaliser built on it;
- ``full circuit``: a masked forward keeping every edge reproduces the model's logits on the clean tokens;
- ``empty circuit``: a masked forward removing every edge (each carrying its corrupted value) reproduces
  the model's logits on the corrupted tokens (this checks the patching hooks; every source in that pass
  already has its corrupted value, so only ``decomposition`` tests the sum itself).

A model that fails is refused (:class:`~circuitkit.errors.ModelLoadError`) unless loaded with
``allow_unverified=True``, which warns and records the failure (``CircuitModel.unverified``, and
``model_unverified`` in results.json).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from circuitkit import engine
from circuitkit.engine.readout import _answer_and_rest_logits, _unembed_columns
from circuitkit.engine.sources import _source_writers
from circuitkit.model import CircuitModel

#: Random tokens per check: rows of each run and positions.
N_ROWS, N_POS = 2, 6


@dataclass
class Verification:
    """The outcome of :func:`verify_model`.

    Attributes:
        family: the Hugging Face architecture (``Gemma2ForCausalLM``) and model type.
        failures: one line per identity that does not hold (empty: verified).
        numbers: per identity, the largest difference found and the rounding allowance it was held to.
    """

    family: str
    failures: list[str] = field(default_factory=list)
    numbers: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failures


_VERIFIED: dict[tuple[str, str, str, str], Verification] = {}


def family_of(model: CircuitModel) -> str:
    """``"Gemma2ForCausalLM (gemma2)"``: the architecture and model type of the model's config."""
    cfg = getattr(model.bridge.original_model, "config", None)
    arch = (getattr(cfg, "architectures", None) or [type(model.bridge.original_model).__name__])[0]
    kind = getattr(cfg, "model_type", None)
    return f"{arch} ({kind})" if kind else str(arch)


def _reference(model: CircuitModel, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One forward of the Hugging Face model itself on ``tokens``: its logits ``[b, p, vocab]``, the residual
    stream entering its final norm ``[b, p, d]`` and every source output ``[n_sources, b, p, d]`` of that
    same pass (circuitkit's hooks only read)."""
    buf = engine.new_source_buffer(model, tokens)
    box: dict[str, torch.Tensor] = {}
    hooks = _source_writers(model, buf)

    def keep_final(t: torch.Tensor, hook: Any) -> torch.Tensor:
        box["final"] = t.detach().to(model.device)
        return t

    hooks.append((model.LOGITS_HOOK, keep_final))
    with torch.no_grad(), model.bridge.hooks(fwd_hooks=hooks):
        out = model.bridge.original_model(input_ids=tokens, attention_mask=torch.ones_like(tokens), use_cache=False)
    return out.logits.detach().to(model.device), box["final"], buf


def _constant_bias(model: CircuitModel) -> torch.Tensor:
    """``[d]``: the attention output biases no head output carries (layers without a norm after the
    attention: their per-head results leave ``b_O`` out; it is the same in every run)."""
    from circuitkit.interventions import head_bias_shares

    g = model.graph
    total = torch.zeros(model.d_model, dtype=model.dtype, device=model.device)
    shares = None
    for layer in range(g.n_layers):
        if model.attn_post_norm(layer) is not None:
            continue
        o = getattr(getattr(model.bridge.blocks[layer].attn, "o", None), "original_component", None)
        if isinstance(o, torch.nn.Linear) or type(o).__name__ == "Conv1D":  # the bias the bridge adds to the heads' sum
            bias = getattr(o, "bias", None)
            if bias is not None:
                total = total + bias.detach().reshape(-1).to(device=model.device, dtype=model.dtype)
            continue
        if shares is None:  # measured (interventions.head_bias_shares)
            shares = head_bias_shares(model)
        total = total + shares[g.src_head(layer, 0) : g.src_head(layer, 0) + g.n_heads].sum(0)
    return total


def verify_model(model: CircuitModel) -> Verification:
    """Check the decomposition and the logits against the Hugging Face model's own forward (see the module
    docstring); cached per weights hash, dtype and device. Costs three forward passes of a few tokens."""
    key = (model.weights_hash, family_of(model), str(model.dtype), str(model.device))
    if key in _VERIFIED:
        return _VERIFIED[key]
    result = Verification(family_of(model))
    _VERIFIED[key] = result
    g = model.graph
    eps = torch.finfo(model.dtype).eps
    # Heads behind a norm: their shares are computed in the norm's own precision (float32 in Gemma's and
    # OLMo-2's RMSNorms even in a float64 model).
    post_norm = any(model.attn_post_norm(layer) is not None for layer in range(g.n_layers))
    eps_sum = max(eps, torch.finfo(engine.share_dtype(model)).eps) if post_norm else eps
    gen = torch.Generator().manual_seed(0)
    vocab = int(model.bridge.cfg.d_vocab)
    tokens = torch.randint(0, vocab, (2 * N_ROWS, N_POS), generator=gen).to(model.device)
    logits, final, sources = _reference(model, tokens)

    def record(name: str, error: float, allowed: float, what: str) -> None:
        result.numbers[name] = {"max_difference": error, "allowed": allowed}
        if not error <= allowed:  # NaN fails
            result.failures.append(f"{what} (largest difference {error:.3g}, rounding allows {allowed:.3g})")

    # Decomposition: each element is a sum of n_sources terms; the model rounds at every residual addition
    # (2 per layer) and circuitkit once per share (at most n_heads + 2 terms per layer), each rounding
    # error at most eps / 2 of the magnitudes summed.
    const = _constant_bias(model)
    total = sources.sum(0) + const
    magnitude = sources.abs().sum(0) + const.abs()
    ratio = float(((final - total).abs() / magnitude.clamp(min=torch.finfo(model.dtype).tiny)).max())
    steps = 2 * g.n_layers + g.n_heads + 2
    record(
        "decomposition",
        float((final - total).abs().max()),
        steps * eps_sum / 2 * float(magnitude.max()),
        "the residual stream entering the final norm is not the input plus the sum of the head and MLP outputs",
    )
    result.numbers["decomposition"]["relative"] = ratio

    # Logits from the same residual stream: the same operations as the model's, up to the order of the
    # d_model products of each logit.
    scale = float(logits.abs().max())
    allowed = model.d_model * eps * scale
    record("logits", float((model.unembed(final) - logits).abs().max()), allowed, "circuitkit's logits differ from the model's")
    last = final[:, -1]
    ids = torch.tensor([0, 7 % vocab, vocab - 1], device=model.device)
    cols = _unembed_columns(model, last, ids).to(logits.device)
    record(
        "answer_columns",
        float((cols - logits[:, -1, ids]).abs().max()),
        allowed,
        "the answer-column logits differ from the model's",
    )
    rest = _answer_and_rest_logits(model, last, ids).to(logits.device)
    probs = rest.double().softmax(-1)[:, : len(ids)]
    ref_probs = logits[:, -1].double().softmax(-1)[:, ids]
    # A probability's relative error is its logit's error minus the normaliser's: both sides round each logit
    # (d_model products of magnitude up to ``scale``) and the normaliser adds the rounding of its sum over the
    # vocabulary and of the other tokens' share (a few eps). Compared relative to each probability, so tiny
    # probabilities are held to the same standard as large ones.
    rel = (probs - ref_probs).abs() / ref_probs.clamp(min=torch.finfo(torch.float64).tiny)
    record(
        "answer_probs",
        float(rel.max()),
        2 * model.d_model * eps * scale + (2 * math.log2(vocab) + 8) * eps,
        "the answer probabilities from the chunked normaliser differ from the model's (relative difference)",
    )

    # Masked forwards: a full circuit on the clean tokens, and an empty one whose edges all carry the
    # corrupted run's source outputs, in one stacked pass; rounding differences can grow through each layer.
    clean = tokens[:N_ROWS]
    keep = torch.zeros(2, g.n_sources, g.n_destinations)
    keep[0] = 1
    with torch.no_grad():
        masked = engine.masked_forward(model, clean, sources[:, N_ROWS:], keep).reshape(2, N_ROWS, N_POS, -1)
        full, empty = model.unembed(masked[0]).to(logits.device), model.unembed(masked[1]).to(logits.device)
    allowed = g.n_layers * model.d_model * eps * scale
    record(
        "full_circuit",
        float((full - logits[:N_ROWS]).abs().max()),
        allowed,
        "a full-circuit masked forward does not give the model's logits on the clean tokens",
    )
    record(
        "empty_circuit",
        float((empty - logits[N_ROWS:]).abs().max()),
        allowed,
        "an empty-circuit masked forward (every edge corrupted) does not give the model's logits on the corrupted tokens",
    )
    return result


def check_model(model: CircuitModel, *, allow_unverified: bool = False) -> None:
    """Run :func:`verify_model`; refuse a model that fails (:class:`~circuitkit.errors.ModelLoadError`, one
    line), or, with ``allow_unverified``, warn and set ``model.unverified`` to the failure."""
    import logging

    from circuitkit.errors import ModelLoadError

    try:
        v = verify_model(model)
    except Exception as e:  # noqa: BLE001 - the model's forward itself fails: nothing can run on it
        _VERIFIED.pop((model.weights_hash, family_of(model), str(model.dtype), str(model.device)), None)
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ModelLoadError(
            f"'{model.name}' ({family_of(model)}) cannot run through TransformerLens' bridge in {str(model.dtype).removeprefix('torch.')}: "
            f"a forward pass of a few tokens fails ({type(e).__name__}: {first}). Try model.dtype=float32, or another model family."
        ) from e
    model.verification = v
    if v.ok:
        return
    what = "; ".join(v.failures)
    if allow_unverified:
        model.unverified = f"{model.name} ({v.family}): {what}"
        logging.getLogger("circuitkit").warning(
            "circuitkit could not verify '%s' (%s): %s. Going on because allow_unverified is set: scores may not "
            "describe this model.",
            model.name,
            v.family,
            what,
        )
        return
    raise ModelLoadError(
        f"'{model.name}' ({v.family}) fails circuitkit's check against the model's own forward pass: {what}. "
        "Scores built on it would not describe this model. Use a supported family (docs/concepts.md), or pass "
        "model.allow_unverified=true (load_model(..., allow_unverified=True)) to go on anyway."
    )


def reference_logits(model: CircuitModel, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits, final)``: the Hugging Face model's own logits for ``tokens`` and the residual stream
    entering its final norm in the same pass."""
    logits, final, _ = _reference(model, tokens.to(model.device))
    return logits, final


__all__ = ["Verification", "verify_model", "check_model", "reference_logits", "family_of"]
