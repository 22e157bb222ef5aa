"""The slice-batch iterator: which slices go through the network together, and their inputs.

:class:`SliceInputs` turns slice indices of a canonical volume into the network's input (the 2.5D
stack of each slice and its neighbours, windowed and resized to the model's input size, on the
device). :class:`SliceBatches` walks a list of slice indices in batches whose size may shrink
between batches (the runner halves it after an out-of-memory error and asks for the same slices
again).
"""
from __future__ import annotations

import time
from typing import Callable, Iterator

import numpy as np
import torch

from segmatecore.data.preprocess import Preprocessing, normalize_hu, resize_slices, stack_25d


class SliceInputs:
    """Network inputs for slices of one canonical [x, y, z] HU volume, with the time spent making them."""

    def __init__(self, canonical: np.ndarray, pre: Preprocessing, device: torch.device):
        self.canonical = canonical
        self.pre = pre
        self.device = device
        self.seconds = 0.0

    def __call__(self, t: np.ndarray) -> torch.Tensor:
        """[len(t), 3, H, W] float32: slices ``t`` with their neighbours, windowed and resized."""
        start = time.perf_counter()
        stacks = normalize_hu(stack_25d(self.canonical, t), self.pre)
        x = resize_slices(torch.from_numpy(stacks).to(self.device), self.pre.input_size)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds += time.perf_counter() - start
        return x


class SliceBatches:
    """Batches of ``slices`` in order, each as long as ``size()`` says when it is made.

    ``retry()`` makes the next batch start where the last one did: after an out-of-memory error
    the same slices come again, in a smaller batch.
    """

    def __init__(self, slices: np.ndarray, size: Callable[[], int]):
        self.slices = np.asarray(slices, dtype=np.int64)
        self.size = size
        self.done = 0
        self._last = 0

    def __len__(self) -> int:
        return len(self.slices)

    def __iter__(self) -> Iterator[np.ndarray]:
        return self

    def __next__(self) -> np.ndarray:
        if self.done >= len(self.slices):
            raise StopIteration
        batch = self.slices[self.done:self.done + max(1, int(self.size()))]
        self._last = len(batch)
        self.done += len(batch)
        return batch

    def retry(self) -> None:
        self.done -= self._last
        self._last = 0
