"""Edge Attribution Patching (EAP).

Syed, Rager & Conmy (2023), "Attribution Patching Outperforms Automated Circuit Discovery".
Each edge ``u -> v`` is scored by ``(out_u(clean) - out_u(corrupted)) . d metric / d input_v`` taken on the
clean run: a first-order estimate of the drop of the metric when that edge alone is corrupted. Cost: one
corrupted forward and one clean forward/backward per batch, for every edge at once.
"""

from __future__ import annotations

from dataclasses import dataclass

from circuitkit.api import Attributor, PluginConfig, RunContext, Task, check_level, gradient_attribution, hookimpl


@dataclass
class EAPConfig(PluginConfig):
    """Options of EAP.

    Attributes:
        level: ``edge``; ``node`` (per head/MLP/input: the sum of its outgoing edge scores) or ``neuron``
            (per output dimension of each node); selectors then choose nodes or neurons.
    """

    level: str = "edge"

    def __post_init__(self) -> None:
        check_level(self.level, self.name or "eap")


class EAP(Attributor):
    config: EAPConfig

    def attribute(self, model, task: Task, data, ctx: RunContext):  # noqa: ANN001, ANN201
        return gradient_attribution(model, task, data, ctx, [1.0], method=self.config.name or "eap", level=self.config.level)


@hookimpl
def circuitkit_register_methods(registry) -> None:  # noqa: ANN001
    registry.add("eap", EAP, EAPConfig)
