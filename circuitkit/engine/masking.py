"""Circuit masking: one forward in which every edge not in the circuit carries its removed value, for
several circuits at once (stacked copies of the batch).

Two forms of the same pass: the sparse one (the default), whose cost beyond a forward pass follows the
circuit's kept edges (or its removed ones, whichever are fewer), and the dense one, one contraction over
every upstream source per destination (``path="dense"``, the reference)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from circuitkit.data import Batch
from circuitkit.engine.common import Metric, _on
from circuitkit.engine.forward import _forward
from circuitkit.engine.readout import answer_metric
from circuitkit.engine.sources import SourceRun
from circuitkit.model import CircuitModel

#: Which masked forward :func:`masked_forward` runs by default: ``"sparse"`` (cost follows the circuit's size,
#: :func:`_masked_forward_sparse`) or ``"dense"`` (every removed edge corrected at its destination with one
#: contraction over all upstream sources: the reference the sparse one is tested against).
MASKING = "sparse"
MASKING_PATHS = ("sparse", "dense")


def set_masking(path: str) -> None:
    """Make ``path`` (``"sparse"`` or ``"dense"``) the masked forward that evaluations use."""
    global MASKING
    if path not in MASKING_PATHS:
        raise ValueError(f"masking path must be one of {', '.join(MASKING_PATHS)}, got {path!r}")
    MASKING = path


@dataclass
class _GroupPlan:
    """How one destination group (a layer's q, k or v inputs, an MLP input, the logits) is corrected in a
    stacked pass: the copies that start from the fully removed input (``from_removed``: this run's input
    plus the running total of every upstream difference), and the single edges then added, each
    ``(copy, slot, source, factor)``: ``factor * diff[source]`` added to that copy's slot (a kept edge's
    difference taken away again, or a removed edge's added)."""

    from_removed: list[int]
    edits: list[tuple[int, int, int, float]]


def _plan_group(keep: torch.Tensor, dst0: int, width: int, n_up: int, neurons: bool) -> _GroupPlan:
    """Per copy, the cheaper of the two forms: add the removed edges' differences to this run's input, or
    start from the fully removed input and take the kept edges' differences away, whichever has fewer
    edges (ties: the first, which needs no running total). Neuron masks always take the second (an edge
    carries its clean value only in the dimensions kept)."""
    from_removed: list[int] = []
    edits: list[tuple[int, int, int, float]] = []
    for k in range(keep.shape[0]):
        w = keep[k, :n_up, dst0 : dst0 + width]  # [S, width]
        kept = (w != 0).nonzero()
        if not neurons:
            removed = (w != 1).nonzero()
            if len(removed) == 0:
                continue
            if len(removed) <= len(kept):
                factors = (1 - w[removed[:, 0], removed[:, 1]]).tolist()
                edits += [(k, h, u, f) for (u, h), f in zip(removed.tolist(), factors, strict=True)]
                continue
        from_removed.append(k)
        factors = (-w[kept[:, 0], kept[:, 1]]).tolist()
        edits += [(k, h, u, f) for (u, h), f in zip(kept.tolist(), factors, strict=True)]
    return _GroupPlan(from_removed, edits)


def _run_copies(
    model: CircuitModel,
    tokens: torch.Tensor,
    copies: int,
    hooks: list,
    final_hook: Callable | None,
    start_layer: int,
    clean: SourceRun | None,
    answer_at: torch.Tensor | None,
) -> torch.Tensor:
    """The final residual of ``copies`` stacked runs of ``tokens`` with ``hooks``, from layer ``start_layer``
    on (the clean residual entering it, from ``clean.resid``, when it is not 0)."""
    stacked = tokens.to(model.device).repeat(copies, 1)
    with torch.no_grad():
        if start_layer == 0:
            return _forward(model, stacked, hooks, final_hook=final_hook, answer_at=answer_at)
        assert clean is not None and clean.resid is not None
        start = clean.resid[start_layer].repeat(copies, 1, 1)
        return _forward(
            model, stacked, hooks, final_hook=final_hook, start_at_layer=start_layer, resid=start, answer_at=answer_at
        )


def _buffer(buffers: dict | None, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An uninitialised tensor: the one kept in ``buffers[name]`` when it has this shape, dtype and device (a
    run of passes then writes into memory it has touched before: a large tensor allocated anew is fresh from
    the operating system each time, and the first write to each page of it faults), else a new one, kept
    there."""
    if buffers is None:
        return torch.empty(shape, dtype=dtype, device=device)
    t = buffers.get(name)
    if t is None or t.shape != shape or t.dtype != dtype or t.device != device:
        t = buffers[name] = torch.empty(shape, dtype=dtype, device=device)
    return t


def _masked_forward_sparse(
    model: CircuitModel,
    tokens: torch.Tensor,
    removed: torch.Tensor,
    keep: torch.Tensor,
    *,
    start_layer: int,
    clean: SourceRun | None,
    kept_dims: torch.Tensor | None,
    answer_at: torch.Tensor | None = None,
    buffers: dict | None = None,
) -> torch.Tensor:
    """:func:`masked_forward` at a cost that follows the circuit's size.

    With ``diff_u = removed_u - out_u`` (``out_u`` the source's output in this run), destination ``v``'s
    input gets ``sum over removed edges u -> v of diff_u``. That equals the input with every edge removed,
    ``input_v + sum over all upstream u of diff_u``, minus ``sum over kept edges of diff_u``; the sum over all
    upstream sources is a running total that grows by one source's difference at a time (one residual-sized
    addition per source, whatever the number of destinations). For each destination group and circuit the
    form with fewer single edges is used (:func:`_plan_group`), and each single edge costs one in-place
    addition of a ``[batch, pos, d]`` difference into its destination's slot: a small circuit costs about
    its kept edges, a large one its removed edges. Only the differences of sources some edge reads, and the
    running total only where some circuit starts from it, are computed. The result equals the dense form's
    up to the rounding of the changed order of the sums."""
    g = model.graph
    c = keep.shape[0]
    b, p = tokens.shape
    d = model.d_model
    dev = model.device
    keep_cpu = keep.detach().to("cpu", torch.float64)
    wiring = model.wiring
    groups = [*wiring.destination_slots(start_layer), wiring.logits]
    plans = [_plan_group(keep_cpu, slot.first, slot.width, slot.n_up, kept_dims is not None) for slot in groups]
    read = torch.zeros(g.n_sources, dtype=torch.bool)
    for pl in plans:
        read[[u for _, _, u, _ in pl.edits]] = True
    totals_read = {slot.n_up for slot, pl in zip(groups, plans, strict=True) if pl.from_removed}
    diffs = _buffer(buffers, "diffs", (g.n_sources, c, b, p, d), removed.dtype, dev) if bool(read.any()) else None
    # The running total of the differences of sources 0 .. n - 1 (``n`` the sources summed so far).
    state: dict[str, Any] = {"n": 0, "total": None, "saved": {}}
    n_pre = g.n_upstream_heads(start_layer) if start_layer > 0 else 0
    if n_pre:
        assert clean is not None and clean.sources is not None
        pre = removed[:n_pre] - clean.sources[:n_pre]  # the sources before the start have their clean outputs
        if diffs is not None:
            diffs[:n_pre] = pre.unsqueeze(1)
        if totals_read:
            state["total"] = pre.sum(0).unsqueeze(0).repeat(c, 1, 1, 1)
        state["n"] = n_pre
    parallel = g.parallel_attn_mlp

    def total(n: int) -> torch.Tensor:
        return state["total"] if state["n"] == n else state["saved"][n]

    def put(index: int, per_head: bool) -> Callable:
        k = g.n_heads if per_head else 1
        stores = bool(read[index : index + k].any())

        def hook(t: torch.Tensor, hook: object) -> torch.Tensor:
            if not stores and not totals_read:
                return t
            out = t.reshape(c, b, p, g.n_heads, d).permute(3, 0, 1, 2, 4) if per_head else t.reshape(1, c, b, p, d)
            if stores:
                assert diffs is not None
                diff = diffs[index : index + k]
                torch.sub(removed[index : index + k].unsqueeze(1), _on(out, diff), out=diff)
            else:
                diff = _on(removed[index : index + k], out).unsqueeze(1) - out
            if totals_read:
                if parallel and state["n"] in totals_read:  # a parallel block's MLP may read it after its heads
                    state["saved"][state["n"]] = state["total"]
                    state["total"] = state["total"].clone()
                added = diff.sum(0)
                state["total"] = added if state["total"] is None else state["total"].add_(_on(added, state["total"]))
                state["n"] = index + k
            return t

        return hook

    def patch(pl: _GroupPlan, width: int, n_up: int, per_head: bool) -> Callable | None:
        if not pl.from_removed and not pl.edits:
            return None
        every = len(pl.from_removed) == c
        dims = None if kept_dims is None else kept_dims.to(removed.dtype)

        def hook(t: torch.Tensor, hook: object) -> torch.Tensor:
            # The bridge's own per-head copy of the residual (contiguous, not a view) is changed in place; the
            # MLP input and the final residual are the residual stream itself, changed in a copy.
            fresh = per_head and t._base is None and t.is_contiguous()
            x = t.reshape(c, b, p, width, d)
            if every:
                x = x.add_(_on(total(n_up), x)[:, :, :, None]) if fresh else x + _on(total(n_up), x)[:, :, :, None]
            else:
                x = x if fresh else x.clone()
                for k in pl.from_removed:
                    x[k] += _on(total(n_up)[k], x)[:, :, None]
            for k, h, u, f in pl.edits:
                assert diffs is not None
                if dims is None:
                    x[k, :, :, h].add_(_on(diffs[u, k], x), alpha=f)
                else:
                    x[k, :, :, h].addcmul_(_on(diffs[u, k], x), _on(dims[k, u], x), value=f)
            return x.reshape(t.shape)

        return hook

    at = {slot.first: patch(pl, slot.width, slot.n_up, slot.per_head) for slot, pl in zip(groups, plans, strict=True)}
    hooks = wiring.hooks(
        model, write=lambda slot: put(slot.first, slot.role == "heads"), read=lambda slot: at[slot.first], start_layer=start_layer
    )
    return _run_copies(model, tokens, c, hooks, at[wiring.logits.first], start_layer, clean, answer_at)


def masked_forward(
    model: CircuitModel,
    tokens: torch.Tensor,
    removed: torch.Tensor,
    keep: torch.Tensor,
    *,
    start_layer: int = 0,
    clean: SourceRun | None = None,
    neurons: torch.Tensor | None = None,
    path: str | None = None,
    answer_at: torch.Tensor | None = None,
    buffers: dict | None = None,
) -> torch.Tensor:
    """Run the clean tokens with every edge *not* kept carrying its removed value (``removed``).

    Args:
        model: the model.
        tokens: ``[batch, pos]`` clean tokens.
        removed: ``[n_sources, batch, pos, d]`` what each source's output is on a removed edge: its output
            on the corrupted prompt (patching), or a zero or mean value (:mod:`circuitkit.interventions`).
        keep: ``[copies, n_sources, n_destinations]`` (1 = edge kept, 0 = removed); several circuits
            are evaluated at once by stacking ``copies`` of the batch.
        start_layer: when every removed edge goes into layer ``start_layer`` or later, everything before
            that layer equals the clean run: start there from ``clean.resid`` (a
            :func:`run_sources` result with ``keep_resid=True``). ``n_layers`` means only edges into the
            logits are removed: no layer is run at all.
        clean: the clean run (needed when ``start_layer > 0``).
        neurons: ``[copies, n_sources, d]`` (1 = kept): output dimensions of each source that carry
            their removed value on *every* edge, kept or not (neuron-level circuits). An edge then
            carries, per dimension, its clean value only where it is kept and the dimension is kept.
        path: ``"sparse"`` (cost following the circuit's size, :func:`_masked_forward_sparse`) or
            ``"dense"`` (one contraction over every upstream source per destination); None: :data:`MASKING`.
            Both give the same result up to the rounding of a different order of sums.
        answer_at: ``[copies * batch]`` positions: only the result there is needed (the last block's MLP
            then runs there alone where that was checked to be exact; the other positions are meaningless).
        buffers: a dict the sparse path keeps its working tensors in from one call to the next (passes of
            the same shapes then reuse their memory); None: new ones each call.

    Returns:
        The final residual stream ``[copies * batch, pos, d]`` (copy-major).
    """
    g = model.graph
    c = keep.shape[0]
    b, p = tokens.shape
    d = model.d_model
    dev = model.device
    remove = 1 - keep.to(device=dev, dtype=removed.dtype)  # [c, S, D]
    if neurons is not None:
        if start_layer > 0:
            raise ValueError("neuron masks are only supported with start_layer=0")
        kept_dims = neurons.to(device=dev, dtype=removed.dtype)  # [c, S, d]
        if kept_dims.shape != (c, g.n_sources, d):
            raise ValueError(f"neurons must be [copies={c}, n_sources={g.n_sources}, d_model={d}], got {tuple(kept_dims.shape)}")
    if start_layer > 0:
        if clean is None or clean.resid is None or clean.sources is None:
            raise ValueError("start_layer > 0 needs the clean run with keep_resid=True")
        if bool(remove[:, :, : g.dst_mlp(start_layer - 1) + 1].any()):
            raise ValueError(f"an edge into a layer before {start_layer} is removed; start earlier")
    if start_layer >= g.n_layers:
        assert clean is not None and clean.sources is not None
        w = remove[:, :, g.dst_logits]  # [c, S]
        add = torch.einsum("sbpd,cs->cbpd", removed - clean.sources, w)
        return (clean.final.unsqueeze(0) + _on(add, clean.final)).reshape(c * b, p, d)
    path = MASKING if path is None else path
    if path not in MASKING_PATHS:
        raise ValueError(f"masking path must be one of {', '.join(MASKING_PATHS)}, got {path!r}")
    if path == "sparse":
        return _masked_forward_sparse(
            model,
            tokens,
            removed,
            keep,
            start_layer=start_layer,
            clean=clean,
            kept_dims=None if neurons is None else kept_dims,
            answer_at=answer_at,
            buffers=buffers,
        )
    run = torch.zeros(g.n_sources, c, b, p, d, dtype=removed.dtype, device=dev)
    if start_layer > 0:
        assert clean is not None and clean.sources is not None
        n_pre = g.n_upstream_heads(start_layer)
        run[:n_pre] = clean.sources[:n_pre].unsqueeze(1)

    def put(index: int, per_head: bool) -> Callable:
        def hook(t: torch.Tensor, hook: object) -> torch.Tensor:
            if per_head:
                run[index : index + g.n_heads] = t.reshape(c, b, p, g.n_heads, d).permute(3, 0, 1, 2, 4)
            else:
                run[index] = t.reshape(c, b, p, d)
            return t

        return hook

    def patch_neurons(dst0: int, width: int, n_up: int, per_head: bool) -> Callable:
        kept = keep.to(device=dev, dtype=removed.dtype)[:, :n_up, dst0 : dst0 + width]  # [c, S, width]
        dims = kept_dims[:, :n_up]  # [c, S, d]

        def hook(t: torch.Tensor, hook: object) -> torch.Tensor:
            diff = removed[:n_up].unsqueeze(1) - run[:n_up]  # [S, c, b, p, d]
            # per dimension, an edge is removed unless the edge and the dimension are both kept
            add = diff.sum(0)[:, :, :, None, :] - torch.einsum("scbpd,csd,csh->cbphd", diff, dims, kept)
            add = _on(add, t)
            if per_head:
                return t + add.reshape(c * b, p, width, d)
            return t + add.reshape(c * b, p, d)

        return hook

    def patch(dst0: int, width: int, n_up: int, per_head: bool) -> Callable:
        if neurons is not None:
            return patch_neurons(dst0, width, n_up, per_head)
        w = remove[:, :n_up, dst0 : dst0 + width]  # [c, S, width]
        if not bool(w.any()):
            return lambda t, hook: t
        # Sources whose edges into this destination are all kept contribute nothing.
        used = w.any(0).any(1).nonzero().squeeze(1)
        w = w[:, used]

        def hook(t: torch.Tensor, hook: object) -> torch.Tensor:
            diff = removed[used].unsqueeze(1) - run[used]  # [s, c, b, p, d]
            add = torch.einsum("scbpd,csh->cbphd", diff, w)
            add = _on(add, t)
            if per_head:
                return t + add.reshape(c * b, p, width, d)
            return t + add.reshape(c * b, p, d)

        return hook

    wiring = model.wiring
    hooks = wiring.hooks(
        model,
        write=lambda slot: put(slot.first, slot.role == "heads"),
        read=lambda slot: patch(slot.first, slot.width, slot.n_up, slot.per_head),
        start_layer=start_layer,
    )
    return _run_copies(model, tokens, c, hooks, patch(g.dst_logits, 1, g.n_sources, False), start_layer, clean, answer_at)


def masked_metric(
    model: CircuitModel,
    batch: Batch,
    metric: Metric,
    removed: torch.Tensor,
    keep: torch.Tensor,
    *,
    start_layer: int = 0,
    clean: SourceRun | None = None,
    neurons: torch.Tensor | None = None,
    path: str | None = None,
    buffers: dict | None = None,
) -> torch.Tensor:
    """Per-example metric ``[copies, batch]`` with the non-kept edges removed (see :func:`masked_forward`)."""
    c = keep.shape[0]
    rep = batch.repeat(c).to(model.device)
    final = masked_forward(
        model,
        batch.clean,
        removed,
        keep,
        start_layer=start_layer,
        clean=clean,
        neurons=neurons,
        path=path,
        answer_at=rep.last,
        buffers=buffers,
    )
    with torch.no_grad():
        return answer_metric(model, final, rep, metric).reshape(c, len(batch))
