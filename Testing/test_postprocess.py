"""Post-processing keeps the largest piece of an organ and nothing else of it, and fills its enclosed holes."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

import pytest

import torch

from segmatecore.postprocess import (MARGIN, _largest_component, clean_organs, fill_holes, labels_from_probabilities,
                                     labels_on_grid)
from segmatecore.preprocess import resize_slices


def test_largest_component_keeps_only_the_biggest_piece_among_many_specks():
    rng = np.random.default_rng(0)
    array = (rng.random((20, 40, 40)) > 0.97).astype(np.uint8)  # hundreds of isolated specks
    array[5:12, 10:25, 10:25] = 1                                 # the organ
    result = sitk.GetArrayFromImage(_largest_component(sitk.GetImageFromArray(array)))
    expected = np.zeros_like(array)
    labels = sitk.GetArrayFromImage(sitk.ConnectedComponent(sitk.GetImageFromArray(array)))
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    expected[labels == sizes.argmax()] = 1
    assert result.dtype == np.uint8
    assert np.array_equal(result, expected)
    assert result[8, 15, 15] == 1 and result.sum() < array.sum()


@pytest.mark.parametrize("foreground", [0.5, 0.9])
def test_fill_holes_fills_exactly_what_simpleitk_binary_fillhole_fills(foreground):
    """Speckled masks: many holes, some open to the border only through a corner or an edge."""
    rng = np.random.default_rng(1)
    array = (rng.random((12, 30, 25)) < foreground).astype(np.uint8)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.8, 0.7, 2.5))
    expected = sitk.GetArrayFromImage(sitk.BinaryFillhole(image, fullyConnected=False, foregroundValue=1))
    filled = fill_holes(image)
    assert np.array_equal(sitk.GetArrayFromImage(filled), expected)
    assert expected.sum() > array.sum()  # the case has holes to fill
    assert filled.GetSpacing() == image.GetSpacing()


def test_clean_organs_fills_a_liver_hole_but_never_over_another_organ():
    labels = np.zeros((30, 30, 20), np.uint8)
    labels[5:25, 5:25, 5:15] = 5          # liver (label 5)
    labels[10:13, 10:13, 8:11] = 0        # an enclosed hole: filled
    labels[15:18, 15:18, 8:11] = 7        # a right kidney inside it: kept
    labels[0:3, 0:3, 0:3] = 5             # a stray piece of liver: removed
    clean_organs(labels, {"liver": (True, True), "right_kidney": (True, True)})
    assert (labels[10:13, 10:13, 8:11] == 5).all()
    assert (labels[15:18, 15:18, 8:11] == 7).all()
    assert (labels[0:3, 0:3, 0:3] == 0).all()


@pytest.mark.parametrize("size", [(512, 512), (97, 130), (40, 48)])
def test_labels_on_the_ct_grid_skip_organs_below_threshold_without_changing_a_voxel(size, monkeypatch):
    """segment() resizes only the organs that can pass their threshold somewhere in the batch."""
    from segmatecore import postprocess

    resized = []

    def counting_resize(x, *args, **kwargs):
        resized.append(x.shape[1])
        return resize_slices(x, *args, **kwargs)

    monkeypatch.setattr(postprocess, "resize_slices", counting_resize)
    torch.manual_seed(1)
    probabilities = torch.rand(3, 6, 64, 64) ** 4
    thresholds = torch.tensor([0.5, 0.6, 0.4, 0.7, 0.5, 0.3])
    probabilities[:, 1] *= (0.6 - 1e-3) / probabilities[:, 1].max()      # below its threshold: skipped
    probabilities[:, 3] *= (0.7 - MARGIN / 10) / probabilities[:, 3].max()  # within the margin: resized
    probabilities[:, 5] = 0.0                                           # gated out
    probabilities[1, 2] = 0.0
    labels = torch.arange(1, 7, dtype=torch.uint8) * 2
    expected = labels_from_probabilities(resize_slices(probabilities, size), labels, thresholds)
    assert torch.equal(labels_on_grid(probabilities, size, labels, thresholds), expected)
    assert resized == [4]  # channels 1 (below its threshold) and 5 (gated out) were never resized
    assert set(expected.unique().tolist()) == {0, 2, 6, 10}
    nothing = labels_on_grid(probabilities * 0.1, size, labels, thresholds + 0.5)
    assert nothing.shape == (3, *size) and nothing.dtype == torch.uint8 and not nothing.any()
    assert resized == [4]
