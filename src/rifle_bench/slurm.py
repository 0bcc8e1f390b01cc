"""Checks of the SLURM launcher preset that must pass before a sweep submits anything."""

from __future__ import annotations

from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class RequireClusterSettings(Callback):
    """Refuse to start a sweep while a launcher key the cluster needs is unset.

    `required` maps each key of hydra.launcher to the environment variable that can set it once.
    """

    def __init__(self, required: dict[str, str]) -> None:
        self.required = dict(required)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        for key, variable in self.required.items():
            if config.hydra.launcher.get(key) is None:
                # Hydra turns a callback's exceptions into warnings and goes on: only exiting stops the sweep.
                raise SystemExit(
                    f"Error: hydra.launcher.{key} is not set, and the slurm launcher needs it: pass "
                    f"hydra.launcher.{key}=NAME, or set it once with `export {variable}=NAME`. Nothing was submitted.")
