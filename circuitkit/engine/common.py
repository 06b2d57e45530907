"""Small pieces shared by every pass of the engine: the metric type, device placement of stored tensors,
and the exception that ends a forward pass at the final residual stream."""

from __future__ import annotations

from collections.abc import Callable

import torch

from circuitkit.data import Batch

Metric = Callable[[torch.Tensor, Batch], torch.Tensor]


def _on(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``x`` on ``t``'s device (``x`` itself when it is already there)."""
    return x if x.device == t.device else x.to(t.device)


class _StopForward(Exception):
    """Raised at the final residual stream: the rest of the model is not needed."""
