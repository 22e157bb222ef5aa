"""Post-processing keeps the largest piece of an organ and nothing else of it, and fills its enclosed holes."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

import pytest

import torch

from segmatecore.inference.postprocess import (MARGIN, _largest_component, clean_organs, fill_holes, labels_from_probabilities,
                                     labels_on_grid, labels_on_grid_from_logits)
from segmatecore.data.preprocess import resize_slices


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


def test_largest_component_counts_pieces_across_slabs_of_a_full_size_volume():
    """Component sizes are counted slab by slab at 512 x 512: the piece that wins must be the one
    that is largest over the whole volume, even when it starts in the last slab and smaller pieces
    are larger within a single slab."""
    array = np.zeros((40, 512, 512), dtype=np.uint8)
    array[0:8, 0:100, 0:100] = 1        # 80 000 voxels, all in the first slab
    array[9:40, 200:260, 200:260] = 1   # 111 600 voxels over four slabs, labelled after the first
    array[32:40, 400:470, 0:70] = 1     # 39 200 voxels, all in the last slab: more than the winner there
    array[::3, 500, ::7] = 1            # isolated specks in every slab
    result = sitk.GetArrayFromImage(_largest_component(sitk.GetImageFromArray(array)))
    assert result.sum() == 31 * 60 * 60
    assert result[20, 230, 230] == 1 and result[4, 50, 50] == 0 and result[35, 430, 30] == 0
    empty = sitk.GetArrayFromImage(_largest_component(sitk.GetImageFromArray(np.zeros((3, 8, 8), np.uint8))))
    assert empty.dtype == np.uint8 and not empty.any()


def test_fill_holes_keeps_the_mask_geometry():
    array = np.ones((6, 9, 9), dtype=np.uint8)
    array[2:4, 3:6, 3:6] = 0
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.8, 0.7, 2.5))
    image.SetOrigin((-10.0, 20.0, 5.0))
    image.SetDirection((0, 1, 0, -1, 0, 0, 0, 0, -1))
    filled = fill_holes(image)
    assert sitk.GetArrayFromImage(filled).all()
    assert (filled.GetSpacing(), filled.GetOrigin(), filled.GetDirection()) == \
        (image.GetSpacing(), image.GetOrigin(), image.GetDirection())
    assert filled.GetPixelID() == image.GetPixelID()


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
    clean_organs(labels, {"liver": (True, True), "right_kidney": (True, True)}, {"liver": 5, "right_kidney": 7})
    assert (labels[10:13, 10:13, 8:11] == 5).all()
    assert (labels[15:18, 15:18, 8:11] == 7).all()
    assert (labels[0:3, 0:3, 0:3] == 0).all()


@pytest.fixture
def resized(monkeypatch) -> list[int]:
    """The channel count of every in-plane resize post-processing makes, in order."""
    from segmatecore.inference import postprocess

    calls: list[int] = []

    def counting_resize(x, *args, **kwargs):
        calls.append(x.shape[1])
        return resize_slices(x, *args, **kwargs)

    monkeypatch.setattr(postprocess, "resize_slices", counting_resize)
    return calls


@pytest.mark.parametrize("size", [(512, 512), (97, 130), (40, 48)])
def test_labels_on_the_ct_grid_skip_organs_below_threshold_without_changing_a_voxel(size, resized):
    """segment() resizes only the organs that can pass their threshold somewhere in the batch."""
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


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("size", [(64, 64), (96, 80)])
def test_labels_from_logits_are_the_labels_of_the_gated_probabilities(resized, dtype, size):
    """segment() draws labels straight from the network's logits: the same labels as thresholding
    sigmoid(logits) x gate (per-organ thresholds, most probable organ wins, closed gate never passes),
    on the network's grid and on a different CT grid; a channel that never reaches its threshold is
    never interpolated."""
    torch.manual_seed(2)
    logits = (torch.randn(4, 6, 64, 64) * 3).to(dtype)
    logits[:, 4] = -8.0                       # never above its threshold
    thresholds = torch.tensor([0.5, 0.3, 0.7, 0.9, 0.5, 0.2])
    keep = torch.ones(4, 6)
    keep[1, 2] = 0                            # the gate closes organ 3 on slice 1 ...
    keep[:, 5] = 0                            # ... and organ 6 everywhere
    labels = torch.arange(1, 7, dtype=torch.uint8) * 3
    expected = labels_on_grid(torch.sigmoid(logits.float()) * keep[:, :, None, None], size, labels, thresholds)
    resized.clear()
    got = labels_on_grid_from_logits(logits, size, labels, thresholds, keep)
    assert got.dtype == torch.uint8 and got.shape == (4, *size)
    assert torch.equal(got, expected)
    assert set(got.unique().tolist()) == {0, 3, 6, 9, 12}
    assert not (got[1] == 9).any() and (got[0] == 9).any()
    assert resized == ([] if size == (64, 64) else [4])
    assert not labels_on_grid_from_logits(logits, size, labels, thresholds, torch.zeros(4, 6)).any()


def test_labels_from_logits_where_float32_probabilities_tie_or_thresholds_sit_near_one():
    """Edge cases of drawing labels from logits: float32 rounds the sigmoid of 20 and of 25 to 1.0,
    so the probabilities tie and the larger logit decides; a threshold of 0.99999 must not make a
    channel that passes after interpolation look absent; a closed gate wins even over a tiny threshold."""
    labels = torch.tensor([1, 2], dtype=torch.uint8)
    saturated = torch.tensor([20.0, 25.0]).reshape(1, 2, 1, 1)
    assert labels_on_grid_from_logits(saturated, (1, 1), labels, torch.tensor([0.5, 0.5])).item() == 2

    near_one = torch.full((1, 1, 3, 3), 11.508)    # below the threshold's logit (11.513), but float32
    near_one[0, 0, 0, 0] = -20.0                   # rounds its sigmoid to the threshold itself
    thresholds = torch.tensor([0.99999])
    expected = labels_on_grid(torch.sigmoid(near_one), (7, 7), labels[:1], thresholds)
    assert expected.sum() == 3                     # interpolation rounds up past it on three pixels
    assert torch.equal(labels_on_grid_from_logits(near_one, (7, 7), labels[:1], thresholds), expected)

    logits = torch.full((2, 1, 4, 4), 3.0)
    closed = labels_on_grid_from_logits(logits, (4, 4), labels[:1], torch.tensor([1e-7]), torch.tensor([[0.0], [1.0]]))
    assert not closed[0].any() and closed[1].all()
