"""Mini-batches straight from the decode-once cache.

Training batches follow the paper's augmentation exactly: a crop at a uniformly random position of the
resized image (torchvision RandomCrop) and a horizontal flip with probability 0.5; test batches take the
center crop (torchvision CenterCrop). Background threads copy each crop (flipped or not) from the memory
map into one uint8 batch, already in the layout the model reads (NCHW or channels_last), a few batches ahead
of the training step (numpy releases the GIL for these copies, so several threads keep up with a fast GPU);
normalization runs batched, in one fused pass, on the training device, in the training thread (a second
thread of tensor ops would fight the training step's OpenMP threads for the cores).
The random stream of epoch e depends only on (seed, e), so a resumed run sees the same batches as an
uninterrupted one.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from rifle_bench.data.cache import CachedSplit

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageBatches:
    def __init__(self, split: CachedSplit, *, crop: int, batch_size: int, train: bool, device: torch.device,
                 seed: int = 0, channels_last: bool = False, threads: int = 1, prefetch: int = 2):
        smallest = int(split.index[:, 1:].min()) if len(split) else 0
        if smallest < crop:
            raise ValueError(f"crop {crop} is larger than the smallest cached image side ({smallest} px): "
                             f"set a resize >= crop for this dataset")
        self.split, self.crop, self.batch_size, self.train = split, crop, batch_size, train
        self.device, self.seed, self.channels_last = device, seed, channels_last
        self.threads, self.prefetch = threads, max(prefetch, threads)
        self.labels = torch.from_numpy(np.asarray(split.labels))
        # ToTensor + Normalize as one multiply-add, x * scale + shift (within 5e-7 of torchvision's result),
        # spelled out per pixel in the batch's layout, so that the op broadcasts over the batch dimension only.
        mean, std = torch.tensor(IMAGENET_MEAN, dtype=torch.float64), torch.tensor(IMAGENET_STD, dtype=torch.float64)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.scale, self.shift = (
            values.float().view(1, 3, 1, 1).expand(1, 3, crop, crop).contiguous(memory_format=memory_format).to(device)
            for values in (1.0 / (255.0 * std), -mean / std)
        )

    def __len__(self) -> int:
        return len(self._batch_indices(np.random.default_rng(0)))

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of one pass, (images float NCHW normalized, labels int64), on the device."""
        for pixels, labels in self.host_batches(epoch):
            # uint8 travels to the device: a quarter of the bytes of a float batch.
            images = self._normalize(pixels.to(self.device, non_blocking=True))
            yield images, labels.to(self.device, non_blocking=True)

    def host_batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The same pass before normalization: (uint8 images NCHW, labels int64) in host memory (pinned for a GPU)."""
        plans = self._plans(np.random.default_rng([self.seed, epoch]))
        return _in_background(self._gather, plans, self.threads, self.prefetch)

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

    def _gather(self, plan) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's crops, flipped where drawn, as uint8 in the model's memory layout."""
        indices, crop = plan[0], self.crop
        shape = (len(indices), crop, crop, 3) if self.channels_last else (len(indices), 3, crop, crop)
        batch = torch.empty(shape, dtype=torch.uint8, pin_memory=self.device.type == "cuda")
        out = batch.numpy()
        rows = zip(*(column.tolist() for column in plan))  # Python ints slice faster than numpy scalars
        for slot, (i, top, left, flip) in enumerate(rows):
            window = self.split.image(i)[top:top + crop, left:left + crop]
            if flip:
                window = window[:, ::-1]
            target = out[slot] if self.channels_last else out[slot].transpose(1, 2, 0)
            # Copied plane by plane: a flipped copy of whole 3-byte pixels is several times slower.
            for channel in range(3):
                target[..., channel] = window[..., channel]
        images = batch.permute(0, 3, 1, 2) if self.channels_last else batch
        return images, self.labels[torch.from_numpy(indices)]

    def _normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        images = pixels.float()  # keeps the memory layout: channels_last stays channels_last
        return torch.addcmul(self.shift, images, self.scale, out=images)


def _in_background(function: Callable, items: Iterable, threads: int, depth: int) -> Iterator:
    """function(item) for each item, in order, run by `threads` threads up to `depth` items ahead of the consumer."""
    pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="batches")
    pending: deque = deque()
    try:
        for item in items:
            pending.append(pool.submit(function, item))
            if len(pending) > depth:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:  # also when the consumer leaves early: drop what is queued, join the threads
        pool.shutdown(wait=True, cancel_futures=True)
