from torch import nn

from rifle_bench.config import check_probability
from rifle_bench.methods.base import Method


class Dropout(Method):
    """Dropout on the input of the FC layer."""

    def __init__(self, p: float):
        self.p = p

    def check(self, cfg):
        check_probability(self.p, "method.p", "the paper's grid is 0.1, 0.2, 0.5")

    def wrap_model(self, model):
        model.head_input = nn.Dropout(self.p)
