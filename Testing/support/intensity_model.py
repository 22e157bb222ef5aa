"""A test network whose logits are a fixed function of intensity, to test geometry apart from weights.

Organ k is "present" wherever the centre slice of the 2.5D stack lies in the organ's HU band, so a
synthetic volume painted with those intensities must come back exactly where it was painted.
It honours the segment() model contract: ``forward(x[B,3,H,W], z_norm[B] | None) -> SegMateOutput``
and a ``.metadata`` dict like a loaded SegMate model.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from segmatecore.models.checkpoint import default_metadata
from segmatecore.models import SegMateOutput
from segmatecore.data.organs import PAPER_ORGANS

HEAD_NECK_ORGANS = ("spinal_cord", "esophagus", "brainstem", "left_parotid", "right_parotid", "larynx", "mandible")


def bands_for(keys: Sequence[str]) -> dict[str, tuple[float, float]]:
    """Channel i's band: 100 HU wide, 20 HU apart, inside the default window [-1000, 400]; the
    centre is the value to paint for a voxel that must come back as that organ."""
    return {key: (-900.0 + 120.0 * i, -800.0 + 120.0 * i) for i, key in enumerate(keys)}


DEFAULT_BANDS = bands_for(PAPER_ORGANS)
HEAD_NECK_BANDS = bands_for(HEAD_NECK_ORGANS)


def band_centre(key: str, bands: Mapping[str, tuple[float, float]] = DEFAULT_BANDS) -> float:
    lo, hi = bands[key]
    return (lo + hi) / 2.0


class IntensityModel(nn.Module):
    """logit_k = sharpness * (half width - |HU - band centre|) on the centre slice; presence logit = its max."""

    def __init__(self, organs: Mapping[str, tuple[float, float]] | list[str] | None = None,
                 input_size: tuple[int, int] | int = (64, 64), sharpness: float = 0.2,
                 organ_set: Sequence[str] = PAPER_ORGANS):
        """``organ_set``: the model's organs in channel order; ``organs``: those it was trained on
        (with their bands; default all, each in its channel's band)."""
        super().__init__()
        keys = list(organ_set)
        if organs is None:
            organs = bands_for(keys)
        if not isinstance(organs, Mapping):
            organs = {k: bands_for(keys)[k] for k in organs}
        size = [int(input_size), int(input_size)] if isinstance(input_size, int) else [int(s) for s in input_size]
        centre = torch.full((len(keys),), 1e6)
        half = torch.zeros(len(keys))
        for key, (lo, hi) in organs.items():
            centre[keys.index(key)] = (lo + hi) / 2.0
            half[keys.index(key)] = (hi - lo) / 2.0
        self.register_buffer("centre", centre)
        self.register_buffer("half_width", half)
        self.sharpness = sharpness
        self.metadata = default_metadata("fastvit_t12", organs=keys, trained_organs=[k for k in keys if k in organs],
                                         provenance={"source": "Testing/support/intensity_model.py", "id": "intensity-test"})
        self.metadata["backbone"] = "intensity-test"
        self.metadata["preprocessing"]["input_size"] = size
        self.z_seen: list[torch.Tensor | None] = []
        self.batches_seen: list[int] = []

    def hounsfield(self, x: torch.Tensor) -> torch.Tensor:
        """Undo the metadata's window and normalisation (exact inside the window)."""
        pre = self.metadata["preprocessing"]
        lo, hi = pre["hu_window"]
        return (x * pre["normalize"]["std"] + pre["normalize"]["mean"]) * (hi - lo) + lo

    def forward(self, x: torch.Tensor, z_norm: torch.Tensor | None = None) -> SegMateOutput:
        self.z_seen.append(None if z_norm is None else z_norm.detach().cpu().clone())
        self.batches_seen.append(int(x.shape[0]))
        hu = self.hounsfield(x[:, 1:2].float())
        logits = self.sharpness * (self.half_width[None, :, None, None] - (hu - self.centre[None, :, None, None]).abs())
        presence = logits.amax(dim=(2, 3))
        return SegMateOutput(logits, torch.zeros_like(logits), presence, ())


def organ_blocks_ct(shape: tuple[int, int, int]) -> np.ndarray:
    """[k, j, i] int16: air, an elliptic 50 HU body, and a block at each paper organ's band centre,
    each over a different stretch of slices, so the network finds every organ somewhere."""
    slices, rows, cols = shape
    ct = np.full(shape, -1000, dtype=np.int16)
    y, x = np.ogrid[:rows, :cols]
    body = ((y - rows / 2) / (0.4 * rows)) ** 2 + ((x - cols / 2) / (0.45 * cols)) ** 2 <= 1
    ct[:, body] = 50  # between two test-network bands: no organ
    for n, key in enumerate(PAPER_ORGANS):  # 9 blocks in a 3 x 3 grid
        r, c = divmod(n, 3)
        z0 = int(slices * 0.05 * (n + 1))
        ct[z0:z0 + slices // 3, rows // 4 + r * rows // 6: rows // 4 + r * rows // 6 + rows // 8,
           cols // 4 + c * cols // 6: cols // 4 + c * cols // 6 + cols // 8] = int(band_centre(key))
    return ct
