from rifle_bench.config import check_periods
from rifle_bench.methods.base import Method, cyclic_cosine, period_starts


class CyclicLR(Method):
    """Cosine annealing with warm restarts: n_cycles equal cycles over the training, for the whole network."""

    def __init__(self, n_cycles: int):
        self.n_cycles = n_cycles

    def check(self, cfg):
        check_periods(self.n_cycles, "method.n_cycles", self.n_cycles, cfg, "cycle")

    def learning_rates(self, epoch, epochs, base_lr, scheduled_lr):
        lr = cyclic_cosine(epoch, epochs, period_starts(epochs, self.n_cycles), base_lr)
        return lr, lr
