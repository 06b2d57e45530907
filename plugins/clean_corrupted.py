"""Clean-corrupted attribution.

Hanna, Pezzelle & Belinkov (2024), "Have Faith in Faithfulness" (the "clean-corrupted" baseline of the
EAP-IG library): the gradient of EAP is replaced by the mean of the gradients taken on the clean and on
the corrupted input — integrated gradients with only the two end points.
"""

from __future__ import annotations

from dataclasses import dataclass

from circuitkit.api import Attributor, PluginConfig, RunContext, Task, gradient_attribution, hookimpl


@dataclass
class CleanCorruptedConfig(PluginConfig):
    """Clean-corrupted has no options."""


class CleanCorrupted(Attributor):
    config: CleanCorruptedConfig

    def attribute(self, model, task: Task, data, ctx: RunContext):  # noqa: ANN001, ANN201
        return gradient_attribution(model, task, data, ctx, [1.0, 0.0], method=self.config.name or "clean_corrupted")


@hookimpl
def circuitkit_register_methods(registry) -> None:  # noqa: ANN001
    registry.add("clean_corrupted", CleanCorrupted, CleanCorruptedConfig)
