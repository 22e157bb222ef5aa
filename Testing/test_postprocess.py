"""Post-processing keeps the largest piece of an organ and nothing else of it."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from segmatecore.postprocess import _largest_component


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
