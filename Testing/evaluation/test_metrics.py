"""Dice, IoU, precision, recall and HD95 against hand-computed values, with anisotropic voxels."""
from __future__ import annotations

import math

import numpy as np
import pytest

from segmatecore.evaluation.metrics import hd95, organ_metrics, overlap_metrics, surface_distances

SPACING = (0.5, 2.0, 3.0)  # mm along canonical x, y, z


def single(shape=(24, 8, 8), *points) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    for p in points:
        mask[p] = True
    return mask


@pytest.mark.parametrize("offset, mm", [((3, 0, 0), 1.5), ((0, 2, 0), 4.0), ((0, 0, 2), 6.0), ((3, 0, 2), math.hypot(1.5, 6.0))])
def test_hd95_of_a_shifted_voxel_uses_the_spacing_of_each_axis(offset, mm):
    a = single((24, 8, 8), (2, 2, 2))
    b = single((24, 8, 8), tuple(2 + o for o in offset))
    assert hd95(a, b, SPACING) == pytest.approx(mm)
    assert hd95(b, a, SPACING) == pytest.approx(mm)


def test_hd95_is_the_95th_percentile_of_pooled_surface_distances():
    """A voxel against a 20-voxel line along x (0.5 mm steps).

    Line -> voxel distances: 0, 0.5, ..., 9.5 mm (20 values); voxel -> line: 0 (1 value).
    Pooled and sorted: 0, 0, 0.5, ..., 9.5; the 95th percentile (linear, index 0.95 * 20 = 19) is 9.0 mm,
    while the Hausdorff distance (maximum) would be 9.5 mm.
    """
    a = single((24, 8, 8), (2, 3, 3))
    b = np.zeros((24, 8, 8), dtype=bool)
    b[2:22, 3, 3] = True
    np.testing.assert_allclose(np.sort(surface_distances(b, a, SPACING)), np.arange(20) * 0.5)
    assert hd95(a, b, SPACING) == pytest.approx(9.0)


def test_hd95_compares_surfaces_not_volumes():
    """Two 5x5x5 cubes, one shifted by one slice (3 mm): every surface voxel is within 3 mm."""
    a = np.zeros((12, 12, 12), dtype=bool)
    a[2:7, 2:7, 2:7] = True
    b = np.roll(a, 1, axis=2)
    value = hd95(a, b, SPACING)
    assert 0 < value <= 3.0 + 1e-9


def test_hd95_of_an_empty_mask_is_undefined():
    assert math.isnan(hd95(single(), single((24, 8, 8), (1, 1, 1)), SPACING))


def test_overlap_metrics_by_hand():
    truth = np.zeros((4, 4, 4), dtype=bool)
    truth[0, 0, :4] = True              # 4 voxels
    pred = np.zeros_like(truth)
    pred[0, 0, 2:4] = pred[1, 1, 1] = True  # 3 voxels, 2 right
    m = overlap_metrics(pred, truth)
    assert m["dice"] == pytest.approx(2 * 2 / 7)
    assert m["iou"] == pytest.approx(2 / 5)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 4)
    empty = overlap_metrics(np.zeros_like(truth), np.zeros_like(truth))
    assert all(math.isnan(v) for v in empty.values())


def test_organ_metrics_reports_volumes_in_ml():
    truth = np.zeros((10, 10, 10), dtype=bool)
    truth[:4, :5, :2] = True  # 40 voxels of 3 mm^3
    m = organ_metrics(truth, truth, SPACING)
    assert m["dice"] == 1.0 and m["hd95_mm"] == 0.0
    assert m["truth_ml"] == pytest.approx(40 * 3.0 / 1000)
