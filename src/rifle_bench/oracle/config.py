"""The oracle study's schema: dataclasses in Hydra's ConfigStore, range checks as in rifle_bench.config.

OmegaConf refuses wrong types, unknown keys and unknown choices (the enums); `validate` checks ranges and
relations and raises rifle_bench.config.ConfigError (one line). `conf/oracle.yaml` lists every key with its
default and why it was chosen where the paper leaves it open.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from rifle_bench.config import require

SCHEMA = "rifle_bench_oracle_schema"


class OracleMethod(str, Enum):
    l2 = "l2"            # plain fine-tuning (L2 = SGD weight decay)
    rifle = "rifle"      # re-init of the head + cyclic head lr
    rifle_a = "rifle_a"  # re-init only
    rifle_b = "rifle_b"  # cyclic head lr only


class OracleInit(str, Enum):
    linear = "linear"  # nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    normal = "normal"  # N(0, oracle_std^2)


class Schedule(str, Enum):
    constant = "constant"
    cosine = "cosine"


class HeadInit(str, Enum):
    teacher = "teacher"  # fine-tuning starts from the teacher's W2'
    random = "random"    # a fresh nn.Linear head


class OTMetric(str, Enum):
    sqeuclidean = "sqeuclidean"
    euclidean = "euclidean"


@dataclass
class DataConfig:
    input_dim: int = 100
    hidden: int = 50
    n_source: int = 1000
    n_target: int = 1000
    n_test: int = 1000
    noise_std: float = 0.1
    test_noise: bool = False
    oracle_init: OracleInit = OracleInit.linear
    oracle_std: float = 1.0

    def check(self) -> None:
        for key in ("input_dim", "hidden", "n_source", "n_target", "n_test"):
            _at_least(getattr(self, key), 1, f"data.{key}")
        _finite(self.noise_std, 0, "data.noise_std")
        require(self.oracle_std > 0, "data.oracle_std", self.oracle_std, "must be positive", "a number > 0",
                "use e.g. 1.0")


@dataclass
class SGDConfig:
    epochs: int = 40
    lr: float = 0.05
    batch_size: int = 32
    momentum: float = 0.0
    weight_decay: float = 0.0
    schedule: Schedule = Schedule.constant

    def check(self, stage: str) -> None:
        _at_least(self.epochs, 1, f"{stage}.epochs")
        _at_least(self.batch_size, 1, f"{stage}.batch_size")
        require(math.isfinite(self.lr) and self.lr > 0, f"{stage}.lr", self.lr, "the learning rate must be positive",
                "a finite number > 0", "use e.g. 0.05")
        require(0 <= self.momentum < 1, f"{stage}.momentum", self.momentum, "momentum out of range",
                "0 <= momentum < 1", "0 is vanilla SGD")
        _finite(self.weight_decay, 0, f"{stage}.weight_decay")


@dataclass
class TeacherConfig(SGDConfig):
    epochs: int = 200


@dataclass
class FinetuneConfig(SGDConfig):
    weight_decay: float = 1e-4
    schedule: Schedule = Schedule.cosine
    head_init: HeadInit = HeadInit.teacher
    k: int = 4  # RIFLE re-initializations: k+1 periods

    def check(self, stage: str = "finetune") -> None:
        super().check(stage)
        _at_least(self.k, 0, "finetune.k")
        require(self.k + 1 <= self.epochs, "finetune.k", self.k, f"{self.k + 1} periods do not fit in "
                f"finetune.epochs={self.epochs}", f"k <= {self.epochs - 1}",
                "lower finetune.k or raise finetune.epochs")


@dataclass
class OTConfig:
    metric: OTMetric = OTMetric.sqeuclidean
    normalize: bool = False


@dataclass
class OracleConfig:
    seed: int = 0
    oracle_seed: Optional[int] = None
    methods: List[OracleMethod] = field(default_factory=lambda: [OracleMethod.l2, OracleMethod.rifle])
    threads: int = 1
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    ot: OTConfig = field(default_factory=OTConfig)


def register() -> None:
    ConfigStore.instance().store(name=SCHEMA, node=OracleConfig, provider="rifle_bench")


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError for the first value that cannot work (types and choices are OmegaConf's job)."""
    without_hydra = OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"])  # a callback sees hydra's
    oracle: OracleConfig = OmegaConf.to_object(OmegaConf.merge(OracleConfig, without_hydra))
    for key in ("seed", "oracle_seed"):
        value = getattr(oracle, key)
        require(value is None or 0 <= value < 2**63, key, value, "out of range", "an integer in [0, 2**63)",
                "use a non-negative integer")
    require(len(oracle.methods) > 0, "methods", "[]", "no method to compare",
            f"a list of {', '.join(m.name for m in OracleMethod)}", "use e.g. methods=[l2,rifle]")
    _at_least(oracle.threads, 1, "threads")
    oracle.data.check()
    oracle.teacher.check("teacher")
    oracle.finetune.check()


def _at_least(value: int, minimum: int, key: str) -> None:
    require(value >= minimum, key, value, "out of range", f"an integer >= {minimum}", f"set {key} to {minimum} or more")


def _finite(value: float, minimum: float, key: str) -> None:
    require(math.isfinite(value) and value >= minimum, key, value, "out of range", f"a finite number >= {minimum}",
            f"set {key} to {minimum} or more")

