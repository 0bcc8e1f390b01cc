import torch
import torch.nn.functional as F
from torch import nn

from rifle_bench.config import check_probability
from rifle_bench.methods.base import Method


class DropConnectLinear(nn.Linear):
    """A Linear layer whose weights and bias (not inputs) are masked by Bernoulli(1-p) and scaled by 1/(1-p) in
    training, with a mask drawn independently for every example of the mini-batch (Wan et al., 2013, who fold
    the bias into W); the plain layer at evaluation (mean inference: the output feeds the softmax directly)."""

    def __init__(self, linear: nn.Linear, p: float):
        super().__init__(linear.in_features, linear.out_features, bias=linear.bias is not None,
                         device=linear.weight.device, dtype=linear.weight.dtype)
        self.weight, self.bias, self.p = linear.weight, linear.bias, p

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return F.linear(inputs, self.weight, self.bias)
        weight, inputs = self.weight, inputs.flatten(1)
        if self.bias is not None:  # [W b] [x 1]^T: the bias is masked like any other weight
            weight = torch.cat([weight, self.bias.unsqueeze(1)], 1)
            inputs = torch.cat([inputs, inputs.new_ones(len(inputs), 1)], 1)
        # One bool mask (examples x outputs x inputs) in one call: a quarter of a float mask's memory.
        keep = torch.empty((len(inputs), *weight.shape), dtype=torch.bool, device=weight.device)
        keep.bernoulli_(1.0 - self.p)
        masked = keep * (weight / (1.0 - self.p))
        return torch.bmm(masked, inputs.unsqueeze(2)).squeeze(2)


class DropConnect(Method):
    def __init__(self, p: float):
        self.p = p

    def check(self, cfg):
        check_probability(self.p, "method.p", "the paper's grid is 0.1, 0.2, 0.5")

    def wrap_model(self, model):
        model.head = DropConnectLinear(model.head, self.p)
