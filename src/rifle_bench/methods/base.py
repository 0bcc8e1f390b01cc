"""The narrow interface every algorithmic regularizer implements, and the learning-rate shapes they share."""

from __future__ import annotations

import math

import torch
from omegaconf import DictConfig

from rifle_bench.data.loader import ImageBatches
from rifle_bench.models import Classifier


class Method:
    """Plain fine-tuning; subclasses override the hooks they need.

    The constructor's parameters are the method's config keys (its schema, see rifle_bench.methods); `check`
    refuses values that cannot work before anything runs. The training loop calls, in order: `wrap_model` once
    before the optimizer exists; per epoch
    `start_epoch` (returns True where the head was re-initialized) and `learning_rates`; per step `targets`;
    after the epoch's last step `end_epoch` (may change weights; its time counts in the epoch's), then
    `epoch_metrics` (extra metrics.csv columns).
    """

    def check(self, cfg: DictConfig) -> None:
        """Raise rifle_bench.config.ConfigError for a parameter out of range (`cfg` is the whole run's config)."""

    def wrap_model(self, model: Classifier) -> None:
        pass

    def start_epoch(self, epoch: int, epochs: int, model: Classifier, optimizer: torch.optim.Optimizer) -> bool:
        return False

    def learning_rates(self, epoch: int, epochs: int, base_lr: float, scheduled_lr: float) -> tuple[float, float]:
        """(backbone lr, head lr) for `epoch`; `scheduled_lr` is the global schedule's value."""
        return scheduled_lr, scheduled_lr

    def targets(self, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
        return labels

    def end_epoch(self, model: Classifier, train_batches: ImageBatches) -> None:
        pass

    def epoch_metrics(self) -> dict:
        return {}


def cosine(epoch: int, epochs: int, base_lr: float) -> float:
    """Cosine annealing stepped once per epoch, as torch's CosineAnnealingLR(T_max=epochs, eta_min=0)."""
    return 0.5 * base_lr * (1.0 + math.cos(math.pi * epoch / epochs))


def period_starts(epochs: int, periods: int) -> list[int]:
    """First epochs of `periods` equal periods of length epochs // periods; the last one takes the remainder."""
    length = epochs // periods
    if length < 1:
        raise ValueError(f"{periods} periods do not fit in {epochs} epochs: use more epochs (trainer.epochs) "
                         f"or fewer cycles/re-initializations")
    return [i * length for i in range(periods)]


def cyclic_cosine(epoch: int, epochs: int, starts: list[int], base_lr: float) -> float:
    """Cosine annealing restarted at each period start: 0.5*lr*(1 + cos(pi * tau / period length))."""
    start = max(s for s in starts if s <= epoch)
    end = next((s for s in starts if s > epoch), epochs)
    return cosine(epoch - start, end - start, base_lr)
