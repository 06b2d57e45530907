"""EAP with integrated gradients on the input embeddings (EAP-IG).

Hanna, Pezzelle & Belinkov (2024), "Have Faith in Faithfulness: Going Beyond Circuit Overlap When
Finding Model Mechanisms". The gradient of EAP is replaced by its average over ``ig_steps`` points on the
straight line from the corrupted to the clean input embeddings (token + positional embeddings).

Interpolation points (``ig_points``, with ``m = ig_steps``):

- ``right`` (default): ``alpha = k / m`` for ``k = 1 .. m`` (a right Riemann sum that ends at the clean
  input), so ``ig_steps=1`` is exactly EAP.
- ``left``: ``alpha = k / m`` for ``k = 0 .. m - 1`` (a left Riemann sum that starts at the corrupted input
  and never reaches the clean one). These are the points of the EAP-IG library (hannamw/EAP-IG,
  ``get_scores_eap_ig`` in ``src/eap/attribute.py``: ``for step in range(0, steps)`` with the input set to
  ``corrupted + (step / steps) * (clean - corrupted)``), for reproducing numbers computed with it.

Cost: one corrupted forward and ``ig_steps`` forward/backward passes per batch (``left`` adds one clean
forward without gradients, since no pass runs at the clean input).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from circuitkit.api import Attributor, ConfigError, PluginConfig, RunContext, Task, check_level, gradient_attribution, hookimpl


@dataclass
class EAPIGConfig(PluginConfig):
    """Options of EAP-IG.

    Attributes:
        ig_steps: number of interpolation points (the paper uses 5).
        level: ``edge``, ``node`` or ``neuron`` (see eap).
        ig_points: ``right``: ``alpha = k/m`` for ``k = 1..m`` (ends at the clean input); ``left``:
            ``k = 0..m-1``, the points of the EAP-IG library (starts at the corrupted input).
    """

    ig_steps: int = 5
    level: str = "edge"
    ig_points: str = "right"

    def __post_init__(self) -> None:
        m = self.ig_steps
        if not isinstance(m, int) or isinstance(m, bool) or m < 1:
            raise ConfigError(f"method.ig_steps must be an integer of at least 1, got {m!r} (the paper uses 5).")
        check_level(self.level, self.name or "eap_ig")
        if self.ig_points not in IG_POINTS:
            raise ConfigError(
                f"method.ig_points must be one of {', '.join(IG_POINTS)}, got {self.ig_points!r} (right: alpha = k/m "
                "for k = 1..m, the default; left: k = 0..m-1, as the EAP-IG library)."
            )


#: ``ig_points`` -> the ``k`` of ``alpha = k / m``.
IG_POINTS = {"right": lambda m: range(1, m + 1), "left": lambda m: range(0, m)}


def ig_alphas(m: int, points: str = "right") -> list[float]:
    """The interpolation points of EAP-IG with ``m`` steps (see the module docstring)."""
    return [k / m for k in IG_POINTS[points](m)]


class EAPIG(Attributor):
    config: EAPIGConfig

    def attribute(self, model, task: Task, data, ctx: RunContext):  # noqa: ANN001, ANN201
        if getattr(ctx.intervention, "kind", "patching") == "zero":
            logging.getLogger("circuitkit").warning(
                "eap_ig with intervention=zero interpolates the input embeddings from 0: the first LayerNorm is "
                "scale-invariant, so the model barely changes along that path and the input's integrated gradients "
                "nearly vanish. Prefer intervention=patching or mean with eap_ig."
            )
        m = self.config.ig_steps
        return gradient_attribution(
            model,
            task,
            data,
            ctx,
            ig_alphas(m, self.config.ig_points),
            method=self.config.name or "eap_ig",
            meta={"ig_steps": m, "ig_points": self.config.ig_points},
            level=self.config.level,
        )


@hookimpl
def circuitkit_register_methods(registry) -> None:  # noqa: ANN001
    registry.add("eap_ig", EAPIG, EAPIGConfig)
