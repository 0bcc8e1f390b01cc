"""List the paper's nine datasets (image paths and labels) from their official on-disk layouts.

Nothing is downloaded and no image is decoded here. cub, dogs and indoor67 are read from their
official index files; the other datasets go through torchvision's dataset classes (``download=False``),
whose private file lists are read directly. Every problem a user can fix (a missing folder or file,
a listed image that does not exist, a label out of range, a class without training images) is raised
as ``DatasetError`` with a message that names the dataset, the path looked at, what is missing and
where the official archive comes from.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.io
import torchvision
from scipy.io.matlab import MatReadError
from torchvision import datasets as tv_datasets

SPLITS = ("train", "test")
_MAX_NAMED = 5  # how many offending files or samples an error message names


@dataclass(frozen=True)
class Source:
    samples: list[tuple[str, int]]  # (absolute image path, label in [0, len(classes)))
    classes: list[str]  # class names, index = label


class DatasetError(Exception):
    """A dataset the user pointed at is missing or inconsistent; the message is shown as-is."""


class _LayoutError(Exception):
    """A problem with the files under a dataset root; list_split adds the dataset's context."""


@dataclass(frozen=True)
class DatasetLayout:
    list_split: Callable[[Path, str], Source]
    layout: str  # what must exist under dataset.root
    official: str  # where the official archive comes from


def list_split(
    name: str,
    root: str | Path,
    split: str,
    *,
    subset_per_class: int | None = None,
    subset_seed: int = 0,
) -> Source:
    """List one split of a dataset; with subset_per_class, keep that many training images per class."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    if subset_per_class is not None and subset_per_class < 1:
        raise DatasetError(f"{name}: subset_per_class must be a positive number of images, got {subset_per_class}")
    dataset = DATASETS[name]
    root = Path(root).expanduser().absolute()
    try:
        source = dataset.list_split(root, split)
        _check_labels(source)
        if split == "train":
            _check_every_class_has_samples(source)
            if subset_per_class is not None:
                source = Source(_class_balanced_subset(source, subset_per_class, subset_seed), source.classes)
        _check_images_exist(source)
    except _LayoutError as problem:
        raise DatasetError(
            f"{name} ({split} split): {problem}\n"
            f"  dataset.root: {root}\n"
            f"  expected there: {dataset.layout}\n"
            f"  official archive: {dataset.official}\n"
            f"  put the official files there or point dataset.root=PATH at them"
        ) from None
    return source


# ---------------------------------------------------------------- checks shared by all datasets


def _require(folder: Path, relative_paths: Sequence[str]) -> None:
    if not folder.is_dir():
        raise _LayoutError(f"folder {folder} does not exist")
    missing = [str(folder / path) for path in relative_paths if not (folder / path).exists()]
    if missing:
        raise _LayoutError(f"missing {', '.join(missing)}")


def _check_labels(source: Source) -> None:
    bad = [(path, label) for path, label in source.samples if not 0 <= label < len(source.classes)]
    if bad:
        named = ", ".join(f"{path} (label {label})" for path, label in bad[:_MAX_NAMED])
        raise _LayoutError(
            f"{len(bad)} image(s) have a label outside [0, {len(source.classes)}) "
            f"for {len(source.classes)} classes: {named}"
        )


def _check_every_class_has_samples(source: Source) -> None:
    present = {label for _, label in source.samples}
    empty = [name for label, name in enumerate(source.classes) if label not in present]
    if empty:
        raise _LayoutError(f"{len(empty)} class(es) have no training image: {', '.join(empty[:_MAX_NAMED])}")


def _check_images_exist(source: Source) -> None:
    missing = [path for path, _ in source.samples if not os.path.exists(path)]
    if missing:
        raise _LayoutError(
            f"{len(missing)} of {len(source.samples)} listed images do not exist, "
            f"e.g. {', '.join(missing[:_MAX_NAMED])}"
        )


def _class_balanced_subset(source: Source, per_class: int, seed: int) -> list[tuple[str, int]]:
    """Exactly per_class samples of each class, drawn class by class (in label order) with one
    numpy generator seeded by `seed`; each class's candidates and picks are sorted by path, so the
    subset depends only on the listing and the seed, never on the run seed."""
    by_class: list[list[tuple[str, int]]] = [[] for _ in source.classes]
    for sample in source.samples:
        by_class[sample[1]].append(sample)
    rng = np.random.default_rng(seed)
    subset = []
    for name, class_samples in zip(source.classes, by_class):
        if len(class_samples) < per_class:
            raise _LayoutError(
                f"class {name} has {len(class_samples)} training images, fewer than subset_per_class={per_class}"
            )
        class_samples.sort()
        picked = np.sort(rng.choice(len(class_samples), size=per_class, replace=False))
        subset += [class_samples[index] for index in picked]
    return subset


# ---------------------------------------------------------------- helpers for index files


def _subfolders(folder: Path) -> list[str]:
    return sorted(entry.name for entry in folder.iterdir() if entry.is_dir())


def _read_id_table(path: Path) -> dict[str, str]:
    """CUB's index files: one `<id> <value>` pair per line."""
    table = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split(maxsplit=1)
        if len(fields) != 2:
            raise _LayoutError(f"{path} line {number} is not '<id> <value>': {line!r}")
        table[fields[0]] = fields[1].strip()
    return table


def _lookup(table: dict[str, str], key: str, path: Path) -> str:
    try:
        return table[key]
    except KeyError:
        raise _LayoutError(f"{path} has no entry for image id {key}") from None


def _integer(text: str, path: Path) -> int:
    try:
        return int(text)
    except ValueError:
        raise _LayoutError(f"{path} holds {text!r} where a number belongs") from None


def _load_mat(path: Path) -> dict:
    try:
        return scipy.io.loadmat(path, squeeze_me=True)
    except (MatReadError, ValueError, OSError) as error:
        raise _LayoutError(f"cannot read {path}: {error}") from None


def _mat_field(mat: dict, field: str, path: Path) -> np.ndarray:
    if field not in mat:
        raise _LayoutError(f"{path} has no variable {field!r}")
    return np.atleast_1d(mat[field])


# ---------------------------------------------------------------- datasets with their own loaders


def _list_cub(root: Path, split: str) -> Source:
    base = root if (root / "images.txt").exists() else root / "CUB_200_2011"
    _require(base, ["images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt", "images"])
    images = _read_id_table(base / "images.txt")
    labels_file = base / "image_class_labels.txt"
    class_ids = _read_id_table(labels_file)
    is_training = _read_id_table(base / "train_test_split.txt")
    class_names = _read_id_table(base / "classes.txt")
    wanted = "1" if split == "train" else "0"
    samples = [
        (str(base / "images" / relative_path), _integer(_lookup(class_ids, image_id, labels_file), labels_file) - 1)
        for image_id, relative_path in images.items()
        if _lookup(is_training, image_id, base / "train_test_split.txt") == wanted
    ]
    class_order = sorted(class_names, key=lambda class_id: _integer(class_id, base / "classes.txt"))
    return Source(samples, [class_names[class_id] for class_id in class_order])


def _list_dogs(root: Path, split: str) -> Source:
    list_file = f"{split}_list.mat"
    _require(root, ["Images", list_file])
    classes = _subfolders(root / "Images")
    mat = _load_mat(root / list_file)
    relative_paths = _mat_field(mat, "file_list", root / list_file)
    labels = _mat_field(mat, "labels", root / list_file)
    if len(relative_paths) != len(labels):
        raise _LayoutError(f"{root / list_file} lists {len(relative_paths)} files but {len(labels)} labels")
    samples = [(str(root / "Images" / str(path)), int(label) - 1) for path, label in zip(relative_paths, labels)]
    _check_dogs_folders_match_labels(samples, classes, root / list_file)
    return Source(samples, classes)


def _check_dogs_folders_match_labels(samples: list[tuple[str, int]], classes: list[str], list_file: Path) -> None:
    """Stanford Dogs labels number the breed folders in sorted order; a stray or missing folder shifts them."""
    mismatched = [
        f"{path} (label {label})"
        for path, label in samples
        if 0 <= label < len(classes) and Path(path).parent.name != classes[label]
    ]
    if mismatched:
        raise _LayoutError(
            f"{len(mismatched)} image(s) in {list_file} are not in the folder of their label "
            f"(labels count the breed folders of Images/ in sorted order), e.g. {', '.join(mismatched[:_MAX_NAMED])}"
        )


def _list_indoor67(root: Path, split: str) -> Source:
    list_file = root / ("TrainImages.txt" if split == "train" else "TestImages.txt")
    _require(root, ["Images", list_file.name])
    classes = _subfolders(root / "Images")
    label_of = {name: label for label, name in enumerate(classes)}
    samples = []
    for number, line in enumerate(list_file.read_text().splitlines(), 1):
        relative_path = line.strip()
        if not relative_path:
            continue
        category = relative_path.split("/", 1)[0]
        if category not in label_of:
            raise _LayoutError(
                f"{list_file} line {number} names {relative_path!r}, but Images/ has no folder {category!r}"
            )
        samples.append((str(root / "Images" / relative_path), label_of[category]))
    return Source(samples, classes)


# ---------------------------------------------------------------- datasets read through torchvision


def _torchvision_dataset(dataset_class: type, root: Path, **kwargs) -> object:
    try:
        return dataset_class(root, download=False, **kwargs)
    # RuntimeError is torchvision's "Dataset not found"; the others come from unreadable index files.
    except (RuntimeError, OSError, KeyError, ValueError, MatReadError) as error:
        raise _LayoutError(
            f"torchvision's {dataset_class.__name__} could not read it: {type(error).__name__}: {error}"
        ) from None


def _private_attribute(dataset: object, attribute: str):
    try:
        return getattr(dataset, attribute)
    except AttributeError:
        raise DatasetError(
            f"torchvision {torchvision.__version__}'s {type(dataset).__name__} has no attribute {attribute!r}; "
            f"rifle_bench.data.sources reads it to list the files without decoding images "
            f"and must be updated for this torchvision version"
        ) from None


def _files_and_labels(dataset: object) -> list[tuple[str, int]]:
    files = _private_attribute(dataset, "_image_files")
    labels = _private_attribute(dataset, "_labels")
    return [(str(path), int(label)) for path, label in zip(files, labels, strict=True)]


def _relabel_by_class_name(dataset: object, classes: list[str]) -> list[tuple[str, int]]:
    """Map labels through their class names onto `classes`: the torchvision classes used here derive
    their class list from each split's own index file, which need not hold every class."""
    label_of = {name: label for label, name in enumerate(classes)}
    split_classes = _private_attribute(dataset, "classes")
    samples = []
    for path, split_label in _files_and_labels(dataset):
        name = split_classes[split_label]
        if name not in label_of:
            raise _LayoutError(f"{path} belongs to class {name!r}, which has no folder among the image folders")
        samples.append((path, label_of[name]))
    return samples


def _list_flowers102(root: Path, split: str) -> Source:
    _require(root, ["flowers-102/jpg", "flowers-102/imagelabels.mat", "flowers-102/setid.mat"])
    dataset = _torchvision_dataset(tv_datasets.Flowers102, root, split=split)
    # Flowers102.classes (the flower names) is missing from older torchvision versions: fall back to numbers.
    classes = list(getattr(dataset, "classes", [str(number) for number in range(1, 103)]))
    return Source(_files_and_labels(dataset), classes)


def _list_cars(root: Path, split: str) -> Source:
    split_files = {
        "train": ["stanford_cars/devkit/cars_train_annos.mat", "stanford_cars/cars_train"],
        "test": ["stanford_cars/cars_test_annos_withlabels.mat", "stanford_cars/cars_test"],
    }
    _require(root, ["stanford_cars/devkit/cars_meta.mat", *split_files[split]])
    dataset = _torchvision_dataset(tv_datasets.StanfordCars, root, split=split)
    samples = [(str(path), int(label)) for path, label in _private_attribute(dataset, "_samples")]
    return Source(samples, list(dataset.classes))


def _list_aircraft(root: Path, split: str) -> Source:
    torchvision_split = "trainval" if split == "train" else "test"
    data = "fgvc-aircraft-2013b/data"
    _require(root, [f"{data}/images", f"{data}/variants.txt", f"{data}/images_variant_{torchvision_split}.txt"])
    dataset = _torchvision_dataset(
        tv_datasets.FGVCAircraft, root, split=torchvision_split, annotation_level="variant"
    )
    return Source(_files_and_labels(dataset), list(dataset.classes))


def _list_dtd(root: Path, split: str) -> Source:
    partition_files = ["train1.txt", "val1.txt"] if split == "train" else ["test1.txt"]
    data = root / "dtd" / "dtd"
    if not data.is_dir() and (root / "dtd" / "images").is_dir():
        raise _LayoutError(
            f"found {root / 'dtd' / 'images'}, but torchvision's DTD looks one level deeper, in {data}: "
            f"move the archive's dtd/ folder inside {root / 'dtd'}"
        )
    _require(root, ["dtd/dtd/images", *(f"dtd/dtd/labels/{name}" for name in partition_files)])
    classes = _subfolders(data / "images")
    samples = []
    for torchvision_split in ("train", "val") if split == "train" else ("test",):
        dataset = _torchvision_dataset(tv_datasets.DTD, root, split=torchvision_split, partition=1)
        samples += _relabel_by_class_name(dataset, classes)
    return Source(samples, classes)


def _list_food101(root: Path, split: str) -> Source:
    _require(root, ["food-101/images", f"food-101/meta/{split}.json"])
    classes = _subfolders(root / "food-101" / "images")
    dataset = _torchvision_dataset(tv_datasets.Food101, root, split=split)
    return Source(_relabel_by_class_name(dataset, classes), classes)


_TORCHVISION_DOCS = "https://pytorch.org/vision/stable/generated/torchvision.datasets"
_FOOD101 = DatasetLayout(
    _list_food101,
    "food-101/{images/<class>/, meta/train.json, meta/test.json} (torchvision Food101 layout)",
    "food-101.tar.gz from https://data.vision.ee.ethz.ch/cvl/datasets_extra/food-101/",
)

DATASETS: dict[str, DatasetLayout] = {
    "cub": DatasetLayout(
        _list_cub,
        "CUB_200_2011/{images.txt, image_class_labels.txt, train_test_split.txt, classes.txt, images/} "
        "(dataset.root may also be the CUB_200_2011 folder itself)",
        "CUB_200_2011.tgz from https://www.vision.caltech.edu/datasets/cub_200_2011/",
    ),
    "dogs": DatasetLayout(
        _list_dogs,
        "Images/<wnid-breed>/*.jpg (images.tar), train_list.mat and test_list.mat (lists.tar)",
        "images.tar and lists.tar from http://vision.stanford.edu/aditya86/ImageNetDogs/",
    ),
    "indoor67": DatasetLayout(
        _list_indoor67,
        "Images/<category>/*.jpg (indoorCVPR_09.tar), TrainImages.txt, TestImages.txt",
        "indoorCVPR_09.tar, TrainImages.txt and TestImages.txt from https://web.mit.edu/torralba/www/indoor.html",
    ),
    "flowers102": DatasetLayout(
        _list_flowers102,
        "flowers-102/{jpg/ (102flowers.tgz), imagelabels.mat, setid.mat} (torchvision Flowers102 layout; "
        "the .mat files must match torchvision's md5)",
        "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/",
    ),
    "cars": DatasetLayout(
        _list_cars,
        "stanford_cars/{devkit/{cars_meta.mat, cars_train_annos.mat}, cars_train/, cars_test/, "
        "cars_test_annos_withlabels.mat} (torchvision StanfordCars layout)",
        "the original Stanford site is gone; see torchvision's StanfordCars docs for the files it expects: "
        f"{_TORCHVISION_DOCS}.StanfordCars.html",
    ),
    "aircraft": DatasetLayout(
        _list_aircraft,
        "fgvc-aircraft-2013b/data/{images/, variants.txt, images_variant_trainval.txt, images_variant_test.txt} "
        "(torchvision FGVCAircraft layout)",
        "fgvc-aircraft-2013b.tar.gz from https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/",
    ),
    "dtd": DatasetLayout(
        _list_dtd,
        "dtd/dtd/{images/<category>/, labels/train1.txt, labels/val1.txt, labels/test1.txt} "
        "(torchvision DTD layout: dtd-r1.0.1.tar.gz extracted inside ROOT/dtd)",
        "dtd-r1.0.1.tar.gz from https://www.robots.ox.ac.uk/~vgg/data/dtd/",
    ),
    # Both keys list the full Food-101; their configs set subset_per_class to 30 and 150.
    "food101_30": _FOOD101,
    "food101_150": _FOOD101,
}
