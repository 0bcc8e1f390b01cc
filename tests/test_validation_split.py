"""dataset.val_fraction: a class-stratified validation split carved out of the training split, the same images for
every method and run seed, evaluated by every run."""

from __future__ import annotations

import csv
from collections import Counter

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

import rifle_bench.data as data
from conftest import TINY
from fixtures_datasets import FOOD101_TRAIN_PER_CLASS, make_food101
from rifle_bench import train
from rifle_bench.data.sources import DatasetError, list_split
from test_data_pipeline import FIXTURE_SIDE, dataset_cfg


def test_each_class_holds_out_its_share_at_least_one_never_all():
    labels = np.repeat([0, 1, 2, 3], [10, 21, 3, 2])
    rng = np.random.default_rng(0)
    shuffled = rng.permutation(labels)  # classes interleaved, as in a real listing
    positions = data.validation_positions(shuffled, 0.2, seed=0, dataset="toy")
    assert Counter(shuffled[positions].tolist()) == {0: 2, 1: 4, 2: 1, 3: 1}  # round(0.2 n), >= 1, <= n - 1
    assert np.all(np.diff(positions) > 0)
    tiny = data.validation_positions(shuffled, 0.001, seed=0, dataset="toy")
    assert Counter(shuffled[tiny].tolist()) == {0: 1, 1: 1, 2: 1, 3: 1}
    most = data.validation_positions(shuffled, 0.99, seed=0, dataset="toy")
    assert Counter(shuffled[most].tolist()) == {0: 9, 1: 20, 2: 2, 3: 1}


def test_the_split_depends_on_the_split_seed_only():
    labels = np.repeat(np.arange(5), 20)
    first = data.validation_positions(labels, 0.3, seed=0, dataset="toy")
    assert np.array_equal(first, data.validation_positions(labels, 0.3, seed=0, dataset="toy"))
    assert not np.array_equal(first, data.validation_positions(labels, 0.3, seed=1, dataset="toy"))
    # One class's draw does not move when another class gains an image.
    grown = np.concatenate([labels, [4]])
    regrown = data.validation_positions(grown, 0.3, seed=0, dataset="toy")
    assert np.array_equal(regrown[grown[regrown] == 0], first[labels[first] == 0])


def test_a_class_with_a_single_training_image_cannot_hold_one_out():
    with pytest.raises(DatasetError, match=r"dataset.val_fraction=0.1: class 1 of 'toy' has a single training "
                                           r"image.*set dataset.val_fraction=0"):
        data.validation_positions(np.array([0, 0, 1, 2, 2]), 0.1, seed=0, dataset="toy")


def test_prepare_carves_the_split_out_of_train_disjoint_from_train_and_test(tmp_path):
    fake = make_food101(tmp_path / "data")
    cfg = dataset_cfg("food101_30", fake.root, num_classes=3, subset_per_class=FOOD101_TRAIN_PER_CLASS,
                      val_fraction=0.25)
    splits = data.prepare(cfg, FIXTURE_SIDE, tmp_path / "cache")
    whole = data.prepare(OmegaConf.merge(cfg, {"val_fraction": 0.0}), FIXTURE_SIDE, tmp_path / "cache")
    assert whole.val is None and whole.val_split is None

    listing = [path for path, _ in list_split("food101_30", fake.root, "train",
                                              subset_per_class=FOOD101_TRAIN_PER_CLASS).samples]
    test_paths = {path for path, _ in list_split("food101_30", fake.root, "test").samples}
    # Each cached image keeps its row of the pixel index: map the rows back to the listed files.
    row_of = {tuple(row): i for i, row in enumerate(whole.train.index.tolist())}
    val_paths = {listing[row_of[tuple(row)]] for row in splits.val.index.tolist()}
    train_paths = {listing[row_of[tuple(row)]] for row in splits.train.index.tolist()}
    assert len(val_paths) == 6 and len(train_paths) == 18
    assert val_paths.isdisjoint(train_paths) and val_paths.isdisjoint(test_paths)
    assert val_paths | train_paths == set(listing)
    assert Counter(splits.val.labels.tolist()) == {0: 2, 1: 2, 2: 2}
    assert splits.val_split == {"fraction": 0.25, "seed": 0, "n_val": 6, "n_train": 18,
                                "indices_sha1": splits.val_split["indices_sha1"]}
    assert len(splits.test) == len(whole.test)
    assert data.prepare(cfg, FIXTURE_SIDE, tmp_path / "cache").val_split == splits.val_split


@pytest.fixture
def one_thread():
    """The tiny model gains nothing from a second thread, and loses much on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def read_metrics(run_dir):
    with open(run_dir / "metrics.csv") as file:
        return list(csv.DictReader(file))


def test_every_run_evaluates_the_same_validation_images_with_the_test_transform(compose_cfg, tmp_path, monkeypatch,
                                                                                one_thread):
    made = []
    real_batches = train.ImageBatches

    def recording_batches(split, **kwargs):
        made.append((len(split), kwargs["train"]))
        return real_batches(split, **kwargs)

    monkeypatch.setattr(train, "ImageBatches", recording_batches)
    results = {}
    for method, seed in (("original", 0), ("dropout", 1)):
        run_dir = tmp_path / method
        run_dir.mkdir()
        cfg = compose_cfg(*TINY, f"method={method}", f"seed={seed}", "dataset.val_fraction=0.2",
                          "trainer.eval_every=1")
        results[method] = train.run(cfg, run_dir)
        rows = read_metrics(run_dir)
        assert [row["val_acc"] != "" for row in rows] == [True, True]
        assert float(rows[-1]["val_acc"]) == results[method]["val_acc"]
        assert 0 <= results[method]["val_acc"] <= 100
    assert made == [(40, True), (50, False), (10, False)] * 2  # train, test, val: val takes the center crop
    original, dropout = results["original"], results["dropout"]
    assert original["val_split"] == dropout["val_split"]
    assert original["val_split"]["n_val"] == 10 and original["n_train"] == 40 and original["n_test"] == 50
    assert len(original["val_split"]["indices_sha1"]) == 40


def test_without_a_split_val_acc_is_null_and_no_column_is_written(compose_cfg, tmp_path, one_thread):
    cfg = compose_cfg(*TINY, "trainer.epochs=1")
    assert cfg.dataset.val_fraction == 0.0
    result = train.run(cfg, tmp_path)
    assert result["val_acc"] is None and result["val_split"] is None and result["n_train"] == 50
    assert "val_acc" not in read_metrics(tmp_path)[0]
