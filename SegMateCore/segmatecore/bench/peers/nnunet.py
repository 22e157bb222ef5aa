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

import numpy as np
import SimpleITK as sitk
import torch
from torch import nn

from segmatecore.bench.peers.sliding_window import OVERLAP_STEP
from segmatecore.bench.peers.volume import PeerResult, run_patch_peer

NNUNET_MODEL = "nnunet_3d_fullres"   # the peer's key in the benchmark's rows
NNUNET_FEATURES = (32, 64, 128, 256, 320, 320)
NNUNET_PATCH = (128, 128, 128)
NNUNET_SPACING_MM = 1.5
NNUNET_STEP = OVERLAP_STEP
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


def nnunet_ct_normalise(hu: np.ndarray) -> np.ndarray:
    """nnU-Net's CT normalisation: clip to the dataset's percentiles, then z-score."""
    lo, hi = NNUNET_CT_CLIP
    mean, std = NNUNET_CT_MEAN_STD
    return (np.clip(hu, lo, hi) - mean) / std


def run_nnunet_peer(image: sitk.Image, network: nn.Module | None = None, patch: tuple[int, int, int] = NNUNET_PATCH,
                    spacing_mm: float = NNUNET_SPACING_MM, autocast: torch.dtype | None = None) -> PeerResult:
    """Segment ``image`` the nnU-Net way: resample, normalise, sliding window, argmax, back to the grid."""
    if any(p % 32 or p < 64 for p in patch):
        raise ValueError(f"The nnU-Net patch must be a multiple of 32 of at least 64 per axis (five 2x "
                         f"downsamplings, instance norm needs more than one voxel at the bottom), got {patch}.")
    network = network if network is not None else build_nnunet_3d_fullres()
    return run_patch_peer(image, network, patch=patch, spacing_mm=spacing_mm, num_classes=PEER_CLASSES,
                          normalise=nnunet_ct_normalise, autocast=autocast)
