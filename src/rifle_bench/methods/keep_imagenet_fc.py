"""Fine-tuning with the ImageNet classification layer kept (Shermin et al., PSIVT 2019), as we read its abstract.

The backbone keeps its pre-trained 1000-way FC layer (weights and bias) and now ends with it; its 1000 outputs
are L2-normalized per example and multiplied by a learnable per-channel scale (ParseNet / "Growing a Brain"),
then go through optional new hidden layers (Linear + ReLU) into the new target FC, which stays `model.head`
(what RIFLE-style re-initialization acts on). `freeze` = N freezes the first N stages of the backbone (the stem
counts with the first), the paper's layer-wise freezing search as a grid over N.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from rifle_bench.config import check_probability, require
from rifle_bench.methods.base import Method
from rifle_bench.methods.freezing import leading_modules, set_frozen


class L2NormScale(nn.Module):
    """x / ||x||_2 per example, times a learnable scale per channel."""

    def __init__(self, channels: int, scale_init: float):
        super().__init__()
        self.scale = nn.Parameter(torch.full((channels,), float(scale_init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1) * self.scale


class KeepImagenetFC(Method):
    def __init__(self, freeze: int = 0, scale_init: float = 10.0, hidden: tuple[int, ...] = (1024,),
                 dropout: float = 0.0, head_lr_mult: float = 1.0):
        self.freeze, self.scale_init, self.hidden = freeze, scale_init, list(hidden)
        self.dropout, self.head_lr_mult = dropout, head_lr_mult
        self.frozen: list[nn.Module] = []

    def check(self, cfg):
        require(self.freeze >= 0, "method.freeze", self.freeze, "must not be negative",
                "a number of backbone stages (0 = train everything)", "set method.freeze=0 or more")
        require(self.scale_init > 0, "method.scale_init", self.scale_init, "must be positive", "a number > 0",
                "use e.g. 10")
        require(all(size > 0 for size in self.hidden), "method.hidden", self.hidden, "layer widths must be positive",
                "a list of widths such as [1024], or []", "fix method.hidden")
        check_probability(self.dropout, "method.dropout", "use 0 for none, e.g. 0.5")
        require(self.head_lr_mult > 0, "method.head_lr_mult", self.head_lr_mult, "must be positive", "a number > 0",
                "use 1 (same lr as the backbone) or 10 (Growing a Brain)")

    def wrap_model(self, model):
        stages = len(model.stage_ends)
        require(self.freeze <= stages, "method.freeze", self.freeze, f"the backbone has only {stages} stages",
                f"0 to {stages}", "lower method.freeze")
        if self.freeze:
            self.frozen = leading_modules(model.backbone, model.stage_ends[self.freeze - 1])
            set_frozen(self.frozen, True)
        source_state = model.source_head
        source_head = nn.Linear(source_state["weight"].shape[1], source_state["weight"].shape[0])
        source_head.load_state_dict(source_state)
        model.backbone = nn.Sequential(OrderedDict(network=model.backbone, source_head=source_head))
        model.stage_ends = [f"network.{path}" for path in model.stage_ends]
        model.residual_blocks = [f"network.{path}" for path in model.residual_blocks]
        width = source_head.out_features
        layers: list[nn.Module] = [L2NormScale(width, self.scale_init)]
        for size in self.hidden:
            layers += [nn.Linear(width, size), nn.ReLU(inplace=True)]
            if self.dropout:
                layers.append(nn.Dropout(self.dropout))
            width = size
        model.head_input = nn.Sequential(*layers)
        model.head = nn.Linear(width, model.head.out_features)

    def start_epoch(self, epoch, epochs, model, optimizer):
        set_frozen(self.frozen, True)  # BatchNorm back to eval after the loop's model.train()
        return False

    def learning_rates(self, epoch, epochs, base_lr, scheduled_lr):
        return scheduled_lr, scheduled_lr * self.head_lr_mult
