from rifle_bench.methods.base import Method, cyclic_cosine, period_starts


class CyclicLR(Method):
    """Cosine annealing with warm restarts: n_cycles equal cycles over the training, for the whole network."""

    def __init__(self, n_cycles: int):
        self.n_cycles = n_cycles

    def learning_rates(self, epoch, epochs, base_lr, scheduled_lr):
        lr = cyclic_cosine(epoch, epochs, period_starts(epochs, self.n_cycles), base_lr)
        return lr, lr
