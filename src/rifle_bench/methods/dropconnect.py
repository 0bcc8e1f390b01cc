import torch
import torch.nn.functional as F
from torch import nn

from rifle_bench.methods.base import Method


class DropConnectLinear(nn.Linear):
    """A Linear layer whose weights (not inputs) are masked by Bernoulli(1-p), scaled by 1/(1-p), with a new
    mask per forward pass in training (Wan et al., 2013); the plain layer at evaluation. The bias is kept."""

    def __init__(self, linear: nn.Linear, p: float):
        super().__init__(linear.in_features, linear.out_features, bias=linear.bias is not None,
                         device=linear.weight.device, dtype=linear.weight.dtype)
        self.weight, self.bias, self.p = linear.weight, linear.bias, p

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        # F.dropout on the weight tensor is exactly the Bernoulli(1-p) mask with 1/(1-p) scaling, in one kernel.
        return F.linear(inputs, F.dropout(self.weight, self.p, self.training), self.bias)


class DropConnect(Method):
    def __init__(self, p: float):
        self.p = p

    def wrap_model(self, model):
        model.head = DropConnectLinear(model.head, self.p)
