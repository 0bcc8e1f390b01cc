"""Decode-once image cache: every split is stored resized, as uint8, in memory-mappable files.

Layout of one cache entry (a directory, built under a temporary name and renamed into place,
so concurrent builders never expose a half-written entry):
  pixels.bin   uint8, all images concatenated in HWC order, flattened
  index.npy    int64 (N, 3): offset into pixels, height, width
  labels.npy   int64 (N,)
  meta.json    what was cached (dataset, split, resize, fingerprint, counts, the items left out)

Builders of one entry also take an exclusive lock on `<entry>.lock`, so that the many jobs of a sweep
starting at once decode the dataset once, not once each: the others wait, then read the finished entry.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rifle_bench.results import set_aside

log = logging.getLogger(__name__)
CACHE_FORMAT = 2


@dataclass
class CachedSplit:
    pixels: np.ndarray  # flat uint8, memory-mapped
    index: np.ndarray  # (N, 3) offset, height, width
    labels: np.ndarray  # (N,)
    skipped: list[int]  # positions in the source's item list that were left out (unreadable images)
    path: Path

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, i: int) -> np.ndarray:
        offset, height, width = self.index[i]
        return self.pixels[offset : offset + height * width * 3].reshape(height, width, 3)


def fingerprint(items: Sequence[str]) -> str:
    """Short hash of the file list (or any identifying strings): a changed dataset gets a new cache entry."""
    digest = hashlib.sha256()
    for item in items:
        digest.update(item.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def entry_dir(cache_root: Path, dataset: str, split: str, resize: int, fingerprint_: str) -> Path:
    return Path(cache_root) / f"{dataset}-{split}-r{resize}-{fingerprint_}-v{CACHE_FORMAT}"


def load_or_build(
    cache_root: str | Path,
    *,
    dataset: str,
    split: str,
    resize: int,
    fingerprint_: str,
    source: Callable[[], tuple[Sequence[int], Callable[[int], np.ndarray | None]]],
    workers: int = 1,
    progress: Callable[[int], object] | None = None,
) -> CachedSplit:
    """Return the cached split, building it first if it is not there yet.

    `source()` is called only on a miss and returns (labels, load_image): `load_image(i)` gives image i
    already resized, HWC uint8 with 3 channels, or None to leave it out (a corrupt file the user asked
    to skip). Decoding runs on `workers` threads (PIL releases the GIL).
    """
    target = entry_dir(Path(cache_root), dataset, split, resize, fingerprint_)
    if _complete(target):
        try:
            return open_entry(target)
        except CorruptEntry as error:
            kept = set_aside(target)
            log.warning("image cache entry %s is corrupt (%s): kept as %s, building it again", target, error, kept)
    if not _complete(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        with _exclusive_lock(target.with_name(target.name + ".lock")) as locked:
            if not _complete(target):  # another process may have built it while this one waited
                if locked:
                    _remove_staging_dirs(target)
                labels, load_image = source()
                _build(target, dataset, split, resize, fingerprint_, labels, load_image, workers, progress)
    return open_entry(target)


class CorruptEntry(Exception):
    """A cache entry whose files do not agree with its meta.json (truncated, overwritten, half-copied)."""


def open_entry(path: Path) -> CachedSplit:
    """Map an entry after a load check: every file readable, sizes and counts as meta.json records them."""
    try:
        meta = json.loads((path / "meta.json").read_text())
        index, labels = np.load(path / "index.npy"), np.load(path / "labels.npy")
        size = (path / "pixels.bin").stat().st_size
    except (OSError, ValueError, EOFError) as error:
        raise CorruptEntry(f"{type(error).__name__}: {error}") from None
    if size != meta["bytes"] or len(labels) != meta["n"] or len(index) != meta["n"]:
        raise CorruptEntry(f"pixels.bin has {size} bytes and {len(labels)} labels, meta.json says "
                           f"{meta['bytes']} bytes and {meta['n']} images")
    # Viewed as a plain ndarray (slicing an np.memmap runs Python code per slice); np.memmap cannot map
    # an empty file (a split whose every image was skipped).
    pixels = np.memmap(path / "pixels.bin", dtype=np.uint8, mode="r").view(np.ndarray) if meta["bytes"] \
        else np.zeros(0, np.uint8)
    return CachedSplit(pixels=pixels, index=index, labels=labels, skipped=meta["skipped"], path=path)


def _complete(entry: Path) -> bool:
    return (entry / "meta.json").exists()


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[bool]:
    """Hold an exclusive flock on `path`; yields False where the file system refuses locks (some NFS
    mounts), in which case the build goes ahead unlocked: the rename alone still keeps readers safe."""
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _remove_staging_dirs(target: Path) -> None:
    """Leftovers of builders that were killed; only called by the lock holder, when no other builder runs."""
    for staging in target.parent.glob(f".{target.name}.*"):
        shutil.rmtree(staging, ignore_errors=True)


def _build(target, dataset, split, resize, fingerprint_, labels, load_image, workers, progress) -> None:
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        index, kept_labels, skipped = [], [], []
        offset = 0
        with open(staging / "pixels.bin", "wb") as raw, ThreadPoolExecutor(max(1, workers)) as pool:
            for i, image in enumerate(pool.map(load_image, range(len(labels)))):
                if progress is not None:
                    progress(1)
                if image is None:
                    skipped.append(i)
                    continue
                image = np.ascontiguousarray(image, dtype=np.uint8)
                if image.ndim != 3 or image.shape[2] != 3:
                    raise ValueError(f"cached images must be HxWx3 uint8, got shape {image.shape} for item {i}")
                index.append((offset, image.shape[0], image.shape[1]))
                kept_labels.append(labels[i])
                raw.write(image.tobytes())
                offset += image.size
        np.save(staging / "index.npy", np.asarray(index, dtype=np.int64).reshape(-1, 3))
        np.save(staging / "labels.npy", np.asarray(kept_labels, dtype=np.int64))
        meta = {"format": CACHE_FORMAT, "dataset": dataset, "split": split, "resize": resize,
                "fingerprint": fingerprint_, "n": len(kept_labels), "skipped": skipped, "bytes": int(offset)}
        # meta.json last: its presence is what marks an entry as complete.
        (staging / "meta.json").write_text(json.dumps(meta, indent=1))
        try:
            os.rename(staging, target)
        except OSError:
            if not _complete(target):  # lost a race against a broken entry: replace it
                shutil.rmtree(target, ignore_errors=True)
                os.rename(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
