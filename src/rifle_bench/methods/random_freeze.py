"""Random layer freezing with a Moore-Penrose (ridge least-squares) refinement of the FC layer
(Zhang, Yang, Akilan, Wu, Liu, IEEE TCYB 2025; the authors' MATLAB demo W1AE/DCNN-FR), as we read them.

Epoch e of E trains with activation rate r = rates[e * len(rates) // E] (the authors' 8-epoch schedule
stretched over E epochs): round((1 - r) * L) of the backbone's L conv layers, drawn uniformly without
replacement from a stream seeded by (run seed, e), are frozen for the epoch together with their BatchNorm
(`freeze_bn`). With `mpi`, after each epoch the FC weights W (c x d) are refined in closed form from the
penultimate features H of the training set (eval mode, center crops, no augmentation) and targets
T = 2*onehot - 1: W_ls = (H^T H + I/C)^-1 H^T T, accumulated batch by batch (solved in float64), then
W <- (1 - mpi_lr) * W + mpi_lr * W_ls^T; the bias is left as it is (as in the demo). `mpi_features=train`
takes H from the epoch's own training forward passes instead (augmented crops, train-mode BatchNorm, weights
moving during the epoch: our shortcut, with no extra pass over the data).
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from rifle_bench.config import require
from rifle_bench.data.loader import ImageBatches
from rifle_bench.methods.base import Method
from rifle_bench.methods.freezing import conv_layers, set_frozen

AUTHORS_RATES = (1.0, 1.0, 0.75, 0.75, 0.5, 0.5, 0.25, 0.25)


class RidgeAccumulator:
    """H^T H and H^T T summed over batches (in the features' precision, at least float32), then the ridge
    solution (H^T H + I/C)^-1 H^T T in float64 (Cholesky: the matrix is symmetric positive definite)."""

    def __init__(self, dim: int, num_classes: int, ridge_c: float, device: torch.device,
                 dtype: torch.dtype = torch.float32):
        self.gram = torch.zeros(dim, dim, dtype=dtype, device=device)
        self.cross = torch.zeros(dim, num_classes, dtype=dtype, device=device)
        self.ridge_c, self.num_classes = ridge_c, num_classes

    def add(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        features = features.to(self.gram.dtype)
        targets = 2.0 * F.one_hot(labels, self.num_classes).to(self.gram.dtype) - 1.0
        self.gram.addmm_(features.T, features)
        self.cross.addmm_(features.T, targets)

    def solve(self) -> torch.Tensor:
        """W_ls, d x c, in float64."""
        ridge = torch.eye(len(self.gram), dtype=torch.float64, device=self.gram.device) / self.ridge_c
        gram = self.gram.double() + ridge
        return torch.cholesky_solve(self.cross.double(), torch.linalg.cholesky(gram))


@torch.no_grad()
def blend_weights(head: torch.nn.Linear, solution: torch.Tensor, mpi_lr: float) -> None:
    """W <- (1 - mpi_lr) * W + mpi_lr * solution^T (solution: d x c); the bias stays."""
    head.weight.mul_(1.0 - mpi_lr).add_(solution.T.to(head.weight.dtype), alpha=mpi_lr)


class RandomFreeze(Method):
    def __init__(self, rates: tuple[float, ...] = AUTHORS_RATES, freeze_bn: bool = True, mpi: bool = True,
                 mpi_lr: float = 0.5, ridge_c: float = 1.0, mpi_features: str = "pass"):
        self.rates, self.freeze_bn = list(rates), freeze_bn
        self.mpi, self.mpi_lr, self.ridge_c, self.mpi_features = mpi, mpi_lr, ridge_c, mpi_features
        self.frozen: list[int] = []
        self.mpi_s = 0.0
        self._plain_batches: ImageBatches | None = None
        self._ridge: RidgeAccumulator | None = None
        self._labels: torch.Tensor | None = None

    def check(self, cfg):
        require(bool(self.rates) and all(0.0 <= rate <= 1.0 for rate in self.rates), "method.rates", self.rates,
                "activation rates must lie in [0, 1]", "a non-empty list such as [1, 1, 0.75, 0.75, 0.5, 0.5, "
                "0.25, 0.25]", "fix method.rates")
        require(0.0 <= self.mpi_lr <= 1.0, "method.mpi_lr", self.mpi_lr, "out of range", "a blend weight in [0, 1]",
                "the authors' demo uses 0.5")
        require(self.ridge_c > 0, "method.ridge_c", self.ridge_c, "must be positive", "C > 0 (the ridge term is "
                "I/C)", "use e.g. method.ridge_c=1")
        require(self.mpi_features in {"pass", "train"}, "method.mpi_features", self.mpi_features, "unknown source "
                "of features", "pass (a pass over the training images after the epoch, as the authors) or train "
                "(the epoch's own training forward passes)", "use method.mpi_features=pass")

    def wrap_model(self, model):
        self.seed = torch.initial_seed()  # the run seed: train.run seeds torch with it before building the model
        self.layers = conv_layers(model.backbone)
        if not self.freeze_bn:
            self.layers = [layer[:1] for layer in self.layers]
        if self.mpi and self.mpi_features == "train":
            model.head.register_forward_pre_hook(self._accumulate_training_features)

    def _accumulate_training_features(self, head: torch.nn.Linear, inputs: tuple[torch.Tensor]) -> None:
        if head.training and self._ridge is not None:
            self._ridge.add(inputs[0].detach().flatten(1), self._labels)

    def targets(self, labels, num_classes):
        self._labels = labels  # for the features of this step's forward pass (mpi_features=train)
        return labels

    def rate(self, epoch: int, epochs: int) -> float:
        return self.rates[epoch * len(self.rates) // epochs]

    def frozen_layers(self, epoch: int, epochs: int) -> list[int]:
        """Indices (into the backbone's conv layers, in forward order) of the layers frozen in `epoch`."""
        count = math.floor(len(self.layers) * (1.0 - self.rate(epoch, epochs)) + 0.5)  # MATLAB's round
        rng = np.random.default_rng([self.seed, epoch])
        return sorted(rng.choice(len(self.layers), size=count, replace=False).tolist())

    def start_epoch(self, epoch, epochs, model, optimizer):
        self.frozen = self.frozen_layers(epoch, epochs)
        frozen = set(self.frozen)
        set_frozen([m for i, layer in enumerate(self.layers) if i not in frozen for m in layer], False)
        set_frozen([m for i in self.frozen for m in self.layers[i]], True)
        if self.mpi and self.mpi_features == "train":
            head = model.head
            self._ridge = RidgeAccumulator(head.in_features, head.out_features, self.ridge_c, head.weight.device)
        return False

    def end_epoch(self, model, train_batches):
        self.mpi_s = 0.0
        if not self.mpi:
            return
        clock = time.perf_counter()
        head = model.head
        if self.mpi_features == "train":
            ridge, self._ridge = self._ridge, None
        else:
            ridge = RidgeAccumulator(head.in_features, head.out_features, self.ridge_c, head.weight.device)
            was_training = model.training
            model.eval()
            with torch.no_grad():
                for images, labels in self._center_crops(train_batches).epoch(0):
                    ridge.add(model.head_input(model.backbone(images)).flatten(1), labels)
            model.train(was_training)
        blend_weights(head, ridge.solve(), self.mpi_lr)
        self.mpi_s = time.perf_counter() - clock

    def _center_crops(self, train_batches: ImageBatches) -> ImageBatches:
        """The training images as the test split is read: center crops, in order, no flips."""
        if self._plain_batches is None:
            self._plain_batches = ImageBatches(
                train_batches.split, crop=train_batches.crop, batch_size=train_batches.batch_size, train=False,
                device=train_batches.device, channels_last=train_batches.channels_last, threads=train_batches.threads)
        return self._plain_batches

    def epoch_metrics(self):
        return {"frozen_count": len(self.frozen), "frozen_layers": " ".join(map(str, self.frozen)),
                "mpi_s": round(self.mpi_s, 4)}
