"""Overlap and surface-distance metrics of 3D masks, in physical units (SimpleITK distance maps)."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import SimpleITK as sitk


def _as_image(mask: np.ndarray, spacing: Sequence[float]) -> sitk.Image:
    """A canonical [X, Y, Z] bool array as an image with that voxel spacing (x, y, z in mm)."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(mask.astype(np.uint8), (2, 1, 0))))
    image.SetSpacing(tuple(float(s) for s in spacing))
    return image


def surface_distances(a: np.ndarray, b: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Distances (mm) from every surface voxel of ``a`` to the nearest surface voxel of ``b``.

    Surfaces are the masks' border voxels (sitk.LabelContour); distances come from a Maurer
    distance map of ``b``'s surface with the image spacing, so anisotropic voxels count right.
    """
    a_surface = sitk.LabelContour(_as_image(a, spacing), fullyConnected=False)
    b_surface = sitk.LabelContour(_as_image(b, spacing), fullyConnected=False)
    distance = sitk.Abs(sitk.SignedMaurerDistanceMap(b_surface, insideIsPositive=False, squaredDistance=False,
                                                     useImageSpacing=True))
    return sitk.GetArrayViewFromImage(distance)[sitk.GetArrayViewFromImage(a_surface) > 0].astype(np.float64)


def hd95(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float]) -> float:
    """95th percentile of the symmetric surface distances (mm); NaN if either mask is empty."""
    if not pred.any() or not truth.any():
        return math.nan
    both = np.concatenate([surface_distances(pred, truth, spacing), surface_distances(truth, pred, spacing)])
    return float(np.percentile(both, 95))


def overlap_metrics(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Dice, IoU, precision and recall of two bool masks (NaN where undefined, e.g. both empty)."""
    pred, truth = pred.astype(bool), truth.astype(bool)
    tp = float(np.logical_and(pred, truth).sum())
    p, t = float(pred.sum()), float(truth.sum())
    union = p + t - tp
    nan = math.nan
    return {"dice": 2 * tp / (p + t) if p + t else nan, "iou": tp / union if union else nan,
            "precision": tp / p if p else nan, "recall": tp / t if t else nan}


def organ_metrics(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float]) -> dict[str, float]:
    """All metrics of one organ in one case, with the voxel counts behind them."""
    out = overlap_metrics(pred, truth)
    out["hd95_mm"] = hd95(pred.astype(bool), truth.astype(bool), spacing)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    out["pred_ml"] = float(pred.sum()) * voxel_ml
    out["truth_ml"] = float(truth.sum()) * voxel_ml
    out["volume_error_pct"] = (100.0 * (out["pred_ml"] - out["truth_ml"]) / out["truth_ml"]
                               if out["truth_ml"] else math.nan)
    return out
