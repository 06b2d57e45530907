"""A Hydra callback that checks the run (or sweep) directory before Hydra creates it.

Hydra creates the output directory itself, before circuitkit runs; a path whose parent is a regular file
would otherwise end in Hydra's traceback. Configured in circuitkit/conf/config.yaml (``hydra.callbacks``).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from circuitkit.rundir import RunDirError, check_creatable


def _check(config: DictConfig, key: str) -> None:
    try:
        path = OmegaConf.select(config, key)
    except Exception:  # noqa: BLE001 - Hydra reports unresolvable values itself
        return
    if path is None:
        return
    try:
        check_creatable(str(path), key)
    except RunDirError as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"circuitkit: error: {e}", file=sys.stderr)
        raise SystemExit(1) from None


class RunDirCheck(Callback):
    """Refuse, with one ``circuitkit: error:`` line, a run or sweep directory that cannot be created."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _check(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _check(config, "hydra.sweep.dir")
