"""EAP with the gradient taken at the corrupted input.

Edge attribution patching scores an edge ``u -> v`` by ``(out_u(clean) - out_u(corrupted)) . grad_v``,
a first-order estimate of the drop of the metric when the edge alone is corrupted. Plain EAP takes the
gradient ``grad_v`` of the metric on the clean run. Taking it on the corrupted run instead estimates the
same drop from the other end of the straight line between the two runs (it is the gradient the
"clean-corrupted" baseline averages with EAP's). ``alpha`` picks any point of that line: the input
embeddings are set to ``corrupted + alpha * (clean - corrupted)``; ``alpha=0`` is the corrupted input,
``alpha=1`` plain EAP.

Scores follow circuitkit's convention: the estimated drop of the metric when that edge alone is
corrupted, averaged over the examples (positive = the edge carries the behaviour), whatever the batch
size. :func:`circuitkit.api.gradient_attribution` does the work: one corrupted forward, one clean
forward for the source outputs, and one forward/backward at ``alpha`` per batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from circuitkit.api import (
    Attributor,
    CircuitModel,
    ConfigError,
    PluginConfig,
    RunContext,
    Scores,
    Task,
    TaskData,
    gradient_attribution,
)


@dataclass
class EAPCorruptedConfig(PluginConfig):
    """Options of ``eap_corrupted`` (``method.<option>=...``).

    Attributes:
        alpha: where the gradient is taken, from the corrupted (0) to the clean (1) input embeddings.
    """

    alpha: float = 0.0

    def __post_init__(self) -> None:
        # Check options in the config: the command line and ck.build create it alike (the same error), and
        # a run creates every config before loading the model, so a bad value fails in a second.
        a = self.alpha
        if isinstance(a, bool) or not isinstance(a, (int, float)) or not math.isfinite(a) or not 0.0 <= a <= 1.0:
            raise ConfigError(
                f"method.alpha must be a number between 0 (corrupted input) and 1 (clean input, plain EAP), got {a!r}."
            )


class EAPCorrupted(Attributor):
    config: EAPCorruptedConfig

    def attribute(self, model: CircuitModel, task: Task, data: TaskData, ctx: RunContext) -> Scores:
        alpha = float(self.config.alpha)
        return gradient_attribution(
            model, task, data, ctx, [alpha], method=self.config.name or "eap_corrupted", meta={"alpha": alpha}
        )
