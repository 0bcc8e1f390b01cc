#!/usr/bin/env python
"""Is rifle-bench's training as fast as the bare computation it performs? Ratios measured side by side.

For each case (model, image size, method, regularizer) on the embedded data, it times one epoch of
rifle-bench's real training path (config, method, regularizer, data pipeline, metrics, checkpoint) against
the floor: a hand-written loop over tensors already in memory (forward, loss, backward, SGD step, nothing
else) on the same model, batch size, memory format and number of steps, each after a warm-up. Floor and
rifle-bench alternate `--repeats` times and the fastest of each is kept (the least disturbed by other load).
It then runs the default job and prints its wall-time breakdown and peak memory.

Last line: worst_ratio_vs_floor=<x>  (rifle-bench time / floor time, worst case; goal <= 1.10 on CPU)
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

from rifle_bench import methods, models, train
from rifle_bench.cli import CONFIG_DIR

CASES = [(model, size, method, regularizer)
         for model, size in (("mobilenet_v2", 64), ("resnet18", 112))
         for method in ("original", "rifle", "stochastic_depth")
         for regularizer in ("l2", "l2sp")]
BATCH = 32
CLASSES = 10


def case_config(model: str, size: int, method: str, regularizer: str, steps: int):
    overrides = [f"model={model}", f"method={method}", f"regularizer={regularizer}", f"trainer.batch_size={BATCH}",
                 f"trainer.crop={size}", f"trainer.resize={size + size // 8}", "trainer.epochs=2",
                 f"dataset.train_per_class={steps * BATCH // CLASSES}", "dataset.test_per_class=10"]
    if model != "mobilenet_v2":
        overrides.append("model.weights=null")  # not available offline; the time of a step doesn't depend on them
    if method == "rifle":
        overrides.append("method.k=1")  # E=2, k=1: the timed second epoch starts with a re-initialization
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def time_rifle_bench(cfg) -> float:
    """Seconds of rifle-bench's second epoch (the first one warms up), metrics and checkpoint writes included."""
    with tempfile.TemporaryDirectory() as run_dir:
        result = train.run(cfg, Path(run_dir))
        with open(Path(run_dir) / "metrics.csv") as metrics:
            second_epoch = list(csv.DictReader(metrics))[1]
    return float(second_epoch["epoch_s"]) + result["timings"]["write_s"] / 2


def time_floor(cfg, steps: int) -> float:
    """The same number of SGD steps over in-memory tensors: the bare computation."""
    torch.manual_seed(0)
    model = models.build(cfg.model.name, CLASSES, cfg.model.weights)
    methods.build(cfg.method).wrap_model(model)
    model = model.to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    size = cfg.trainer.crop
    images = [torch.randn(BATCH, 3, size, size).contiguous(memory_format=torch.channels_last) for _ in range(steps)]
    labels = torch.randint(CLASSES, (steps, BATCH))

    def epoch():
        for x, y in zip(images, labels):
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return loss.item()

    epoch()  # warm-up
    clock = time.perf_counter()
    epoch()
    return time.perf_counter() - clock


def default_run_breakdown() -> dict:
    with tempfile.TemporaryDirectory() as run_dir:
        subprocess.run([sys.executable, "-m", "rifle_bench.cli", f"hydra.run.dir={run_dir}"], check=True,
                       capture_output=True)
        return json.loads((Path(run_dir) / "result.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=32, help="SGD steps per timed epoch (32: the default run's epoch)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--cases", default="all", help="'all' or 'mobilenet_v2' / 'resnet18' to keep one model")
    parser.add_argument("--skip-default-run", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    cases = [c for c in CASES if args.cases in ("all", c[0])]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {BATCH}, {args.steps} steps/epoch, "
          f"best of {args.repeats}")
    print(f"{'model':<13}{'px':>4}  {'method':<17}{'reg':<6}{'floor s':>9}{'rifle-bench s':>15}{'ratio':>8}")
    ratios = []
    for model, size, method, regularizer in cases:
        cfg = case_config(model, size, method, regularizer, args.steps)
        floor, ours = [], []
        for _ in range(args.repeats):
            floor.append(time_floor(cfg, args.steps))
            ours.append(time_rifle_bench(cfg))
        ratio = min(ours) / min(floor)
        ratios.append(ratio)
        print(f"{model:<13}{size:>4}  {method:<17}{regularizer:<6}{min(floor):>9.2f}{min(ours):>15.2f}{ratio:>8.3f}",
              flush=True)
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
