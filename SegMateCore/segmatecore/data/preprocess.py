"""Intensity windowing, in-plane resizing and 2.5D stacks, shared by inference and training.

Everything reads its parameters from the model metadata's ``preprocessing`` block, so a model is
always fed the way it was trained.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Preprocessing:
    """The preprocessing a model was trained with (its metadata's ``preprocessing`` block)."""

    hu_window: tuple[float, float] = (-1000.0, 400.0)
    mean: float = 0.5
    std: float = 0.5
    input_size: tuple[int, int] = (512, 512)

    @classmethod
    def from_metadata(cls, meta: dict[str, Any]) -> "Preprocessing":
        pre = meta["preprocessing"] if "preprocessing" in meta else meta
        return cls(hu_window=tuple(float(v) for v in pre["hu_window"]),  # type: ignore[arg-type]
                   mean=float(pre["normalize"]["mean"]), std=float(pre["normalize"]["std"]),
                   input_size=tuple(int(v) for v in pre["input_size"]))  # type: ignore[arg-type]

    def to_metadata(self) -> dict[str, Any]:
        return {"hu_window": list(self.hu_window), "normalize": {"mean": self.mean, "std": self.std},
                "input_size": list(self.input_size)}


def normalize_hu(hu: np.ndarray | torch.Tensor, pre: Preprocessing) -> np.ndarray | torch.Tensor:
    """Clip to the HU window, scale to [0, 1], then (x - mean) / std. Returns float32."""
    lo, hi = pre.hu_window
    if isinstance(hu, torch.Tensor):
        x = hu.to(torch.float32).clamp(lo, hi)
    else:
        x = np.clip(np.asarray(hu, dtype=np.float32), lo, hi)
    return ((x - lo) / (hi - lo) - pre.mean) / pre.std


def context_indices(t: int | Sequence[int] | np.ndarray, depth: int) -> np.ndarray:
    """Slice indices (t-1, t, t+1) for each t, replicating the first and last slice at the ends."""
    t = np.atleast_1d(np.asarray(t, dtype=np.int64))
    return np.clip(t[:, None] + np.array([-1, 0, 1]), 0, depth - 1)


def stack_25d(volume: np.ndarray, t: int | Sequence[int] | np.ndarray) -> np.ndarray:
    """[B, 3, X, Y] stacks of adjacent axial slices from a canonical [X, Y, Z] volume."""
    idx = context_indices(t, volume.shape[2])
    return np.ascontiguousarray(np.moveaxis(volume[:, :, idx], (2, 3), (0, 1)))


def resize_slices(x: torch.Tensor, size: Sequence[int], mode: str = "bilinear") -> torch.Tensor:
    """Resize [B, C, H, W] slices in-plane; a no-op when already at ``size``."""
    size = tuple(int(s) for s in size)
    if tuple(x.shape[-2:]) == size:
        return x
    if mode == "nearest":
        return F.interpolate(x, size=size, mode="nearest-exact")
    return F.interpolate(x, size=size, mode=mode, align_corners=False)
