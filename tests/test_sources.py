"""rifle_bench.data.sources: listing the nine datasets from tiny copies of their official layouts."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest
import torchvision
from omegaconf import OmegaConf

from fixtures_datasets import (
    FOOD101_TEST_PER_CLASS,
    MAKERS,
    make_cars,
    make_cub,
    make_dogs,
    make_dtd,
    make_food101,
    make_indoor67,
    write_cars_annotations,
    write_dogs_list,
)
from rifle_bench.data.sources import DATASETS, DatasetError, list_split

CONF_DIR = Path(__file__).resolve().parents[1] / "src" / "rifle_bench" / "conf" / "dataset"

# DESIGN.md section 4: (num_classes, train size, test size)
PAPER_DATASETS = {
    "cub": (200, 5994, 5794),
    "dogs": (120, 12000, 8580),
    "indoor67": (67, 5360, 1340),
    "flowers102": (102, 1020, 6149),
    "cars": (196, 8144, 8041),
    "aircraft": (100, 6667, 3333),
    "dtd": (47, 3760, 1880),
    "food101_30": (101, 3030, 25250),
    "food101_150": (101, 15150, 25250),
}

OFFICIAL_PAGES = {
    "cub": "https://www.vision.caltech.edu/datasets/cub_200_2011/",
    "dogs": "http://vision.stanford.edu/aditya86/ImageNetDogs/",
    "indoor67": "https://web.mit.edu/torralba/www/indoor.html",
    "flowers102": "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/",
    "cars": "torchvision.datasets.StanfordCars",
    "aircraft": "https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/",
    "dtd": "https://www.robots.ox.ac.uk/~vgg/data/dtd/",
    "food101_30": "https://data.vision.ee.ethz.ch/cvl/datasets_extra/food-101/",
    "food101_150": "https://data.vision.ee.ethz.ch/cvl/datasets_extra/food-101/",
}

# the index file that defines each dataset's test split, relative to its root
TEST_INDEX_FILES = {
    "cub": "CUB_200_2011/train_test_split.txt",
    "dogs": "test_list.mat",
    "indoor67": "TestImages.txt",
    "flowers102": "flowers-102/setid.mat",
    "cars": "stanford_cars/cars_test_annos_withlabels.mat",
    "aircraft": "fgvc-aircraft-2013b/data/images_variant_test.txt",
    "dtd": "dtd/dtd/labels/test1.txt",
    "food101_30": "food-101/meta/test.json",
}


@pytest.fixture
def flowers_md5_skipped(monkeypatch):
    """The fake flowers-102 .mat files cannot match the md5 that torchvision's Flowers102 checks."""
    monkeypatch.setattr(torchvision.datasets.flowers102, "check_integrity", lambda path, md5=None: os.path.exists(path))


@pytest.fixture
def make_fake(tmp_path, flowers_md5_skipped):
    return lambda name: MAKERS[name](tmp_path / name)


def assert_dataset_error(error: pytest.ExceptionInfo, name: str, *fragments: str | Path) -> None:
    message = str(error.value)
    assert message.startswith(f"{name} ")
    for fragment in fragments:
        assert str(fragment) in message


# ---------------------------------------------------------------- listing


@pytest.mark.parametrize("name", ["cub", "dogs", "indoor67", "flowers102", "cars", "aircraft", "dtd"])
@pytest.mark.parametrize("split", ["train", "test"])
def test_lists_every_image_of_the_split_with_its_label(make_fake, name, split):
    fake = make_fake(name)
    source = list_split(name, fake.root, split)
    assert source.classes == fake.classes
    assert sorted(source.samples) == sorted(getattr(fake, split))
    assert all(os.path.isabs(path) and type(label) is int for path, label in source.samples)


def test_flowers_trains_on_the_train_split_only(make_fake):
    fake = make_fake("flowers102")
    assert len(list_split("flowers102", fake.root, "train").samples) == len(fake.classes) == 102
    assert len(list_split("flowers102", fake.root, "test").samples) == 3


def test_dtd_labels_follow_class_names_when_a_split_file_misses_a_class(tmp_path):
    fake = make_dtd(tmp_path)
    val_only = torchvision.datasets.DTD(tmp_path, split="val", partition=1)
    assert val_only.classes == ["banded", "braided"]  # torchvision's val labels: braided -> 1
    train = list_split("dtd", tmp_path, "train")
    braided_labels = {label for path, label in train.samples if "/braided/" in path}
    assert braided_labels == {2} and len(train.samples) == len(fake.train) == 8


def test_cub_root_may_be_the_cub_folder_itself(tmp_path):
    fake = make_cub(tmp_path)
    source = list_split("cub", tmp_path / "CUB_200_2011", "test")
    assert sorted(source.samples) == sorted(fake.test)


def test_relative_root_gives_absolute_paths(tmp_path, monkeypatch):
    make_indoor67(tmp_path / "indoor")
    monkeypatch.chdir(tmp_path)
    source = list_split("indoor67", "indoor", "train")
    assert all(path.startswith(str(tmp_path)) for path, _ in source.samples)


# ---------------------------------------------------------------- Food-101 subsets


@pytest.mark.parametrize("per_class", [1, 3, 8])
def test_food_subset_has_exactly_k_images_per_class(tmp_path, per_class):
    fake = make_food101(tmp_path)
    source = list_split("food101_30", tmp_path, "train", subset_per_class=per_class)
    assert Counter(label for _, label in source.samples) == {label: per_class for label in range(3)}
    assert set(source.samples) <= set(fake.train)
    test = list_split("food101_30", tmp_path, "test", subset_per_class=per_class)
    assert len(test.samples) == 3 * FOOD101_TEST_PER_CLASS  # the test split is never subsampled


def test_food_subset_depends_only_on_the_subset_seed(tmp_path):
    make_food101(tmp_path)

    def subset(seed):
        return list_split("food101_150", tmp_path, "train", subset_per_class=3, subset_seed=seed).samples

    assert subset(0) == subset(0)
    assert subset(0) != subset(1)
    for label in range(3):
        paths = [path for path, sample_label in subset(0) if sample_label == label]
        assert paths == sorted(paths)


def test_food_subset_larger_than_a_class_is_an_error(tmp_path):
    make_food101(tmp_path)
    with pytest.raises(DatasetError) as error:
        list_split("food101_150", tmp_path, "train", subset_per_class=9)
    assert_dataset_error(error, "food101_150", "apple_pie has 8 training images", "subset_per_class=9")


# ---------------------------------------------------------------- user errors


@pytest.mark.parametrize("name", list(DATASETS))
def test_missing_root_names_dataset_path_and_official_page(tmp_path, name):
    root = tmp_path / "nowhere"
    with pytest.raises(DatasetError) as error:
        list_split(name, root, "train")
    assert_dataset_error(error, name, root, "does not exist", OFFICIAL_PAGES[name])


@pytest.mark.parametrize("name", list(TEST_INDEX_FILES))
def test_missing_split_file_is_named(make_fake, name):
    fake = make_fake(name)
    (fake.root / TEST_INDEX_FILES[name]).unlink()
    with pytest.raises(DatasetError) as error:
        list_split(name, fake.root, "test")
    assert_dataset_error(error, name, fake.root / TEST_INDEX_FILES[name], OFFICIAL_PAGES[name])


@pytest.mark.parametrize("name", ["cub", "dogs", "indoor67", "flowers102", "cars", "aircraft", "dtd", "food101_30"])
def test_missing_listed_image_is_named(make_fake, name):
    fake = make_fake(name)
    missing_image = fake.test[-1][0]
    os.remove(missing_image)
    with pytest.raises(DatasetError) as error:
        list_split(name, fake.root, "test")
    assert_dataset_error(error, name, fake.root, missing_image, "1 of", "do not exist")


def test_cub_label_out_of_range(tmp_path):
    make_cub(tmp_path)
    labels_file = tmp_path / "CUB_200_2011" / "image_class_labels.txt"
    lines = labels_file.read_text().splitlines()
    lines[0] = "1 7"  # image 1 in class 7 of 3
    labels_file.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError) as error:
        list_split("cub", tmp_path, "train")
    assert_dataset_error(error, "cub", "label 6", "outside [0, 3)", "Black_footed_Albatross_0000_1.jpg")


def test_dogs_label_out_of_range(tmp_path):
    make_dogs(tmp_path)
    write_dogs_list(tmp_path / "test_list.mat", ["n02085620-Chihuahua/n02085620_1002.jpg"] * 2, [1, 121])
    with pytest.raises(DatasetError) as error:
        list_split("dogs", tmp_path, "test")
    assert_dataset_error(error, "dogs", tmp_path, "label 120", "outside [0, 3)")


def test_dogs_label_of_another_breed_folder(tmp_path):
    make_dogs(tmp_path)
    write_dogs_list(tmp_path / "test_list.mat", ["n02085620-Chihuahua/n02085620_1002.jpg"] * 2, [1, 2])
    with pytest.raises(DatasetError) as error:
        list_split("dogs", tmp_path, "test")
    assert_dataset_error(error, "dogs", "test_list.mat", "not in the folder of their label")


def test_cars_label_out_of_range(tmp_path):
    make_cars(tmp_path)
    write_cars_annotations(tmp_path / "stanford_cars" / "cars_test_annos_withlabels.mat", ["00001.jpg"] * 2, [1, 9])
    with pytest.raises(DatasetError) as error:
        list_split("cars", tmp_path, "test")
    assert_dataset_error(error, "cars", "label 8", "outside [0, 3)", "cars_test/00001.jpg")


def test_cub_class_without_training_image(tmp_path):
    make_cub(tmp_path)
    with open(tmp_path / "CUB_200_2011" / "classes.txt", "a") as classes_file:
        classes_file.write("4 004.Groove_billed_Ani\n")
    with pytest.raises(DatasetError) as error:
        list_split("cub", tmp_path, "train")
    assert_dataset_error(error, "cub", tmp_path, "1 class(es) have no training image: 004.Groove_billed_Ani")


def test_indoor67_empty_category_folder(tmp_path):
    make_indoor67(tmp_path)
    (tmp_path / "Images" / "zoo").mkdir()
    with pytest.raises(DatasetError) as error:
        list_split("indoor67", tmp_path, "train")
    assert_dataset_error(error, "indoor67", "no training image: zoo")


def test_indoor67_category_without_folder(tmp_path):
    make_indoor67(tmp_path)
    with open(tmp_path / "TestImages.txt", "a") as list_file:
        list_file.write("garage/int9.jpg\n")
    with pytest.raises(DatasetError) as error:
        list_split("indoor67", tmp_path, "test")
    assert_dataset_error(error, "indoor67", "TestImages.txt line 4", "no folder 'garage'")


def test_flowers_md5_mismatch_is_reported_through_torchvision(tmp_path):
    MAKERS["flowers102"](tmp_path)  # without flowers_md5_skipped: torchvision rejects the fake .mat files
    with pytest.raises(DatasetError) as error:
        list_split("flowers102", tmp_path, "test")
    assert_dataset_error(error, "flowers102", "torchvision's Flowers102", "Dataset not found or corrupted", "md5")


def test_dtd_archive_one_level_too_high_gets_a_hint(tmp_path):
    make_dtd(tmp_path)
    (tmp_path / "dtd" / "dtd").rename(tmp_path / "extracted")
    (tmp_path / "dtd").rmdir()
    (tmp_path / "extracted").rename(tmp_path / "dtd")
    with pytest.raises(DatasetError) as error:
        list_split("dtd", tmp_path, "test")
    assert_dataset_error(error, "dtd", tmp_path / "dtd" / "dtd", "one level deeper")


def test_corrupt_mat_file_is_a_dataset_error(tmp_path):
    make_dogs(tmp_path)
    (tmp_path / "train_list.mat").write_bytes(b"not a mat file")
    with pytest.raises(DatasetError) as error:
        list_split("dogs", tmp_path, "train")
    assert_dataset_error(error, "dogs", "cannot read", "train_list.mat")


def test_torchvision_without_the_private_file_list_is_a_clear_error(tmp_path, monkeypatch):
    class Food101WithoutFileList(torchvision.datasets.Food101):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            del self._image_files

    make_food101(tmp_path)
    monkeypatch.setattr(torchvision.datasets, "Food101", Food101WithoutFileList)
    with pytest.raises(DatasetError, match=r"has no attribute '_image_files'.*must be updated"):
        list_split("food101_30", tmp_path, "test")


def test_unknown_dataset_lists_the_known_ones(tmp_path):
    with pytest.raises(DatasetError, match="unknown dataset 'imagenet'.*cub, dogs"):
        list_split("imagenet", tmp_path, "train")


# ---------------------------------------------------------------- configs


@pytest.mark.parametrize("name", list(PAPER_DATASETS))
def test_dataset_config_matches_the_paper(name, monkeypatch):
    monkeypatch.setenv("RIFLE_BENCH_DATA", "/datasets")
    config = OmegaConf.load(CONF_DIR / f"{name}.yaml")
    num_classes, train_size, test_size = PAPER_DATASETS[name]
    assert set(config) == {
        "defaults", "name", "root", "num_classes", "resize", "crop", "expected_sizes",
        "subset_per_class", "subset_seed", "skip_corrupt", "val_fraction", "val_seed",
    }  # fmt: skip
    assert config.name == name and name in DATASETS
    assert config.root.startswith("/datasets")
    assert (config.num_classes, config.expected_sizes.train, config.expected_sizes.test) == PAPER_DATASETS[name]
    assert (config.resize, config.crop, config.subset_seed, config.skip_corrupt) == (256, 224, 0, False)
    subset = train_size // num_classes if name.startswith("food101") else None
    assert config.subset_per_class == subset
