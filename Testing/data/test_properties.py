"""Property tests: random geometries through segment() and the Slicer logic come back exactly where they were.

Each example is a random volume (origin, spacing 0.3-10 mm, any orthonormal direction: axis-aligned
with flips, or oblique, with or without a reflection; 1-64 voxels per axis) with a bright box painted
at the intensity the test network labels as the marker organ (trachea). The labelmap must carry the input's geometry
exactly and the box must come back at the same voxels, i.e. the same physical place, up to the
in-plane resize to the network's input size. Fixed seed, bounded examples: part of ``make test``.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
import vtk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from vtk.util import numpy_support

import segmatecore
from segmatecore.data.geometry import closest_canonical_axes
from segmatecore.data.organs import OrganSet, PAPER_ORGANS

from SegMateLib.logic import SegMateLogic
from SegMateLib.segments import binaryLabelmapName, ensureConverterRules

PAPER = OrganSet(PAPER_ORGANS)  # the organs of a model made with the defaults

INPUT_SIZE = 32
MARKER = "trachea"
LABEL = PAPER.label(MARKER)
# The marker's band is centred on the painted value and half-way to air, so the network's decision
# boundary falls mid-way between a marker voxel and an air voxel: resizing moves edges by rounding only.
MARKER_HU = 0.0
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny tensors (conftest)


@pytest.fixture(scope="module")
def marker_model(intensity_model):
    """An intensity test network that finds only the marker organ, in the band described above."""
    return intensity_model(organs={MARKER: (-500.0, 500.0)}, input_size=INPUT_SIZE)


def examples(n: int) -> settings:
    return settings(max_examples=n, derandomize=True, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ---- random geometries ------------------------------------------------------------------------

@st.composite
def directions(draw) -> np.ndarray:
    """An orthonormal 3x3 matrix: a signed axis permutation (the common case) or any rotation, maybe reflected."""
    if draw(st.booleans()):
        matrix = np.zeros((3, 3))
        for column, (row, sign) in enumerate(zip(draw(st.permutations([0, 1, 2])),
                                                 draw(st.lists(st.sampled_from([-1.0, 1.0]), min_size=3, max_size=3)))):
            matrix[row, column] = sign
        return matrix
    q = np.array(draw(st.lists(st.floats(-1, 1), min_size=4, max_size=4).filter(
        lambda v: np.linalg.norm(v) > 0.1)))
    w, x, y, z = q / np.linalg.norm(q)
    matrix = np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                       [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                       [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])
    if draw(st.booleans()):
        matrix[:, draw(st.integers(0, 2))] *= -1.0
    return matrix


@st.composite
def geometries(draw) -> dict:
    size = draw(st.tuples(*[st.integers(1, 64)] * 3))
    box = []
    for n in size:
        width = draw(st.integers(max(1, math.ceil(0.3 * n)), max(1, math.ceil(0.5 * n))))
        start = draw(st.integers(0, n - width))
        box.append((start, start + width))
    return {"size": size,  # i, j, k
            "spacing": draw(st.tuples(*[st.floats(0.3, 10.0)] * 3)),
            "origin": draw(st.tuples(*[st.floats(-500.0, 500.0)] * 3)),
            "direction": draw(directions()),
            "box": box,  # [start, stop) along i, j, k
            "dtype": draw(st.sampled_from([np.int16, np.float32]))}


def painted(geometry: dict) -> np.ndarray:
    """[k, j, i] array: air with the marker box at the intensity the test network labels as the marker."""
    i, j, k = geometry["size"]
    array = np.full((k, j, i), -1000, dtype=geometry["dtype"])
    (i0, i1), (j0, j1), (k0, k1) = geometry["box"]
    array[k0:k1, j0:j1, i0:i1] = MARKER_HU
    return array


def sitk_image(geometry: dict) -> sitk.Image:
    image = sitk.GetImageFromArray(painted(geometry))
    image.SetSpacing(geometry["spacing"])
    image.SetOrigin(geometry["origin"])
    image.SetDirection(tuple(geometry["direction"].ravel()))
    return image


def tolerance(geometry: dict) -> np.ndarray:
    """Voxels a box edge may move along i, j, k: none between slices, the resize step in-plane."""
    axes, _ = closest_canonical_axes(geometry["direction"])
    tol = np.zeros(3)
    for canonical_axis, image_axis in enumerate(axes):
        n = geometry["size"][image_axis]
        tol[image_axis] = 0.0 if canonical_axis == 2 else math.ceil(n / INPUT_SIZE)
    return tol


def assert_marker_in_place(found_kji: np.ndarray, geometry: dict, to_world) -> None:
    """The labelled voxels lie in the painted box (edges free by the tolerance) and cover its core;
    their centre is the box's centre in world coordinates, within the same tolerance."""
    tol = tolerance(geometry)
    box = np.array(geometry["box"], dtype=float)  # rows i, j, k
    found = np.argwhere(found_kji)[:, ::-1]  # voxel indices as (i, j, k)
    assert len(found), "the marker organ was not found"
    assert np.all(found >= box[:, 0] - tol) and np.all(found < box[:, 1] + tol), "marker voxels outside the box"
    core = [(int(lo + t), int(hi - t)) for (lo, hi), t in zip(box, tol)]
    if all(lo < hi for lo, hi in core):
        (i0, i1), (j0, j1), (k0, k1) = core
        assert found_kji[k0:k1, j0:j1, i0:i1].all(), "the core of the marker box was not labelled"
    centre_in = (box[:, 0] + box[:, 1] - 1) / 2.0
    centre_out = found.mean(axis=0)
    assert np.all(np.abs(centre_out - centre_in) <= tol + 1e-9)
    distance = np.linalg.norm(to_world(centre_out) - to_world(centre_in))
    assert distance <= np.linalg.norm(tol * np.asarray(geometry["spacing"])) + 1e-6


# ---- segment() --------------------------------------------------------------------------------

@examples(200)
@given(geometry=geometries())
def test_segment_keeps_geometry_and_puts_the_marker_back_in_place(geometry, marker_model):
    image = sitk_image(geometry)
    result = segmatecore.segment(image, model=marker_model, organs=[MARKER], device="cpu", batch_size=64)
    labels = result.labelmap
    assert labels.GetSize() == image.GetSize()
    assert labels.GetSpacing() == image.GetSpacing()
    assert labels.GetOrigin() == image.GetOrigin()
    assert labels.GetDirection() == image.GetDirection()
    assert labels.GetPixelID() == sitk.sitkUInt8
    array = sitk.GetArrayViewFromImage(labels)
    assert set(np.unique(array)) <= {0, LABEL}

    def to_world(index_ijk):
        return np.array(labels.TransformContinuousIndexToPhysicalPoint([float(v) for v in index_ijk]))

    assert_marker_in_place(array == LABEL, geometry, to_world)


# ---- the Slicer logic -------------------------------------------------------------------------

def ijk_to_ras(geometry: dict) -> np.ndarray:
    """A Slicer IJK-to-RAS matrix for the geometry (given in LPS, as ITK and DICOM do)."""
    matrix = np.eye(4)
    matrix[:3, :3] = RAS_TO_LPS @ geometry["direction"] @ np.diag(geometry["spacing"])
    matrix[:3, 3] = RAS_TO_LPS @ np.asarray(geometry["origin"])
    return matrix


def vtk_matrix_array(getter) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    getter(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


@examples(200)
@given(geometry=geometries())
def test_slicer_logic_keeps_geometry_and_puts_the_marker_back_in_place(geometry, marker_model):
    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene
    ensureConverterRules()
    try:
        matrix = ijk_to_ras(geometry)
        volume = slicer.util.addVolumeFromArray(painted(geometry), matrix, name="CT")
        run = SegMateLogic().process(volume, None, organs=[MARKER], model=marker_model, device="cpu", batchSize=64)
        node = run.segmentationNode
        segment = node.GetSegmentation().GetSegment(run.segmentIds[MARKER])
        oriented = segment.GetRepresentation(binaryLabelmapName())
        # the segment's own voxels: its geometry is the volume's, its extent a box inside the volume
        assert np.allclose(vtk_matrix_array(oriented.GetImageToWorldMatrix), matrix, rtol=0, atol=1e-9)
        i0, i1, j0, j1, k0, k1 = oriented.GetExtent()
        size = geometry["size"]
        assert 0 <= i0 and i1 < size[0] and 0 <= j0 and j1 < size[1] and 0 <= k0 and k1 < size[2]
        voxels = numpy_support.vtk_to_numpy(oriented.GetPointData().GetScalars())
        mask = np.zeros(painted(geometry).shape, dtype=bool)
        mask[k0:k1 + 1, j0:j1 + 1, i0:i1 + 1] = voxels.reshape(k1 - k0 + 1, j1 - j0 + 1, i1 - i0 + 1) == \
            segment.GetLabelValue()

        def to_world(index_ijk):
            return (matrix @ np.append(index_ijk, 1.0))[:3]

        assert_marker_in_place(mask, geometry, to_world)
        # exported by Slicer into the volume's geometry: the same grid and the same voxels
        labelmap_node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
        ids = vtk.vtkStringArray()
        ids.InsertNextValue(run.segmentIds[MARKER])
        assert slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(node, ids, labelmap_node, volume)
        assert np.allclose(vtk_matrix_array(labelmap_node.GetIJKToRASMatrix), matrix, rtol=0, atol=1e-9)
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(labelmap_node) > 0, mask)
    finally:
        scene.Clear(1)
