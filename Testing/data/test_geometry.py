"""Exact geometry through segment(): the labelmap lands on the input's grid, and left stays left.

The network is the intensity test network (the ``intensity_model`` fixture): organ k wherever the
voxel's HU lies in the organ's band, so every expectation below is exact and independent of
learned weights. Synthetic patients are painted in physical (LPS) space: a body cylinder along
the patient's z axis, a "left kidney" cylinder 10 mm toward the patient's left (LPS +x) and a
"right kidney" 10 mm toward the right.
"""
from __future__ import annotations

import gc
import math

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import given, settings
from hypothesis import strategies as st

from segmatecore import segment
from segmatecore.data.geometry import closest_canonical_axes, from_canonical, to_canonical
from segmatecore.data.organs import OrganSet, PAPER_ORGANS

PAPER = OrganSet(PAPER_ORGANS)  # the organs of a model made with the defaults

BANDS = {"left_kidney": (150.0, 250.0), "right_kidney": (300.0, 380.0)}
LEFT_HU, RIGHT_HU, BODY_HU = 200, 340, 50
IN_PLANE = 32


def rotation(axis, degrees) -> np.ndarray:
    return np.array(sitk.VersorTransform(tuple(float(a) for a in axis), math.radians(degrees)).GetMatrix()).reshape(3, 3)


DIRECTIONS = {
    "LPS axial (DICOM)": np.eye(3),
    "RAS (nibabel-style NIfTI)": np.diag([-1.0, -1.0, 1.0]),
    "slices head to feet": np.diag([1.0, -1.0, -1.0]),
    "coronal, axes permuted and flipped": np.array([[1.0, 0, 0], [0, 0, -1], [0, -1, 0]]),
    "sagittal, axes permuted": np.array([[0.0, 0, 1], [1, 0, 0], [0, -1, 0]]),
    "oblique (20 deg about z, 12 deg about x)": rotation((0, 0, 1), 20) @ rotation((1, 0, 0), 12),
}


def paint_patient(direction: np.ndarray, spacing=(1.5, 1.5, 3.0), slices: int = 6, dtype=np.int16,
                  left_hu: float = LEFT_HU, right_hu: float = RIGHT_HU,
                  in_plane: tuple[int, int] = (IN_PLANE, IN_PLANE)) -> tuple[sitk.Image, np.ndarray, np.ndarray]:
    """An image with the given direction whose canonical in-plane shape is ``in_plane``.

    Returns the image and the [z, y, x] masks where the left and right kidney were painted.
    """
    axes, _ = closest_canonical_axes(direction)
    size = [0, 0, 0]
    size[axes[0]], size[axes[1]], size[axes[2]] = in_plane[0], in_plane[1], slices
    image = sitk.Image(size, sitk.sitkInt16)
    image.SetSpacing(spacing)
    image.SetDirection(direction.ravel().tolist())
    image.SetOrigin((-17.25, 41.5, 102.125))
    k, j, i = np.meshgrid(*(np.arange(n, dtype=float) for n in size[::-1]), indexing="ij")
    index = np.stack([i, j, k], axis=-1)
    affine = direction @ np.diag(spacing)
    points = index @ affine.T + np.asarray(image.GetOrigin())
    centre = np.asarray(image.GetOrigin()) + affine @ ((np.asarray(size) - 1) / 2.0)
    offset = points - centre  # LPS: +x is the patient's left
    body = np.hypot(offset[..., 0], offset[..., 1]) < 20
    left = np.hypot(offset[..., 0] - 10, offset[..., 1]) < 5
    right = np.hypot(offset[..., 0] + 10, offset[..., 1]) < 5
    air = 0 if np.issubdtype(dtype, np.unsignedinteger) else -1000
    array = np.full(body.shape, air, dtype=np.float32)
    array[body] = BODY_HU
    array[left] = left_hu
    array[right] = right_hu
    out = sitk.GetImageFromArray(array.astype(dtype))
    out.CopyInformation(image)
    return out, left, right


@pytest.fixture
def model(intensity_model):
    """``model(input_size=IN_PLANE)``: a fresh intensity test network that finds the two kidneys."""
    return lambda input_size=IN_PLANE: intensity_model(BANDS, input_size=input_size)


def assert_exact_geometry(labelmap: sitk.Image, image: sitk.Image) -> None:
    assert labelmap.GetPixelID() == sitk.sitkUInt8
    assert labelmap.GetSize() == image.GetSize()
    assert labelmap.GetSpacing() == image.GetSpacing()
    assert labelmap.GetOrigin() == image.GetOrigin()
    assert labelmap.GetDirection() == image.GetDirection()


def centroid_x(mask_image: sitk.Image) -> float:
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(mask_image)
    return stats.GetCentroid(1)[0]


CASES = [(name, d, (1.5, 1.5, 3.0), 6, np.int16) for name, d in DIRECTIONS.items()] + [
    ("anisotropic spacing", np.eye(3), (1.2, 1.9, 5.0), 6, np.int16),
    ("one slice", np.eye(3), (1.5, 1.5, 3.0), 1, np.int16),
    ("two slices", np.diag([-1.0, -1.0, 1.0]), (1.5, 1.5, 3.0), 2, np.int16),
    ("uint16", np.eye(3), (1.5, 1.5, 3.0), 4, np.uint16),
    ("float32", np.diag([1.0, -1.0, -1.0]), (1.5, 1.5, 3.0), 4, np.float32),
]


@pytest.mark.parametrize("name, direction, spacing, slices, dtype", CASES, ids=[c[0] for c in CASES])
def test_labelmap_has_the_exact_input_geometry_and_the_painted_organs(name, direction, spacing, slices, dtype, model):
    image, left, right = paint_patient(direction, spacing, slices, dtype)
    result = segment(image, model(), device="cpu", z_norm="volume")
    assert_exact_geometry(result.labelmap, image)
    labels = sitk.GetArrayFromImage(result.labelmap)
    assert np.array_equal(labels == PAPER.label("left_kidney"), left)
    assert np.array_equal(labels == PAPER.label("right_kidney"), right)
    assert set(np.unique(labels)) == {0, PAPER.label("left_kidney"), PAPER.label("right_kidney")}
    voxel_ml = float(np.prod(spacing)) / 1000
    assert result.volumes_ml["left_kidney"] == pytest.approx(left.sum() * voxel_ml)
    # The organ painted on the patient's left comes back on the patient's left (LPS +x).
    assert centroid_x(result.organ_mask("left_kidney")) > centroid_x(result.organ_mask("right_kidney"))
    assert not any(w.startswith("laterality") for w in result.warnings)


@pytest.mark.parametrize("direction", [np.eye(3), DIRECTIONS["coronal, axes permuted and flipped"]],
                         ids=["axial", "coronal"])
def test_resizing_to_the_model_input_and_back_keeps_organs_in_place(direction, model):
    axes, _ = closest_canonical_axes(direction)
    spacing = [0.0, 0.0, 0.0]
    spacing[axes[0]], spacing[axes[1]], spacing[axes[2]] = 1.1, 0.9, 3.0
    image, left, right = paint_patient(direction, tuple(spacing), 5, in_plane=(48, 56))
    result = segment(image, model(input_size=32), device="cpu", z_norm="none")
    assert_exact_geometry(result.labelmap, image)
    labels = sitk.GetArrayFromImage(result.labelmap)
    for key, painted in (("left_kidney", left), ("right_kidney", right)):
        found = labels == PAPER.label(key)
        dice = 2 * np.sum(found & painted) / (found.sum() + painted.sum())
        assert dice > 0.85, (key, dice)
    assert centroid_x(result.organ_mask("left_kidney")) > centroid_x(result.organ_mask("right_kidney"))


def test_a_left_organ_found_on_the_patients_right_is_warned(model):
    image, _, _ = paint_patient(np.diag([-1.0, -1.0, 1.0]), left_hu=RIGHT_HU, right_hu=LEFT_HU)
    result = segment(image, model(), device="cpu", z_norm="none")
    laterality = [w for w in result.warnings if w.startswith("laterality")]
    assert any("left kidney lies on the patient's right of the right kidney" in w for w in laterality)
    alone = segment(image, model(), organs=["left_kidney"], device="cpu", z_norm="none")
    assert any("left kidney lies on the patient's right of the midline" in w for w in alone.warnings)


SIGNED_PERMUTATIONS = st.permutations([0, 1, 2]).flatmap(
    lambda perm: st.tuples(st.just(perm), st.tuples(*(st.sampled_from([-1.0, 1.0]) for _ in range(3)))))


@settings(max_examples=60, deadline=None)
@given(SIGNED_PERMUTATIONS, st.tuples(*(st.integers(1, 5) for _ in range(3))),
       st.tuples(*(st.floats(0.3, 6.0) for _ in range(3))), st.floats(-30, 30))
def test_canonical_round_trip_is_exact_and_points_right_anterior_superior(perm_signs, size, spacing, tilt):
    perm, signs = perm_signs
    direction = np.zeros((3, 3))
    for col, (row, sign) in enumerate(zip(perm, signs)):
        direction[row, col] = sign
    direction = rotation((0, 0, 1), tilt * 0.5) @ direction  # up to 15 degrees oblique
    image = sitk.GetImageFromArray(np.random.default_rng(0).integers(-1000, 1000, size[::-1]).astype(np.int16))
    image.SetSpacing(spacing)
    image.SetDirection(direction.ravel().tolist())
    image.SetOrigin((3.5, -7.25, 11.0))
    canonical, frame = to_canonical(image)
    back = from_canonical(np.array(canonical), frame, image)
    assert np.array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(image))
    assert_exact_geometry(sitk.Cast(back, sitk.sitkUInt8), image)
    # Stepping along canonical axis c moves toward the patient's right (c=0), anterior, superior
    # (LPS: right = -x, anterior = -y, superior = +z).
    expected = np.diag([-1.0, -1.0, 1.0])
    for c in range(3):
        step = np.zeros(3)
        step[frame.axes[c]] = -1.0 if frame.flips[c] else 1.0
        move = direction @ (step * np.asarray(spacing))
        assert np.dot(move, expected[c]) > 0


def test_the_canonical_view_keeps_a_temporary_image_alive():
    """``to_canonical(sitk.ReadImage(path))`` is a view of an image nobody else holds."""
    expected = np.random.default_rng(1).integers(-1000, 1000, (7, 64, 48)).astype(np.int16)
    canonical, _ = to_canonical(sitk.GetImageFromArray(expected))
    gc.collect()
    clutter = [sitk.GetImageFromArray(np.full((7, 64, 48), 5, np.int16)) for _ in range(20)]
    assert np.array_equal(canonical, np.transpose(expected, (2, 1, 0))[::-1, ::-1]) and clutter


# ------------------------------------------------------------------ a head-and-neck organ set
PAROTID_BANDS = {"left_parotid": BANDS["left_kidney"], "right_parotid": BANDS["right_kidney"]}


@pytest.mark.parametrize("name", ["RAS (nibabel-style NIfTI)", "slices head to feet", "oblique (20 deg about z, 12 deg about x)"])
def test_parotids_of_a_head_and_neck_model_stay_on_their_side(name, intensity_model):
    """A seven-organ model (another organ set and channel order than the paper's): the parotid
    painted on the patient's left comes back as the left parotid, with the model's own label values,
    on flipped and oblique volumes."""
    organs = ("spinal_cord", "esophagus", "brainstem", "left_parotid", "right_parotid", "larynx", "mandible")
    net = intensity_model(PAROTID_BANDS, input_size=IN_PLANE, organ_set=organs)
    image, left, right = paint_patient(DIRECTIONS[name])
    result = segment(image, net, device="cpu", z_norm="volume")
    assert_exact_geometry(result.labelmap, image)
    assert result.labels == {"left_parotid": 4, "right_parotid": 5}
    labels = sitk.GetArrayFromImage(result.labelmap)
    assert np.array_equal(labels == 4, left) and np.array_equal(labels == 5, right)
    assert centroid_x(result.organ_mask("left_parotid")) > centroid_x(result.organ_mask("right_parotid"))
    assert not any(w.startswith("laterality") for w in result.warnings)


def test_swapped_parotids_are_warned(intensity_model):
    organs = ("left_parotid", "right_parotid", "mandible")
    net = intensity_model(PAROTID_BANDS, input_size=IN_PLANE, organ_set=organs)
    image, _, _ = paint_patient(np.diag([-1.0, -1.0, 1.0]), left_hu=RIGHT_HU, right_hu=LEFT_HU)
    warnings = segment(image, net, device="cpu", z_norm="volume").warnings
    assert any("left parotid gland lies on the patient's right" in w for w in warnings), warnings
