"""EAP with integrated gradients on the input embeddings (EAP-IG).

Hanna, Pezzelle & Belinkov (2024), "Have Faith in Faithfulness: Going Beyond Circuit Overlap When
Finding Model Mechanisms". The gradient of EAP is replaced by its average over ``ig_steps`` points on the
straight line from the corrupted to the clean input embeddings (token + positional embeddings).

Interpolation points: ``alpha = k / ig_steps`` for ``k = 1 .. ig_steps`` (a right Riemann sum that ends at
the clean input), so ``ig_steps=1`` is exactly EAP. Cost: one corrupted forward and ``ig_steps``
forward/backward passes per batch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from circuitkit import hookimpl
from circuitkit.attribution import check_level, gradient_attribution
from circuitkit.errors import ConfigError
from circuitkit.interfaces import Attributor, PluginConfig, RunContext, Task


@dataclass
class EAPIGConfig(PluginConfig):
    """Options of EAP-IG.

    Attributes:
        ig_steps: number of interpolation points (the paper uses 5).
        level: ``edge``, ``node`` or ``neuron`` (see eap).
    """

    ig_steps: int = 5
    level: str = "edge"


class EAPIG(Attributor):
    config: EAPIGConfig

    def __init__(self, config: EAPIGConfig) -> None:
        super().__init__(config)
        m = config.ig_steps
        if not isinstance(m, int) or isinstance(m, bool) or m < 1:
            raise ConfigError(f"method.ig_steps must be an integer of at least 1, got {m!r} (the paper uses 5).")
        check_level(config.level, config.name or "eap_ig")

    def attribute(self, model, task: Task, data, ctx: RunContext):  # noqa: ANN001, ANN201
        if getattr(ctx.intervention, "kind", "patching") == "zero":
            logging.getLogger("circuitkit").warning(
                "eap_ig with intervention=zero interpolates the input embeddings from 0: the first LayerNorm is "
                "scale-invariant, so the model barely changes along that path and the input's integrated gradients "
                "nearly vanish. Prefer intervention=patching or mean with eap_ig."
            )
        m = self.config.ig_steps
        alphas = [k / m for k in range(1, m + 1)]
        return gradient_attribution(
            model, task, data, ctx, alphas, method=self.config.name or "eap_ig", meta={"ig_steps": m}, level=self.config.level
        )


@hookimpl
def circuitkit_register_methods(registry) -> None:  # noqa: ANN001
    registry.add("eap_ig", EAPIG, EAPIGConfig)
