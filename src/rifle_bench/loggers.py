"""Live views of a run beside metrics.csv: `logger=tensorboard` writes each epoch's row as TensorBoard scalars."""

from __future__ import annotations

import numbers
from pathlib import Path

INSTALL_HINT = "pip install 'rifle-bench[tensorboard]' (or pip install tensorboard)"


class NoLogger:
    def __enter__(self) -> NoLogger:
        return self

    def __exit__(self, *exc_info) -> None:
        pass

    def log(self, row: dict) -> None:
        pass


class TensorBoardLogger(NoLogger):
    """One event file in the run directory; step = epoch; tags = the metrics.csv column names."""

    def __init__(self, run_dir: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ImportError(f"logger=tensorboard needs the tensorboard package, which is not installed: "
                              f"{INSTALL_HINT}, or use logger=none") from None
        self.writer = SummaryWriter(log_dir=str(run_dir))

    def __exit__(self, *exc_info) -> None:
        self.writer.close()

    def log(self, row: dict) -> None:
        for column, value in row.items():
            if column != "epoch" and isinstance(value, numbers.Real):  # not the empty cells (test_acc=None)
                self.writer.add_scalar(column, value, global_step=row["epoch"])
        self.writer.flush()


def build(logger_cfg, run_dir: Path) -> NoLogger:
    if logger_cfg.name == "tensorboard":
        return TensorBoardLogger(run_dir)
    if logger_cfg.name == "none":
        return NoLogger()
    raise ValueError(f"logger={logger_cfg.name}: unknown logger; expected none or tensorboard; use logger=tensorboard")
