"""How the report names and orders things: the paper's method, regularizer and dataset names."""

from __future__ import annotations

import pandas as pd

# In the paper's column order (Table 1, then the ablations of Table 2), then our Table 3; others follow under their key.
METHOD_LABELS = {
    "original": "Original",
    "dropout": "Dropout",
    "dropconnect": "DropConn.",
    "cnn_dropout": "CNN-DrO.",
    "stochastic_depth": "StochasticD.",
    "cyclic_lr": "CyclicLR.",
    "disturb_label": "DisturbL.",
    "rifle": "RIFLE",
    "rifle_a": "RIFLE-A",
    "rifle_b": "RIFLE-B",
    "keep_imagenet_fc": "KeepFC",
    "random_freeze": "RandFreeze",
}
REGULARIZER_LABELS = {"l2": "L2", "l2sp": "L2-SP"}
# The paper's row order; other datasets follow alphabetically under their key.
DATASET_LABELS = {
    "cub": "CUB-200-2011",
    "aircraft": "FGVC-Aircraft",
    "flowers102": "Flowers-102",
    "dtd": "DTD",
    "indoor67": "MIT Indoor-67",
    "cars": "Stanford Cars",
    "dogs": "Stanford Dogs",
    "food101_30": "Food-101-30",
    "food101_150": "Food-101-150",
}
_PREFERRED_ORDER = {"regularizer": list(REGULARIZER_LABELS), "dataset": list(DATASET_LABELS),
                    "method": list(METHOD_LABELS)}


def method_label(method: str) -> str:
    return METHOD_LABELS.get(method, method)


def regularizer_label(regularizer: str) -> str:
    return REGULARIZER_LABELS.get(regularizer, regularizer)


def dataset_label(dataset: str) -> str:
    return DATASET_LABELS.get(dataset, dataset)


def in_display_order(frame: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Sorted by ``by``: regularizers, datasets and methods in the paper's order, then by key; other columns by
    value."""
    def rank(column: pd.Series) -> pd.Series:
        if column.name not in _PREFERRED_ORDER:
            return column
        first = [value for value in _PREFERRED_ORDER[column.name] if value in set(column)]
        rest = sorted(set(column) - set(first), key=str)
        return column.map({value: position for position, value in enumerate(first + rest)})

    return frame.sort_values(by, key=rank, kind="stable")
