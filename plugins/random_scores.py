"""Random edge scores: a baseline every method should beat.

As the random baselines of circuit-discovery comparisons (e.g. Conmy et al. 2023; Mueller et al. 2025,
MIB): each edge gets an independent standard-normal score from a ``torch.Generator`` seeded with
``method.seed`` (or the run's seed when it is null), so a seed always gives the same scores. The model and
data are not used; scores are not estimates of anything.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from circuitkit.api import Attributor, ConfigError, PluginConfig, RunContext, Scores, Task, hookimpl


@dataclass
class RandomScoresConfig(PluginConfig):
    """Options of the random baseline.

    Attributes:
        seed: generator seed; null uses the run's seed (``seed=...`` at the top level).
    """

    seed: int | None = None

    def __post_init__(self) -> None:
        s = self.seed
        if s is not None and (isinstance(s, bool) or not isinstance(s, int)):
            raise ConfigError(f"method.seed must be an integer or null, got {s!r}.")


class RandomScores(Attributor):
    config: RandomScoresConfig

    def attribute(self, model, task: Task, data, ctx: RunContext):  # noqa: ANN001, ANN201
        seed = self.config.seed if self.config.seed is not None else ctx.seed
        gen = torch.Generator().manual_seed(int(seed))
        values = torch.randn(model.graph.n_edges, generator=gen, dtype=torch.float64)
        return Scores(model.graph, values, {"method": self.config.name or "random", "random_seed": int(seed)})


@hookimpl
def circuitkit_register_methods(registry) -> None:  # noqa: ANN001
    registry.add("random", RandomScores, RandomScoresConfig)
