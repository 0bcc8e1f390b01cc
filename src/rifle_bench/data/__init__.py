"""Datasets as decode-once caches: `prepare` returns the train, test (and validation) splits of a dataset config."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torchvision.transforms.functional as TF
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from rifle_bench.data import animals, sources
from rifle_bench.data.cache import CachedSplit, fingerprint, load_or_build
from rifle_bench.data.sources import DatasetError
from rifle_bench.resources import image_threads

SPLITS = ("train", "test")


@dataclass
class Splits:
    train: CachedSplit
    test: CachedSplit
    num_classes: int
    skipped: int  # corrupt images left out (only with dataset.skip_corrupt=true)
    val: CachedSplit | None = None  # held out of the official training split (dataset.val_fraction > 0)
    val_split: dict | None = None  # what result.json records of it: fraction, counts, hash of the positions


def prepare(dataset_cfg, resize: int, cache_root: str | Path, workers: int | None = None) -> Splits:
    """The dataset's splits, decoded once with the shorter edge resized to `resize` and cached under `cache_root`."""
    workers = image_threads(workers)
    if dataset_cfg.name == "animals":
        splits = {split: _animals_split(dataset_cfg, split, resize, cache_root) for split in SPLITS}
    else:
        listings = {split: sources.list_split(dataset_cfg.name, dataset_cfg.root, split,
                                              subset_per_class=dataset_cfg.get("subset_per_class"),
                                              subset_seed=dataset_cfg.get("subset_seed", 0)) for split in SPLITS}
        # Before decoding: a num_classes that does not fit the files should not cost a pass over every image.
        _check_labels(dataset_cfg, {split: [label for _, label in listing.samples]
                                    for split, listing in listings.items()})
        splits = {split: _files_split(dataset_cfg, split, listing, resize, cache_root, workers)
                  for split, listing in listings.items()}
        _check_skipped(dataset_cfg, splits, listings)
    _check_labels(dataset_cfg, {split: cached.labels for split, cached in splits.items()})
    expected = dataset_cfg.get("expected_sizes") or {}
    for split, cached in splits.items():
        if split in expected and expected[split] is not None and len(cached) != expected[split]:
            warnings.warn(f"dataset '{dataset_cfg.name}': the {split} split has {len(cached)} images, "
                          f"the paper's has {expected[split]}; results will not be comparable with the paper's",
                          stacklevel=2)
    skipped = sum(len(cached.skipped) for cached in splits.values())
    prepared = Splits(splits["train"], splits["test"], int(dataset_cfg.num_classes), skipped)
    fraction = dataset_cfg.get("val_fraction") or 0.0
    return _hold_out(prepared, dataset_cfg, fraction) if fraction > 0 else prepared


def validation_positions(labels: Sequence[int], fraction: float, seed: int, dataset: str) -> np.ndarray:
    """Positions (sorted) of the training images held out for validation: of each class's n images,
    round(fraction * n), at least one and never all. Drawn from `seed` and the class alone, so every method
    and run seed holds out the same images, and one class's draw does not depend on the others'."""
    labels = np.asarray(labels)
    held_out = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if len(members) < 2:
            raise DatasetError(f"dataset.val_fraction={fraction}: class {label} of '{dataset}' has a single "
                               f"training image, none to hold out; expected at least 2 training images in every "
                               f"class; set dataset.val_fraction=0")
        n_val = min(max(1, math.floor(fraction * len(members) + 0.5)), len(members) - 1)
        held_out.append(np.random.default_rng([seed, int(label)]).choice(members, n_val, replace=False))
    return np.sort(np.concatenate(held_out))


def _hold_out(splits: Splits, cfg, fraction: float) -> Splits:
    """The splits with a class-stratified validation split carved out of the training split."""
    positions = validation_positions(splits.train.labels, fraction, cfg.get("val_seed", 0), cfg.name)
    kept = np.setdiff1d(np.arange(len(splits.train)), positions)
    record = {"fraction": fraction, "seed": cfg.get("val_seed", 0), "n_val": len(positions), "n_train": len(kept),
              # of the positions in the cached training split, written as decimal text joined by ","
              "indices_sha1": hashlib.sha1(",".join(map(str, positions.tolist())).encode()).hexdigest()}
    return dataclasses.replace(splits, train=_subset(splits.train, kept), val=_subset(splits.train, positions),
                               val_split=record)


def _subset(split: CachedSplit, positions: np.ndarray) -> CachedSplit:
    """The images of `split` at `positions`, reading the same cached pixels."""
    return CachedSplit(split.pixels, split.index[positions], np.asarray(split.labels)[positions], [], split.path)


def _animals_split(cfg, split: str, resize: int, cache_root) -> CachedSplit:
    def source():
        images, labels = animals.load_split(cfg.root, split, resize, cfg.train_per_class,
                                            cfg.test_per_class, cfg.split_seed)
        return labels, images.__getitem__

    key = [animals.fingerprint(cfg.root), str(cfg.train_per_class), str(cfg.test_per_class), str(cfg.split_seed)]
    return load_or_build(cache_root, dataset="animals", split=split, resize=resize,
                         fingerprint_=fingerprint(key), source=source)


def _files_split(cfg, split: str, listing: sources.Source, resize: int, cache_root, workers: int) -> CachedSplit:
    paths = [path for path, _ in listing.samples]
    # Size and modification time too: an image replaced in place (say, a corrupt one repaired) is decoded again.
    key = [f"{path}\t{label}\t{stat.st_size}\t{stat.st_mtime_ns}"
           for (path, label), stat in zip(listing.samples, map(os.stat, paths))]

    def source():
        return [label for _, label in listing.samples], lambda i: decode_resized(
            paths[i], resize, cfg.name, skip_corrupt=cfg.get("skip_corrupt", False))

    # delay: a cache hit returns at once and shows no bar.
    with tqdm(total=len(paths), desc=f"caching {cfg.name}/{split}", unit="img", leave=False,
              mininterval=1.0, delay=0.5) as bar:
        return load_or_build(cache_root, dataset=cfg.name, split=split, resize=resize,
                             fingerprint_=fingerprint(key), source=source, workers=workers, progress=bar.update)


def decode_resized(path: str, resize: int, dataset: str, skip_corrupt: bool = False) -> np.ndarray | None:
    """Decode an image file and resize its shorter edge to `resize` (torchvision's Resize, as the paper's code)."""
    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB")
    except (OSError, UnidentifiedImageError, SyntaxError) as error:
        if skip_corrupt:
            return None
        raise DatasetError(f"dataset '{dataset}': cannot decode image {path} ({error}). Replace the file, or set "
                           f"dataset.skip_corrupt=true to leave unreadable images out (their count is reported).") from None
    return np.asarray(TF.resize(rgb, resize))


def _check_labels(cfg, labels_by_split: dict[str, Sequence[int]]) -> None:
    for split, labels in labels_by_split.items():
        if len(labels) == 0:
            raise DatasetError(f"dataset '{cfg.name}': the {split} split is empty (root {cfg.root})")
        labels = np.asarray(labels)
        if labels.min() < 0 or labels.max() >= cfg.num_classes:
            raise DatasetError(f"dataset '{cfg.name}': {split} labels span {labels.min()}..{labels.max()}, "
                               f"outside 0..{cfg.num_classes - 1} (dataset.num_classes={cfg.num_classes})")
    present = np.bincount(np.asarray(labels_by_split["train"]), minlength=cfg.num_classes)
    empty = np.flatnonzero(present == 0)
    if len(empty):
        raise DatasetError(f"dataset '{cfg.name}': {len(empty)} classes have no training image "
                           f"(first: {empty[:5].tolist()}); check the files under {cfg.root}")


def _check_skipped(cfg, splits: dict[str, CachedSplit], listings: dict[str, sources.Source]) -> None:
    """Name the images a cache entry left out; an error unless dataset.skip_corrupt allows leaving them out
    (the entry may have been built by an earlier run that had it set)."""
    unreadable = [listings[split].samples[i][0] for split, cached in splits.items() for i in cached.skipped]
    if not unreadable:
        return
    named = ", ".join(unreadable[:5])
    if not cfg.get("skip_corrupt", False):
        raise DatasetError(f"dataset '{cfg.name}': {len(unreadable)} image(s) cannot be decoded: {named}. Replace "
                           f"them, or set dataset.skip_corrupt=true to leave them out (their count is reported).")
    warnings.warn(f"dataset '{cfg.name}': left out {len(unreadable)} image(s) that cannot be decoded: {named}",
                  stacklevel=3)
