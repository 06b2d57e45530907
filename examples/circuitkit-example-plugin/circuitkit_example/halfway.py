"""The intervention ``halfway``: a removed edge carries the midpoint of its source's clean and corrupted
outputs, ``(out_u(clean) + out_u(corrupted)) / 2``.

Patching (circuitkit's default) moves a removed edge all the way to the corrupted run; ``halfway`` moves it
half of the way, a milder corruption that stays on the line between two real activations. Choose it with
``intervention=halfway``; attribution and evaluation then both use it.

An intervention subclasses :class:`circuitkit.api.Intervention` and overrides ``values``; one that needs the
model or the run's data before the first batch (means over reference prompts, say) also overrides the class
method ``prepare(model, data, batch_size)``.
"""

from __future__ import annotations

import torch

from circuitkit.api import Batch, CircuitModel, Intervention, run_sources


class Halfway(Intervention):
    def values(self, model: CircuitModel, batch: Batch, positions: slice | None = None) -> torch.Tensor:
        clean = run_sources(model, batch.clean, positions=positions).sources
        corrupted = run_sources(model, batch.corrupted, positions=positions).sources
        assert clean is not None and corrupted is not None
        return (clean + corrupted) / 2
