"""The embedded default dataset: Animal-MNIST (10,000 28x28 grey silhouettes of 10 animals, MIT licence).

The files come from the PyPI wheel `animal-mnist==0.4` (fetched by scripts/fetch_assets.py). They are
gzipped pickles of numpy arrays, so they are read with an unpickler that accepts numpy arrays only.
"""

from __future__ import annotations

import gzip
import hashlib
import pickle
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.functional as TF

from rifle_bench.data.sources import DatasetError

CLASSES = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]
IMAGES_FILE = "animal_data_version_3.gz"
LABELS_FILE = "animal_label_version_3.gz"
_NUMPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _NUMPY_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays are expected")
        if module.startswith("numpy.core"):
            module = module.replace("numpy.core", "numpy._core", 1) if hasattr(np, "_core") else module
        return super().find_class(module, name)


def _read_array(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as file:
        array = _NumpyOnlyUnpickler(file).load()
    if not isinstance(array, np.ndarray):
        raise DatasetError(f"{path} does not hold a numpy array")
    return array


def files(root: str | Path) -> tuple[Path, Path]:
    root = Path(root)
    images, labels = root / IMAGES_FILE, root / LABELS_FILE
    missing = [p.name for p in (images, labels) if not p.exists()]
    if missing:
        raise DatasetError(
            f"dataset 'animals': {', '.join(missing)} not found in {root}. "
            f"Run `make assets` (or `python scripts/fetch_assets.py`) to fetch them from the animal-mnist wheel, "
            f"or point dataset.root at the folder holding {IMAGES_FILE} and {LABELS_FILE}.")
    return images, labels


def fingerprint(root: str | Path) -> str:
    digest = hashlib.sha256()
    for path in files(root):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def split_indices(labels: np.ndarray, train_per_class: int, test_per_class: int, split_seed: int) -> dict[str, np.ndarray]:
    """A class-balanced split drawn with a fixed seed, independent of the run seed."""
    rng = np.random.default_rng(split_seed)
    train, test = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        if len(members) < train_per_class + test_per_class:
            raise DatasetError(f"dataset 'animals': class {label} has {len(members)} images, "
                               f"fewer than train_per_class + test_per_class = {train_per_class + test_per_class}")
        train.append(members[:train_per_class])
        test.append(members[train_per_class:train_per_class + test_per_class])
    return {"train": np.sort(np.concatenate(train)), "test": np.sort(np.concatenate(test))}


def load_split(root: str | Path, split: str, resize: int, train_per_class: int, test_per_class: int,
               split_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(images NHWC uint8 RGB resized to `resize` px, labels) of one split."""
    images_path, labels_path = files(root)
    labels = _read_array(labels_path).astype(np.int64)
    chosen = split_indices(labels, train_per_class, test_per_class, split_seed)[split]
    grey = torch.from_numpy(_read_array(images_path)[chosen]).unsqueeze(1)  # N,1,28,28
    resized = TF.resize(grey, [resize, resize], antialias=True)
    rgb = resized.expand(-1, 3, -1, -1).permute(0, 2, 3, 1).contiguous()
    return rgb.numpy(), labels[chosen]
