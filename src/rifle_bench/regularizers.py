"""Explicit regularizers, exactly as in the RIFLE authors' PyTorch code, and the DTNH option on top of them.

l2:   SGD weight decay on every parameter.
l2sp: no weight decay; the loss gains alpha/2 * ||w - w0||^2 over the backbone (w0 = the pre-trained weights,
      BatchNorm included) + beta/2 * ||w_head||^2. Its gradient, alpha*w - alpha*w0 on the backbone and beta*w on
      the head, is applied without a loop of small kernels: the w terms as the SGD groups' weight decay (the
      optimizer's own fused pass), the constant -alpha*w0 with one fused multi-tensor add after backward.
never_hurt (DTNH, Wan et al., ICDM 2019): the regularizer's gradient g_r is computed explicitly (no weight
      decay) and, where it conflicts with the loss gradient g_e (<g_r, g_e> < 0), its component along g_e is
      removed before the step: d = g_e + g_r - min(0, <g_r, g_e>) / ||g_e||^2 * g_e. The inner products run over
      the whole parameter vector (granularity=global) or each layer's parameters (granularity=layer).

The head group holds every parameter after the backbone: `head_input` (layers a method adds before the FC)
and `head`. Parameters without a gradient in a step (frozen by a method) are left alone.
"""

from __future__ import annotations

import torch

from rifle_bench.models import Classifier

GRANULARITIES = ("global", "layer")


class NeverHurt:
    """DTNH's projection of the regularizer gradient, with per-epoch statistics of how often it fired."""

    def __init__(self, granularity: str = "global", eps: float = 1e-20):
        if granularity not in GRANULARITIES:
            raise ValueError(f"regularizer.granularity={granularity}: unknown granularity; expected one of "
                             f"{', '.join(GRANULARITIES)}; use global (whole parameter vector) or layer")
        self.granularity, self.eps = granularity, eps
        self._reset()

    def _reset(self) -> None:
        self.fired = self.cosine = self.count = 0.0

    def combine(self, loss_grads: list[torch.Tensor], reg_grads: list[torch.Tensor], layers: list[int]) -> None:
        """Overwrite each loss gradient with d = g_e + projected g_r; `layers[i]` is tensor i's layer index."""
        dots = torch.stack([(e * r).sum() for e, r in zip(loss_grads, reg_grads)])
        loss_sq = torch.stack(torch._foreach_norm(loss_grads)).square()
        reg_sq = torch.stack(torch._foreach_norm(reg_grads)).square()
        if self.granularity == "global":
            dots, loss_sq, reg_sq = dots.sum(), loss_sq.sum(), reg_sq.sum()
        else:
            index = torch.tensor(layers, device=dots.device)
            n_layers = max(layers) + 1
            dots, loss_sq, reg_sq = (torch.zeros(n_layers, device=dots.device, dtype=dots.dtype).index_add_(0, index, v)
                                     for v in (dots, loss_sq, reg_sq))
        conflict = (dots < 0) & (loss_sq > self.eps)
        # g_e + g_r - c * g_e = (1 - c) * g_e + g_r, with c = <g_r, g_e> / ||g_e||^2 where they conflict, else 0.
        keep = 1.0 - torch.where(conflict, dots / loss_sq.clamp_min(self.eps), torch.zeros_like(dots))
        if self.granularity == "global":
            torch._foreach_mul_(loss_grads, keep)
        else:
            torch._foreach_mul_(loss_grads, list(keep[index].unbind()))
        torch._foreach_add_(loss_grads, reg_grads)
        cosine = dots / (loss_sq * reg_sq).sqrt().clamp_min(self.eps)
        self.fired = self.fired + conflict.float().mean()
        self.cosine = self.cosine + cosine.mean()
        self.count += 1

    def epoch_metrics(self) -> dict:
        """dtnh_fired: fraction of steps (granularity=layer: of layers x steps) where the projection fired;
        dtnh_cos: mean cosine between the loss and the regularizer gradients over the same."""
        if not self.count:
            return {"dtnh_fired": None, "dtnh_cos": None}
        fired, cosine = (float(value) / self.count for value in (self.fired, self.cosine))
        self._reset()
        return {"dtnh_fired": round(fired, 6), "dtnh_cos": round(cosine, 6)}


def _groups(model: Classifier) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
    return list(model.backbone.parameters()), [*model.head_input.parameters(), *model.head.parameters()]


def _layer_indices(model: Classifier, params: list[torch.nn.Parameter]) -> list[int]:
    """For each parameter, the index of the module that owns it (a conv's weight and bias share one layer)."""
    owner = {id(p): module_name for module_name, module in model.named_modules()
             for p in module.parameters(recurse=False)}
    names = list(dict.fromkeys(owner[id(p)] for p in params))
    return [names.index(owner[id(p)]) for p in params]


class L2:
    def __init__(self, weight_decay: float = 1e-4, never_hurt: bool = False, granularity: str = "global"):
        self.weight_decay = weight_decay
        self.never_hurt = NeverHurt(granularity) if never_hurt else None

    def param_groups(self, model: Classifier) -> list[dict]:
        backbone, head = _groups(model)
        self.params = backbone + head
        self.layers = _layer_indices(model, self.params)
        decay = 0.0 if self.never_hurt else self.weight_decay
        return [{"name": "backbone", "params": backbone, "weight_decay": decay},
                {"name": "head", "params": head, "weight_decay": decay}]

    def add_gradients(self) -> None:
        if self.never_hurt:
            active = [(p, layer) for p, layer in zip(self.params, self.layers) if p.grad is not None]
            params = [p for p, _ in active]
            reg_grads = torch._foreach_mul([p.detach() for p in params], self.weight_decay)
            self.never_hurt.combine([p.grad for p in params], reg_grads, [layer for _, layer in active])

    def penalty(self) -> float:
        return 0.0

    def epoch_metrics(self) -> dict:
        return self.never_hurt.epoch_metrics() if self.never_hurt else {}


class L2SP:
    def __init__(self, alpha: float = 0.01, beta: float = 1e-4, never_hurt: bool = False, granularity: str = "global"):
        self.alpha, self.beta = alpha, beta
        self.never_hurt = NeverHurt(granularity) if never_hurt else None

    def param_groups(self, model: Classifier) -> list[dict]:
        """Call once the pre-trained weights are loaded: they become the starting point w0."""
        self.backbone, self.head = _groups(model)
        self.starting_point = [p.detach().clone() for p in self.backbone]
        self.pull = torch._foreach_mul(self.starting_point, -self.alpha)
        if self.never_hurt:
            self.layers = _layer_indices(model, self.backbone + self.head)
            return [{"name": "backbone", "params": self.backbone, "weight_decay": 0.0},
                    {"name": "head", "params": self.head, "weight_decay": 0.0}]
        return [{"name": "backbone", "params": self.backbone, "weight_decay": self.alpha},
                {"name": "head", "params": self.head, "weight_decay": self.beta}]

    def add_gradients(self) -> None:
        if self.never_hurt:
            self._never_hurt_gradients()
            return
        grads = [p.grad for p in self.backbone]
        if any(grad is None for grad in grads):  # a method froze layers this epoch
            pulls = [pull for grad, pull in zip(grads, self.pull) if grad is not None]
            torch._foreach_add_([grad for grad in grads if grad is not None], pulls)
        else:
            torch._foreach_add_(grads, self.pull)

    def _never_hurt_gradients(self) -> None:
        n_backbone = len(self.backbone)
        active = [i for i, p in enumerate(self.backbone + self.head) if p.grad is not None]
        backbone = [i for i in active if i < n_backbone]
        head = [self.head[i - n_backbone] for i in active if i >= n_backbone]
        # alpha*(w - w0) = alpha*w + pull on the backbone, beta*w on the head
        reg_grads = torch._foreach_add(torch._foreach_mul([self.backbone[i].detach() for i in backbone], self.alpha),
                                       [self.pull[i] for i in backbone])
        reg_grads += torch._foreach_mul([p.detach() for p in head], self.beta)
        loss_grads = [self.backbone[i].grad for i in backbone] + [p.grad for p in head]
        self.never_hurt.combine(loss_grads, reg_grads, [self.layers[i] for i in active])

    @torch.no_grad()
    def penalty(self) -> float:
        """The value of the penalty term (for logging)."""
        drift = torch._foreach_sub(self.backbone, self.starting_point)
        backbone = torch.stack(torch._foreach_norm(drift)).square().sum()
        head = torch.stack(torch._foreach_norm(self.head)).square().sum()
        return float(0.5 * self.alpha * backbone + 0.5 * self.beta * head)

    def epoch_metrics(self) -> dict:
        return self.never_hurt.epoch_metrics() if self.never_hurt else {}


def build(regularizer_cfg) -> L2 | L2SP:
    never_hurt = {"never_hurt": regularizer_cfg.get("never_hurt", False),
                  "granularity": regularizer_cfg.get("granularity", "global")}
    if regularizer_cfg.name == "l2":
        return L2(regularizer_cfg.weight_decay, **never_hurt)
    if regularizer_cfg.name == "l2sp":
        return L2SP(regularizer_cfg.alpha, regularizer_cfg.beta, **never_hurt)
    raise ValueError(f"unknown regularizer '{regularizer_cfg.name}': expected l2 or l2sp")
