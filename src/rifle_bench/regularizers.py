"""Explicit regularizers, exactly as in the RIFLE authors' PyTorch code.

l2:   SGD weight decay on every parameter.
l2sp: no weight decay; the loss gains alpha * 0.5 * ||w - w0||^2 over the backbone (w0 = the pre-trained
      weights, BatchNorm included) + beta * 0.5 * ||w_head||^2. The penalty is applied as its exact gradient,
      alpha * (w - w0) and beta * w_head, added with fused multi-tensor ops after backward: the same update
      as differentiating the loss term, without a per-parameter loop of small kernels each step.
"""

from __future__ import annotations

import torch

from rifle_bench.models import Classifier


class L2:
    def __init__(self, weight_decay: float = 1e-4):
        self.weight_decay = weight_decay

    def attach(self, model: Classifier) -> None:
        pass

    def add_gradients(self) -> None:
        pass

    def penalty(self) -> float:
        return 0.0


class L2SP:
    weight_decay = 0.0

    def __init__(self, alpha: float = 0.01, beta: float = 1e-4):
        self.alpha, self.beta = alpha, beta

    def attach(self, model: Classifier) -> None:
        """Remember the starting point w0 of the backbone: call after loading the pre-trained weights."""
        self.backbone = [p for p in model.backbone.parameters() if p.requires_grad]
        self.starting_point = [p.detach().clone() for p in self.backbone]
        self.head = [p for p in model.head.parameters() if p.requires_grad]

    def add_gradients(self) -> None:
        backbone = [p for p in self.backbone if p.grad is not None]
        if backbone:
            anchors = [w0 for p, w0 in zip(self.backbone, self.starting_point) if p.grad is not None]
            torch._foreach_add_([p.grad for p in backbone], torch._foreach_sub([p.detach() for p in backbone], anchors),
                                alpha=self.alpha)
        head = [p for p in self.head if p.grad is not None]
        if head:
            torch._foreach_add_([p.grad for p in head], [p.detach() for p in head], alpha=self.beta)

    @torch.no_grad()
    def penalty(self) -> float:
        """The value of the penalty term (for logging)."""
        drift = torch._foreach_sub(self.backbone, self.starting_point)
        backbone = torch.stack(torch._foreach_norm(drift)).square().sum()
        head = torch.stack(torch._foreach_norm(self.head)).square().sum()
        return float(0.5 * self.alpha * backbone + 0.5 * self.beta * head)


def build(regularizer_cfg) -> L2 | L2SP:
    if regularizer_cfg.name == "l2":
        return L2(regularizer_cfg.weight_decay)
    if regularizer_cfg.name == "l2sp":
        return L2SP(regularizer_cfg.alpha, regularizer_cfg.beta)
    raise ValueError(f"unknown regularizer '{regularizer_cfg.name}': expected l2 or l2sp")
