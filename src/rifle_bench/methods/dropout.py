from torch import nn

from rifle_bench.methods.base import Method


class Dropout(Method):
    """Dropout on the input of the FC layer."""

    def __init__(self, p: float):
        self.p = p

    def wrap_model(self, model):
        model.head_input = nn.Dropout(self.p)
