"""Per-organ mask thresholds fitted on validation cases, stored in the model's metadata.

A network trained with Dice and cross-entropy on coarse, partial labels need not be best cut at
p = 0.5: the demonstration model drew the spinal cord about 1.4 times as wide as the clinical
contours (precision 0.63, recall 0.86). Calibration runs every validation case through
:func:`segmatecore.segment` exactly as ``segmate predict`` does (label-free z pass, presence gate)
and, for each organ the cases annotate, counts the overlap with the reference at every threshold
of a grid; the threshold with the best mean per-case Dice wins. Only one batch of probabilities
exists at a time: the sink turns each batch into counts.

Each organ is swept with the other organs at 0.5 (their masks compete for a voxel the same way as
in :func:`segmatecore.postprocess.labels_from_probabilities`). The counts are taken before the
component and hole clean-up, which the tubular organs (cord, oesophagus) do not get anyway.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..organs import organ_keys
from ..postprocess import THRESHOLD

log = logging.getLogger(__name__)

DEFAULT_GRID = tuple(round(0.05 * k, 2) for k in range(2, 20))  # 0.10 ... 0.95
# An organ seen in fewer validation cases keeps 0.5: a threshold fitted on one or two patients
# would describe those patients, not the model.
MIN_CASES = 3


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
        """segment()'s probability sink: [B, C, nx, ny] for slices ``t``."""
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


def calibrate_thresholds(model: torch.nn.Module, data_dirs: Sequence[str | Path], split: str = "val",
                         grid: Sequence[float] = DEFAULT_GRID, min_cases: int = MIN_CASES,
                         device: str = "cpu") -> dict[str, dict[str, Any]]:
    """Per trained organ annotated in ``split``: the best threshold and the Dice there and at 0.5.

    Returns {organ: {"threshold", "cases", "dice_at_threshold", "dice_at_0.5", "calibrated"}};
    ``calibrated`` is False (threshold 0.5) for organs seen in fewer than ``min_cases`` cases.
    """
    from .. import segment
    from ..evaluate import canonical_image
    from ..inference import ready_for_inference, resolve_device
    from .dataset import load_cases
    from .prepare import decode_labels

    if THRESHOLD not in grid:
        grid = sorted({*grid, THRESHOLD})
    meta = model.metadata
    model = ready_for_inference(model, resolve_device(device), "auto", owned=False)  # once, not per case
    trained = list(meta.get("trained_organs") or meta["organs"])
    per_organ: dict[str, list[np.ndarray]] = {}
    for case in load_cases(data_dirs, split):
        keys = [k for k in organ_keys() if k in trained and k in case.record["annotated"]]
        if not keys:
            continue
        truth = decode_labels(np.asarray(case.labels))[[organ_keys().index(k) for k in keys]]
        counts = OverlapCounts(truth, keys, grid)  # sees the probabilities before any threshold is applied
        segment(canonical_image(case.image, case.record["spacing"]), model=model, organs=keys, device=device,
                probability_sink=counts)
        for key, row in zip(keys, counts.dice()):
            per_organ.setdefault(key, []).append(row)
        log.info("calibration: %s (%s)", case.id, ", ".join(keys))
    if not per_organ:
        raise ValueError(f"no case of split {split!r} annotates an organ the model was trained on.")
    default = list(grid).index(THRESHOLD)
    result = {}
    for key in organ_keys():
        if key not in per_organ:
            continue
        mean = np.mean(per_organ[key], axis=0)
        # Of equally good thresholds, the one nearest 0.5: a flat curve is no reason to move.
        tied = np.flatnonzero(mean >= mean.max() - 1e-9)
        best = int(tied[np.argmin(np.abs(np.asarray(grid)[tied] - THRESHOLD))])
        calibrated = len(per_organ[key]) >= min_cases
        chosen = best if calibrated else default
        result[key] = {"threshold": float(grid[chosen]), "cases": len(per_organ[key]), "calibrated": calibrated,
                       "dice_at_threshold": round(float(mean[chosen]), 4),
                       "dice_at_0.5": round(float(mean[default]), 4),
                       "dice_by_threshold": {f"{g:.2f}": round(float(d), 4) for g, d in zip(grid, mean)}}
    return result
