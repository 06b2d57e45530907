"""How far "every outgoing edge of a head corrupted" is from "the head corrupted inside the model".

For each family (tiny random models from circuitkit.testing_families, float64) and each attention head,
on the hand-written prompt pairs of the test suite (logit difference):

- ``edges``: circuitkit's exact node-level patching score (the head's share of what its layer adds to the
  residual stream replaced by its corrupted share; the other heads keep theirs);
- ``inside``: the drop of the metric when the head's own output (its slice of ``o_proj``'s input) is replaced
  by its corrupted value inside the Hugging Face model, which then normalises the new sum: with a norm after
  the attention (Gemma-2/3, OLMo-2) that changes every head's share of the layer's output.

Without a norm after the attention the two are the same computation (printed as a control). Prints, per
family, the largest difference, the difference relative to the largest score, and the heads whose two
scores have opposite signs.

    python benchmarks/postnorm_coupling.py [family ...]
"""

from __future__ import annotations

import sys
import tempfile

import torch

sys.path.insert(0, "tests")

import circuitkit as ck  # noqa: E402
from circuitkit.interfaces import TaskConfig  # noqa: E402
from circuitkit.testing_families import save_family  # noqa: E402


def main(families: list[str]) -> None:
    from helpers import HandTask
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(1)
    for family in families:
        with tempfile.TemporaryDirectory() as tmp:
            save_family(family, tmp, dtype=torch.float64)
            model = ck.load_model(tmp, device="cpu", dtype="float64")
            ref = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float64).eval()
        task = HandTask(TaskConfig(name="hand"))
        data = task.build(model.tokenizer, prepend_bos=model.prepend_bos)
        batch = next(data.batches(len(data), model.pad_id))
        g = model.graph
        nodes = ck.build("methods", "patching", level="node").attribute(
            model, task, data, ck.RunContext(batch_size=8, progress=False)
        )
        edges = dict(zip(g.source_names, nodes.nodes.tolist()))
        rows = torch.arange(len(batch))

        def metric(tokens: torch.Tensor, hook: tuple | None = None, ref=ref, task=task, rows=rows, batch=batch) -> torch.Tensor:  # noqa: ANN001
            handle = None
            if hook is not None:
                module, fn = hook
                handle = module.register_forward_pre_hook(lambda m, args: (fn(args[0]), *args[1:]))
            try:
                with torch.no_grad():
                    logits = ref(input_ids=tokens, attention_mask=torch.ones_like(tokens)).logits
            finally:
                if handle is not None:
                    handle.remove()
            return task.metric(logits[rows, batch.last], batch)

        clean = metric(batch.clean)
        n_heads = ref.config.num_attention_heads
        diffs, flips, scale = [], [], 0.0
        for layer in range(g.n_layers):
            o_proj = ref.model.layers[layer].self_attn.o_proj
            box = {}
            h = o_proj.register_forward_pre_hook(lambda m, args, box=box: box.__setitem__("z", args[0].detach().clone()))
            metric(batch.corrupted)
            h.remove()
            z_corr = box["z"]
            dh = z_corr.shape[-1] // n_heads
            for head in range(n_heads):
                sl = slice(head * dh, (head + 1) * dh)

                def swap(z: torch.Tensor, sl: slice = sl, z_corr: torch.Tensor = z_corr) -> torch.Tensor:
                    z = z.clone()
                    z[..., sl] = z_corr[..., sl]
                    return z

                inside = float((clean - metric(batch.clean, (o_proj, swap))).mean())
                name = f"a{layer}.h{head}"
                diffs.append(abs(edges[name] - inside))
                scale = max(scale, abs(edges[name]), abs(inside))
                if edges[name] * inside < 0:
                    flips.append(f"{name} ({edges[name]:+.4f} vs {inside:+.4f})")
        post = "norm after attention" if model.attn_post_norm(0) is not None else "no norm after attention"
        print(
            f"{family} ({post}): largest |edges - inside| {max(diffs):.3g} ({max(diffs) / scale:.1%} of the largest "
            f"score {scale:.3g}); opposite signs: {', '.join(flips) or 'none'}"
        )


if __name__ == "__main__":
    main(sys.argv[1:] or ["gemma2", "gemma3", "olmo2", "llama"])
