#!/usr/bin/env python
"""Is rifle-bench's training as fast as the bare computation it performs? Ratios measured side by side.

For each case (model, image size, method, regularizer) on the embedded data, it times epochs of rifle-bench's
real training path (config, method, regularizer, data pipeline, metrics, checkpoint writes) against the floor:
a hand-written loop over tensors already in memory (forward, loss, backward, SGD step, nothing else) on the
same model, batch size, memory format and number of steps per epoch. Both warm up for one epoch; then each
of rifle-bench's `--epochs` timed epochs is followed at once by one floor epoch, run from inside rifle-bench's
loop (after its metrics are written), so each pair sees the same machine: a shared machine drifts by 10-30%
within minutes. A case's ratio is the median of its per-pair ratios.
It then runs the default job and prints its wall-time breakdown and peak memory.

Last line: worst_ratio_vs_floor=<x>  (rifle-bench time / floor time, worst case; goal <= 1.10 on CPU)
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

from rifle_bench import methods, models, train
from rifle_bench.cli import CONFIG_DIR

SIZES = (("mobilenet_v2", 64), ("resnet18", 112))
# (model, px, method, regularizer, options): options are overrides timed on top of a plain case.
METHODS = (("original", ()), ("rifle", ()), ("dropconnect", ()), ("stochastic_depth", ("method.mode=batch",)),
           ("stochastic_depth", ("method.mode=row",)))
CASES = [(model, size, method, regularizer, options)
         for model, size in SIZES
         for method, options in METHODS
         for regularizer in ("l2", "l2sp")]
CASES += [(model, size, "original", "l2", ("trainer.grad_norms=true",)) for model, size in SIZES]
BATCH = 32
STEPS = {"mobilenet_v2": 32, "resnet18": 8}  # 32: the default run's epoch; ResNet-18 at 112 px is ~4x the work
CLASSES = 10


def case_config(model: str, size: int, method: str, regularizer: str, steps: int, epochs: int, device: str,
                options: tuple[str, ...] = ()):
    overrides = [*options, f"model={model}", f"method={method}", f"regularizer={regularizer}",
                 f"trainer.batch_size={BATCH}",
                 f"trainer.device={device}",
                 f"trainer.crop={size}", f"trainer.resize={size + size // 8}", f"trainer.epochs={epochs}",
                 f"dataset.train_per_class={steps * BATCH // CLASSES}", "dataset.test_per_class=10"]
    if model != "mobilenet_v2":
        overrides.append("model.weights=null")  # not available offline; the time of a step doesn't depend on them
    if method == "rifle":
        overrides.append(f"method.k={epochs - 1}")  # every timed epoch starts with a re-initialization
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


class Floor:
    """The same number of SGD steps over in-memory tensors: the bare computation. The same model as the case's
    (method included), on the same device, in the same memory format and precision."""

    def __init__(self, cfg, steps: int):
        torch.manual_seed(0)
        device = train._device(cfg.trainer.device)
        memory_format = torch.channels_last if cfg.trainer.channels_last else torch.contiguous_format
        model = models.build(cfg.model.name, CLASSES, cfg.model.weights)
        methods.build(cfg.method).wrap_model(model)
        self.model = model.to(device, memory_format=memory_format).train()
        self.optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
        self.autocast = train._autocast(cfg.trainer.precision, device)
        size = cfg.trainer.crop
        self.images = [torch.randn(BATCH, 3, size, size, device=device).contiguous(memory_format=memory_format)
                       for _ in range(steps)]
        self.labels = torch.randint(CLASSES, (steps, BATCH), device=device)
        self.epoch()  # warm-up

    def epoch(self) -> float:
        clock = time.perf_counter()
        for x, y in zip(self.images, self.labels):
            with self.autocast:
                loss = F.cross_entropy(self.model(x), y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        loss.item()  # waits for the device
        return time.perf_counter() - clock


def time_case(cfg, steps: int) -> tuple[list[float], list[float]]:
    """Paired seconds per epoch, (rifle-bench, floor): every rifle-bench epoch after the first (with its share of
    metrics and checkpoint writes), each followed by one floor epoch."""
    floor, floor_s = Floor(cfg, steps), []
    write_metrics = train.write_metrics
    epoch_start_rng = None

    def write_metrics_then_floor_epoch(run_dir, rows):
        nonlocal epoch_start_rng
        write_metrics(run_dir, rows)
        if len(rows) > 1:
            # The floor replays the CPU random draws of the epoch just timed (stochastic depth's gates decide how
            # many residual branches run), then gives rifle-bench its own random state back.
            rng = torch.get_rng_state()
            torch.set_rng_state(epoch_start_rng)
            floor_s.append(floor.epoch())
            torch.set_rng_state(rng)
        epoch_start_rng = torch.get_rng_state()

    with mock.patch.object(train, "write_metrics", write_metrics_then_floor_epoch), \
            tempfile.TemporaryDirectory() as run_dir:
        result = train.run(cfg, Path(run_dir))
        with open(Path(run_dir) / "metrics.csv") as metrics:
            epoch_s = [float(row["epoch_s"]) for row in csv.DictReader(metrics)]
    write_s = (result["timings"]["write_s"] - sum(floor_s)) / len(epoch_s)
    return [seconds + write_s for seconds in epoch_s[1:]], floor_s


def default_run_breakdown() -> dict:
    with tempfile.TemporaryDirectory() as run_dir:
        subprocess.run([sys.executable, "-m", "rifle_bench.cli", f"hydra.run.dir={run_dir}"], check=True,
                       capture_output=True)
        return json.loads((Path(run_dir) / "result.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, help=f"SGD steps per epoch for every case (default: {STEPS})")
    parser.add_argument("--epochs", type=int, default=5, help="timed epoch pairs per case")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                        help="cuda: time the GPU paths (use more --steps: a GPU runs these epochs in well under 1 s)")
    parser.add_argument("--cases", default="all", help="'all' or 'mobilenet_v2' / 'resnet18' to keep one model")
    parser.add_argument("--methods", default="all", help="'all' or comma-separated methods to keep, e.g. dropconnect")
    parser.add_argument("--skip-default-run", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    cases = [c for c in CASES
             if args.cases in ("all", c[0]) and (args.methods == "all" or c[2] in args.methods.split(","))]
    hardware = torch.cuda.get_device_name() if args.device == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {hardware}, batch {BATCH}; "
          f"median seconds per epoch over {args.epochs} adjacent pairs")
    print(f"{'model':<13}{'px':>4}{'steps':>6}  {'method':<22}{'reg':<6}{'floor s':>9}{'rifle-bench s':>15}"
          f"{'ratio':>8}")
    ratios = []
    for model, size, method, regularizer, options in cases:
        steps = args.steps or STEPS[model]
        cfg = case_config(model, size, method, regularizer, steps, 1 + args.epochs, args.device, options)
        label = "+".join([method, *(key.split(".")[-1] if value == "true" else value
                                    for key, value in (option.split("=") for option in options))])
        ours, floor = time_case(cfg, steps)
        ratio = statistics.median(a / b for a, b in zip(ours, floor, strict=True))
        ratios.append(ratio)
        print(f"{model:<13}{size:>4}{steps:>6}  {label:<22}{regularizer:<6}{statistics.median(floor):>9.2f}"
              f"{statistics.median(ours):>15.2f}{ratio:>8.3f}", flush=True)
    if not args.skip_default_run:
        result = default_run_breakdown()
        print("\ndefault run (rifle-bench, no arguments): wall-time breakdown")
        for key, seconds in result["timings"].items():
            print(f"  {key:<10}{seconds:>8.1f} s")
        print(f"  {'wall':<10}{result['wall_s']:>8.1f} s   test_acc {result['test_acc']:.2f}%   "
              f"peak RSS {result['peak_rss_mb']:.0f} MB")
    print(f"worst_ratio_vs_floor={max(ratios):.3f}")


if __name__ == "__main__":
    main()
