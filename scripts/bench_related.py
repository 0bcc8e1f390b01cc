#!/usr/bin/env python
"""The related methods (DTNH, keep_imagenet_fc, random_freeze) against Original on the embedded data.

  epochs       time per epoch of each method's real training run (rifle-bench's train.run, default recipe,
               --epochs epochs) over the ratio to the Original run of the same round; runs go in rounds, one run
               of each case per round, so each ratio compares runs minutes apart (a shared machine drifts).
               random_freeze's epochs follow its whole rate schedule, stretched over --epochs; MPI counted.
  steps        DTNH's step cost (forward, backward, regularizer gradient, SGD step) against plain L2-SP and L2:
               the cases' steps interleaved on in-memory batches, median seconds per step.
  convergence  from sweep directories run with trainer.eval_every=1: per method, the training time (sum of
               epoch_s) until the test accuracy first reaches the same seed's Original final accuracy.

Last line of `epochs`: worst_ratio_vs_original=<x> (goal <= 1.25).
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

from rifle_bench import methods, models, regularizers, train
from rifle_bench.cli import CONFIG_DIR

CASES = {
    "original/l2": ["method=original", "regularizer=l2"],
    "original/l2+dtnh": ["method=original", "regularizer=l2", "regularizer.never_hurt=true"],
    "original/l2sp": ["method=original", "regularizer=l2sp"],
    "original/l2sp+dtnh": ["method=original", "regularizer=l2sp", "regularizer.never_hurt=true"],
    "keep_imagenet_fc/l2": ["method=keep_imagenet_fc", "method.freeze=0", "regularizer=l2"],
    "random_freeze/l2 (no mpi)": ["method=random_freeze", "method.mpi=false", "regularizer=l2"],
    "random_freeze/l2 (mpi)": ["method=random_freeze", "method.mpi=true", "regularizer=l2"],
}
BASELINE = "original/l2"


def config(overrides: list[str]):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def epochs_benchmark(epochs: int, rounds: int) -> None:
    per_epoch: dict[str, list[float]] = defaultdict(list)
    ratios: dict[str, list[float]] = defaultdict(list)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; default recipe, {epochs} epochs per run, "
          f"{rounds} rounds")
    for round_ in range(rounds):
        seconds = {}
        for name, overrides in CASES.items():
            with tempfile.TemporaryDirectory() as run_dir:
                result = train.run(config([*overrides, f"trainer.epochs={epochs}"]), Path(run_dir))
            seconds[name] = result["train_s"] / epochs
            per_epoch[name].append(seconds[name])
            print(f"  round {round_ + 1} {name:<28}{seconds[name]:8.2f} s/epoch  test_acc {result['test_acc']:.2f}",
                  flush=True)
        for name in CASES:
            ratios[name].append(seconds[name] / seconds[BASELINE])
    print(f"\n{'case':<28}{'s/epoch':>9}{'ratio vs original/l2':>22}")
    for name in CASES:
        print(f"{name:<28}{statistics.median(per_epoch[name]):9.2f}{statistics.median(ratios[name]):22.3f}")
    dtnh, l2sp = (statistics.median(per_epoch[name]) for name in ("original/l2sp+dtnh", "original/l2sp"))
    print(f"dtnh_epoch_ratio_vs_l2sp={dtnh / l2sp:.3f}")
    print(f"worst_ratio_vs_original={max(statistics.median(r) for r in ratios.values()):.3f}")


def steps_benchmark(steps: int) -> None:
    """Interleaved optimizer steps of MobileNetV2 (ImageNet weights if present) at 64 px, batch 32."""
    cases = {"l2sp": dict(name="l2sp", alpha=0.01, beta=1e-4),
             "l2sp+dtnh": dict(name="l2sp", alpha=0.01, beta=1e-4, never_hurt=True),
             "l2sp+dtnh(layer)": dict(name="l2sp", alpha=0.01, beta=1e-4, never_hurt=True, granularity="layer"),
             "l2": dict(name="l2", weight_decay=1e-4),
             "l2+dtnh": dict(name="l2", weight_decay=1e-4, never_hurt=True)}
    cfg = config([])
    torch.manual_seed(0)
    images = torch.randn(32, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(10, (32,))
    runs = {}
    for name, settings in cases.items():
        model = models.build("mobilenet_v2", 10, cfg.model.weights).to(memory_format=torch.channels_last).train()
        methods.build(cfg.method).wrap_model(model)
        regularizer = regularizers.build(_Settings(settings))
        optimizer = torch.optim.SGD(regularizer.param_groups(model), lr=0.01, momentum=0.9)
        runs[name] = (model, regularizer, optimizer)
    step_s, regularizer_s = defaultdict(list), defaultdict(list)
    for step in range(steps + 2):
        for name, (model, regularizer, optimizer) in runs.items():
            clock = time.perf_counter()
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            added = time.perf_counter()
            regularizer.add_gradients()
            added = time.perf_counter() - added
            optimizer.step()
            if step >= 2:  # warm-up
                step_s[name].append(time.perf_counter() - clock)
                regularizer_s[name].append(added)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; MobileNetV2 64 px, batch 32, {steps} "
          f"interleaved steps per case")
    print(f"{'case':<20}{'step ms':>9}{'add_gradients ms':>18}{'step ratio vs l2sp':>20}")
    base = statistics.median(step_s["l2sp"])
    for name in cases:
        median = statistics.median(step_s[name])
        print(f"{name:<20}{1000 * median:9.1f}{1000 * statistics.median(regularizer_s[name]):18.2f}"
              f"{median / base:20.3f}")
    print(f"dtnh_step_ratio_vs_l2sp={statistics.median(step_s['l2sp+dtnh']) / base:.3f}")


class _Settings(dict):
    """A regularizer config as regularizers.build reads it (attribute access and .get)."""

    __getattr__ = dict.__getitem__


def convergence(sweep_dirs: list[Path]) -> None:
    runs = []
    for result_file in sorted(p for d in sweep_dirs for p in d.glob("**/result.json")):
        result = json.loads(result_file.read_text())
        if result.get("status") != "done":
            continue
        with open(result_file.parent / "metrics.csv") as file:
            rows = list(csv.DictReader(file))
        never_hurt = result["config"]["regularizer"].get("never_hurt", False)
        variant = ",".join(f"{key}={value}" for key, value in sorted(result["variant"].items()))
        label = result["method"] + (f"({variant})" if variant else "") + ("+dtnh" if never_hurt else "")
        runs.append((label, result["regularizer"], result["seed"], rows))
    reference = {(reg, seed): float(rows[-1]["test_acc"]) for label, reg, seed, rows in runs if label == "original"}
    table = defaultdict(lambda: defaultdict(list))
    for label, reg, seed, rows in runs:
        if (reg, seed) not in reference:
            continue
        target, elapsed, reached = reference[(reg, seed)], 0.0, None
        for row in rows:
            elapsed += float(row["epoch_s"])
            if row["test_acc"] and float(row["test_acc"]) >= target:
                reached = (int(row["epoch"]), elapsed)
                break
        entry = table[(label, reg)]
        entry["final"].append(float(rows[-1]["test_acc"]))
        entry["epoch_s"].append(statistics.mean(float(row["epoch_s"]) for row in rows))
        entry["reached"].append(reached)
    print(f"{'method':<28}{'reg':<6}{'n':>3}{'final acc':>11}{'s/epoch':>9}{'reached':>9}{'epochs to':>11}"
          f"{'s to':>8}   (target: the same seed's Original final test accuracy)")
    for (label, reg), entry in sorted(table.items()):
        reached = [r for r in entry["reached"] if r is not None]
        epochs_to = f"{statistics.mean(r[0] for r in reached):.1f}" if reached else "-"
        seconds_to = f"{statistics.mean(r[1] for r in reached):.0f}" if reached else "-"
        print(f"{label:<28}{reg:<6}{len(entry['final']):>3}{statistics.mean(entry['final']):>11.2f}"
              f"{statistics.mean(entry['epoch_s']):>9.2f}{len(reached):>5}/{len(entry['final']):<3}"
              f"{epochs_to:>11}{seconds_to:>8}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    epochs = commands.add_parser("epochs")
    epochs.add_argument("--epochs", type=int, default=4, help="epochs per run (the whole rate schedule is stretched)")
    epochs.add_argument("--rounds", type=int, default=2)
    steps = commands.add_parser("steps")
    steps.add_argument("--steps", type=int, default=20)
    sweeps = commands.add_parser("convergence")
    sweeps.add_argument("sweep_dirs", nargs="+", type=Path)
    args = parser.parse_args()
    if args.command == "epochs":
        epochs_benchmark(args.epochs, args.rounds)
    elif args.command == "steps":
        steps_benchmark(args.steps)
    else:
        convergence(args.sweep_dirs)


if __name__ == "__main__":
    sys.exit(main())
