"""Output files: what Slicer, NIfTI readers, RT systems and a person looking at the preview rely on."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import matplotlib.image
import nrrd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import slicerio
from pydicom.uid import generate_uid
from rt_utils import RTStructBuilder

import segmatecore
from segmatecore.export.common import ijk_to_lps
from segmatecore.export.nifti import write_labels_nifti
from segmatecore.export.nrrd import write_seg_nrrd
from segmatecore.export.outputs import OUTPUT_FILES, write_outputs
from segmatecore.export.preview import oriented_views, write_preview
from segmatecore.export.report import write_report
from segmatecore.export.rtstruct import write_rtstruct
from segmatecore.data.geometry import canonical_frame, from_canonical
from segmatecore.data.organs import OrganSet, PAPER_ORGANS, organ
from segmatecore.inference.result import SegmentationResult

PAPER = OrganSet(PAPER_ORGANS)  # the organs of a model made with the defaults

LEFT, RIGHT = "7771000", "24028007"


def _rotation(axis: int, degrees: float) -> np.ndarray:
    c, s = np.cos(np.deg2rad(degrees)), np.sin(np.deg2rad(degrees))
    a, b = [i for i in range(3) if i != axis]
    r = np.eye(3)
    r[a, a], r[a, b], r[b, a], r[b, b] = c, -s, s, c
    return r


# Same anatomy stored with different grids: image axes along LPS, along RAS (x and y flipped),
# permuted (a sagittal acquisition), and oblique with a flipped axis (left-handed direction matrix).
GEOMETRIES = {
    "lps": np.eye(3),
    "ras_flipped": np.diag([-1.0, -1.0, 1.0]),
    "permuted": np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]),
    "oblique_flipped": _rotation(2, 17.0) @ _rotation(0, -9.0) @ np.diag([1.0, -1.0, 1.0]),
}
SPACING = (0.78125, 1.25, 2.5)   # anisotropic, exactly representable in float32
ORIGIN = (-120.5, 35.25, -402.0)
CANONICAL_SHAPE = (20, 16, 12)   # patient right, anterior, superior


def _phantom_canonical() -> tuple[np.ndarray, np.ndarray]:
    """CT and labels in the canonical [R, A, S] layout: i grows toward the patient's right."""
    ct = np.full(CANONICAL_SHAPE, -1000, dtype=np.int16)
    ct[2:18, 2:14, :] = 40
    labels = np.zeros(CANONICAL_SHAPE, dtype=np.uint8)
    boxes = {  # patient's left = low i; anterior = high j; superior = high k
        "left_lung": (slice(3, 8), slice(4, 12), slice(7, 12)),
        "right_lung": (slice(12, 17), slice(4, 12), slice(7, 12)),
        "liver": (slice(11, 17), slice(6, 13), slice(2, 6)),
        "left_kidney": (slice(3, 6), slice(3, 6), slice(1, 4)),
        "spinal_cord": (slice(9, 11), slice(2, 4), slice(0, 12)),
        "aorta": (slice(8, 11), slice(5, 7), slice(2, 12)),
    }
    for key, box in boxes.items():
        labels[box] = PAPER.label(key)
    ct[labels > 0] = 60
    return ct, labels


def _images(direction: np.ndarray) -> tuple[sitk.Image, sitk.Image]:
    """The phantom CT and labelmap stored on a grid with ``direction`` (same anatomy for every grid)."""
    frame_size = [0, 0, 0]
    reference = sitk.Image([1, 1, 1], sitk.sitkUInt8)
    reference.SetDirection(direction.flatten().tolist())
    frame = canonical_frame(reference)
    for c, axis in enumerate(frame.axes):
        frame_size[axis] = CANONICAL_SHAPE[c]
    reference = sitk.Image(frame_size, sitk.sitkUInt8)
    reference.SetDirection(direction.flatten().tolist())
    reference.SetSpacing([SPACING[c] for c in np.argsort(frame.axes)])
    reference.SetOrigin(ORIGIN)
    frame = canonical_frame(reference)
    ct, labels = _phantom_canonical()
    return from_canonical(ct, frame, reference), from_canonical(labels, frame, reference)


def legend(keys) -> dict[str, int]:
    """The label values of ``keys`` in a labelmap of a model with the paper's nine organs."""
    return {k: PAPER.label(k) for k in keys}


def _result(labelmap: sitk.Image, keys: list[str] | None = None) -> SegmentationResult:
    keys = keys or list(PAPER_ORGANS)
    volume_per_voxel = float(np.prod(labelmap.GetSpacing())) / 1000.0
    array = sitk.GetArrayViewFromImage(labelmap)
    return SegmentationResult(
        labelmap=labelmap, organs=keys, labels=legend(keys),
        volumes_ml={k: float((array == PAPER.label(k)).sum()) * volume_per_voxel for k in keys},
        timings={"read": 0.5, "network": 2.25, "total": 3.0},
        z_range={"mode": "auto", "first": 1, "last": 11, "num_slices": 12},
        warnings=["intensity looks unusual"],
        model_info={"backbone": "fastvit_t12", "id": "segmate-fastvit-t12", "version": "1.0.0",
                    "input_size": [256, 256], "provenance": {"dataset": "TotalSegmentator v2"}},
        source="/data/case_001.nii.gz")


def _expected_terminology(key: str) -> dict:
    o = organ(key)
    terminology = {"contextName": "Segmentation category and type - DICOM master list",
                   "category": ["SCT", "123037004", "Anatomical Structure"],
                   "type": [o.type["scheme"], o.type["code"], o.type["meaning"]],
                   "anatomicContextName": "Anatomic codes - DICOM master list"}
    if o.modifier:
        terminology["typeModifier"] = [o.modifier["scheme"], o.modifier["code"], o.modifier["meaning"]]
    return terminology


def _assert_same_geometry(a: sitk.Image, b: sitk.Image, tol: float = 0.0) -> None:
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), rtol=0, atol=tol)
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), rtol=0, atol=tol)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), rtol=0, atol=tol)


# ----------------------------------------------------------------------------------------------- .seg.nrrd

@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_seg_nrrd_reads_back_in_slicerio_with_codes_colours_and_exact_voxels(tmp_path, geometry):
    _, labelmap = _images(GEOMETRIES[geometry])
    path = write_seg_nrrd(labelmap, legend(PAPER_ORGANS), tmp_path / "segmentation.seg.nrrd")

    segmentation = slicerio.read_segmentation(str(path))
    np.testing.assert_allclose(segmentation["ijkToLPS"], ijk_to_lps(labelmap), rtol=0, atol=1e-12)
    labels_ijk = np.transpose(sitk.GetArrayFromImage(labelmap), (2, 1, 0))
    assert [s["name"] for s in segmentation["segments"]] == [o.display_name for o in PAPER.organs]
    for o, segment in zip(PAPER.organs, segmentation["segments"]):
        assert segment["id"] == o.key and segment["labelValue"] == PAPER.label(o.key)
        assert segment["color"] == pytest.approx(o.color_float, abs=1e-6)
        assert segment["terminology"] == _expected_terminology(o.key)
        mask = slicerio.segment_mask(segmentation, segment)
        assert np.array_equal(mask, labels_ijk == PAPER.label(o.key)), o.key

    as_image = sitk.ReadImage(str(path))  # also what any ITK-based tool sees
    _assert_same_geometry(as_image, labelmap, tol=1e-12)
    assert np.array_equal(sitk.GetArrayFromImage(as_image), sitk.GetArrayFromImage(labelmap))


def test_seg_nrrd_loads_in_slicer_with_names_colours_terminology_and_geometry(tmp_path):
    import slicer
    import vtk
    from vtk.util.numpy_support import vtk_to_numpy

    _, labelmap = _images(GEOMETRIES["oblique_flipped"])
    path = write_seg_nrrd(labelmap, legend(PAPER_ORGANS), tmp_path / "segmentation.seg.nrrd")
    scene = slicer.vtkMRMLScene()
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(node) == 1
    segmentation = node.GetSegmentation()
    assert [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())] == list(PAPER_ORGANS)
    labels = sitk.GetArrayFromImage(labelmap)
    for o in PAPER.organs:
        segment = segmentation.GetSegment(o.key)
        assert segment.GetName() == o.display_name
        assert segment.GetColor() == pytest.approx(o.color_float, abs=1e-6)
        entry = vtk.reference("")
        assert segment.GetTag("TerminologyEntry", entry)
        modifier = (o.modifier or {"code": "", "scheme": "", "meaning": ""})
        assert str(entry) == slicer.vtkSlicerTerminologiesModuleLogic.SerializeTerminologyEntry(
            "Segmentation category and type - DICOM master list", "123037004", "SCT", "Anatomical Structure",
            o.type["code"], o.type["scheme"], o.type["meaning"],
            modifier["code"], modifier["scheme"], modifier["meaning"],
            "Anatomic codes - DICOM master list", "", "", "", "", "", "")
        image = segment.GetRepresentation("Binary labelmap")
        matrix = vtk.vtkMatrix4x4()
        image.GetImageToWorldMatrix(matrix)
        ras = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
        np.testing.assert_allclose(np.diag([-1.0, -1.0, 1.0, 1.0]) @ ras, ijk_to_lps(labelmap), rtol=0, atol=1e-9)
        assert image.GetExtent() == (0, labels.shape[2] - 1, 0, labels.shape[1] - 1, 0, labels.shape[0] - 1)
        voxels = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(labels.shape)
        assert np.array_equal(voxels == segment.GetLabelValue(), labels == PAPER.label(o.key)), o.key


def test_seg_nrrd_stores_slicer_terminology_entries(tmp_path):
    _, labelmap = _images(GEOMETRIES["lps"])
    header = nrrd.read_header(str(write_seg_nrrd(labelmap, legend(["left_lung", "liver"]), tmp_path / "s.seg.nrrd")))
    assert header["Segment0_Tags"] == (
        "TerminologyEntry:Segmentation category and type - DICOM master list~SCT^123037004^Anatomical Structure"
        "~SCT^39607008^Lung~SCT^7771000^Left~Anatomic codes - DICOM master list~^^~^^|")
    assert header["Segment1_Tags"] == (
        "TerminologyEntry:Segmentation category and type - DICOM master list~SCT^123037004^Anatomical Structure"
        "~SCT^10200004^Liver~^^~Anatomic codes - DICOM master list~^^~^^|")
    assert header["space"] == "left-posterior-superior"


def test_seg_nrrd_tg263_names_and_only_the_organs_asked_for(tmp_path):
    _, labelmap = _images(GEOMETRIES["lps"])
    path = write_seg_nrrd(labelmap, legend(["liver", "left_kidney"]), tmp_path / "s.seg.nrrd", naming="tg263")
    segmentation = slicerio.read_segmentation(str(path))
    assert slicerio.segment_names(segmentation) == ["Liver", "Kidney_L"]
    assert segmentation["segments"][1]["terminology"]["typeModifier"][1] == LEFT
    assert set(np.unique(segmentation["voxels"])) == {0, PAPER.label("liver"), PAPER.label("left_kidney")}


def test_seg_nrrd_refuses_unknown_naming_and_non_label_images(tmp_path):
    ct, labelmap = _images(GEOMETRIES["lps"])
    with pytest.raises(ValueError, match="naming"):
        write_seg_nrrd(labelmap, legend(["liver"]), tmp_path / "s.seg.nrrd", naming="dicom")
    with pytest.raises(ValueError, match="0..255"):
        write_seg_nrrd(ct, legend(["liver"]), tmp_path / "s.seg.nrrd")
    with pytest.raises(KeyError, match="Unknown organ"):
        write_seg_nrrd(labelmap, {"heart": 1}, tmp_path / "s.seg.nrrd")
    with pytest.raises(ValueError, match="distinct"):
        write_seg_nrrd(labelmap, {"liver": 5, "aorta": 5}, tmp_path / "s.seg.nrrd")
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------------------------- NIfTI

@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_nifti_reads_back_with_values_and_geometry(tmp_path, geometry):
    _, labelmap = _images(GEOMETRIES[geometry])
    back = sitk.ReadImage(str(write_labels_nifti(labelmap, tmp_path / "labels.nii.gz")))
    assert back.GetPixelID() == sitk.sitkUInt8
    assert np.array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(labelmap))
    # NIfTI keeps geometry in float32: exact for these axis-aligned values, float32-close when oblique.
    _assert_same_geometry(back, labelmap, tol=0.0 if geometry != "oblique_flipped" else 1e-5)


# ----------------------------------------------------------------------------------------------- report

def test_report_has_volumes_timings_model_z_range_and_geometry(tmp_path):
    _, labelmap = _images(GEOMETRIES["oblique_flipped"])
    result = _result(labelmap, ["left_lung", "liver", "trachea"])
    report = json.loads(write_report(result, tmp_path / "report.json").read_text())

    assert report["segmate_version"] == segmatecore.__version__
    assert report["model"]["id"] == "segmate-fastvit-t12" and report["model"]["version"] == "1.0.0"
    assert report["model"]["backbone"] == "fastvit_t12" and report["model"]["input_size"] == [256, 256]
    voxel_ml = float(np.prod(SPACING)) / 1000.0
    assert report["volumes_ml"]["liver"] == pytest.approx(6 * 7 * 4 * voxel_ml, abs=5e-4)
    assert report["volumes_ml"]["trachea"] == 0.0
    assert report["organs"] == ["left_lung", "liver", "trachea"]
    assert report["labels"] == {"left_lung": 1, "liver": 5, "trachea": 9}  # the labelmap's legend
    assert [o["tg263"] for o in report["segments"]] == ["Lung_L", "Liver", "Trachea"]
    assert report["segments"][1] == {"value": 5, "key": "liver", "name": "Liver", "tg263": "Liver",
                                     "color": list(organ("liver").color), "volume_ml": report["volumes_ml"]["liver"]}
    assert report["timings"] == {"read": 0.5, "network": 2.25, "total": 3.0}
    assert report["z_range"] == {"mode": "auto", "first": 1, "last": 11, "num_slices": 12}
    assert report["warnings"] == ["intensity looks unusual"]
    assert report["source"] == "/data/case_001.nii.gz"
    assert report["geometry"] == {"size": list(labelmap.GetSize()), "spacing": list(labelmap.GetSpacing()),
                                  "origin": list(labelmap.GetOrigin()), "direction": list(labelmap.GetDirection())}


# ----------------------------------------------------------------------------------------------- preview

def test_preview_views_are_upright_and_radiological_whatever_the_input_grid():
    reference = oriented_views(*_images(GEOMETRIES["lps"]), legend(PAPER_ORGANS))
    for name in ("ras_flipped", "permuted", "oblique_flipped"):
        views = oriented_views(*_images(GEOMETRIES[name]), legend(PAPER_ORGANS))
        for view in ("axial", "coronal", "sagittal"):
            assert np.array_equal(views[view]["labels"], reference[view]["labels"]), (name, view)
            assert np.array_equal(views[view]["ct"], reference[view]["ct"]), (name, view)

    def columns(view, key):
        return np.nonzero((reference[view]["labels"] == PAPER.label(key)).any(axis=0))[0]

    def rows(view, key):
        return np.nonzero((reference[view]["labels"] == PAPER.label(key)).any(axis=1))[0]

    axial, coronal, sagittal = reference["axial"], reference["coronal"], reference["sagittal"]
    width = axial["labels"].shape[1]
    # Radiological: the patient's left organs on the picture's right, right organs on its left.
    assert columns("axial", "left_lung").min() >= width // 2 > columns("axial", "right_lung").max()
    assert (axial["left"], axial["right"]) == ("R", "L")
    assert columns("coronal", "left_lung").min() >= width // 2 > columns("coronal", "right_lung").max()
    # Upright: anterior up on the axial view (aorta in front of the spinal cord), superior up elsewhere.
    assert rows("axial", "aorta").max() < rows("axial", "spinal_cord").min()
    assert rows("coronal", "right_lung").max() < rows("coronal", "liver").min()
    assert rows("sagittal", "aorta").max() < rows("sagittal", "spinal_cord").max()  # aorta starts higher
    # Anterior on the sagittal view's left.
    assert columns("sagittal", "aorta").max() < columns("sagittal", "spinal_cord").min()
    # Physical pixel size per view (height, width) in mm, for the aspect ratio.
    assert axial["pixel_mm"] == (SPACING[1], SPACING[0])
    assert coronal["pixel_mm"] == (SPACING[2], SPACING[0])
    assert sagittal["pixel_mm"] == (SPACING[2], SPACING[1])


def test_preview_png_shows_the_organs_in_their_colours(tmp_path):
    ct, labelmap = _images(GEOMETRIES["oblique_flipped"])
    path = write_preview(ct, labelmap, legend(PAPER_ORGANS), tmp_path / "preview.png")
    pixels = matplotlib.image.imread(str(path))
    height, width = pixels.shape[:2]
    assert 1000 <= width <= 2000 and 400 <= height <= 1000
    empty = write_preview(ct, sitk.Image(labelmap) * 0, legend(PAPER_ORGANS), tmp_path / "empty.png")
    changed = np.abs(pixels[..., :3] - matplotlib.image.imread(str(empty))[..., :3]).sum(axis=-1) > 0.05
    assert changed.sum() > 2000  # overlays (and legend text) differ from a picture without organs
    with pytest.raises(ValueError, match="window"):
        write_preview(ct, labelmap, legend(PAPER_ORGANS), tmp_path / "x.png", window="bone")


def test_preview_refuses_a_ct_that_is_not_the_segmented_one(tmp_path):
    ct, _ = _images(GEOMETRIES["lps"])
    _, other = _images(GEOMETRIES["permuted"])
    with pytest.raises(ValueError, match="segmented"):
        write_preview(ct, other, legend(PAPER_ORGANS), tmp_path / "preview.png")
    assert not (tmp_path / "preview.png").exists()


# ----------------------------------------------------------------------------------------------- RTSTRUCT

def _expected_rtutils_masks(labelmap: sitk.Image, series_data) -> np.ndarray:
    """The labelmap as [row, column, slice] of rt-utils' sorted series, mapped by each slice's position."""
    array = sitk.GetArrayFromImage(labelmap)
    slices = []
    for ds in series_data:
        index = labelmap.TransformPhysicalPointToIndex([float(v) for v in ds.ImagePositionPatient])
        assert index[:2] == (0, 0)  # the slice's first pixel is the labelmap's first voxel of that slice
        slices.append(index[2])
    return np.transpose(array[slices], (1, 2, 0))


@pytest.mark.parametrize("orientation", [None, "PRI"])
def test_rtstruct_round_trip_on_real_dicom_is_voxel_exact(tmp_path, dicom_with_uids, dicom_labelmap, orientation):
    # The same labels stored on a permuted and flipped grid (as a NIfTI export may have them) must
    # give the same contours.
    labelmap = dicom_labelmap if orientation is None else sitk.DICOMOrient(dicom_labelmap, orientation)
    path = write_rtstruct(labelmap, legend(PAPER_ORGANS), dicom_with_uids, tmp_path / "rtstruct.dcm")

    rtstruct = RTStructBuilder.create_from(str(dicom_with_uids), str(path))
    expected = _expected_rtutils_masks(dicom_labelmap, rtstruct.series_data)
    present = [o for o in PAPER.organs if (expected == PAPER.label(o.key)).any()]
    assert [o.key for o in present] == ["spinal_cord", "liver", "aorta"]  # what this field of view holds
    assert rtstruct.get_roi_names() == [o.tg263 for o in present]
    for o in present:
        mask = rtstruct.get_roi_mask_by_name(o.tg263)
        assert np.array_equal(mask, expected == PAPER.label(o.key)), o.key
    ds = pydicom.dcmread(path)
    assert [list(map(int, r.ROIDisplayColor)) for r in ds.ROIContourSequence] == [list(o.color) for o in present]
    assert {o.RTROIInterpretedType for o in ds.RTROIObservationsSequence} == {"ORGAN"}
    assert ds.Manufacturer == "SegMate" and ds.ApprovalStatus == "UNAPPROVED"

    def mean_x(name):  # LPS x: negative on the patient's right
        number = next(r.ROINumber for r in ds.StructureSetROISequence if r.ROIName == name)
        contours = next(c for c in ds.ROIContourSequence if int(c.ReferencedROINumber) == int(number))
        return np.mean([np.mean(np.reshape(c.ContourData, (-1, 3))[:, 0]) for c in contours.ContourSequence])

    assert mean_x("Liver") < mean_x("SpinalCord")  # the liver lies on the patient's right


def test_rtstruct_refuses_a_series_without_image_uids(tmp_path, dicom_series, dicom_labelmap):
    with pytest.raises(ValueError, match="SOP Instance UID"):
        write_rtstruct(dicom_labelmap, legend(PAPER_ORGANS), dicom_series, tmp_path / "rtstruct.dcm")
    assert list(tmp_path.iterdir()) == []


def test_rtstruct_refuses_a_labelmap_off_the_series_grid(tmp_path, dicom_with_uids, dicom_labelmap):
    shifted = sitk.Image(dicom_labelmap)
    origin = np.array(shifted.GetOrigin())
    shifted.SetOrigin((origin + [0.5 * shifted.GetSpacing()[0], 0, 0]).tolist())
    with pytest.raises(ValueError, match="not on the voxel grid"):
        write_rtstruct(shifted, legend(PAPER_ORGANS), dicom_with_uids, tmp_path / "rtstruct.dcm")
    assert list(tmp_path.iterdir()) == []


def test_rtstruct_takes_the_series_out_of_a_mixed_folder(tmp_path, dicom_with_uids, dicom_labelmap, shared_data):
    mixed = tmp_path / "mixed"
    shutil.copytree(dicom_with_uids, mixed)
    other = pydicom.dcmread(next(dicom_with_uids.iterdir()))  # a one-slice series of another scan
    other.SeriesInstanceUID, other.SOPInstanceUID = generate_uid(), generate_uid()
    other.save_as(mixed / "other_series.dcm")
    path = write_rtstruct(dicom_labelmap, legend(["liver"]), mixed, tmp_path / "rtstruct.dcm")
    rtstruct = RTStructBuilder.create_from(str(dicom_with_uids), str(path))
    expected = _expected_rtutils_masks(dicom_labelmap, rtstruct.series_data)
    assert np.array_equal(rtstruct.get_roi_mask_by_name("Liver"), expected == PAPER.label("liver"))


# ----------------------------------------------------------------------------------------------- write_outputs

def test_write_outputs_writes_each_file_under_its_name(tmp_path):
    ct, labelmap = _images(GEOMETRIES["ras_flipped"])
    written = write_outputs(_result(labelmap), tmp_path / "case_001", image=ct)
    assert written == {fmt: tmp_path / "case_001" / OUTPUT_FILES[fmt]
                       for fmt in ("nifti", "seg.nrrd", "report", "preview")}
    assert sorted(p.name for p in (tmp_path / "case_001").iterdir()) == sorted(
        ["labels.nii.gz", "segmentation.seg.nrrd", "report.json", "preview.png"])
    assert json.loads(written["report"].read_text())["segments"][0]["key"] == "left_lung"
    umask = os.umask(0o022)
    os.umask(umask)
    assert {p.stat().st_mode & 0o777 for p in written.values()} == {0o666 & ~umask}  # as any file the user writes

    only = write_outputs(_result(labelmap), tmp_path / "tg", formats=["seg.nrrd"], naming="tg263")
    assert list(only) == ["seg.nrrd"]
    assert slicerio.segment_names(slicerio.read_segmentation(str(only["seg.nrrd"]), skip_voxels=True))[0] == "Lung_L"


def test_seg_nrrd_of_a_run_records_the_source_threshold_and_z_smoothing_of_each_organ(tmp_path):
    import slicer
    import vtk

    ct, labelmap = _images(GEOMETRIES["oblique_flipped"])
    result = _result(labelmap, ["spinal_cord", "liver"])
    result.model_info.update(mask_thresholds={"spinal_cord": 0.6, "liver": 0.5},
                             z_smoothing_mm={"spinal_cord": 6.0, "liver": 0.0})
    path = write_outputs(result, tmp_path / "case", formats=["seg.nrrd"])["seg.nrrd"]
    expected = {"spinal_cord": {"SegMate.Threshold": "0.60", "SegMate.ZSmoothingMM": "6"},
                "liver": {"SegMate.Threshold": "0.50", "SegMate.ZSmoothingMM": "0"}}
    read = {s["id"]: s.get("tags", {}) for s in slicerio.read_segmentation(str(path), skip_voxels=True)["segments"]}
    for key, tags in expected.items():
        source = f"SegMate {segmatecore.__version__}, model segmate-fastvit-t12 1.0.0"
        assert {**tags, "SegMate.Source": source}.items() <= read[key].items()
    # and Slicer itself reads them as segment tags
    scene = slicer.vtkMRMLScene()
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(node) == 1
    for key, tags in expected.items():
        for tag, value in tags.items():
            got = vtk.reference("")
            assert node.GetSegmentation().GetSegment(key).GetTag(tag, got) and str(got) == value


def test_write_outputs_with_rtstruct_uses_the_results_dicom_folder(tmp_path, dicom_with_uids, dicom_labelmap):
    result = _result(dicom_labelmap, ["liver", "aorta"])
    result.dicom_dir = str(dicom_with_uids)
    written = write_outputs(result, tmp_path / "case", formats=["rtstruct", "nifti"])
    assert written["rtstruct"].name == "rtstruct.dcm"
    assert pydicom.dcmread(written["rtstruct"]).StructureSetROISequence[1].ROIName == "A_Aorta"


def test_write_outputs_writes_nothing_when_one_output_fails(tmp_path, dicom_series, dicom_labelmap):
    result = _result(dicom_labelmap, ["liver"])
    with pytest.raises(ValueError, match="SOP Instance UID"):
        write_outputs(result, tmp_path / "case", formats=["nifti", "report", "rtstruct"],
                      dicom_dir=dicom_series)
    assert list((tmp_path / "case").iterdir()) == []


def test_write_outputs_refuses_what_it_cannot_write_before_writing(tmp_path):
    _, labelmap = _images(GEOMETRIES["lps"])
    with pytest.raises(ValueError, match="Unknown output format"):
        write_outputs(_result(labelmap), tmp_path, formats=["nifti", "stl"])
    with pytest.raises(ValueError, match="needs the CT image"):
        write_outputs(_result(labelmap), tmp_path, formats=["nifti", "preview"])
    with pytest.raises(ValueError, match="DICOM series"):
        write_outputs(_result(labelmap), tmp_path, formats=["rtstruct"])
    assert list(tmp_path.iterdir()) == []


def test_an_interrupted_write_keeps_the_previous_file_and_leaves_no_partial_one(tmp_path, monkeypatch):
    _, labelmap = _images(GEOMETRIES["lps"])
    target = write_seg_nrrd(labelmap, legend(["liver"]), tmp_path / "segmentation.seg.nrrd")
    before = target.read_bytes()

    def interrupted(filename, segmentation, **kwargs):
        Path(filename).write_bytes(b"NRRD0004\n# half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(slicerio, "write_segmentation", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_seg_nrrd(labelmap, legend(PAPER_ORGANS), target)
    assert target.read_bytes() == before
    assert os.listdir(tmp_path) == ["segmentation.seg.nrrd"]
