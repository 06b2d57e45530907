"""The memory estimate: bytes of a source buffer, free memory on a device, and a clear error before any
work when the buffers will not fit."""

from __future__ import annotations

import torch

from circuitkit.model import CircuitModel


def buffer_bytes(model: CircuitModel, batch: int, positions: int, dtype: torch.dtype | None = None, copies: int = 1) -> int:
    """Bytes of one source buffer ``[n_sources, copies * batch, positions, d_model]``."""
    itemsize = torch.empty((), dtype=dtype or model.dtype).element_size()
    return model.graph.n_sources * copies * batch * positions * model.d_model * itemsize


def available_bytes(device: torch.device) -> int | None:
    """Free memory on ``device`` (CUDA: free device memory; CPU: MemAvailable), or None if unknown."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def check_fits(model: CircuitModel, needed: int, what: str) -> None:
    """Raise a clear error, before any work, when ``needed`` bytes will not fit on the model's device."""
    from circuitkit.errors import CircuitkitError

    free = available_bytes(model.device)
    if free is not None and needed > free:
        raise CircuitkitError(
            f"{what} needs about {needed / 2**30:.2f} GiB of activation buffers on {model.device}, but only "
            f"{free / 2**30:.2f} GiB is free. Lower batch_size (scores do not depend on it), use "
            "buffer_dtype=bfloat16, positions_per_pass=<k> (k positions per pass; more passes), or shorter prompts."
        )
