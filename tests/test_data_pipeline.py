"""rifle_bench.data end to end: `prepare` (listing, decode-once cache, checks) and `ImageBatches` (augmentation)."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from omegaconf import OmegaConf
from PIL import Image
from scipy import stats
from torchvision import transforms

import rifle_bench.data as data
from fixtures_datasets import FOOD101_TEST_PER_CLASS, MAKERS, make_cub, make_food101, make_indoor67, write_jpeg
from rifle_bench.data.cache import load_or_build
from rifle_bench.data.loader import IMAGENET_MEAN, IMAGENET_STD, ImageBatches
from rifle_bench.data.sources import DatasetError, list_split

CONF_DIR = Path(__file__).resolve().parents[1] / "src" / "rifle_bench" / "conf" / "dataset"
CPU = torch.device("cpu")
FIXTURE_SIDE = 8  # the fixture JPEGs are 8x8: cached at resize 8, they keep their size


@pytest.fixture(autouse=True)
def flowers_md5_skipped(monkeypatch):
    """The fake flowers-102 .mat files cannot match the md5 that torchvision's Flowers102 checks."""
    monkeypatch.setattr(torchvision.datasets.flowers102, "check_integrity", lambda path, md5=None: os.path.exists(path))


def dataset_cfg(name: str, root: Path, **overrides):
    """The shipped conf/dataset/<name>.yaml pointed at `root`, sized for the fixtures (expected sizes off)."""
    cfg = OmegaConf.load(CONF_DIR / f"{name}.yaml")
    cfg.root, cfg.expected_sizes = str(root), None
    for key, value in overrides.items():
        cfg[key] = value
    return cfg


@pytest.fixture
def decodes(monkeypatch):
    """Count the images `prepare` decodes (by path); set `.fail` to make every decode raise instead."""
    calls: Counter = Counter()
    decode = data.decode_resized

    def counting(path, *args, **kwargs):
        if counting.fail:
            raise AssertionError(f"decoded {path} although the cache holds it")
        calls[path] += 1
        return decode(path, *args, **kwargs)

    counting.fail, counting.calls = False, calls
    monkeypatch.setattr(data, "decode_resized", counting)
    return counting


def cache_entries(cache_root: Path) -> list[str]:
    return sorted(path.name for path in cache_root.iterdir() if not path.name.startswith(".") and path.is_dir())


def write_noise_jpeg(path: Path, height: int, width: int, seed: int) -> None:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=95)


# ---------------------------------------------------------------- prepare: every dataset through the cache


@pytest.mark.parametrize("name", list(MAKERS))
def test_prepare_caches_every_dataset_with_its_listing(tmp_path, name, decodes):
    fake = MAKERS[name](tmp_path / "data")
    subset = {"subset_per_class": 3} if name.startswith("food101") else {}
    cfg = dataset_cfg(name, fake.root, num_classes=len(fake.classes), **subset)
    splits = data.prepare(cfg, FIXTURE_SIDE, tmp_path / "cache", workers=2)

    for split, cached in (("train", splits.train), ("test", splits.test)):
        listing = list_split(name, fake.root, split, **subset)
        assert cached.labels.tolist() == [label for _, label in listing.samples]
        assert all(cached.image(i).shape == (FIXTURE_SIDE, FIXTURE_SIDE, 3) for i in range(len(cached)))
        assert sum(decodes.calls[path] for path, _ in listing.samples) == len(listing.samples)
    expected_train = 3 * len(fake.classes) if subset else len(fake.train)
    assert (len(splits.train), len(splits.test)) == (expected_train, len(fake.test))
    assert (splits.num_classes, splits.skipped) == (len(fake.classes), 0)
    assert np.abs(splits.train.image(0).astype(int) - (200, 120, 40)).max() < 8  # the fixtures' colour


def test_food101_subset_is_class_balanced_and_the_test_split_full(tmp_path):
    fake = make_food101(tmp_path / "data")
    for name, per_class in (("food101_30", 5), ("food101_150", 7)):
        splits = data.prepare(dataset_cfg(name, fake.root, num_classes=3, subset_per_class=per_class),
                              FIXTURE_SIDE, tmp_path / "cache")
        assert Counter(splits.train.labels.tolist()) == {0: per_class, 1: per_class, 2: per_class}
        assert Counter(splits.test.labels.tolist()) == {0: FOOD101_TEST_PER_CLASS, 1: FOOD101_TEST_PER_CLASS,
                                                        2: FOOD101_TEST_PER_CLASS}


def test_cache_root_comes_from_the_environment_or_paths_cache(tmp_path, monkeypatch, compose_cfg):
    fake = make_cub(tmp_path / "data")
    monkeypatch.setenv("RIFLE_BENCH_DATA", str(fake.root))
    monkeypatch.setenv("RIFLE_BENCH_CACHE", str(tmp_path / "from-env"))
    cfg = compose_cfg("dataset=cub", "dataset.num_classes=3", "dataset.expected_sizes=null", "dataset.resize=8")
    assert (cfg.dataset.root, cfg.paths.cache) == (str(fake.root), str(tmp_path / "from-env"))
    data.prepare(cfg.dataset, cfg.trainer.resize, cfg.paths.cache)
    assert len(cache_entries(tmp_path / "from-env")) == 2

    cfg = compose_cfg("dataset=cub", f"paths.cache={tmp_path / 'from-config'}")
    assert cfg.paths.cache == str(tmp_path / "from-config")


# ---------------------------------------------------------------- the decode-once cache


def test_second_prepare_reads_the_cache_without_decoding(tmp_path, decodes):
    fake = make_cub(tmp_path / "data")
    cfg = dataset_cfg("cub", fake.root, num_classes=3)
    first = data.prepare(cfg, FIXTURE_SIDE, tmp_path / "cache")
    entries = cache_entries(tmp_path / "cache")
    decodes.fail = True
    second = data.prepare(cfg, FIXTURE_SIDE, tmp_path / "cache")
    assert cache_entries(tmp_path / "cache") == entries
    for before, after in ((first.train, second.train), (first.test, second.test)):
        assert np.array_equal(before.labels, after.labels) and np.array_equal(before.pixels, after.pixels)


def test_another_resize_is_a_miss(tmp_path, decodes):
    fake = make_cub(tmp_path / "data")
    cfg = dataset_cfg("cub", fake.root, num_classes=3)
    data.prepare(cfg, FIXTURE_SIDE, tmp_path / "cache")
    splits = data.prepare(cfg, 12, tmp_path / "cache")
    assert splits.train.image(0).shape == (12, 12, 3)
    assert set(decodes.calls.values()) == {2} and len(cache_entries(tmp_path / "cache")) == 4


def test_adding_or_removing_an_image_invalidates_the_split(tmp_path, decodes):
    fake = make_indoor67(tmp_path / "data")
    cfg = dataset_cfg("indoor67", fake.root, num_classes=3)
    data.prepare(cfg, FIXTURE_SIDE, tmp_path / "cache")
    original_listing = (fake.root / "TrainImages.txt").read_text()

    added = write_jpeg(fake.root / "Images" / "kitchen" / "added.jpg")
    (fake.root / "TrainImages.txt").write_text(original_listing + "kitchen/added.jpg\n")
    decodes.calls.clear()
    grown = data.prepare(cfg, FIXTURE_SIDE, tmp_path / "cache")
    assert len(grown.train) == len(fake.train) + 1 and decodes.calls[added] == 1
    assert sum(decodes.calls.values()) == len(fake.train) + 1  # the train split only: the test split is unchanged

    (fake.root / "TrainImages.txt").write_text(original_listing)
    decodes.fail = True  # the original file list: its entry is still there
    assert len(data.prepare(cfg, FIXTURE_SIDE, tmp_path / "cache").train) == len(fake.train)


def test_an_image_replaced_in_place_is_decoded_again(tmp_path, decodes):
    fake = make_cub(tmp_path / "data")
    cfg = dataset_cfg("cub", fake.root, num_classes=3)
    data.prepare(cfg, FIXTURE_SIDE, tmp_path / "cache")
    replaced = fake.train[0][0]
    write_noise_jpeg(Path(replaced), FIXTURE_SIDE, FIXTURE_SIDE, seed=1)
    splits = data.prepare(cfg, FIXTURE_SIDE, tmp_path / "cache")
    assert decodes.calls[replaced] == 2
    assert np.array_equal(splits.train.image(0), data.decode_resized(replaced, FIXTURE_SIDE, "cub"))


def test_an_entry_without_its_completion_mark_is_rebuilt_not_read(tmp_path, decodes):
    fake = make_cub(tmp_path / "data")
    cfg = dataset_cfg("cub", fake.root, num_classes=3)
    built = data.prepare(cfg, FIXTURE_SIDE, tmp_path / "cache")
    pixels = np.array(built.train.pixels)  # a copy: the memory map is about to lose its file
    (built.train.path / "meta.json").unlink()  # as if the entry had been copied in half
    (built.train.path / "pixels.bin").write_bytes(b"")
    (tmp_path / "cache" / f".{built.train.path.name}.killedbuilder").mkdir()  # a killed builder's staging dir
    decodes.calls.clear()
    rebuilt = data.prepare(cfg, FIXTURE_SIDE, tmp_path / "cache")
    assert sum(decodes.calls.values()) == len(fake.train)
    assert np.array_equal(rebuilt.train.pixels, pixels)
    assert not list((tmp_path / "cache").glob(".*"))


@pytest.mark.parametrize("damage", ["truncated pixels", "garbage labels"])
def test_a_corrupt_entry_is_set_aside_and_rebuilt(tmp_path, decodes, damage, caplog):
    fake = make_cub(tmp_path / "data")
    cfg = dataset_cfg("cub", fake.root, num_classes=3)
    built = data.prepare(cfg, FIXTURE_SIDE, tmp_path / "cache")
    pixels, entry = np.array(built.train.pixels), built.train.path
    if damage == "truncated pixels":
        (entry / "pixels.bin").write_bytes((entry / "pixels.bin").read_bytes()[:1000])
    else:
        (entry / "labels.npy").write_bytes(b"not numpy")
    decodes.calls.clear()
    rebuilt = data.prepare(cfg, FIXTURE_SIDE, tmp_path / "cache")
    assert sum(decodes.calls.values()) == len(fake.train)  # the damaged split only, decoded again
    assert np.array_equal(rebuilt.train.pixels, pixels)
    (kept,) = (tmp_path / "cache").glob(f"{entry.name}.corrupt-*")  # set aside, not deleted
    assert str(entry) in caplog.text and "corrupt" in caplog.text


def _prepare_in_a_process(cfg, cache_root, start, results) -> None:
    start.wait()
    splits = data.prepare(cfg, FIXTURE_SIDE, cache_root, workers=1)
    results.put([(cached.labels.tolist(), bytes(cached.pixels)) for cached in (splits.train, splits.test)])


def test_concurrent_builders_decode_once_and_never_expose_half_an_entry(tmp_path, monkeypatch):
    fake = make_cub(tmp_path / "data")
    cfg = dataset_cfg("cub", fake.root, num_classes=3)
    cache_root = tmp_path / "cache"
    decoded = multiprocessing.get_context("fork").Queue()
    decode = data.decode_resized

    def slow_decode(path, *args, **kwargs):  # widens the window in which the builders race
        decoded.put(path)
        time.sleep(0.05)
        return decode(path, *args, **kwargs)

    monkeypatch.setattr(data, "decode_resized", slow_decode)
    context = multiprocessing.get_context("fork")  # the children inherit the patched decoder
    start, results = context.Barrier(4), context.Queue()
    builders = [context.Process(target=_prepare_in_a_process, args=(cfg, cache_root, start, results))
                for _ in range(4)]
    for builder in builders:
        builder.start()
    while any(builder.is_alive() for builder in builders):
        for entry in cache_root.glob("cub-*") if cache_root.exists() else []:
            if entry.is_dir():  # visible under its final name: it must be complete
                meta = json.loads((entry / "meta.json").read_text())
                assert (entry / "pixels.bin").stat().st_size == meta["bytes"]
        time.sleep(0.005)
    assert [builder.exitcode for builder in builders] == [0] * len(builders)

    outcomes = [results.get(timeout=10) for _ in builders]
    assert all(outcome == outcomes[0] for outcome in outcomes)
    assert outcomes[0][0][0] == [label for _, label in fake.train]
    decoded_paths = []
    while not decoded.empty():
        decoded_paths.append(decoded.get())
    assert sorted(decoded_paths) == sorted(path for path, _ in fake.train + fake.test)  # each image once
    assert len(cache_entries(cache_root)) == 2 and not list(cache_root.glob(".*"))


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_corrupt_image_is_an_error_naming_the_file(tmp_path, damage):
    fake = make_cub(tmp_path / "data")
    corrupt = Path(fake.train[3][0])
    write_noise_jpeg(corrupt, 40, 40, seed=0)
    intact = corrupt.read_bytes()
    corrupt.write_bytes(b"not a jpeg" * 20 if damage == "garbage" else intact[:len(intact) * 2 // 3])
    with pytest.raises(DatasetError, match="cannot decode image") as error:
        data.prepare(dataset_cfg("cub", fake.root, num_classes=3), FIXTURE_SIDE, tmp_path / "cache")
    assert str(corrupt) in str(error.value) and "dataset.skip_corrupt=true" in str(error.value)
    assert not cache_entries(tmp_path / "cache")


def test_skip_corrupt_leaves_the_image_out_and_counts_it(tmp_path):
    fake = make_cub(tmp_path / "data")
    corrupt = fake.train[3][0]
    Path(corrupt).write_bytes(b"not a jpeg")
    with pytest.warns(UserWarning, match=f"left out 1 image.*{re.escape(corrupt)}"):
        splits = data.prepare(dataset_cfg("cub", fake.root, num_classes=3, skip_corrupt=True),
                              FIXTURE_SIDE, tmp_path / "cache")
    assert splits.skipped == 1 and len(splits.train) == len(fake.train) - 1
    assert splits.train.labels.tolist() == [label for path, label in fake.train if path != corrupt]

    # The entry built with skip_corrupt=true does not make a run without it silently train on fewer images.
    with pytest.raises(DatasetError, match=re.escape(f"1 image(s) cannot be decoded: {corrupt}")):
        data.prepare(dataset_cfg("cub", fake.root, num_classes=3), FIXTURE_SIDE, tmp_path / "cache")


@pytest.mark.parametrize(("num_classes", "message"), [
    (2, r"train labels span 0..2, outside 0..1 \(dataset.num_classes=2\)"),
    (4, r"1 classes have no training image \(first: \[3\]\)"),
])
def test_labels_that_do_not_fit_num_classes_fail_before_any_decoding(tmp_path, decodes, num_classes, message):
    fake = make_cub(tmp_path / "data")
    decodes.fail = True
    with pytest.raises(DatasetError, match=message):
        data.prepare(dataset_cfg("cub", fake.root, num_classes=num_classes), FIXTURE_SIDE, tmp_path / "cache")


def test_split_sizes_other_than_the_papers_are_warned_about(tmp_path):
    fake = make_cub(tmp_path / "data")
    cfg = dataset_cfg("cub", fake.root, num_classes=3)
    cfg.expected_sizes = {"train": 5994, "test": len(fake.test)}
    with pytest.warns(UserWarning, match="the train split has 6 images, the paper's has 5994") as warned:
        data.prepare(cfg, FIXTURE_SIDE, tmp_path / "cache")
    assert sum("split has" in str(warning.message) for warning in warned) == 1  # the test split matches


# ---------------------------------------------------------------- ImageBatches


def synthetic_split(tmp_path: Path, images: list[np.ndarray], labels: list[int]):
    return load_or_build(tmp_path / "cache", dataset="synthetic", split="train", resize=0,
                         fingerprint_=str(len(images)), source=lambda: (labels, images.__getitem__))


def unnormalize(images: torch.Tensor) -> np.ndarray:
    """NCHW normalized floats back to NHWC uint8."""
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images * std + mean).mul(255).round().permute(0, 2, 3, 1).to(torch.uint8).numpy()


def position_coded_image(height: int, width: int, image_id: int) -> np.ndarray:
    """Red = 10 * row, green = 10 * column, blue = image id: a crop tells where it was taken, and from which image."""
    rows, columns = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    return np.stack([10 * rows, 10 * columns, np.full_like(rows, image_id)], axis=2).astype(np.uint8)


def test_random_crops_and_flips_follow_torchvision_randomcrop_and_flip(tmp_path):
    height, width, crop, n = 12, 15, 8, 64
    images = [position_coded_image(height, width, i) for i in range(n)]
    batches = ImageBatches(synthetic_split(tmp_path, images, list(range(n))), crop=crop, batch_size=16, train=True,
                           device=CPU, seed=3)
    tops, lefts, flips = [], [], []
    for epoch in range(40):
        for images_batch, labels in batches.epoch(epoch):
            for pixels, label in zip(unnormalize(images_batch), labels.tolist()):
                assert (pixels[..., 2] == label).all()  # the crop comes from its labelled image
                flipped = pixels[0, 0, 1] > pixels[0, -1, 1]
                top, left = int(pixels[0, 0, 0]) // 10, int(pixels[0, -1 if flipped else 0, 1]) // 10
                window = images[label][top:top + crop, left:left + crop]
                assert np.array_equal(pixels, window[:, ::-1] if flipped else window)
                tops.append(top)
                lefts.append(left)
                flips.append(flipped)

    torch.manual_seed(0)
    torchvision_offsets = {transforms.RandomCrop.get_params(torch.empty(3, height, width), (crop, crop))[:2]
                           for _ in range(2000)}
    assert set(zip(tops, lefts)) == torchvision_offsets  # every offset, the extremes included
    for offsets, count in ((tops, height - crop + 1), (lefts, width - crop + 1)):
        assert stats.chisquare(np.bincount(offsets, minlength=count)).pvalue > 1e-3  # uniform
    assert abs(np.mean(flips) - 0.5) < 4 * np.sqrt(0.25 / len(flips))


@pytest.mark.parametrize("channels_last", [False, True])
def test_test_batches_equal_torchvision_resize_centercrop_totensor_normalize(tmp_path, channels_last):
    fake = make_cub(tmp_path / "data")
    sizes = [(37, 29), (29, 37), (40, 40), (33, 50), (50, 31), (31, 31), (45, 28), (28, 45), (39, 41)]
    for (path, _), (height, width), seed in zip(fake.train + fake.test, sizes, range(9)):
        write_noise_jpeg(Path(path), height, width, seed)
    resize, crop = 20, 13  # shorter side 7 px larger than the crop: CenterCrop rounds its offset 3.5 up to 4
    splits = data.prepare(dataset_cfg("cub", fake.root, num_classes=3), resize, tmp_path / "cache")
    torchvision_pipeline = transforms.Compose([
        transforms.Resize(resize), transforms.CenterCrop(crop), transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])
    for split, samples in ((splits.train, fake.train), (splits.test, fake.test)):
        batches = ImageBatches(split, crop=crop, batch_size=4, train=False, device=CPU, channels_last=channels_last)
        delivered = list(batches.epoch(0))
        images = torch.cat([images for images, _ in delivered])
        expected = torch.stack([torchvision_pipeline(Image.open(path).convert("RGB")) for path, _ in samples])
        assert images.shape == expected.shape
        assert (images - expected).abs().max() <= 1e-6
        assert torch.cat([labels for _, labels in delivered]).tolist() == [label for _, label in samples]
        assert all(images.is_contiguous(memory_format=torch.channels_last) == channels_last
                   for images, _ in delivered)


def test_normalization_equals_torchvision_for_every_pixel_value(tmp_path):
    values = np.arange(256, dtype=np.uint8).reshape(16, 16)
    image = np.stack([values, values.T, 255 - values], axis=2)
    batches = ImageBatches(synthetic_split(tmp_path, [image], [0]), crop=16, batch_size=1, train=False, device=CPU)
    (images, _), = batches.epoch(0)
    expected = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)(transforms.ToTensor()(Image.fromarray(image)))
    assert images.dtype == torch.float32 and (images[0] - expected).abs().max() <= 1e-6


def test_batches_depend_only_on_seed_and_epoch(tmp_path):
    n = 20
    split = synthetic_split(tmp_path, [position_coded_image(12, 14, i) for i in range(n)], list(range(n)))

    def epoch(seed: int, number: int, threads: int = 1) -> list[torch.Tensor]:
        batches = ImageBatches(split, crop=8, batch_size=2, train=True, device=CPU, seed=seed, threads=threads)
        return [tensor for batch in batches.epoch(number) for tensor in batch]

    def same(a, b):
        return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))

    assert same(epoch(0, 1), epoch(0, 1))
    assert same(epoch(0, 1), epoch(0, 1, threads=4))  # several assembling threads keep the order
    assert not same(epoch(0, 1), epoch(0, 2)) and not same(epoch(0, 1), epoch(1, 1))


@pytest.mark.parametrize(("n", "train", "expected_batches", "expected_images"), [
    (23, True, 5, 23), (23, False, 5, 23),
    (21, True, 4, 20),  # a trailing batch of one image is dropped in training (BatchNorm)
    (21, False, 5, 21),
])
def test_an_epoch_delivers_every_image_once(tmp_path, n, train, expected_batches, expected_images):
    split = synthetic_split(tmp_path, [position_coded_image(10, 10, i) for i in range(n)], list(range(n)))
    batches = ImageBatches(split, crop=8, batch_size=5, train=train, device=CPU)
    delivered = list(batches.epoch(0))
    labels = torch.cat([labels for _, labels in delivered]).tolist()
    assert len(batches) == len(delivered) == expected_batches
    assert len(labels) == len(set(labels)) == expected_images
    if not train:
        assert labels == list(range(n))
    for images, batch_labels in delivered:
        assert (unnormalize(images)[..., 2] == batch_labels.view(-1, 1, 1).numpy()).all()


def test_leaving_an_epoch_early_stops_the_batch_threads(tmp_path):
    split = synthetic_split(tmp_path, [position_coded_image(10, 10, i) for i in range(40)], list(range(40)))
    before = threading.active_count()
    for threads in (1, 3):
        for _ in ImageBatches(split, crop=8, batch_size=2, train=True, device=CPU, threads=threads).epoch(0):
            assert threading.active_count() > before
            break
        assert threading.active_count() == before


def test_a_crop_larger_than_the_cached_images_is_refused(tmp_path):
    split = synthetic_split(tmp_path, [position_coded_image(10, 12, 0)], [0])
    with pytest.raises(ValueError, match="crop 11 is larger than the smallest cached image side"):
        ImageBatches(split, crop=11, batch_size=1, train=True, device=CPU)


def test_an_error_while_assembling_a_batch_reaches_the_training_loop(tmp_path, monkeypatch):
    split = synthetic_split(tmp_path, [position_coded_image(10, 10, i) for i in range(8)], list(range(8)))
    readable = split.image

    def image(i: int) -> np.ndarray:
        if i == 5:
            raise OSError("Input/output error reading the cache")
        return readable(i)

    monkeypatch.setattr(split, "image", image)
    batches = ImageBatches(split, crop=8, batch_size=2, train=False, device=CPU, threads=2)
    with pytest.raises(OSError, match="Input/output error"):
        for _ in batches.epoch(0):
            pass
