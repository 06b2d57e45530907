"""Exact activation patching of every edge.

The ground truth that attribution methods approximate (as in Conmy et al. 2023 and Hanna et al. 2024):
the score of ``u -> v`` is the metric on the clean run minus the metric when only that edge carries its
corrupted value ``out_u(corrupted)``, averaged over examples. Many edges share one pass: the batch is
stacked ``edges_per_pass`` times with a different edge corrupted in each copy.
"""

from __future__ import annotations

from dataclasses import dataclass

from circuitkit.api import Attributor, PluginConfig, RunContext, Task, check_level, exact_patching, hookimpl


@dataclass
class PatchingConfig(PluginConfig):
    """Options of exact patching.

    Attributes:
        edges_per_pass: edges (nodes, neurons) evaluated together in one stacked forward pass (memory
            grows with it).
        level: ``edge``; ``node`` (every outgoing edge of a node corrupted at once) or ``neuron`` (one
            output dimension of a node corrupted for every reader).
    """

    edges_per_pass: int = 32
    level: str = "edge"

    def __post_init__(self) -> None:
        check_level(self.level, self.name or "patching")


class Patching(Attributor):
    config: PatchingConfig

    def attribute(self, model, task: Task, data, ctx: RunContext):  # noqa: ANN001, ANN201
        return exact_patching(
            model,
            task,
            data,
            ctx,
            edges_per_pass=self.config.edges_per_pass,
            method=self.config.name or "patching",
            level=self.config.level,
        )


@hookimpl
def circuitkit_register_methods(registry) -> None:  # noqa: ANN001
    registry.add("patching", Patching, PatchingConfig)
