"""Explicit regularizers, exactly as in the RIFLE authors' PyTorch code.

l2:   SGD weight decay on every parameter.
l2sp: no weight decay; the loss gains alpha/2 * ||w - w0||^2 over the backbone (w0 = the pre-trained weights,
      BatchNorm included) + beta/2 * ||w_head||^2. Its gradient, alpha*w - alpha*w0 on the backbone and beta*w on
      the head, is applied without a loop of small kernels: the w terms as the SGD groups' weight decay (the
      optimizer's own fused pass), the constant -alpha*w0 with one fused multi-tensor add after backward.
"""

from __future__ import annotations

import torch

from rifle_bench.models import Classifier


class L2:
    def __init__(self, weight_decay: float = 1e-4):
        self.weight_decay = weight_decay

    def param_groups(self, model: Classifier) -> list[dict]:
        return [{"params": list(model.backbone.parameters()), "weight_decay": self.weight_decay},
                {"params": list(model.head.parameters()), "weight_decay": self.weight_decay}]

    def add_gradients(self) -> None:
        pass

    def penalty(self) -> float:
        return 0.0

    def epoch_metrics(self) -> dict:
        return {}


class L2SP:
    def __init__(self, alpha: float = 0.01, beta: float = 1e-4):
        self.alpha, self.beta = alpha, beta

    def param_groups(self, model: Classifier) -> list[dict]:
        """Call once the pre-trained weights are loaded: they become the starting point w0."""
        self.backbone = list(model.backbone.parameters())
        self.head = list(model.head.parameters())
        self.starting_point = [p.detach().clone() for p in self.backbone]
        self.pull = torch._foreach_mul(self.starting_point, -self.alpha)
        return [{"params": self.backbone, "weight_decay": self.alpha}, {"params": self.head, "weight_decay": self.beta}]

    def add_gradients(self) -> None:
        torch._foreach_add_([p.grad for p in self.backbone], self.pull)

    @torch.no_grad()
    def penalty(self) -> float:
        """The value of the penalty term (for logging)."""
        drift = torch._foreach_sub(self.backbone, self.starting_point)
        backbone = torch.stack(torch._foreach_norm(drift)).square().sum()
        head = torch.stack(torch._foreach_norm(self.head)).square().sum()
        return float(0.5 * self.alpha * backbone + 0.5 * self.beta * head)

    def epoch_metrics(self) -> dict:
        return {}


def build(regularizer_cfg) -> L2 | L2SP:
    if regularizer_cfg.name == "l2":
        return L2(regularizer_cfg.weight_decay)
    if regularizer_cfg.name == "l2sp":
        return L2SP(regularizer_cfg.alpha, regularizer_cfg.beta)
    raise ValueError(f"unknown regularizer '{regularizer_cfg.name}': expected l2 or l2sp")
