"""The whole-CT path every 3D peer shares: resample, normalise, sliding window, argmax, back to the grid.

A 3D peer differs from another only in its network, its training patch and its CT intensity
normalisation; everything else (the 1.5 mm grid, the overlap, the Gaussian blending, the way the
labels return to the input grid) is the same, so that their rows compare networks, not pipelines.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import SimpleITK as sitk
import torch
from torch import nn

from segmatecore.bench.peers.sliding_window import sliding_window_logits

Normalise = Callable[[np.ndarray], np.ndarray]


@dataclass
class PeerResult:
    """The peer's labelmap on the input grid, its timings and how many network inputs it ran.

    ``patches`` counts sliding-window patches for a 3D peer and slices for a 2D one; ``grid`` is
    the voxel grid the network saw (x, y, z)."""

    labelmap: sitk.Image
    timings: dict[str, float]
    patches: int
    grid: tuple[int, int, int]


def resample_to_spacing(image: sitk.Image, spacing_mm: float) -> sitk.Image:
    """Isotropic ``spacing_mm`` over the same physical extent (linear, as a float32 image)."""
    size = [max(1, int(round(n * s / spacing_mm))) for n, s in zip(image.GetSize(), image.GetSpacing())]
    return sitk.Resample(sitk.Cast(image, sitk.sitkFloat32), size, sitk.Transform(), sitk.sitkLinear,
                         image.GetOrigin(), [spacing_mm] * 3, image.GetDirection(), -1000.0, sitk.sitkFloat32)


def labels_on_grid(labels: np.ndarray, grid: sitk.Image, image: sitk.Image) -> sitk.Image:
    """``labels`` ([z, y, x] on ``grid``) as a uint8 labelmap on ``image``'s grid (nearest neighbour)."""
    coarse = sitk.GetImageFromArray(labels.astype(np.uint8))
    coarse.CopyInformation(grid)
    return sitk.Resample(coarse, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)


def run_patch_peer(image: sitk.Image, network: nn.Module, *, patch: tuple[int, int, int], spacing_mm: float,
                   num_classes: int, normalise: Normalise, autocast: torch.dtype | None = None) -> PeerResult:
    """Segment ``image`` with a 3D ``network`` the nnU-Net way: resample to ``spacing_mm``, normalise,
    sliding window of ``patch`` (half-patch overlap, Gaussian weights), argmax, back to the grid."""
    timings = {}
    t0 = time.perf_counter()
    resampled = resample_to_spacing(image, spacing_mm)
    volume = torch.from_numpy(np.ascontiguousarray(normalise(sitk.GetArrayViewFromImage(resampled)),
                                                   dtype=np.float32))
    timings["preprocess"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    logits, patches = sliding_window_logits(network, volume, patch, num_classes, autocast=autocast)
    labels = logits.argmax(0).to(torch.uint8).cpu().numpy()
    del logits
    timings["network"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    labelmap = labels_on_grid(labels, resampled, image)
    timings["resample"] = time.perf_counter() - t0
    return PeerResult(labelmap, timings, patches, tuple(resampled.GetSize()))
