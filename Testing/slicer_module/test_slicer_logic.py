"""The Slicer module's logic (SegMateSlicer/SegMateLib) against a real MRML scene from slicer-core.

SegMate's labelmap is computed independently by ``segmatecore.segment`` on the volume as Slicer's
own NRRD writer saves it, and compared voxel for voxel with each segment exported by Slicer's
Segmentations logic into the volume's geometry. The network is the intensity test model, so the
result depends only on geometry and bookkeeping, and every run takes about a second.
"""
from __future__ import annotations

import ast
import hashlib
import json
import math
import os
import subprocess
import sys
import threading
import tomllib
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
import slicerio
import vtk
import vtk.util.numpy_support

import segmatecore
from segmatecore.data.organs import OrganSet, PAPER_ORGANS, category, organ
from segmatecore.inference.result import SegmentationCancelled

import SegMateLib
from SegMateLib import dependencies, diagnostics, sample_data
from SegMateLib.batch import saveSegmentation
from SegMateLib.progress import JobProgress, elapsedText
from SegMateLib.logic import SegMateLogic
from SegMateLib.model_choices import modelChoices
from SegMateLib.segments import SOURCE_TAG, THRESHOLD_TAG, Z_SMOOTHING_TAG, binaryLabelmapName
from SegMateLib.terminology import organKeyForTerminology, terminologyEntry
from SegMateLib.volume_image import imageFromVolumeNode

REPO = Path(__file__).resolve().parents[2]

PAPER = OrganSet(PAPER_ORGANS)  # the organs of a model made with the defaults

SegLogic = slicer.vtkSlicerSegmentationsModuleLogic
PAINTED = ["left_lung", "liver", "aorta", "trachea"]
ORGANS = ["left_lung", "esophagus", "liver", "aorta", "trachea"]  # the test model never finds esophagus: empty
SHAPE = (12, 40, 44)  # k, j, i


def painted_array(band_centre) -> np.ndarray:
    """A small CT-like array: air, one bone voxel, and blocks painted at four organs' test intensities."""
    array = np.full(SHAPE, -1000, dtype=np.int16)
    array[3:10, 10:25, 4:19] = band_centre("liver")
    array[2:11, 5:21, 26:41] = band_centre("left_lung")
    array[1:12, 28:35, 20:26] = band_centre("aorta")
    array[6:12, 30:39, 30:37] = band_centre("trachea")
    array[0, 0, 0] = 300
    return array


def ijk_to_ras(oblique: bool) -> np.ndarray:
    """Axial (a DICOM-like LPS volume) or oblique: rotated 20 deg about one axis and 10 deg about another."""
    spacing = np.diag([0.9, 0.8, 2.5])
    directions = np.diag([-1.0, -1.0, 1.0])
    if oblique:
        a, b = math.radians(20), math.radians(10)
        rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
        rx = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
        directions = rz @ rx @ directions
    matrix = np.eye(4)
    matrix[:3, :3] = directions @ spacing
    matrix[:3, 3] = [12.5, -30.0, 40.0]
    return matrix


@pytest.fixture(scope="module")
def model(intensity_model):
    return intensity_model(organs=PAINTED, input_size=64)


@pytest.fixture(scope="module")
def add_ct(band_centre):
    """``add_ct(scene, oblique=False, name="CT")``: a CT volume node of the painted array made with Slicer's
    own API, placed under a study in the subject hierarchy."""
    def add(scene, oblique=False, name="CT"):
        volume = slicer.util.addVolumeFromArray(painted_array(band_centre), ijk_to_ras(oblique), name=name)
        sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
        patient = sh.CreateSubjectItem(sh.GetSceneItemID(), "Patient 1")
        study = sh.CreateStudyItem(patient, "CT study")
        sh.CreateItem(study, volume)
        return volume
    return add


def slicer_written_image(volume, tmp_path) -> sitk.Image:
    """The volume as Slicer's NRRD writer stores it, read back by SimpleITK: an independent geometry."""
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    path = tmp_path / f"{volume.GetName()}.nrrd"
    storage.SetFileName(str(path))
    assert storage.WriteData(volume)
    return sitk.ReadImage(str(path))


def reference_labels(volume, tmp_path, model, organ_keys=ORGANS) -> np.ndarray:
    """SegMateCore's labelmap of the volume, [k, j, i]."""
    result = segmatecore.segment(slicer_written_image(volume, tmp_path), model=model, organs=organ_keys, device="cpu")
    return sitk.GetArrayFromImage(result.labelmap)


def export_segment(segmentation_node, segment_id, volume) -> np.ndarray:
    """A segment exported by Slicer's Segmentations logic into the volume's geometry, [k, j, i]."""
    scene = volume.GetScene()
    labelmap_node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    ids = vtk.vtkStringArray()
    ids.InsertNextValue(segment_id)
    try:
        assert SegLogic.ExportSegmentsToLabelmapNode(segmentation_node, ids, labelmap_node, volume)
        exported, reference = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
        labelmap_node.GetIJKToRASMatrix(exported)
        volume.GetIJKToRASMatrix(reference)
        assert np.allclose(slicer.util.arrayFromVTKMatrix(exported), slicer.util.arrayFromVTKMatrix(reference))
        return slicer.util.arrayFromVolume(labelmap_node).copy()
    finally:
        display_nodes = [labelmap_node.GetNthDisplayNode(i) for i in range(labelmap_node.GetNumberOfDisplayNodes())]
        scene.RemoveNode(labelmap_node)
        for display_node in display_nodes:
            scene.RemoveNode(display_node)


def segment_snapshot(segmentation_node) -> dict:
    """Everything a user sees of a segmentation, read without touching the scene: IDs in order, names,
    colours, terminology and each segment's binary labelmap (extent, geometry, label value, voxels)."""
    segmentation = segmentation_node.GetSegmentation()
    snapshot = {}
    for index in range(segmentation.GetNumberOfSegments()):
        segment_id = segmentation.GetNthSegmentID(index)
        segment = segmentation.GetSegment(segment_id)
        labelmap = segment.GetRepresentation(binaryLabelmapName())
        matrix = vtk.vtkMatrix4x4()
        labelmap.GetImageToWorldMatrix(matrix)
        voxels = vtk.util.numpy_support.vtk_to_numpy(labelmap.GetPointData().GetScalars())
        snapshot[segment_id] = (index, segment.GetName(), tuple(segment.GetColor()), segment.GetTerminology(),
                                segment.GetLabelValue(), tuple(labelmap.GetExtent()),
                                tuple(slicer.util.arrayFromVTKMatrix(matrix).ravel()), voxels.tobytes())
    return snapshot


def add_user_segment(segmentation_node, volume, name="My structure") -> tuple[str, np.ndarray]:
    """A segment drawn by the user, overlapping the liver and aorta blocks."""
    mask = np.zeros(SHAPE, dtype=np.uint8)
    mask[4:9, 15:32, 10:24] = 1
    image = slicer.vtkOrientedImageData()
    image.SetExtent(0, SHAPE[2] - 1, 0, SHAPE[1] - 1, 0, SHAPE[0] - 1)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    vtk.util.numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = mask.ravel()
    matrix = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(matrix)
    image.SetImageToWorldMatrix(matrix)
    segment_id = segmentation_node.GetSegmentation().AddEmptySegment("", name, [0.1, 0.9, 0.2])
    assert SegLogic.SetBinaryLabelmapToSegment(image, segmentation_node, segment_id, SegLogic.MODE_REPLACE,
                                               image.GetExtent())
    return segment_id, mask


# ----------------------------------------------------------------------------------------------- geometry


@pytest.mark.parametrize("oblique", [False, True], ids=["axial", "oblique"])
def test_volume_node_becomes_the_image_slicer_writes(scene, tmp_path, oblique, add_ct):
    volume = add_ct(scene, oblique)
    image = imageFromVolumeNode(volume)
    written = slicer_written_image(volume, tmp_path)
    assert image.GetSize() == written.GetSize()
    assert np.allclose(image.GetSpacing(), written.GetSpacing(), atol=1e-6)
    assert np.allclose(image.GetOrigin(), written.GetOrigin(), atol=1e-6)
    assert np.allclose(image.GetDirection(), written.GetDirection(), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(written))
    # a copy: changing the node afterwards does not change the image handed to the worker thread
    slicer.util.arrayFromVolume(volume)[:] = 0
    assert sitk.GetArrayViewFromImage(image).max() == 300


def test_labelmaps_and_vectors_are_refused_with_a_clear_message(scene):
    labelmap = slicer.util.addVolumeFromArray(np.zeros((3, 4, 5), np.uint8), name="labels",
                                              nodeClassName="vtkMRMLLabelMapVolumeNode")
    with pytest.raises(ValueError, match="scalar CT volume"):
        imageFromVolumeNode(labelmap)
    with pytest.raises(ValueError, match="select a CT volume"):
        imageFromVolumeNode(None)


# ----------------------------------------------------------------------------------------------- process


def expected_terminology(key: str) -> str:
    o, c = organ(key), category()
    modifier = f"{o.modifier['scheme']}^{o.modifier['code']}^{o.modifier['meaning']}" if o.modifier else "^^"
    return (f"Segmentation category and type - DICOM master list~{c['scheme']}^{c['code']}^{c['meaning']}"
            f"~{o.type['scheme']}^{o.type['code']}^{o.type['meaning']}~{modifier}"
            "~Anatomic codes - DICOM master list~^^~^^")


def test_terminology_string_is_slicers_format():
    assert terminologyEntry(organ("left_lung")) == (
        "Segmentation category and type - DICOM master list~SCT^123037004^Anatomical Structure~SCT^39607008^Lung"
        "~SCT^7771000^Left~Anatomic codes - DICOM master list~^^~^^")
    assert terminologyEntry(organ("spinal_cord")) == (
        "Segmentation category and type - DICOM master list~SCT^123037004^Anatomical Structure~SCT^2748008^Spinal cord"
        "~^^~Anatomic codes - DICOM master list~^^~^^")
    for o in PAPER.organs:
        assert organKeyForTerminology(terminologyEntry(o)) == o.key
    # the same codes from another context list are still that organ; other codes are not SegMate's
    assert organKeyForTerminology(terminologyEntry(organ("liver")).replace(
        "DICOM master list~SCT^123037004", "3D Slicer General Anatomy list~SCT^123037004", 1)) == "liver"
    assert organKeyForTerminology("Segmentation category and type - 3D Slicer General Anatomy list~SCT^85756007^"
                                  "Tissue~SCT^85756007^Tissue~^^~Anatomic codes - DICOM master list~^^~^^") is None
    right_kidney = terminologyEntry(organ("right_kidney"))
    assert organKeyForTerminology(right_kidney.replace("24028007^Right", "7771000^Left")) == "left_kidney"
    assert organKeyForTerminology("") is None


@pytest.mark.parametrize("oblique", [False, True], ids=["axial", "oblique"])
def test_process_writes_each_organ_voxel_for_voxel(scene, tmp_path, model, oblique, add_ct):
    volume = add_ct(scene, oblique)
    expected = reference_labels(volume, tmp_path, model)
    assert {PAPER.label(k) for k in ("left_lung", "liver", "aorta", "trachea")} <= set(np.unique(expected))

    run = SegMateLogic().process(volume, None, organs=ORGANS, model=model, device="cpu")

    node = run.segmentationNode
    segmentation = node.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == len(ORGANS)
    assert [segmentation.GetNthSegmentID(i) for i in range(len(ORGANS))] == [run.segmentIds[k] for k in ORGANS]
    for key in ORGANS:
        o = organ(key)
        segment = segmentation.GetSegment(run.segmentIds[key])
        np.testing.assert_array_equal(export_segment(node, run.segmentIds[key], volume) > 0, expected == PAPER.label(o.key),
                                      err_msg=key)
        assert segment.GetName() == o.display_name
        assert np.allclose(segment.GetColor(), o.color_float)
        assert segment.GetTerminology() == expected_terminology(key)
        source = vtk.reference("")
        assert segment.GetTag(SOURCE_TAG, source) and "SegMate" in str(source)
        threshold = vtk.reference("")
        assert segment.GetTag(THRESHOLD_TAG, threshold) and str(threshold) == "0.50"  # an uncalibrated model
    assert not export_segment(node, run.segmentIds["esophagus"], volume).any()
    # reference geometry and subject hierarchy: what DICOM SEG / RTSTRUCT export need
    assert node.GetNodeReference(node.GetReferenceImageGeometryReferenceRole()) is volume
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    assert sh.GetItemParent(sh.GetItemByDataNode(node)) == sh.GetItemParent(sh.GetItemByDataNode(volume))
    assert sh.GetItemLevel(sh.GetItemParent(sh.GetItemByDataNode(node))) == "Study"
    assert node.GetName() == "CT segmentation"


def test_each_segment_records_the_threshold_and_smoothing_it_was_drawn_with(scene, model, add_ct):
    volume = add_ct(scene)
    run = SegMateLogic().process(volume, None, organs=["liver", "aorta"], model=model, device="cpu",
                                 postprocess={"thresholds": {"liver": 0.6}, "z_smoothing_mm": {"aorta": 3}})
    segmentation = run.segmentationNode.GetSegmentation()
    tags = {}
    for key in ("liver", "aorta"):
        for tag in (THRESHOLD_TAG, Z_SMOOTHING_TAG):
            value = vtk.reference("")
            assert segmentation.GetSegment(run.segmentIds[key]).GetTag(tag, value)
            tags[key, tag] = str(value)
    assert tags == {("liver", THRESHOLD_TAG): "0.60", ("aorta", THRESHOLD_TAG): "0.50",
                    ("liver", Z_SMOOTHING_TAG): "0", ("aorta", Z_SMOOTHING_TAG): "3"}


def test_mirror_tta_reaches_segmatecore_from_the_logic(scene, model, add_ct):
    volume = add_ct(scene)
    run = SegMateLogic().process(volume, None, organs=["liver", "aorta"], model=model, device="cpu", tta=True)
    plain = SegMateLogic().process(volume, None, organs=["liver", "aorta"], model=model, device="cpu")
    assert run.result.model_info["tta"] is True and plain.result.model_info["tta"] is False
    assert run.result.volumes_ml == plain.result.volumes_ml  # the intensity network is mirror-symmetric


def test_precision_and_feature_reuse_reach_segmatecore_from_the_logic(scene, add_ct):
    """The panel's Precision and "Reuse the first pass's features" choices change what segment() runs:
    without reuse the main pass encodes every slice again and the segments are the same."""
    from segmatecore.models.checkpoint import default_metadata
    from segmatecore.choices import PRECISIONS
    from segmatecore.models import create_model

    assert tuple(SegMateLib.PRECISION_CHOICES) == PRECISIONS  # the panel offers exactly SegMateCore's choices
    network = create_model("fastvit_t12")  # encode/decode: the only kind of network the feature cache serves
    network.metadata = default_metadata("fastvit_t12")
    network.metadata["preprocessing"]["input_size"] = [32, 32]
    volume = add_ct(scene)
    options = dict(organs=["liver", "aorta"], model=network, device="cpu")
    reused = SegMateLogic().process(volume, None, **options)
    again = SegMateLogic().process(volume, None, featureCacheMb=0, **options)
    cache = reused.result.model_info["feature_cache"]
    assert cache["slices_stored"] > 0 and cache["slices_reused"] == cache["slices_stored"]
    assert again.result.model_info["feature_cache"] is None
    for key in options["organs"]:
        assert np.array_equal(export_segment(reused.segmentationNode, reused.segmentIds[key], volume),
                              export_segment(again.segmentationNode, again.segmentIds[key], volume))
    bf16 = SegMateLogic().process(volume, None, precision="bf16", **options)
    assert bf16.result.model_info["precision"] == "bf16" and reused.result.model_info["precision"] == "auto"
    nodes = scene.GetNumberOfNodes()
    for logic_call in (SegMateLogic().process, SegMateLogic().startSegmentation):
        with pytest.raises(ValueError, match="precision"):
            logic_call(volume, None, precision="fp16", **dict(options, model=None))
        with pytest.raises(ValueError, match="featureCacheMb"):
            logic_call(volume, None, featureCacheMb=-1, **dict(options, model=None))
    assert scene.GetNumberOfNodes() == nodes  # refused before anything is added


def test_tg263_names_and_default_organs(scene, tmp_path, add_ct, intensity_model):
    volume = add_ct(scene)
    model = intensity_model(organs=["liver", "left_lung", "aorta"], input_size=64)  # trained on three organs
    run = SegMateLogic().process(volume, None, model=model, device="cpu", naming="tg263")
    names = [run.segmentationNode.GetSegmentation().GetSegment(run.segmentIds[k]).GetName() for k in run.segmentIds]
    assert list(run.segmentIds) == ["left_lung", "liver", "aorta"]
    assert names == ["Lung_L", "Liver", "A_Aorta"]
    with pytest.raises(ValueError, match="naming"):
        SegMateLogic().process(volume, None, model=model, naming="short")
    with pytest.raises(ValueError, match="at least one organ"):
        SegMateLogic().process(volume, None, organs=[], model=model)
    with pytest.raises(ValueError, match="loads models from files"):  # a loaded network cannot go to the worker
        SegMateLogic().startSegmentation(volume, None, model=model)


def test_user_segment_survives_and_a_second_run_replaces_segmates_segments(scene, tmp_path, model, add_ct):
    volume = add_ct(scene)
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Contours")
    node.CreateDefaultDisplayNodes()
    user_id, user_mask = add_user_segment(node, volume)
    logic = SegMateLogic()

    first = logic.process(volume, node, organs=ORGANS, model=model, device="cpu")
    assert first.segmentationNode is node
    liver_id = first.segmentIds["liver"]
    node.GetSegmentation().GetSegment(liver_id).SetName("my liver")  # renamed: still SegMate's by terminology
    order_before = [node.GetSegmentation().GetNthSegmentID(i) for i in range(node.GetSegmentation().GetNumberOfSegments())]

    # the liver block shrinks; the second run must replace the liver segment, not add another one
    slicer.util.arrayFromVolume(volume)[3:10, 10:25, 4:11] = -1000
    slicer.util.arrayFromVolumeModified(volume)
    expected = reference_labels(volume, tmp_path, model, ["liver", "aorta"])
    second = logic.process(volume, node, organs=["liver", "aorta"], model=model, device="cpu")

    segmentation = node.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 1 + len(ORGANS)
    assert [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())] == order_before
    assert second.segmentIds == {"liver": liver_id, "aorta": first.segmentIds["aorta"]}
    assert segmentation.GetSegment(liver_id).GetName() == "Liver"
    for key in ("liver", "aorta"):
        np.testing.assert_array_equal(export_segment(node, second.segmentIds[key], volume) > 0,
                                      expected == PAPER.label(key))
    user = segmentation.GetSegment(user_id)
    assert user.GetName() == "My structure" and np.allclose(user.GetColor(), (0.1, 0.9, 0.2))
    np.testing.assert_array_equal(export_segment(node, user_id, volume), user_mask)


# ----------------------------------------------------------------------------------------------- cancel, errors


@pytest.fixture(scope="module")
def failing_model(intensity_model):
    """The class of the intensity model failing on its second batch (as a GPU running out of memory might)."""
    class FailingModel(intensity_model):
        def forward(self, x, z_norm=None):
            if len(self.batches_seen) >= 1:
                raise RuntimeError("simulated failure in the network")
            return super().forward(x, z_norm)

    return FailingModel


def scene_state(scene, node, volume):
    node_ids = [scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())]
    return node_ids, segment_snapshot(node)


def test_cancel_leaves_the_segmentation_unchanged(scene, tmp_path, model, add_ct):
    volume = add_ct(scene)
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Contours")
    add_user_segment(node, volume)
    logic = SegMateLogic()
    logic.process(volume, node, organs=["liver"], model=model, device="cpu")
    before = scene_state(scene, node, volume)

    cancel = threading.Event()
    stages = []

    def progress(stage, done, total):
        stages.append((stage, done, total))
        if stage == "network" and done >= 1:
            cancel.set()

    with pytest.raises(SegmentationCancelled):
        logic.process(volume, node, organs=ORGANS, model=model, device="cpu", progress=progress, cancel=cancel,
                      batchSize=1, zNorm="none")
    assert ("network", 1, SHAPE[0]) in stages
    assert scene_state(scene, node, volume) == before


def test_error_mid_inference_leaves_node_and_scene_unchanged(scene, tmp_path, add_ct, failing_model):
    volume = add_ct(scene)
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Contours")
    add_user_segment(node, volume)
    before = scene_state(scene, node, volume)
    logic = SegMateLogic()
    with pytest.raises(RuntimeError, match="simulated failure"):
        logic.process(volume, node, organs=ORGANS, model=failing_model(PAINTED, input_size=64), device="cpu",
                      batchSize=2)
    assert scene_state(scene, node, volume) == before
    # "create new segmentation" must not leave an empty node behind either
    nodes = scene.GetNumberOfNodes()
    with pytest.raises(RuntimeError, match="simulated failure"):
        logic.process(volume, None, organs=ORGANS, model=failing_model(PAINTED, input_size=64), device="cpu",
                      batchSize=2)
    assert scene.GetNumberOfNodes() == nodes


def test_a_failed_segment_write_leaves_the_segmentation_exactly_as_it_was(scene, model, add_ct):
    """Slicer refusing one organ's segment after earlier organs' old segments were already replaced must
    not leave half a result: the write is all or nothing, display properties included."""
    volume = add_ct(scene)
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Contours")
    node.CreateDefaultDisplayNodes()
    user_id, _ = add_user_segment(node, volume)
    logic = SegMateLogic()
    logic.process(volume, node, organs=ORGANS, model=model, device="cpu")
    display = node.GetDisplayNode()
    display.SetSegmentOpacity3D(user_id, 0.3)
    display.SetSegmentVisibility("liver", False)
    before = scene_state(scene, node, volume)
    segmentation = node.GetSegmentation()
    add_segment = segmentation.AddSegment
    added = []

    def refuse_the_third(segment, segment_id="", insert_before=""):
        if len(added) == 2:
            return False
        added.append(segment_id)
        return add_segment(segment, segment_id, insert_before)

    segmentation.AddSegment = refuse_the_third
    slicer.util.arrayFromVolume(volume)[3:10, 10:25, 4:11] = -1000  # the new result differs from the old one
    slicer.util.arrayFromVolumeModified(volume)
    try:
        with pytest.raises(RuntimeError, match="refused to add the .* segment .* left as it was"):
            logic.process(volume, node, organs=ORGANS, model=model, device="cpu")
    finally:
        del segmentation.AddSegment
    assert added == ["left_lung", "esophagus"]  # two organs had been replaced when the third was refused
    assert scene_state(scene, node, volume) == before
    assert display.GetSegmentOpacity3D(user_id) == 0.3 and not display.GetSegmentVisibility("liver")


def test_segments_are_recognised_with_the_applications_terminologies_logic(monkeypatch):
    """Inside Slicer the entry is parsed by the Terminologies module's logic, as Slicer's own modules do."""
    from SegMateLib import terminology

    calls = []

    class TerminologiesLogic:
        def DeserializeTerminologyEntry(self, serialized, entry):
            calls.append(serialized)
            return slicer.vtkSlicerTerminologiesModuleLogic.DeserializeTerminologyEntry(serialized, entry)

    class Terminologies:
        @staticmethod
        def logic():
            return TerminologiesLogic()

    monkeypatch.setattr(slicer, "modules", type("Modules", (), {"terminologies": Terminologies})(), raising=False)
    entry = terminologyEntry(organ("liver"))
    assert organKeyForTerminology(entry) == "liver"
    assert calls and calls[-1] == entry
    assert terminology.terminologiesLogic().__class__ is TerminologiesLogic


def test_progress_text():
    assert JobProgress("network", 12, 40, 3.0).text() == "Segmenting: slice 12 of 40"
    assert JobProgress("download", 12 * 2**20, 25 * 2**20, 3.0).text() == "Downloading the model: 12 of 25 MB"
    assert JobProgress("loading", 0, 1, 3.0).text() == "Loading the model"
    assert JobProgress("z_pass", 2, 40, 3.0).text() == "Finding the organs' extent: slice 2 of 40"
    assert JobProgress("postprocess", 0, 1, 3.0).text() == "Post-processing"
    assert elapsedText(75.4) == "1:15"


# ----------------------------------------------------------------------------------------------- saving


def test_saved_seg_nrrd_reads_back_with_slicerio(scene, tmp_path, model, add_ct):
    volume = add_ct(scene, oblique=True)
    expected = reference_labels(volume, tmp_path, model)
    run = SegMateLogic().process(volume, None, organs=ORGANS, model=model, device="cpu", naming="tg263")
    path = tmp_path / "result.seg.nrrd"
    saveSegmentation(run.segmentationNode, path)

    info = slicerio.read_segmentation(str(path))
    ijk_to_lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ ijk_to_ras(oblique=True)
    assert np.allclose(info["ijkToLPS"], ijk_to_lps, atol=1e-6)
    voxels = info["voxels"]
    if voxels.ndim == 4:
        pytest.fail("SegMate's organs never overlap, so Slicer should store them in one layer")
    by_name = {s["name"]: s for s in info["segments"]}
    assert sorted(by_name) == sorted(organ(k).tg263 for k in ORGANS)
    for key in ORGANS:
        segment = by_name[organ(key).tg263]
        assert segment["terminology"]["type"] == [organ(key).type["scheme"], organ(key).type["code"],
                                                   organ(key).type["meaning"]]
        assert segment["terminology"]["category"] == ["SCT", "123037004", "Anatomical Structure"]
        np.testing.assert_array_equal(voxels.transpose(2, 1, 0) == segment["labelValue"], expected == PAPER.label(key))


# ----------------------------------------------------------------------------------------------- models, packages


def test_imported_model_is_offered_with_its_trained_organs(tmp_path, monkeypatch):
    from segmatecore.models.checkpoint import default_metadata, save_model
    from segmatecore.models import create_model

    monkeypatch.setenv("SEGMATE_HOME", str(tmp_path / "home"))
    network = create_model("fastvit_t12")
    network.metadata = default_metadata("fastvit_t12", trained_organs=["spinal_cord", "esophagus"])
    source = save_model(network, tmp_path / "my_cord_model.safetensors")
    logic = SegMateLogic()
    installed = logic.importModelFile(str(source))
    assert installed.parent == logic.modelFolder()
    choices = modelChoices()
    from segmatecore.hub.catalogue import default_model_id

    assert choices[0].id == default_model_id() and choices[0].default  # the catalogue's default comes first
    choice = next(c for c in choices if c.id == "my_cord_model")
    assert choice.installed and choice.source == "imported" and not choice.downloadable
    assert choice.trainedOrgans == ("spinal_cord", "esophagus")
    assert choice.untrainedOrgans() == [k for k in list(PAPER_ORGANS) if k not in choice.trainedOrgans]
    assert "not trained on: left lung, right lung, liver" in choice.infoText()
    assert logic.clearModelCache() == [installed]
    assert not installed.exists()


def test_requirements_and_version_ranges(monkeypatch):
    assert dependencies.missingRequirements() == []
    fake = dependencies.Requirement("segmate-no-such-package", ">=1", "test")
    too_new = dependencies.Requirement("numpy", "<1.0", "test")
    assert dependencies.missingRequirements([fake, too_new]) == [fake, too_new]
    text = dependencies.describe([fake, too_new])
    assert "segmate-no-such-package (not installed)" in text and f"installed {np.__version__}, needs <1.0" in text
    constraints = dependencies.shippedVersionConstraints()
    assert f"numpy=={np.__version__}" in constraints and f"SimpleITK=={sitk.Version.VersionString()}" in constraints
    # the ranges are SegMateCore's own
    declared = tomllib.loads((REPO / "SegMateCore" / "pyproject.toml").read_text())["project"]["dependencies"]
    from packaging.requirements import Requirement

    ranges = {Requirement(d).name.lower(): str(Requirement(d).specifier) for d in declared}
    for requirement in dependencies.REQUIREMENTS:
        assert str(Requirement(requirement.text).specifier) == ranges[requirement.name.lower()], requirement.name


def _third_party_imports(module_file: Path, seen: set[Path]) -> set[str]:
    """Top-level third-party names imported by a segmatecore module and the segmatecore modules it imports."""
    if module_file in seen or not module_file.is_file():
        return set()
    seen.add(module_file)
    package = REPO / "SegMateCore" / "segmatecore"
    names: set[str] = set()
    for node in ast.walk(ast.parse(module_file.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = module_file.parent
            for _ in range(node.level - 1):
                base = base.parent
            parts = (node.module or "").split(".") if node.module else []
            target = base.joinpath(*parts)
            candidates = [target.with_suffix(".py"), target / "__init__.py"]
            candidates += [target / f"{alias.name}.py" for alias in node.names]
            for candidate in candidates:
                names |= _third_party_imports(candidate, seen)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for module in modules:
                top = module.split(".")[0]
                if top == "segmatecore":
                    names |= _third_party_imports(package.joinpath(*module.split(".")[1:]).with_suffix(".py"), seen)
                    names |= _third_party_imports(package.joinpath(*module.split(".")[1:], "__init__.py"), seen)
                elif top and top not in sys.stdlib_module_names:
                    names.add(top)
    return names


def test_every_package_segmentation_imports_is_installed_or_shipped_by_slicer():
    package = REPO / "SegMateCore" / "segmatecore"
    seen: set[Path] = set()
    needed = set()
    for module in ("__init__.py", "inference.py", "catalogue.py", "io.py", "organs.py"):
        needed |= _third_party_imports(package / module, seen)
    import importlib.metadata

    distributions = importlib.metadata.packages_distributions()
    provided = {r.name.lower() for r in dependencies.REQUIREMENTS} | {n.lower() for n in dependencies.SHIPPED_WITH_SLICER}
    # opt-in extras, imported only when asked for and installed (openvino_runtime.available())
    optional = {"openvino"}
    for name in needed - optional:
        owners = {d.lower() for d in distributions.get(name, [name])}
        assert owners & provided, f"segmatecore imports {name} ({owners}) but SegMate neither installs it nor finds it in Slicer"


def test_diagnostics_lists_versions_and_device():
    import platform

    import torch

    text = diagnostics.diagnosticsText()
    assert "Slicer: not running inside the Slicer application" in text
    assert f"Python: {platform.python_version()}" in text
    assert f"PyTorch: {torch.__version__}" in text
    assert "Device for 'Auto':" in text or "CUDA: not available; device for 'Auto': cpu" in text
    assert f"SegMateCore: {segmatecore.__version__}" in text


def test_torchvision_is_checked_and_installed_with_pytorch(monkeypatch):
    names = [r.name for r in dependencies.REQUIREMENTS]
    assert names[:2] == ["torch", "torchvision"]
    installed = []

    class PyTorchUtilsLogic:
        def installTorch(self, askConfirmation=False, forceComputationBackend=None, torchVersionRequirement=None,
                         torchvisionVersionRequirement=None):
            installed.append((torchVersionRequirement, torchvisionVersionRequirement))
            return object()

    monkeypatch.setitem(sys.modules, "PyTorchUtils", type(sys)("PyTorchUtils"))
    sys.modules["PyTorchUtils"].PyTorchUtilsLogic = PyTorchUtilsLogic
    missing_torchvision = dependencies.Requirement("torchvision", "<0.1", "test")  # the installed one is too new
    dependencies.installTorch([missing_torchvision], log=lambda text: None)
    assert installed == [(dependencies.TORCH.specifier, "<0.1")]
    too_old_torch = dependencies.Requirement("torch", "<1.0", "test")
    with pytest.raises(RuntimeError, match="does not replace it"):
        dependencies.installTorch([too_old_torch], log=lambda text: None)


def test_a_restart_is_offered_for_packages_slicer_had_already_imported():
    requirements = [r for r in dependencies.REQUIREMENTS if r.name in ("timm", "jsonschema", "platformdirs")]
    modules = {"timm": object(), "numpy": object()}
    assert [r.name for r in dependencies.restartNeededAfterInstalling(requirements, modules)] == ["timm"]
    assert dependencies.restartNeededAfterInstalling(requirements, {}) == []


BROKEN_TORCH = """
import sys
import slicer
from SegMateLib.segments import ensureConverterRules
slicer.mrmlScene = slicer.vtkMRMLScene()
ensureConverterRules()
import json
import SegMateLib
from SegMateLib import self_test
print("organs:", len(SegMateLib.SegMateLogic().organTable()) == len(json.load(open({organs!r}))["organs"]))
self_test.checkResultWriting(slicer.mrmlScene)
print("light self-test: passed")
print(SegMateLib.diagnosticsText())
print("torch imported:", "torch" in sys.modules)
"""


def test_a_broken_pytorch_leaves_the_organ_list_the_self_test_and_diagnostics_working(tmp_path, support_env):
    """A PyTorch that fails to import (a wrong build, a missing library) must not empty the panel: the organ
    table, the light self-test that ctest runs and Diagnostics need no PyTorch, and Diagnostics says what
    is wrong with it."""
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text(
        'raise ImportError("libtorch_cpu.so: cannot open shared object file (simulated)")\n')
    environment = dict(support_env, PYTHONPATH=os.pathsep.join([str(tmp_path), support_env["PYTHONPATH"]]))
    code = BROKEN_TORCH.format(organs=str(REPO / "Resources" / "organs.json"))
    done = subprocess.run([sys.executable, "-c", code],
                          capture_output=True, text=True, timeout=300, env=environment)
    assert done.returncode == 0, done.stderr
    assert "organs: True" in done.stdout and "light self-test: passed" in done.stdout
    assert "PyTorch: not importable (ImportError: libtorch_cpu.so: cannot open shared object file (simulated))" \
        in done.stdout
    assert "torch imported: False" in done.stdout


def test_sample_data_sources_point_at_the_bundled_files():
    listed = json.loads(sample_data.samplesFile().read_text())
    sources = SegMateLib.sampleDataSources()
    assert [s["sampleName"] for s in sources] == [entry["name"] for entry in listed]
    for source, entry in zip(sources, listed):
        path = Path(source["uris"].removeprefix("file://"))
        assert path.is_file() and source["fileNames"] == entry["file"]
        assert source["checksums"] == "SHA256:" + hashlib.sha256(path.read_bytes()).hexdigest()
        assert Path(source["thumbnailFileName"]).is_file()
        assert source["category"] == "SegMate" and source["nodeNames"] == entry["node_name"]


def test_segmentation_follows_the_volumes_parent_transform(scene, model, add_ct):
    volume = add_ct(scene)
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "Registration")
    matrix = vtk.vtkMatrix4x4()
    matrix.SetElement(1, 3, -7.5)
    transform.SetMatrixTransformToParent(matrix)
    volume.SetAndObserveTransformNodeID(transform.GetID())
    run = SegMateLogic().process(volume, None, organs=["liver"], model=model, device="cpu")
    assert run.segmentationNode.GetTransformNodeID() == transform.GetID()
