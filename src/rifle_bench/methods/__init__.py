"""Algorithmic regularizers: one small unit per trick behind the `Method` interface (see base.py).

A method config names its class in `_target_`, its hyper-parameters as plain keys, and its paper grid
under `grid` (the keys a sweep expands); `build` turns such a config into the object.

Each method class's constructor is its schema: every module of this package is imported, and for each `Method`
subclass a dataclass with the constructor's parameters (types and defaults) is registered in Hydra's ConfigStore as
`<ClassName>_schema`, which the method's yaml names in its defaults. Range checks are the class's `check`.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import inspect
import pkgutil
import types
import typing

from hydra.utils import get_class
from omegaconf import MISSING, DictConfig, OmegaConf

from rifle_bench.config import MethodConfig, register_method
from rifle_bench.methods.base import Method

NON_PARAMETERS = {"_target_", "name", "grid"}


def build(method_cfg: DictConfig) -> Method:
    cls = get_class(method_cfg._target_)
    params = {k: v for k, v in OmegaConf.to_container(method_cfg, resolve=True, enum_to_str=True).items()
              if k not in NON_PARAMETERS}
    return cls(**params)


def variant(method_cfg: DictConfig) -> dict:
    """The values of the method's grid parameters in this run (what distinguishes it within a sweep)."""
    grid = method_cfg.get("grid") or {}
    return {key: method_cfg[key] for key in grid}


def schema(cls: type[Method]) -> type[MethodConfig]:
    """A MethodConfig dataclass whose fields are the parameters of `cls.__init__`, with their types and defaults."""
    hints = typing.get_type_hints(cls.__init__)
    fields = []
    parameters = list(inspect.signature(cls.__init__).parameters.values())[1:]
    for parameter in (p for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)):
        name = parameter.name
        kind = _omegaconf_type(hints.get(name, typing.Any))
        if parameter.default is inspect.Parameter.empty:
            fields.append((name, kind, dataclasses.field(default=MISSING)))
        elif isinstance(parameter.default, (list, dict)):
            fields.append((name, kind, dataclasses.field(default_factory=lambda d=parameter.default: copy.deepcopy(d))))
        else:
            fields.append((name, kind, dataclasses.field(default=parameter.default)))
    return dataclasses.make_dataclass(f"{cls.__name__}Config", fields, bases=(MethodConfig,))


def _omegaconf_type(hint):
    """`float | None` as typing.Optional[float]: OmegaConf reads typing's unions, not PEP 604's."""
    if isinstance(hint, types.UnionType):
        return typing.Union[hint.__args__]  # type: ignore[index]
    return hint


def _register_all() -> None:
    for module_info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        for cls in vars(module).values():
            if inspect.isclass(cls) and issubclass(cls, Method) and cls.__module__ == module.__name__:
                register_method(f"{cls.__name__}_schema", schema(cls))


_register_all()
