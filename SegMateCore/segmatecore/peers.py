"""The 3D nnU-Net peer of the benchmark: what a TotalSegmentator-style model costs on the same CT.

The network is nnU-Net's default ``3d_fullres`` configuration for CT, built with
dynamic-network-architectures (the library nnU-Net v2 builds it with): a PlainConvUNet of 6
stages with 32, 64, 128, 256, 320, 320 features, two 3x3x3 convolutions per stage, strides
1, 2, 2, 2, 2, 2, instance norm and leaky ReLU. Its weights do not matter for cost, so it is
randomly initialised. Prediction follows nnU-Net's predictor: the CT resampled to 1.5 mm (as
TotalSegmentator does), 128^3 patches, a sliding window with 50 % overlap whose steps are
placed as in ``compute_steps_for_sliding_window``, Gaussian importance weighting (sigma = patch/8),
logits summed on the 1.5 mm grid, argmax, labels resampled back to the input grid. No mirroring
(TotalSegmentator runs without test-time augmentation).

Two simplifications make the peer cheaper than the real tool, so ratios against it are
conservative: SimpleITK linear resampling instead of nnU-Net's third-order spline, and the
argmax labels (not the per-class probabilities) resampled back to the input grid.
"""
from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
import torch
from torch import nn

NNUNET_FEATURES = (32, 64, 128, 256, 320, 320)
NNUNET_PATCH = (128, 128, 128)
NNUNET_SPACING_MM = 1.5
NNUNET_STEP = 0.5
NNUNET_CT_CLIP = (-1000.0, 1000.0)   # CT normalisation: clip to dataset percentiles, then z-score
NNUNET_CT_MEAN_STD = (0.0, 300.0)
PEER_CLASSES = 10                     # background + the nine SegMate organs


def build_nnunet_3d_fullres(num_classes: int = PEER_CLASSES) -> nn.Module:
    """nnU-Net's default 3d_fullres PlainConvUNet (6 stages, 32-320 features, 3x3x3 kernels), eval mode."""
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    n = len(NNUNET_FEATURES)
    return PlainConvUNet(
        input_channels=1, n_stages=n, features_per_stage=list(NNUNET_FEATURES), conv_op=nn.Conv3d,
        kernel_sizes=[[3, 3, 3]] * n, strides=[[1, 1, 1]] + [[2, 2, 2]] * (n - 1),
        n_conv_per_stage=[2] * n, num_classes=num_classes, n_conv_per_stage_decoder=[2] * (n - 1),
        conv_bias=True, norm_op=nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True},
        dropout_op=None, nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True},
        deep_supervision=False).eval()


def sliding_window_starts(image_size: tuple[int, ...], patch: tuple[int, ...], step: float = NNUNET_STEP
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


@dataclass
class PeerResult:
    """The peer's labelmap on the input grid, its timings and the patch count."""

    labelmap: sitk.Image
    timings: dict[str, float]
    patches: int
    grid: tuple[int, int, int]


def resample_to_spacing(image: sitk.Image, spacing_mm: float) -> sitk.Image:
    """Isotropic ``spacing_mm`` over the same physical extent (linear, as a float32 image)."""
    size = [max(1, int(round(n * s / spacing_mm))) for n, s in zip(image.GetSize(), image.GetSpacing())]
    return sitk.Resample(sitk.Cast(image, sitk.sitkFloat32), size, sitk.Transform(), sitk.sitkLinear,
                         image.GetOrigin(), [spacing_mm] * 3, image.GetDirection(), -1000.0, sitk.sitkFloat32)


@torch.inference_mode()
def sliding_window_logits(network: nn.Module, volume: torch.Tensor, patch: tuple[int, int, int],
                          num_classes: int, step: float = NNUNET_STEP, autocast: torch.dtype | None = None
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


def run_nnunet_peer(image: sitk.Image, network: nn.Module | None = None, patch: tuple[int, int, int] = NNUNET_PATCH,
                    spacing_mm: float = NNUNET_SPACING_MM, autocast: torch.dtype | None = None) -> PeerResult:
    """Segment ``image`` the nnU-Net way: resample, normalise, sliding window, argmax, back to the grid."""
    if any(p % 32 or p < 64 for p in patch):
        raise ValueError(f"The nnU-Net patch must be a multiple of 32 of at least 64 per axis (five 2x "
                         f"downsamplings, instance norm needs more than one voxel at the bottom), got {patch}.")
    network = network if network is not None else build_nnunet_3d_fullres()
    timings = {}
    t0 = time.perf_counter()
    resampled = resample_to_spacing(image, spacing_mm)
    lo, hi = NNUNET_CT_CLIP
    mean, std = NNUNET_CT_MEAN_STD
    volume = torch.from_numpy((np.clip(sitk.GetArrayViewFromImage(resampled), lo, hi) - mean) / std)
    timings["preprocess"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    logits, patches = sliding_window_logits(network, volume.float(), patch, PEER_CLASSES, autocast=autocast)
    labels = logits.argmax(0).to(torch.uint8).cpu().numpy()
    del logits
    timings["network"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    coarse = sitk.GetImageFromArray(labels)
    coarse.CopyInformation(resampled)
    labelmap = sitk.Resample(coarse, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    timings["resample"] = time.perf_counter() - t0
    return PeerResult(labelmap, timings, patches, tuple(resampled.GetSize()))
