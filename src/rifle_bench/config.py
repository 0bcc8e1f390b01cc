"""The configuration schema: one dataclass per config group, registered in Hydra's ConfigStore.

OmegaConf refuses wrong types and unknown keys by itself; `validate` then checks ranges and relations before any
data is touched, and raises `ConfigError`, whose message is one line: `<key>=<value>: <what is wrong>; expected
<what>; <how to fix>`. Each yaml file of a group starts from its schema (`defaults: [<schema name>, _self_]`).
Method schemas live beside their method (`rifle_bench/methods/*.py`) and register themselves the same way.

Checks that depend on the machine (a GPU, paths, weights files) run where the job runs (`machine=True`), not on a
login node that submits a SLURM sweep.
"""

from __future__ import annotations

import difflib
import math
import os
import tempfile
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from hydra.experimental.callback import Callback
from omegaconf import II, MISSING, DictConfig, OmegaConf


class ConfigError(ValueError):
    """A configuration value that cannot work: says which key, what is wrong, what was expected and the fix."""

    def __init__(self, key: str, value: Any, problem: str, expected: str, fix: str):
        self.key, self.value, self.problem, self.expected, self.fix = key, value, problem, expected, fix
        super().__init__(f"{key}={_show(value)}: {problem}; expected {expected}; {fix}")


def require(condition: bool, key: str, value: Any, problem: str, expected: str, fix: str) -> None:
    if not condition:
        raise ConfigError(key, value, problem, expected, fix)


def _show(value: Any) -> str:
    if isinstance(value, Enum):
        return value.name
    return "null" if value is None else str(value)


def suggestion(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f"did you mean {close[0]}?" if close else f"use one of: {', '.join(choices)}"


class Schedule(str, Enum):
    cosine = "cosine"
    constant = "constant"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Precision(str, Enum):
    fp32 = "fp32"
    bf16 = "bf16"
    auto = "auto"  # bf16 where the GPU supports it, else fp32


@dataclass
class TrainerConfig:
    epochs: int = 12
    batch_size: int = 32
    lr: float = 0.01
    momentum: float = 0.9
    schedule: Schedule = Schedule.cosine
    resize: int = II("dataset.resize")
    crop: int = II("dataset.crop")
    eval_every: int = 0
    device: Device = Device.auto
    precision: Precision = Precision.fp32
    tf32: bool = False
    channels_last: bool = False
    compile: bool = False
    cudnn_benchmark: bool = True
    deterministic: bool = False
    grad_norms: bool = False
    workers: Optional[int] = None
    threads: Optional[int] = None
    checkpoint: bool = True
    keep_checkpoint: bool = False

    def check(self, cfg: DictConfig) -> None:
        _at_least(self.epochs, 1, "trainer.epochs", "train for at least one epoch")
        _at_least(self.batch_size, 1, "trainer.batch_size", "the paper uses 32")
        require(math.isfinite(self.lr) and self.lr > 0, "trainer.lr", self.lr, "the learning rate must be positive",
                "a finite number > 0", "the paper uses 0.01")
        require(0 <= self.momentum < 1, "trainer.momentum", self.momentum, "momentum out of range", "0 <= momentum < 1",
                "the paper uses 0.9")
        _at_least(self.eval_every, 0, "trainer.eval_every", "0 evaluates after the last epoch only")
        _at_least(self.resize, 1, "trainer.resize", "set the shorter edge in pixels")
        _at_least(self.crop, 1, "trainer.crop", "set the crop size in pixels")
        require(self.crop <= self.resize, "trainer.crop", self.crop, f"the crop is larger than the resized images "
                f"({self.resize} px)", f"crop <= resize ({self.resize})", "lower trainer.crop or raise trainer.resize")
        for key in ("workers", "threads"):
            value = getattr(self, key)
            require(value is None or value >= 1, f"trainer.{key}", value, "needs at least one thread",
                    "null (automatic) or an integer >= 1", f"set trainer.{key}=null")

    def check_machine(self) -> None:
        import torch

        if self.device == Device.cuda:
            require(torch.cuda.is_available(), "trainer.device", self.device, "no CUDA device is available here",
                    "auto or cpu on this machine", "use trainer.device=auto (GPU when there is one) or cpu")
        if self.precision == Precision.bf16 and self.device != Device.cpu and torch.cuda.is_available():
            require(torch.cuda.is_bf16_supported(), "trainer.precision", self.precision,
                    "this GPU does not support bfloat16", "fp32 or auto", "use trainer.precision=auto or fp32")


@dataclass
class DatasetConfig:
    name: str = MISSING
    root: str = MISSING
    num_classes: int = MISSING
    resize: int = 256  # shorter edge of the cached images
    crop: int = 224
    expected_sizes: Optional[Dict[str, Optional[int]]] = None
    subset_per_class: Optional[int] = None
    subset_seed: int = 0
    skip_corrupt: bool = False
    val_fraction: float = 0.0
    val_seed: int = 0  # draws the held-out images (independent of the run seed)

    def check(self, cfg: DictConfig) -> None:
        _at_least(self.num_classes, 2, "dataset.num_classes", "set the number of target classes")
        _at_least(self.resize, 1, "dataset.resize", "set the shorter edge in pixels")
        _at_least(self.crop, 1, "dataset.crop", "set the crop size in pixels")
        require(self.subset_per_class is None or self.subset_per_class >= 1, "dataset.subset_per_class",
                self.subset_per_class, "a subset needs images", "null (all images) or an integer >= 1",
                "set dataset.subset_per_class=null")
        require(0 <= self.val_fraction < 1, "dataset.val_fraction", self.val_fraction, "not a fraction of the "
                "training split", "0 <= val_fraction < 1", "use 0 (the paper's protocol) or e.g. 0.1")
        _at_least(self.val_seed, 0, "dataset.val_seed", "use a non-negative integer")

    def check_machine(self) -> None:
        root = Path(self.root).expanduser()
        require(root.is_dir(), "dataset.root", self.root, "no such directory",
                f"the folder that holds the official layout of '{self.name}'",
                "set dataset.root=PATH (or RIFLE_BENCH_DATA); `make assets` installs the embedded animals data")
        require(os.access(root, os.R_OK | os.X_OK), "dataset.root", self.root, "the directory is not readable",
                "a readable folder", "fix its permissions")

    def train_size(self) -> int | None:
        sizes = self.expected_sizes or {}
        return sizes.get("train")


@dataclass
class AnimalsConfig(DatasetConfig):
    """The embedded Animal-MNIST data: a class-balanced split drawn with `split_seed`."""

    train_per_class: int = 100
    test_per_class: int = 200
    split_seed: int = 0

    def check(self, cfg: DictConfig) -> None:
        super().check(cfg)
        _at_least(self.train_per_class, 1, "dataset.train_per_class", "use e.g. 100")
        _at_least(self.test_per_class, 1, "dataset.test_per_class", "use e.g. 200")
        require(self.train_per_class + self.test_per_class <= 1000, "dataset.train_per_class",
                self.train_per_class, f"with test_per_class={self.test_per_class} it needs more than the 1,000 "
                "images of a class", "train_per_class + test_per_class <= 1000", "lower one of them")

    def train_size(self) -> int | None:
        return self.train_per_class * self.num_classes


@dataclass
class ModelConfig:
    name: str = MISSING
    # torchvision weights name (from torch.hub's cache, never downloaded), a path to a .pth file, or null
    weights: Optional[str] = None

    def check(self, cfg: DictConfig) -> None:
        from rifle_bench import models

        require(self.name in models.NAMES, "model.name", self.name, "unknown model",
                f"one of {', '.join(models.NAMES)}", f"choose with model=<name>; {suggestion(self.name, models.NAMES)}")
        if self.weights and not _looks_like_path(self.weights):
            names = models.weight_names(self.name)
            require(self.weights in names, "model.weights", self.weights, f"unknown weights for {self.name}",
                    f"one of {', '.join(names)}, a .pth file or null",
                    f"{suggestion(self.weights, names)} (null trains from random init)")

    def check_machine(self) -> None:
        from rifle_bench import models

        if self.weights and _looks_like_path(self.weights):
            problem = models.checkpoint_problem(self.name, Path(self.weights).expanduser())
            require(problem is None, "model.weights", self.weights, problem or "", f"a readable checkpoint of "
                    f"{self.name}", "point model.weights at the right file, or use a torchvision name or null")


def _looks_like_path(weights: str) -> bool:
    return Path(weights).suffix in {".pth", ".pt", ".ckpt"} or "/" in weights or Path(weights).expanduser().exists()


@dataclass
class RegularizerConfig:
    name: str = MISSING
    never_hurt: bool = False  # DTNH gradient projection (rifle_bench.regularizers)
    granularity: str = "global"  # DTNH inner products over: global | layer

    def check(self, cfg: DictConfig) -> None:
        pass

    def check_never_hurt(self) -> None:
        require(self.granularity in {"global", "layer"}, "regularizer.granularity", self.granularity,
                "unknown DTNH granularity", "global (whole parameter vector) or layer (each layer's parameters)",
                "use regularizer.granularity=global")


@dataclass
class L2Config(RegularizerConfig):
    name: str = "l2"
    weight_decay: float = 1e-4

    def check(self, cfg: DictConfig) -> None:
        _non_negative(self.weight_decay, "regularizer.weight_decay", "the paper uses 1e-4")
        self.check_never_hurt()


@dataclass
class L2SPConfig(RegularizerConfig):
    name: str = "l2sp"
    alpha: float = 0.01
    beta: float = 1e-4

    def check(self, cfg: DictConfig) -> None:
        _non_negative(self.alpha, "regularizer.alpha", "the paper uses 0.01 (the L2-SP paper 0.1)")
        _non_negative(self.beta, "regularizer.beta", "the paper uses 1e-4 (the L2-SP paper 0.01)")
        self.check_never_hurt()


@dataclass
class MethodConfig:
    """What every method config has; each method adds its hyper-parameters (see rifle_bench/methods)."""

    name: str = MISSING
    _target_: str = MISSING
    grid: Dict[str, List[Any]] = field(default_factory=dict)  # the paper's grid: what a sweep expands

    def check(self, cfg: DictConfig) -> None:
        for key in self.grid:
            require(hasattr(self, key), f"method.grid.{key}", self.grid[key], f"'{key}' is not a parameter of "
                    f"{self.name}", "grid keys among the method's parameters", "fix the method's yaml file")


class LoggerName(str, Enum):
    none = "none"
    tensorboard = "tensorboard"


@dataclass
class LoggerConfig:
    name: LoggerName = LoggerName.none

    def check(self, cfg: DictConfig) -> None:
        pass

    def check_machine(self) -> None:
        import importlib.util

        from rifle_bench.loggers import INSTALL_HINT

        if self.name == LoggerName.tensorboard:
            require(importlib.util.find_spec("tensorboard") is not None, "logger", self.name.value,
                    "the tensorboard package is not installed", "tensorboard importable, or logger=none", INSTALL_HINT)


@dataclass
class PathsConfig:
    assets: str = MISSING
    cache: str = MISSING

    def check(self, cfg: DictConfig) -> None:
        pass

    def check_machine(self) -> None:
        cache = Path(self.cache).expanduser()
        try:  # a real probe: permission bits do not tell about read-only mounts, /proc or quotas
            cache.mkdir(parents=True, exist_ok=True)
            tempfile.TemporaryFile(dir=cache).close()
        except OSError as error:
            raise ConfigError("paths.cache", self.cache, f"cannot write the image cache there ({error.strerror})",
                              "a writable directory", "set paths.cache=PATH or RIFLE_BENCH_CACHE") from None


@dataclass
class Config:
    dataset: DatasetConfig = MISSING
    model: ModelConfig = MISSING
    regularizer: RegularizerConfig = MISSING
    method: MethodConfig = MISSING
    trainer: TrainerConfig = MISSING
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    seed: int = 0


GROUP_SCHEMAS = {"dataset": [("dataset_schema", DatasetConfig), ("animals_schema", AnimalsConfig)],
                 "model": [("model_schema", ModelConfig)],
                 "regularizer": [("l2_schema", L2Config), ("l2sp_schema", L2SPConfig)],
                 "trainer": [("trainer_schema", TrainerConfig)],
                 "logger": [("logger_schema", LoggerConfig)]}


def register() -> None:
    """Put every schema in Hydra's ConfigStore (the method schemas register when rifle_bench.methods loads)."""
    store = ConfigStore.instance()
    store.store(name="config_schema", node=Config, provider="rifle_bench")
    for group, schemas in GROUP_SCHEMAS.items():
        for name, node in schemas:
            store.store(group=group, name=name, node=node, provider="rifle_bench")
    import rifle_bench.methods  # noqa: F401  (registers the method schemas)


def register_method(name: str, node: type[MethodConfig]) -> None:
    ConfigStore.instance().store(group="method", name=name, node=node, provider="rifle_bench")


class ValidateBeforeRun(Callback):
    """Refuse a bad single-run configuration before Hydra creates its run directory (sweeps: the sweeper)."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        from rifle_bench.errors import ConfigRefused

        try:
            validate(config, machine=True)
        except ConfigError as error:
            raise ConfigRefused() from error


def validate(cfg: DictConfig, machine: bool = True) -> list[str]:
    """Raise ConfigError for the first value that cannot work; return warnings for legal but suspicious values."""
    check_seed(cfg.seed)
    groups = {key: OmegaConf.to_object(cfg[key]) for key in ("dataset", "model", "regularizer", "method",
                                                              "trainer", "logger", "paths")}
    for group in groups.values():
        group.check(cfg)
    from rifle_bench import methods

    methods.build(cfg.method).check(cfg)
    if machine:
        for group in groups.values():
            if hasattr(group, "check_machine"):
                group.check_machine()
    return _warnings(groups["trainer"], groups["dataset"])


def check_seed(seed: int) -> None:
    require(0 <= seed < 2**63, "seed", seed, "out of range", "an integer from 0 to 2**63 - 1", "use e.g. seed=0")


def _warnings(trainer: TrainerConfig, dataset: DatasetConfig) -> list[str]:
    warnings = []
    if trainer.lr > 1:
        warnings.append(f"trainer.lr={trainer.lr} is above 1: SGD fine-tuning usually diverges there "
                        f"(the paper uses 0.01)")
    n_train = dataset.train_size()
    if n_train is not None:
        n_train = round(n_train * (1 - dataset.val_fraction))
        if trainer.batch_size >= n_train:
            warnings.append(f"trainer.batch_size={trainer.batch_size} is not smaller than the {n_train} training "
                            f"images: an epoch is a single step")
    return warnings


def _at_least(value: int, minimum: int, key: str, fix: str) -> None:
    require(value >= minimum, key, value, "out of range", f"an integer >= {minimum}", fix)


def _non_negative(value: float, key: str, fix: str) -> None:
    require(math.isfinite(value) and value >= 0, key, value, "must be a non-negative number",
            "a finite number >= 0", fix)


def check_probability(value: float, key: str, fix: str, upper_inclusive: bool = False) -> None:
    inside = 0 <= value <= 1 if upper_inclusive else 0 <= value < 1
    require(inside, key, value, "not a probability", "0 <= p <= 1" if upper_inclusive else "0 <= p < 1", fix)


def check_periods(value: int, key: str, periods: int, cfg: DictConfig, what: str) -> None:
    """`periods` equal periods (k re-inits make k+1) must each get at least one of the epochs."""
    _at_least(value, 1, key, f"use at least one {what}")
    epochs = cfg.trainer.epochs
    require(periods <= epochs, key, value, f"{periods} periods do not fit in trainer.epochs={epochs}",
            f"at most {epochs} periods", f"lower {key} or raise trainer.epochs")
