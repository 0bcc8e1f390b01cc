"""Algorithmic regularizers: one small unit per trick behind the `Method` interface (see base.py).

A method config names its class in `_target_`, its hyper-parameters as plain keys, and its paper grid
under `grid` (the keys a sweep expands); `build` turns such a config into the object.
"""

from __future__ import annotations

from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from rifle_bench.methods.base import Method

NON_PARAMETERS = {"_target_", "name", "grid"}


def build(method_cfg: DictConfig) -> Method:
    cls = get_class(method_cfg._target_)
    params = {k: v for k, v in OmegaConf.to_container(method_cfg, resolve=True).items() if k not in NON_PARAMETERS}
    return cls(**params)


def variant(method_cfg: DictConfig) -> dict:
    """The values of the method's grid parameters in this run (what distinguishes it within a sweep)."""
    grid = method_cfg.get("grid") or {}
    return {key: method_cfg[key] for key in grid}
