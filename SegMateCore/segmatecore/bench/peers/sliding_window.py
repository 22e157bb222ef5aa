"""Sliding-window prediction over a volume, as nnU-Net's predictor places and blends its patches.

Shared by the 3D peers (:mod:`.nnunet`, :mod:`.lightmedseg`, :mod:`.light_unetr`): each runs at its
own training patch size with the same overlap (half a patch) and the same Gaussian importance
weighting, so that their rows differ only in the network and its patch.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import torch
from torch import nn

OVERLAP_STEP = 0.5  # patch starts at most half a patch apart (nnU-Net's tile_step_size)


def sliding_window_starts(image_size: tuple[int, ...], patch: tuple[int, ...], step: float = OVERLAP_STEP
                          ) -> list[list[int]]:
    """Patch start indices per axis, placed as nnU-Net's ``compute_steps_for_sliding_window``."""
    starts = []
    for size, tile in zip(image_size, patch):
        count = int(math.ceil((size - tile) / (tile * step))) + 1
        if count > 1:
            stride = (size - tile) / (count - 1)
            starts.append([int(round(stride * i)) for i in range(count)])
        else:
            starts.append([0])
    return starts


def patch_count(image_size: tuple[int, ...], patch: tuple[int, ...], step: float = OVERLAP_STEP) -> int:
    """How many patches the sliding window runs over ``image_size`` (padded to the patch if smaller)."""
    padded = tuple(max(s, p) for s, p in zip(image_size, patch))
    return math.prod(len(axis) for axis in sliding_window_starts(padded, patch, step))


def gaussian_importance(patch: tuple[int, ...], sigma_scale: float = 1.0 / 8) -> torch.Tensor:
    """nnU-Net's Gaussian weighting of a patch: centre 1, sigma = patch * sigma_scale, no zeros."""
    axes = []
    for tile in patch:
        r = np.arange(tile, dtype=np.float64) - (tile - 1) / 2
        axes.append(np.exp(-0.5 * (r / (tile * sigma_scale)) ** 2))
    weight = np.einsum("i,j,k->ijk", *axes)
    weight /= weight.max()
    weight[weight == 0] = weight[weight > 0].min()
    return torch.from_numpy(weight.astype(np.float32))


@torch.inference_mode()
def sliding_window_logits(network: nn.Module, volume: torch.Tensor, patch: tuple[int, int, int],
                          num_classes: int, step: float = OVERLAP_STEP, autocast: torch.dtype | None = None
                          ) -> tuple[torch.Tensor, int]:
    """Gaussian-weighted sum of patch logits over a [D, H, W] volume (padded to the patch if smaller).

    Everything runs on the network's device, as nnU-Net's predictor does on a GPU with room for the
    volume's logits; the result is on that device."""
    device = next(network.parameters()).device
    volume = volume.to(device)
    shape = volume.shape
    padded = tuple(max(s, p) for s, p in zip(shape, patch))
    if padded != tuple(shape):
        pad = [v for s, p in zip(reversed(shape), reversed(padded)) for v in (0, p - s)]
        volume = torch.nn.functional.pad(volume, pad)
    weight = gaussian_importance(patch).to(device)
    logits = torch.zeros((num_classes, *padded), dtype=torch.float32, device=device)
    counts = torch.zeros(padded, dtype=torch.float32, device=device)
    starts = sliding_window_starts(padded, patch, step)
    count = 0
    for z, y, x in itertools.product(*starts):
        window = (slice(z, z + patch[0]), slice(y, y + patch[1]), slice(x, x + patch[2]))
        tile = volume[window][None, None]
        with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
            out = network(tile)[0].float()
        logits[(slice(None), *window)] += out * weight
        counts[window] += weight
        count += 1
    logits /= counts
    return logits[:, :shape[0], :shape[1], :shape[2]], count
