#!/usr/bin/env python
"""Images per second delivered for one training epoch: the RIFLE authors' pipeline vs rifle-bench's.

Writes a dataset shaped like CUB-200-2011 (2,000 training JPEGs of about 500x375 px, 200 classes, smooth
random content so the files have realistic sizes) in the official CUB_200_2011 layout, then times
  (a) torchvision ImageFolder + PIL transforms (Resize 256, RandomCrop 224, RandomHorizontalFlip, ToTensor,
      Normalize) through a DataLoader with 2 workers, batch 32: the pipeline of the authors' code;
  (b) rifle-bench: prepare (warm decode-once cache) + ImageBatches on the CPU, batch 32, in the trainer's
      default channels_last layout and in NCHW;
  (c) rifle-bench's batch assembly alone, with 1 and with --threads threads: the uint8 batches a GPU run
      receives (normalization then runs on the GPU), to show how fast a GPU can be fed;
and the one-off cache build. Each pipeline runs --repeats times, the fastest epoch counts (the machine may
be shared: the load average is printed). The last line printed is `speedup_vs_imagefolder=<x>`, (b) in
channels_last over (a).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from rifle_bench import data
from rifle_bench.cli import CONFIG_DIR
from rifle_bench.data.loader import IMAGENET_MEAN, IMAGENET_STD, ImageBatches

CLASSES = 200
TRAIN_PER_CLASS = 10
TEST_PER_CLASS = 1  # the test split is cached too, but never timed: keep it small
BATCH = 32
RESIZE, CROP = 256, 224


def _upsample(array: np.ndarray, height: int, width: int) -> np.ndarray:
    channels = [Image.fromarray(channel).resize((width, height), Image.BICUBIC) for channel in array.transpose(2, 0, 1)]
    return np.stack([np.asarray(channel) for channel in channels], axis=2)


def smooth_noise_image(seed: list[int], height: int, width: int) -> Image.Image:
    """Blobs at three scales plus faint grain: compresses like a photo (~50 kB), unlike flat colour or white noise."""
    rng = np.random.default_rng(seed)
    grid_height, grid_width = 96, 96 * width // height
    blobs = rng.normal(0.0, 15.0, (grid_height, grid_width, 3)).astype(np.float32)
    for cells, amplitude in ((4, 90.0), (24, 40.0)):
        coarse = rng.normal(0.0, amplitude, (cells, max(1, cells * width // height), 3)).astype(np.float32)
        blobs += _upsample(coarse, grid_height, grid_width)
    pixels = _upsample(blobs, height, width) + 128.0 + rng.integers(-6, 7, (height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def write_cub_like(root: Path, seed: int = 0) -> list[str]:
    """CUB_200_2011/ with its index files; returns the training image paths."""
    rng = np.random.default_rng(seed)
    base = root / "CUB_200_2011"
    images, labels, is_training, train_paths, jobs = [], [], [], [], []
    for label in range(CLASSES):
        for index in range(TRAIN_PER_CLASS + TEST_PER_CLASS):
            long_side, short_side = 500, int(rng.integers(280, 470))  # CUB: mostly 500 px wide, ~375 high
            height, width = (short_side, long_side) if rng.random() < 0.8 else (long_side, short_side)
            relative_path = f"{label + 1:03d}.class_{label}/image_{index:04d}.jpg"
            image_id = len(images) + 1
            jobs.append((base / "images" / relative_path, [seed, image_id], height, width))
            images.append(f"{image_id} {relative_path}")
            labels.append(f"{image_id} {label + 1}")
            training = index < TRAIN_PER_CLASS
            is_training.append(f"{image_id} {int(training)}")
            if training:
                train_paths.append(str(base / "images" / relative_path))

    def write(job):
        path, image_seed, height, width = job
        path.parent.mkdir(parents=True, exist_ok=True)
        smooth_noise_image(image_seed, height, width).save(path, quality=90)

    with ThreadPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(write, jobs))
    for name, lines in (("images.txt", images), ("image_class_labels.txt", labels),
                        ("train_test_split.txt", is_training),
                        ("classes.txt", [f"{label + 1} {label + 1:03d}.class_{label}" for label in range(CLASSES)])):
        (base / name).write_text("\n".join(lines) + "\n")
    return train_paths


def existing_train_paths(root: Path) -> list[str]:
    """The training images of a dataset written by an earlier run with the same --root, if complete."""
    base = root / "CUB_200_2011"
    if not (base / "classes.txt").exists():  # written last
        return []
    training = dict(line.split() for line in (base / "train_test_split.txt").read_text().splitlines())
    return [str(base / "images" / line.split()[1]) for line in (base / "images.txt").read_text().splitlines()
            if training[line.split()[0]] == "1"]


def dataset_config(root: Path):
    cfg = OmegaConf.load(Path(CONFIG_DIR) / "dataset" / "cub.yaml")
    cfg.root, cfg.expected_sizes = str(root), None
    return cfg


def imagefolder_epoch(root: Path, train_paths: set[str]) -> tuple[int, float]:
    """The authors' pipeline, timed from building the dataset to the last batch (worker start-up included)."""
    start = time.perf_counter()
    transform = transforms.Compose([
        transforms.Resize(RESIZE), transforms.RandomCrop(CROP), transforms.RandomHorizontalFlip(),
        transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])
    dataset = datasets.ImageFolder(str(root / "CUB_200_2011" / "images"), transform=transform,
                                   is_valid_file=train_paths.__contains__)
    loader = DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=2)
    delivered = sum(len(labels) for _, labels in loader)
    return delivered, time.perf_counter() - start


def rifle_bench_epoch(cfg, cache_root: Path, channels_last: bool) -> tuple[int, float]:
    """rifle-bench's pipeline, timed from prepare (a cache hit) to the last batch."""
    start = time.perf_counter()
    splits = data.prepare(cfg, RESIZE, cache_root)
    batches = ImageBatches(splits.train, crop=CROP, batch_size=BATCH, train=True, device=torch.device("cpu"),
                           channels_last=channels_last)
    delivered = sum(len(labels) for _, labels in batches.epoch(0))
    return delivered, time.perf_counter() - start


def assembly_epoch(cfg, cache_root: Path, threads: int) -> tuple[int, float]:
    """rifle-bench's batch assembly for a GPU run: prepare (a cache hit) + uint8 channels_last batches."""
    start = time.perf_counter()
    splits = data.prepare(cfg, RESIZE, cache_root)
    batches = ImageBatches(splits.train, crop=CROP, batch_size=BATCH, train=True, device=torch.device("cpu"),
                           channels_last=True, threads=threads)
    delivered = sum(len(labels) for _, labels in batches.host_batches(0))
    return delivered, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path,
                        help="folder for the generated dataset, reused by later runs (default: a temp dir)")
    parser.add_argument("--repeats", type=int, default=2, help="epochs timed per pipeline; the fastest counts")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="assembly threads for (c)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_data_") as scratch:
        root = args.root or Path(scratch) / "data"
        clock = time.perf_counter()
        train_paths = set(existing_train_paths(root) or write_cub_like(root))
        jpeg_kb = np.mean([os.path.getsize(path) for path in train_paths]) / 1024
        print(f"dataset: {len(train_paths)} training JPEGs (mean {jpeg_kb:.0f} kB), {CLASSES} classes, "
              f"ready in {time.perf_counter() - clock:.1f} s; {os.cpu_count()} CPUs, "
              f"load average {os.getloadavg()[0]:.2f}, torch threads {torch.get_num_threads()}")

        cfg, cache_root = dataset_config(root), Path(scratch) / "cache"
        clock = time.perf_counter()
        data.prepare(cfg, RESIZE, cache_root, workers=2)
        build_s = time.perf_counter() - clock

        pipelines = {
            "(a) ImageFolder + PIL, DataLoader 2 workers": lambda: imagefolder_epoch(root, train_paths),
            "(b) rifle-bench, warm cache, channels_last": lambda: rifle_bench_epoch(cfg, cache_root, True),
            "(b) rifle-bench, warm cache, NCHW": lambda: rifle_bench_epoch(cfg, cache_root, False),
            "(c) batch assembly for a GPU, 1 thread": lambda: assembly_epoch(cfg, cache_root, 1),
            f"(c) batch assembly for a GPU, {args.threads} threads":
                lambda: assembly_epoch(cfg, cache_root, args.threads),
        }
        rates = {}
        print(f"{'one training epoch, batch 32':<46} {'images':>6}  {'seconds':>9}  {'img/s':>6}")
        for name, epoch in pipelines.items():
            delivered, seconds = min((epoch() for _ in range(args.repeats)), key=lambda timed: timed[1])
            rates[name] = delivered / seconds
            print(f"{name:<46} {delivered:>6}  {seconds:>9.2f}  {rates[name]:>6.0f}")
        print(f"{'one-off cache build (train + test, 2 threads)':<46} "
              f"{len(train_paths) + CLASSES * TEST_PER_CLASS:>6}  {build_s:>9.2f}")

    baseline = rates["(a) ImageFolder + PIL, DataLoader 2 workers"]
    print(f"speedup_vs_imagefolder={rates['(b) rifle-bench, warm cache, channels_last'] / baseline:.1f}")


if __name__ == "__main__":
    main()
