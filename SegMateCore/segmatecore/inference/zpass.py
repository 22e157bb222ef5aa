"""Label-free estimate of the organ extent along z, which sets z_norm for FiLM.

In training, ``z_norm = (t - first) / max(last - first, 1)`` (clipped to [0, 1]) where first/last
are the first and last axial slice holding any organ in the ground truth. At inference there is
no ground truth, so SegMate estimates first/last with a first pass of the network with FiLM off
(``z_norm=None``), reading the per-slice presence head:

1. coarse: run every ``step``-th slice (``step`` = the slice count closest to ``step_mm``);
   a slice is "organ" when any trained organ's presence probability exceeds ``threshold``;
2. robust: gaps of at most ``max_gap_mm`` between "organ" samples are bridged (missed slices
   inside the body), then runs holding fewer "organ" samples than ``min_run_mm`` covers are
   dropped as isolated false positives; the first and last kept sample bound the extent;
3. refine: the slices between the boundary samples and their outer neighbours are run too, and
   the extent grows outward over the contiguous "organ" slices, so the boundary is exact to the
   slice while the pass costs about 1/step of the main pass.

If no organ is found, the caller falls back to z over the whole volume and warns.

The same coarse samples also give each organ its own range (:attr:`ZExtent.organ_ranges`): its
robust run of "present" samples, widened to the neighbouring "absent" samples. segment() uses it as
a presence gate: an organ's mask is kept only inside its range, and an organ found on no sample
is left empty (a liver in a head-and-neck CT). It costs no extra network run.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class ZPassConfig:
    """Parameters of the first pass; the defaults suit slices of 0.5 to 5 mm."""

    step_mm: float = 5.0
    min_run_mm: float = 10.0
    max_gap_mm: float = 10.0
    threshold: float = 0.5


@dataclass(frozen=True)
class ZExtent:
    """First and last canonical slice with any organ (inclusive), and how it was obtained."""

    first: int
    last: int
    num_slices: int
    found: bool
    slices_run: int = 0
    # Per presence column: (first, last) slices the organ may occupy, or None if never present.
    organ_ranges: tuple[tuple[int, int] | None, ...] = ()

    def z_norm(self, t: np.ndarray | int) -> np.ndarray:
        """The training formula: (t - first) / max(last - first, 1), clipped to [0, 1]."""
        t = np.asarray(t, dtype=np.float32)
        return np.clip((t - self.first) / max(self.last - self.first, 1), 0.0, 1.0).astype(np.float32)

    def contains(self, t: np.ndarray) -> np.ndarray:
        return (np.asarray(t) >= self.first) & (np.asarray(t) <= self.last)


def volume_z_norm(t: np.ndarray | int, num_slices: int) -> np.ndarray:
    """z over the whole volume: t / (num_slices - 1), 0 for a single slice."""
    return (np.asarray(t, dtype=np.float32) / max(num_slices - 1, 1)).astype(np.float32)


def runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """Inclusive (start, stop) index pairs of the True runs of a 1D boolean array."""
    padded = np.concatenate([[False], np.asarray(mask, dtype=bool), [False]])
    edges = np.flatnonzero(np.diff(padded.astype(np.int8)))
    return [(int(a), int(b) - 1) for a, b in zip(edges[::2], edges[1::2])]


def robust_extent(positive: np.ndarray, min_run: int, max_gap: int = 0) -> tuple[int, int] | None:
    """First and last index of the runs holding at least ``min_run`` positives, once gaps of at most
    ``max_gap`` negatives between positives are bridged (the best-supported run if none has that many)."""
    positive = np.asarray(positive, dtype=bool)
    bridged = positive.copy()
    found = runs(positive)
    for (_, stop), (start, _) in zip(found, found[1:]):
        if start - stop - 1 <= max_gap:
            bridged[stop + 1:start] = True
    found = runs(bridged)
    if not found:
        return None
    support = [int(positive[a:b + 1].sum()) for a, b in found]
    kept = [r for r, n in zip(found, support) if n >= min_run] or [found[int(np.argmax(support))]]
    return kept[0][0], kept[-1][1]


def estimate_extent(presence: Callable[[np.ndarray], np.ndarray], num_slices: int, slice_mm: float,
                    config: ZPassConfig = ZPassConfig(), extent_columns: list[int] | None = None) -> ZExtent:
    """Estimate the organ extent from ``presence(t_indices) -> [len(t), organs]`` probabilities.

    The extent spans the columns ``extent_columns`` (default: all), the model's extent organs, as
    in its training; every column still gets its own range (``organ_ranges``, the presence gate).

    ``presence`` is the network's first pass (FiLM off) in :mod:`segmatecore.inference.passes`; tests
    pass presence sequences derived from reference masks to check this logic on real anatomy.
    """
    slice_mm = slice_mm if slice_mm > 0 else 1.0
    step = max(1, int(round(config.step_mm / slice_mm)))
    coarse_t = np.unique(np.append(np.arange(0, num_slices, step), num_slices - 1))
    coarse = np.asarray(presence(coarse_t), dtype=np.float32).reshape(len(coarse_t), -1)
    extent_columns = list(range(coarse.shape[1])) if extent_columns is None else list(extent_columns)
    positive = _any_organ(coarse[:, extent_columns], config.threshold)
    run_count = len(coarse_t)
    min_run = min(max(1, math.ceil(config.min_run_mm / (step * slice_mm))), len(coarse_t))
    max_gap = int(config.max_gap_mm // (step * slice_mm))
    extent = robust_extent(positive, min_run, max_gap)
    if extent is None:
        return ZExtent(0, num_slices - 1, num_slices, found=False, slices_run=run_count)
    organ_ranges = tuple(organ_range(coarse[:, j] > config.threshold, coarse_t, min_run, max_gap, num_slices)
                         for j in range(coarse.shape[1]))
    first, last = int(coarse_t[extent[0]]), int(coarse_t[extent[1]])
    below = np.arange(int(coarse_t[extent[0] - 1]) + 1 if extent[0] > 0 else 0, first)
    above = np.arange(last + 1, int(coarse_t[extent[1] + 1]) if extent[1] + 1 < len(coarse_t) else num_slices)
    window = np.concatenate([below, above])
    if window.size:
        dense_presence = np.asarray(presence(window), dtype=np.float32).reshape(len(window), -1)
        dense = dict(zip(window.tolist(), _any_organ(dense_presence[:, extent_columns], config.threshold).tolist()))
        run_count += window.size
        while first - 1 in dense and dense[first - 1]:
            first -= 1
        while last + 1 in dense and dense[last + 1]:
            last += 1
    return ZExtent(first, last, num_slices, found=True, slices_run=run_count, organ_ranges=organ_ranges)


def organ_range(positive: np.ndarray, coarse_t: np.ndarray, min_run: int, max_gap: int,
                num_slices: int) -> tuple[int, int] | None:
    """One organ's robust run of coarse samples, widened up to (not onto) the absent neighbours."""
    found = robust_extent(positive, min_run, max_gap)
    if found is None:
        return None
    a, b = found
    first = int(coarse_t[a - 1]) + 1 if a > 0 else 0
    last = int(coarse_t[b + 1]) - 1 if b + 1 < len(coarse_t) else num_slices - 1
    return first, last


def _any_organ(probabilities: np.ndarray, threshold: float) -> np.ndarray:
    probabilities = np.asarray(probabilities, dtype=np.float32)
    return (probabilities.reshape(len(probabilities), -1) > threshold).any(axis=1)
