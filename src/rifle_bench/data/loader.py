"""Mini-batches straight from the decode-once cache.

Training batches follow the paper's augmentation exactly: a crop at a uniformly random position of the
resized image (torchvision RandomCrop) and a horizontal flip with probability 0.5; test batches take the
center crop (torchvision CenterCrop). The per-image crop is a slice copy from the memory map; flip and
normalization run batched as tensor ops on the training device. The random stream of epoch e depends only
on (seed, e), so a resumed run sees the same batches as an uninterrupted one.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import numpy as np
import torch

from rifle_bench.data.cache import CachedSplit

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageBatches:
    def __init__(self, split: CachedSplit, *, crop: int, batch_size: int, train: bool, device: torch.device,
                 seed: int = 0, channels_last: bool = False, prefetch: int = 2):
        smallest = int(split.index[:, 1:].min()) if len(split) else 0
        if smallest < crop:
            raise ValueError(f"crop {crop} is larger than the smallest cached image side ({smallest} px): "
                             f"set a resize >= crop for this dataset")
        self.split, self.crop, self.batch_size, self.train = split, crop, batch_size, train
        self.device, self.seed, self.prefetch = device, seed, prefetch
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.labels = torch.from_numpy(np.asarray(split.labels))
        mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
        self.scale, self.shift = 1.0 / (255.0 * std), -mean / std

    def __len__(self) -> int:
        return len(self._batch_indices(np.random.default_rng(0)))

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of one pass, (images float NCHW normalized, labels int64), on the device."""
        rng = np.random.default_rng([self.seed, epoch])
        plans = self._plans(rng)
        for pixels, flips, labels in _prefetched((self._gather(plan) for plan in plans), self.prefetch):
            yield self._to_device(pixels, flips), labels.to(self.device, non_blocking=True)

    def _batch_indices(self, rng: np.random.Generator) -> list[np.ndarray]:
        n = len(self.split)
        order = rng.permutation(n) if self.train else np.arange(n)
        batches = [order[i:i + self.batch_size] for i in range(0, n, self.batch_size)]
        # BatchNorm cannot train on a batch of one image: a trailing singleton is dropped.
        if self.train and len(batches) > 1 and len(batches[-1]) == 1:
            batches.pop()
        return batches

    def _plans(self, rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
        """Draw every random choice of the epoch up front: (indices, tops, lefts, flips) per batch."""
        plans = []
        for indices in self._batch_indices(rng):
            heights, widths = self.split.index[indices, 1], self.split.index[indices, 2]
            if self.train:
                tops = rng.integers(0, heights - self.crop + 1)
                lefts = rng.integers(0, widths - self.crop + 1)
                flips = rng.random(len(indices)) < 0.5
            else:
                tops = np.round((heights - self.crop) / 2.0).astype(np.int64)
                lefts = np.round((widths - self.crop) / 2.0).astype(np.int64)
                flips = np.zeros(len(indices), dtype=bool)
            plans.append((indices, tops, lefts, flips))
        return plans

    def _gather(self, plan) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        indices, tops, lefts, flips = plan
        crop = self.crop
        pixels = torch.empty((len(indices), crop, crop, 3), dtype=torch.uint8,
                             pin_memory=self.device.type == "cuda")
        out = pixels.numpy()
        for slot, (i, top, left) in enumerate(zip(indices, tops, lefts)):
            out[slot] = self.split.image(i)[top:top + crop, left:left + crop]
        return pixels, torch.from_numpy(flips), self.labels[torch.from_numpy(indices)]

    def _to_device(self, pixels: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
        pixels = pixels.to(self.device, non_blocking=True)
        if self.train:
            flips = flips.to(self.device, non_blocking=True).view(-1, 1, 1, 1)
            pixels = torch.where(flips, pixels.flip(2), pixels)  # NHWC: dim 2 is the width
        images = pixels.permute(0, 3, 1, 2).float().mul_(self.scale).add_(self.shift)
        return images.contiguous(memory_format=self.memory_format)


def _prefetched(items: Iterator, depth: int) -> Iterator:
    """Run `items` in a background thread, `depth` ahead of the consumer (overlaps batch assembly with compute)."""
    if depth <= 0:
        yield from items
        return
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def produce():
        try:
            for item in items:
                if stop.is_set():
                    return
                buffer.put(item)
        except BaseException as error:  # re-raised in the consumer
            buffer.put(error)
        buffer.put(done)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        while (item := buffer.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                buffer.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.01)
