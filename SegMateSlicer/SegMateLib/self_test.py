"""The module's light self-test, run by Slicer's ctest: no package installs, no network, no inference.

A synthetic CT volume and a synthetic SegMate labelmap go through the same writing path as a real
run (``SegMateLogic.writeResult``) into a segmentation that already holds a user's segment. The
check covers what a user relies on after every run: one segment per organ, voxel for voxel where
the labelmap put it, with its standard name and SNOMED-CT terminology, and the user's segment
untouched. It needs only what Slicer ships (numpy, SimpleITK, VTK) and SegMateCore's organ table,
so it runs on a build machine where PyTorch is not installed. ``SegMateTest`` in SegMate.py calls
it; pytest calls it on a slicer-core scene.
"""
from __future__ import annotations

ORGANS = ("spinal_cord", "esophagus", "liver")
LEGEND = {"spinal_cord": 1, "esophagus": 2, "liver": 3}  # the label values of a model with these organs
SHAPE = (6, 20, 24)  # k, j, i


def _syntheticCase():
    """(CT array, labelmap array, IJK-to-RAS matrix): an oblique grid, three organ blocks, one organ absent."""
    import numpy as np

    from segmatecore.data.organs import organ

    ct = np.full(SHAPE, -1000, dtype=np.int16)
    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[1:5, 3:9, 4:10] = LEGEND["spinal_cord"]
    labels[2:6, 10:16, 14:20] = LEGEND["liver"]
    ct[labels > 0] = 40
    ijkToRas = np.array([[-0.8, 0.1, 0.0, 12.0], [-0.1, -0.8, 0.0, -20.0], [0.0, 0.0, 2.5, 35.0], [0, 0, 0, 1.0]])
    return ct, labels, ijkToRas


def _userSegment(segmentationNode, volumeNode, mask) -> str:
    """A segment "drawn by the user": ``mask`` ([k, j, i]) on the volume's grid."""
    import numpy as np
    import slicer
    import vtk
    from vtk.util import numpy_support

    image = slicer.vtkOrientedImageData()
    image.SetExtent(0, mask.shape[2] - 1, 0, mask.shape[1] - 1, 0, mask.shape[0] - 1)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = mask.astype(np.uint8).ravel()
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    image.SetImageToWorldMatrix(matrix)
    segmentId = segmentationNode.GetSegmentation().AddEmptySegment("", "My structure", [0.1, 0.9, 0.2])
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    if not logic.SetBinaryLabelmapToSegment(image, segmentationNode, segmentId, logic.MODE_REPLACE, image.GetExtent()):
        raise AssertionError("the user's segment could not be drawn")
    return segmentId


def segmentVoxels(segmentationNode, segmentId, volumeNode):
    """A segment exported by Slicer's Segmentations logic onto the volume's grid, [k, j, i]."""
    import slicer
    import vtk

    scene = volumeNode.GetScene()
    labelmapNode = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "SegMate self-test export")
    ids = vtk.vtkStringArray()
    ids.InsertNextValue(segmentId)
    try:
        if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(segmentationNode, ids,
                                                                                     labelmapNode, volumeNode):
            raise AssertionError(f"segment {segmentId} could not be exported")
        return slicer.util.arrayFromVolume(labelmapNode).copy()
    finally:
        displayNodes = [labelmapNode.GetNthDisplayNode(i) for i in range(labelmapNode.GetNumberOfDisplayNodes())]
        scene.RemoveNode(labelmapNode)
        for displayNode in displayNodes:
            scene.RemoveNode(displayNode)


def checkResultWriting(scene=None) -> None:
    """Write a synthetic result and check it; raises AssertionError naming what is wrong."""
    import numpy as np
    import SimpleITK as sitk
    import slicer

    from segmatecore.data.organs import organ
    from segmatecore.inference.result import SegmentationResult

    from .logic import SegMateLogic
    from .terminology import organKeyForTerminology
    from .volume_image import imageFromVolumeNode

    scene = scene or slicer.mrmlScene
    ct, labels, ijkToRas = _syntheticCase()
    volumeNode = slicer.util.addVolumeFromArray(ct, ijkToRas, name="SegMate self-test CT")
    segmentationNode = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "SegMate self-test contours")
    segmentationNode.CreateDefaultDisplayNodes()
    userMask = np.zeros(SHAPE, dtype=bool)
    userMask[0:3, 12:18, 2:8] = True
    userId = _userSegment(segmentationNode, volumeNode, userMask)

    labelmap = sitk.GetImageFromArray(labels)
    labelmap.CopyInformation(imageFromVolumeNode(volumeNode))
    result = SegmentationResult(labelmap=labelmap, organs=list(ORGANS), labels=dict(LEGEND), volumes_ml={}, timings={"total": 0.0},
                                z_range={"mode": "none"}, model_info={"id": "self-test"})
    run = SegMateLogic().writeResult(volumeNode, segmentationNode, result)

    segmentation = segmentationNode.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 1 + len(ORGANS), "one segment per organ, plus the user's"
    for key in ORGANS:
        segmentId = run.segmentIds[key]
        segment = segmentation.GetSegment(segmentId)
        assert segment.GetName() == organ(key).display_name, f"{key}: segment name {segment.GetName()!r}"
        assert organKeyForTerminology(segment.GetTerminology()) == key, f"{key}: terminology {segment.GetTerminology()}"
        voxels = segmentVoxels(segmentationNode, segmentId, volumeNode)
        assert np.array_equal(voxels > 0, labels == LEGEND[key]), f"{key}: voxels differ from the labelmap"
    user = segmentation.GetSegment(userId)
    assert user is not None and user.GetName() == "My structure", "the user's segment was removed or renamed"
    userVoxels = segmentVoxels(segmentationNode, userId, volumeNode)
    assert np.array_equal(userVoxels > 0, userMask), "the user's segment changed"
