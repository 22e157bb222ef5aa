"""Per-organ mask thresholds and z smoothing fitted on validation cases, stored in the model's metadata.

A network trained with Dice and cross-entropy on coarse, partial labels need not be best cut at
p = 0.5: the demonstration model drew the spinal cord about 1.4 times as wide as the clinical
contours (precision 0.63, recall 0.86). Calibration runs every validation case through
the predictor exactly as ``segmate predict`` does (label-free z pass, presence gate)
and, for each organ the cases annotate, counts the overlap with the reference at every threshold
of a grid, after smoothing the probabilities along z by each sigma of a second grid
(:mod:`segmatecore.inference.zsmoothing`; a 2.5D network's thin organs flicker from slice to slice). The
pair with the best mean per-case Dice wins. Only a window of slices exists at a time: each batch
of probabilities becomes counts.

Each organ is swept with the other organs at 0.5 and the same smoothing (their masks compete for a
voxel the same way as in :func:`segmatecore.inference.postprocess.labels_from_probabilities`). The counts are taken before the
component and hole clean-up, which the tubular organs (cord, oesophagus) do not get anyway.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import SimpleITK as sitk
import torch

from segmatecore.data.geometry import canonical_image
from segmatecore.data.prepared import load_cases
from segmatecore.inference.labels import ProbabilitiesOnGrid
from segmatecore.inference.postprocess import THRESHOLD
from segmatecore.inference.predictor import SegMatePredictor
from segmatecore.inference.zsmoothing import ZSmoother
from segmatecore.runtime.precision import AGREEMENT_DICE

log = logging.getLogger(__name__)

DEFAULT_GRID = tuple(round(0.05 * k, 2) for k in range(2, 20))  # 0.10 ... 0.95
# An organ seen in fewer validation cases keeps 0.5: a threshold fitted on one or two patients
# would describe those patients, not the model.
MIN_CASES = 3
# Sigmas (mm) of the z smoothing tried with every threshold; 0 = none.
DEFAULT_SMOOTHING_MM = (0.0, 2.0, 4.0, 6.0, 8.0)


class OverlapCounts:
    """Per organ and threshold: intersection, predicted and reference voxels of one case."""

    def __init__(self, truth: np.ndarray, keys: list[str], grid: Sequence[float]):
        self.truth = truth  # bool [len(keys), nx, ny, nz], canonical
        self.keys = keys
        self.grid = torch.tensor(grid, dtype=torch.float32)
        shape = (len(keys), len(grid))
        self.intersection = np.zeros(shape, dtype=np.int64)
        self.predicted = np.zeros(shape, dtype=np.int64)

    def __call__(self, t: np.ndarray, probabilities: torch.Tensor) -> None:
        """the main pass's probabilities: [B, C, nx, ny] for slices ``t``."""
        p = probabilities.float().cpu()
        at_default = torch.where(p > THRESHOLD, p, torch.zeros_like(p))
        truth = torch.from_numpy(np.ascontiguousarray(np.moveaxis(self.truth[:, :, :, t], -1, 0)))  # [B, C, nx, ny]
        for c in range(p.shape[1]):
            others = torch.cat([at_default[:, :c], at_default[:, c + 1:]], dim=1)
            rival = others.max(dim=1).values if others.shape[1] else torch.zeros_like(p[:, c])
            wins = p[:, c] >= rival
            values = p[:, c][wins]
            reference = truth[:, c][wins]
            above = values[None, :] > self.grid[:, None]  # [G, n]
            self.predicted[c] += above.sum(dim=1).numpy()
            self.intersection[c] += (above & reference[None, :]).sum(dim=1).numpy()

    def dice(self) -> np.ndarray:
        """[organs, grid] Dice of this case."""
        reference = self.truth.reshape(len(self.keys), -1).sum(axis=1)[:, None]
        total = self.predicted + reference
        return np.where(total > 0, 2.0 * self.intersection / np.maximum(total, 1), 1.0)


class CaseSweep:
    """the main pass's probabilities for one case: overlap counts at every (z smoothing, threshold)."""

    def __init__(self, truth: np.ndarray, keys: list[str], grid: Sequence[float], smoothing_mm: Sequence[float],
                 slice_spacing_mm: float):
        self.counts = [OverlapCounts(truth, keys, grid) for _ in smoothing_mm]
        self.smoothers = [ZSmoother([mm / slice_spacing_mm] * len(keys), counts)
                          for mm, counts in zip(smoothing_mm, self.counts)]

    def __call__(self, t: np.ndarray, probabilities: torch.Tensor) -> None:
        for smoother in self.smoothers:
            smoother(t, probabilities)

    def dice(self) -> np.ndarray:
        """[organs, smoothing, grid] Dice of this case."""
        for smoother in self.smoothers:
            smoother.finish()
        return np.stack([counts.dice() for counts in self.counts], axis=1)


def calibrate_masks(model: torch.nn.Module, data_dirs: Sequence[str | Path], split: str = "val",
                    grid: Sequence[float] = DEFAULT_GRID, smoothing_mm: Sequence[float] = DEFAULT_SMOOTHING_MM,
                    min_cases: int = MIN_CASES, device: str = "cpu") -> dict[str, dict[str, Any]]:
    """Per trained organ annotated in ``split``: the best (z smoothing, threshold) pair and its Dice.

    Returns {organ: {"threshold", "z_smoothing_mm", "cases", "calibrated", "dice_at_threshold",
    "dice_at_0.5", "dice_by_threshold", "dice_by_smoothing"}}. ``dice_at_0.5`` is the uncalibrated
    cut (no smoothing, 0.5); ``calibrated`` is False (no smoothing, 0.5) for organs seen in fewer than
    ``min_cases`` cases. Of equally good pairs the least smoothing, then the threshold nearest 0.5,
    wins: a flat curve is no reason to move.
    """

    if THRESHOLD not in grid:
        grid = sorted({*grid, THRESHOLD})
    smoothing_mm = sorted({0.0, *(float(s) for s in smoothing_mm)})
    predictor = SegMatePredictor(model, device=device)  # prepared once, not per case
    meta = predictor.metadata
    trained = list(meta.get("trained_organs") or meta["organs"])
    per_organ: dict[str, list[np.ndarray]] = {}
    for case in load_cases(data_dirs, split):
        keys = [k for k in meta["organs"] if k in trained and k in case.record["annotated"]]
        if not keys:
            continue
        truth = case.masks(keys)
        # The sink sees the probabilities before the model's own smoothing and thresholds.
        sweep = CaseSweep(truth, keys, grid, smoothing_mm, float(case.record["spacing"][2]))
        image = canonical_image(case.image, case.record["spacing"])
        predictor.stream(image, ProbabilitiesOnGrid(sweep, image.GetSize()[:2]), organs=keys)
        for key, table in zip(keys, sweep.dice()):
            per_organ.setdefault(key, []).append(table)
        log.info("calibration: %s (%s)", case.id, ", ".join(keys))
    if not per_organ:
        raise ValueError(f"no case of split {split!r} annotates an organ the model was trained on.")
    grid_array = np.asarray(grid)
    default = list(grid).index(THRESHOLD)
    result = {}
    for key in meta["organs"]:
        if key not in per_organ:
            continue
        mean = np.mean(per_organ[key], axis=0)  # [smoothing, grid]
        tied = np.argwhere(mean >= mean.max() - 1e-9)
        s, g = min(tied.tolist(), key=lambda sg: (sg[0], abs(grid_array[sg[1]] - THRESHOLD)))
        calibrated = len(per_organ[key]) >= min_cases
        if not calibrated:
            s, g = 0, default
        result[key] = {"threshold": float(grid[g]), "z_smoothing_mm": float(smoothing_mm[s]),
                       "cases": len(per_organ[key]), "calibrated": calibrated,
                       "dice_at_threshold": round(float(mean[s, g]), 4),
                       "dice_at_0.5": round(float(mean[0, default]), 4),
                       "dice_by_threshold": {f"{v:.2f}": round(float(d), 4) for v, d in zip(grid, mean[s])},
                       "dice_by_smoothing": {f"{mm:g}": round(float(row.max()), 4)
                                             for mm, row in zip(smoothing_mm, mean)}}
    return result


def measure_precision_agreement(model: torch.nn.Module | str | Path, data_dirs: Sequence[str | Path],
                                split: str = "val", precision: str = "bf16", device: str = "cpu") -> dict[str, Any]:
    """How far the masks in ``precision`` are from fp32's: per organ, the lowest Dice between the two
    over the cases of ``split``, segmented as ``segmate predict`` does with the model's own thresholds.

    The result is what ``precision="auto"`` reads from the model's metadata
    (:mod:`segmatecore.runtime.precision`): it runs ``precision`` only where ``min_dice`` reaches
    :data:`~segmatecore.runtime.precision.AGREEMENT_DICE`.
    """
    reference = SegMatePredictor(model, device=device, precision="fp32")
    lower = SegMatePredictor(model, device=device, precision=precision)
    per_organ: dict[str, list[float]] = {}
    cases = load_cases(data_dirs, split)
    for case in cases:
        image = canonical_image(case.image, case.record["spacing"])
        a, b = reference.segment(image), lower.segment(image)
        ours, theirs = sitk.GetArrayViewFromImage(a.labelmap), sitk.GetArrayViewFromImage(b.labelmap)
        for key, label in a.labels.items():
            x, y = ours == label, theirs == label
            total = int(x.sum()) + int(y.sum())
            per_organ.setdefault(key, []).append(1.0 if total == 0 else 2.0 * int((x & y).sum()) / total)
        log.info("precision agreement: %s", case.id)
    if not per_organ:
        raise ValueError(f"no case in split {split!r} to measure the agreement of {precision} with fp32 on.")
    lowest = min(min(v) for v in per_organ.values())
    return {"min_dice": round(lowest, 4), "agrees": lowest >= AGREEMENT_DICE, "threshold": AGREEMENT_DICE,
            "organs": {k: round(min(v), 4) for k, v in per_organ.items()}, "cases": len(cases), "split": split}
