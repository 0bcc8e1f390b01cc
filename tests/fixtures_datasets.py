"""Tiny copies of the paper's datasets in their official on-disk layouts, for tests.

Each `make_<dataset>(folder)` writes 8x8 JPEGs and the index files the official archive (or the
torchvision class reading it) uses, and returns a `FakeDataset`: the root to pass as dataset.root,
the class names, and the (path, label) samples `list_split` should return for each split.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image
from torchvision.datasets import Flowers102


@dataclass(frozen=True)
class FakeDataset:
    root: Path
    classes: list[str]
    train: list[tuple[str, int]]
    test: list[tuple[str, int]]


def _jpeg_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 120, 40)).save(buffer, format="JPEG")
    return buffer.getvalue()


_JPEG = _jpeg_bytes()


def write_jpeg(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_JPEG)
    return str(path)


def _write_lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))


def _cell_column(strings: list[str]) -> np.ndarray:
    """A MATLAB cell array (N x 1) of strings, as scipy.io.savemat writes object arrays."""
    return np.array(strings, dtype=object).reshape(-1, 1)


def make_cub(folder: Path) -> FakeDataset:
    """CUB_200_2011/: 3 classes of 3 images, the first 2 of each class for training."""
    base = folder / "CUB_200_2011"
    classes = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]
    images, class_labels, is_training = [], [], []
    train, test = [], []
    for label, name in enumerate(classes):
        for index in range(3):
            image_id = len(images) + 1
            relative_path = f"{name}/{name[4:]}_{index:04d}_{image_id}.jpg"
            path = write_jpeg(base / "images" / relative_path)
            images.append(f"{image_id} {relative_path}")
            class_labels.append(f"{image_id} {label + 1}")
            is_training.append(f"{image_id} {int(index < 2)}")
            (train if index < 2 else test).append((path, label))
    _write_lines(base / "images.txt", images)
    _write_lines(base / "image_class_labels.txt", class_labels)
    _write_lines(base / "train_test_split.txt", is_training)
    _write_lines(base / "classes.txt", [f"{number} {name}" for number, name in enumerate(classes, 1)])
    return FakeDataset(folder, classes, train, test)


def write_dogs_list(path: Path, relative_paths: list[str], labels: list[int]) -> None:
    """train_list.mat / test_list.mat: file_list (cell, N x 1) and 1-based labels (double, N x 1)."""
    scipy.io.savemat(
        path,
        {
            "file_list": _cell_column(relative_paths),
            "annotation_list": _cell_column([name.removesuffix(".jpg") for name in relative_paths]),
            "labels": np.array(labels, dtype=float).reshape(-1, 1),
        },
    )


def make_dogs(folder: Path) -> FakeDataset:
    """Images/<wnid-breed>/ with 3 breeds of 3 images, train_list.mat (2 per breed), test_list.mat (1)."""
    classes = ["n02085620-Chihuahua", "n02085782-Japanese_spaniel", "n02085936-Maltese_dog"]
    lists = {"train": ([], []), "test": ([], [])}
    train, test = [], []
    for label, breed in enumerate(classes):
        wnid = breed.split("-")[0]
        for index in range(3):
            relative_path = f"{breed}/{wnid}_{1000 + index}.jpg"
            path = write_jpeg(folder / "Images" / relative_path)
            split = "train" if index < 2 else "test"
            lists[split][0].append(relative_path)
            lists[split][1].append(label + 1)
            (train if split == "train" else test).append((path, label))
    for split, (relative_paths, labels) in lists.items():
        write_dogs_list(folder / f"{split}_list.mat", relative_paths, labels)
    return FakeDataset(folder, classes, train, test)


def make_indoor67(folder: Path) -> FakeDataset:
    """Images/<category>/ with 3 categories of 3 images, TrainImages.txt (2 each), TestImages.txt (1)."""
    classes = ["bakery", "kitchen", "office"]
    lines = {"train": [], "test": []}
    train, test = [], []
    for label, category in enumerate(classes):
        for index in range(3):
            relative_path = f"{category}/int{label}{index}.jpg"
            path = write_jpeg(folder / "Images" / relative_path)
            split = "train" if index < 2 else "test"
            lines[split].append(relative_path)
            (train if split == "train" else test).append((path, label))
    _write_lines(folder / "TrainImages.txt", lines["train"])
    _write_lines(folder / "TestImages.txt", lines["test"])
    return FakeDataset(folder, classes, train, test)


def make_flowers102(folder: Path) -> FakeDataset:
    """flowers-102/: one training image for each of torchvision's 102 fixed class names, 2 validation
    and 3 test images. Its .mat files do not match the md5 torchvision checks."""
    base = folder / "flowers-102"
    train_labels = list(range(len(Flowers102.classes)))
    val_labels, test_labels = [0, 1], [0, 1, 2]
    labels = train_labels + val_labels + test_labels
    image_ids = np.arange(1, len(labels) + 1)
    paths = [write_jpeg(base / "jpg" / f"image_{image_id:05d}.jpg") for image_id in image_ids]
    scipy.io.savemat(base / "imagelabels.mat", {"labels": np.array(labels).reshape(1, -1) + 1})
    n_train, n_val = len(train_labels), len(val_labels)
    scipy.io.savemat(
        base / "setid.mat",
        {
            "trnid": image_ids[:n_train].reshape(1, -1),
            "valid": image_ids[n_train : n_train + n_val].reshape(1, -1),
            "tstid": image_ids[n_train + n_val :].reshape(1, -1),
        },
    )
    samples = list(zip(paths, labels))
    return FakeDataset(folder, list(Flowers102.classes), samples[:n_train], samples[n_train + n_val :])


def write_cars_annotations(path: Path, file_names: list[str], labels: list[int]) -> None:
    """A struct array `annotations` with the fields torchvision reads: fname and 1-based class."""
    annotations = np.zeros((1, len(file_names)), dtype=[("fname", object), ("class", object)])
    for column, (file_name, label) in enumerate(zip(file_names, labels)):
        annotations[0, column] = (file_name, label)
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, {"annotations": annotations})


def make_cars(folder: Path) -> FakeDataset:
    """stanford_cars/ as torchvision expects it: 3 classes, 2 train and 1 test image each."""
    base = folder / "stanford_cars"
    classes = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Acura TL Sedan 2012"]
    (base / "devkit").mkdir(parents=True)
    scipy.io.savemat(base / "devkit" / "cars_meta.mat", {"class_names": np.array(classes, dtype=object).reshape(1, -1)})
    samples = {"train": [], "test": []}
    for split, per_class in (("train", 2), ("test", 1)):
        labels = [label for label in range(len(classes)) for _ in range(per_class)]
        names = [f"{number:05d}.jpg" for number in range(1, len(labels) + 1)]
        samples[split] = [(write_jpeg(base / f"cars_{split}" / name), label) for name, label in zip(names, labels)]
        annotations = base / ("devkit/cars_train_annos.mat" if split == "train" else "cars_test_annos_withlabels.mat")
        write_cars_annotations(annotations, names, [label + 1 for label in labels])
    return FakeDataset(folder, classes, samples["train"], samples["test"])


def make_aircraft(folder: Path) -> FakeDataset:
    """fgvc-aircraft-2013b/data/: 3 variants, 2 trainval and 1 test image each."""
    data = folder / "fgvc-aircraft-2013b" / "data"
    classes = ["707-320", "A300B4", "F-16A/B"]
    _write_lines(data / "variants.txt", classes)
    lines = {"trainval": [], "test": []}
    train, test = [], []
    for label, variant in enumerate(classes):
        for index in range(3):
            image_name = f"{label}{index:06d}"
            path = write_jpeg(data / "images" / f"{image_name}.jpg")
            split = "trainval" if index < 2 else "test"
            lines[split].append(f"{image_name} {variant}")
            (train if split == "trainval" else test).append((path, label))
    for split, split_lines in lines.items():
        _write_lines(data / f"images_variant_{split}.txt", split_lines)
    return FakeDataset(folder, classes, train, test)


def make_dtd(folder: Path) -> FakeDataset:
    """dtd/dtd/ as torchvision expects it, partition 1: per class 2 train, 1 val, 1 test image, except
    that val1.txt has no 'blotchy' image, so torchvision's own labels for the val split are shifted."""
    data = folder / "dtd" / "dtd"
    classes = ["banded", "blotchy", "braided"]
    lines = {"train": [], "val": [], "test": []}
    train, test = [], []
    for label, category in enumerate(classes):
        splits = ["train", "train", "test"] if category == "blotchy" else ["train", "train", "val", "test"]
        for index, split in enumerate(splits):
            relative_path = f"{category}/{category}_{index:04d}.jpg"
            path = write_jpeg(data / "images" / relative_path)
            lines[split].append(relative_path)
            (test if split == "test" else train).append((path, label))
    for split, split_lines in lines.items():
        _write_lines(data / "labels" / f"{split}1.txt", split_lines)
    return FakeDataset(folder, classes, train, test)


FOOD101_TRAIN_PER_CLASS = 8
FOOD101_TEST_PER_CLASS = 2


def make_food101(folder: Path) -> FakeDataset:
    """food-101/: 3 classes of 8 train and 2 test images, meta/train.json and meta/test.json."""
    base = folder / "food-101"
    classes = ["apple_pie", "baby_back_ribs", "baklava"]
    metadata = {"train": {}, "test": {}}
    samples = {"train": [], "test": []}
    for label, name in enumerate(classes):
        for split, count, first in (("train", FOOD101_TRAIN_PER_CLASS, 0), ("test", FOOD101_TEST_PER_CLASS, 100)):
            image_ids = [f"{name}/{1000 * label + first + index}" for index in range(count)]
            metadata[split][name] = image_ids
            samples[split] += [(write_jpeg(base / "images" / f"{image_id}.jpg"), label) for image_id in image_ids]
    (base / "meta").mkdir(parents=True)
    for split, split_metadata in metadata.items():
        (base / "meta" / f"{split}.json").write_text(json.dumps(split_metadata))
    return FakeDataset(folder, classes, samples["train"], samples["test"])


MAKERS = {
    "cub": make_cub,
    "dogs": make_dogs,
    "indoor67": make_indoor67,
    "flowers102": make_flowers102,
    "cars": make_cars,
    "aircraft": make_aircraft,
    "dtd": make_dtd,
    "food101_30": make_food101,
    "food101_150": make_food101,
}
