"""The slice-batch iterator: every slice once, in order, in batches that can shrink and repeat."""
from __future__ import annotations

import numpy as np
import torch

from segmatecore.data.preprocess import Preprocessing
from segmatecore.inference.batches import SliceBatches, SliceInputs


def test_batches_cover_every_slice_once_in_order_and_follow_the_batch_size():
    size = {"n": 4}
    batches = SliceBatches(np.arange(3, 13), lambda: size["n"])
    seen = []
    for t in batches:
        seen.append(t.tolist())
        size["n"] = 3
    assert seen == [[3, 4, 5, 6], [7, 8, 9], [10, 11, 12]]


def test_retry_gives_the_same_slices_again_in_the_new_smaller_batch():
    size = {"n": 4}
    batches = SliceBatches(np.arange(10), lambda: size["n"])
    seen, failed = [], False
    for t in batches:
        if not failed and t[0] == 4:  # as the runner does after an out-of-memory error
            failed, size["n"] = True, 2
            batches.retry()
            continue
        seen.append(t.tolist())
    assert seen == [[0, 1, 2, 3], [4, 5], [6, 7], [8, 9]]


def test_inputs_are_each_slice_with_its_neighbours_windowed_and_resized():
    volume = np.stack([np.full((16, 8), -1000.0 + 100 * k, dtype=np.float32) for k in range(5)], axis=2)  # [x, y, z]
    pre = Preprocessing(hu_window=(-1000.0, 400.0), mean=0.0, std=1.0, input_size=(32, 32))
    x = SliceInputs(volume, pre, torch.device("cpu"))(np.array([0, 2, 4]))
    assert x.shape == (3, 3, 32, 32) and x.dtype == torch.float32
    expected_slices = [[0, 0, 1], [1, 2, 3], [3, 4, 4]]  # the first and last slice repeat at the ends
    for row, slices in zip(x, expected_slices):
        for channel, k in zip(row, slices):
            assert torch.allclose(channel, torch.full_like(channel, 100 * k / 1400))
