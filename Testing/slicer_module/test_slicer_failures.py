"""Failure paths of the Slicer logic: bad input, a refused write.

Each leaves the output segmentation node and the scene exactly as they were and raises an error
whose message the panel shows. Real MRML scene from slicer-core; the intensity test network.
Nodes deleted while the worker process runs: Testing/slicer_module/test_slicer_worker.py.
"""
from __future__ import annotations

import numpy as np
import pytest
import slicer
import vtk

from segmatecore.data.validation import InputError
from SegMateLib.logic import SegMateLogic

ORGANS = ["liver", "aorta"]
IJK_TO_RAS = [[-0.8, 0, 0, 10.0], [0, -0.8, 0, 20.0], [0, 0, 2.5, -30.0], [0, 0, 0, 1]]


@pytest.fixture(scope="module")
def model(intensity_model):
    return intensity_model(organs=ORGANS, input_size=32)


@pytest.fixture(scope="module")
def ct_array(band_centre):
    """``ct_array(dtype=np.int16)``: a small CT with a liver and an aorta."""
    def make(dtype=np.int16) -> np.ndarray:
        array = np.full((8, 24, 28), -1000, dtype=dtype)
        array[2:6, 5:15, 4:14] = band_centre("liver")
        array[1:7, 16:20, 18:22] = band_centre("aorta")
        array[0, 0, 0] = 300
        return array
    return make


@pytest.fixture
def segmented(scene, model, ct_array):
    """A CT volume and a segmentation node already holding SegMate's organs and a user segment."""
    volume = slicer.util.addVolumeFromArray(ct_array(), np.array(IJK_TO_RAS), name="CT")
    run = SegMateLogic().process(volume, None, organs=ORGANS, model=model, device="cpu")
    node = run.segmentationNode
    node.GetSegmentation().AddEmptySegment("", "My structure", [0.2, 0.8, 0.3])
    return volume, node


@pytest.mark.parametrize("bad, message", [(np.nan, "NaN or infinite"), (np.inf, "NaN or infinite")])
def test_bad_input_is_refused_and_the_scene_is_unchanged(scene, model, segmented, bad, message, scene_snapshot):
    volume, node = segmented
    array = slicer.util.arrayFromVolume(volume)
    float_volume = slicer.util.addVolumeFromArray(array.astype(np.float32), np.array(IJK_TO_RAS), name="float CT")
    slicer.util.arrayFromVolume(float_volume)[3, 4, 5] = bad
    slicer.util.arrayFromVolumeModified(float_volume)
    before = scene_snapshot(scene)
    with pytest.raises(InputError, match=message):
        SegMateLogic().process(float_volume, node, organs=ORGANS, model=model, device="cpu")
    with pytest.raises(InputError, match=message):
        SegMateLogic().process(float_volume, None, organs=ORGANS, model=model, device="cpu")
    assert scene_snapshot(scene) == before


@pytest.mark.parametrize("with_display", [True, False], ids=["displayed", "never-displayed"])
def test_refused_write_leaves_the_node_and_scene_unchanged(scene, model, segmented, with_display, scene_snapshot):
    """An output under another transform than the CT cannot receive the organs: refused, nothing touched."""
    volume, node = segmented
    if not with_display:  # a segmentation node made by a script, never shown
        node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Script output")
        node.GetSegmentation().AddEmptySegment("", "Planned", [0.9, 0.1, 0.1])
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "Registration")
    matrix = vtk.vtkMatrix4x4()
    matrix.SetElement(0, 3, 12.0)
    transform.SetMatrixTransformToParent(matrix)
    node.SetAndObserveTransformNodeID(transform.GetID())
    before = scene_snapshot(scene)
    with pytest.raises(ValueError, match="is under a different transform than CT"):
        SegMateLogic().process(volume, node, organs=ORGANS, model=model, device="cpu")
    assert scene_snapshot(scene) == before
