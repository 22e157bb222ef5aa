"""DICOM SEG output: the segments a PACS or viewer shows (names, SNOMED-CT codes, colours), frames on the
source series' own geometry, voxels equal to the labelmap, and what made it."""
from __future__ import annotations

import json
from pathlib import Path

import highdicom as hd
import nrrd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from segmatecore.cli import main as cli
from segmatecore.hub.catalogue import catalogue_entry, default_model_id
from segmatecore.export.dicom_seg import write_dicom_seg
from segmatecore.data.organs import OrganSet, PAPER_ORGANS, category, organ

PAPER = OrganSet(PAPER_ORGANS)
CT_3SLICE = "dcmqi_ct3slice/ct-3slice"
BUNDLED_VERSION = catalogue_entry(default_model_id())["version"]  # the bundled model's, as it changes
DEMO_MADE_BY = {"segmate_version": "0.1.0", "model_id": "segmate_hn_fastvit_t12", "model_version": BUNDLED_VERSION,
                "intended_use": "Research and demonstration; not for clinical use.", "clinical_use": False}


def series_in_reader_order(folder: Path) -> list[pydicom.Dataset]:
    """The series' headers in the order SimpleITK (GDCM) reads its files: slice k of the CT volume."""
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder))
    return [pydicom.dcmread(f, stop_before_pixels=True) for f in files]


def segment_numbers(labels: np.ndarray, legend: dict[str, int]) -> np.ndarray:
    """A labelmap's values as SEG segment numbers (1, 2, ... in the legend's order)."""
    lut = np.zeros(256, dtype=np.uint8)
    for number, value in enumerate(legend.values(), start=1):
        lut[value] = number
    return lut[labels]


def assert_frames_on_the_source_geometry(seg: pydicom.Dataset, sources: list[pydicom.Dataset]) -> None:
    """Every frame lies exactly where the source image it references lies, with its orientation and spacing."""
    by_uid = {str(ds.SOPInstanceUID): ds for ds in sources}
    shared = seg.SharedFunctionalGroupsSequence[0]
    for ds in sources:
        assert [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient] == \
            [float(v) for v in ds.ImageOrientationPatient]
        assert [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing] == [float(v) for v in ds.PixelSpacing]
    assert (seg.Rows, seg.Columns) == (sources[0].Rows, sources[0].Columns)
    assert seg.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    for frame in seg.PerFrameFunctionalGroupsSequence:
        uid = str(frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        position = [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient]
        assert position == [float(v) for v in by_uid[uid].ImagePositionPatient]


def seg_labels(path: Path, sources: list[pydicom.Dataset]) -> np.ndarray:
    """The SEG's voxels as one labelmap of segment numbers per source image, [image, row, column]."""
    seg = hd.seg.segread(str(path))
    return seg.get_pixels_by_source_instance([str(ds.SOPInstanceUID) for ds in sources], combine_segments=True,
                                             relabel=False)


@pytest.mark.parametrize("orientation", [None, "PRI"])
def test_dicom_seg_of_a_real_series_has_its_geometry_codes_colours_and_voxels(tmp_path, dicom_with_uids,
                                                                               dicom_labelmap, orientation):
    # The same labels on a permuted, flipped grid (as a NIfTI export may hold them) give the same SEG.
    labelmap = dicom_labelmap if orientation is None else sitk.DICOMOrient(dicom_labelmap, orientation)
    legend = PAPER.labels()
    path = write_dicom_seg(labelmap, legend, dicom_with_uids, tmp_path / "seg.dcm", made_by=DEMO_MADE_BY)

    seg = pydicom.dcmread(path)
    assert seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
    assert [int(s.SegmentNumber) for s in seg.SegmentSequence] == list(range(1, len(PAPER_ORGANS) + 1))
    for item, o in zip(seg.SegmentSequence, PAPER.organs):  # one segment per organ, in the model's order
        assert item.SegmentLabel == o.display_name
        assert item.SegmentedPropertyCategoryCodeSequence[0].CodeValue == category()["code"]
        code = item.SegmentedPropertyTypeCodeSequence[0]
        assert (code.CodingSchemeDesignator, code.CodeValue) == (o.type["scheme"], o.type["code"])
        modifiers = [m.CodeValue for m in code.get("SegmentedPropertyTypeModifierCodeSequence", [])]
        assert modifiers == ([o.modifier["code"]] if o.modifier else [])
        rgb = hd.color.CIELabColor.from_dicom_value(item.RecommendedDisplayCIELabValue).to_rgb()
        assert np.allclose(rgb, o.color, atol=1.5)
        assert item.SegmentAlgorithmType == "AUTOMATIC"
        algorithm = item.SegmentationAlgorithmIdentificationSequence[0]
        assert algorithm.AlgorithmName == "SegMate segmate_hn_fastvit_t12" and algorithm.AlgorithmVersion == BUNDLED_VERSION

    sources = series_in_reader_order(dicom_with_uids)
    assert {str(r.ReferencedSOPInstanceUID) for r in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence} \
        == {str(ds.SOPInstanceUID) for ds in sources}
    assert_frames_on_the_source_geometry(seg, sources)
    expected = segment_numbers(sitk.GetArrayFromImage(dicom_labelmap), legend)  # slice k = k-th file read
    assert np.array_equal(seg_labels(path, sources), expected)
    assert set(np.unique(expected)) == {0, PAPER.label("spinal_cord"), PAPER.label("liver"), PAPER.label("aorta")}


def test_dicom_seg_refuses_a_labelmap_off_the_series_grid_and_a_series_without_image_uids(
        tmp_path, shared_data, dicom_with_uids, dicom_labelmap):
    shifted = sitk.Image(dicom_labelmap)
    shifted.SetOrigin((np.array(shifted.GetOrigin()) + [0.5 * shifted.GetSpacing()[0], 0, 0]).tolist())
    with pytest.raises(ValueError, match="not on the voxel grid"):
        write_dicom_seg(shifted, PAPER.labels(), dicom_with_uids, tmp_path / "seg.dcm")
    with pytest.raises(ValueError, match="SOP Instance UID"):  # the anonymised original blanked them
        write_dicom_seg(dicom_labelmap, PAPER.labels(), shared_data / "totalseg_example/example_ct_dicom",
                        tmp_path / "seg.dcm")
    assert list(tmp_path.iterdir()) == []


def test_predict_writes_a_dicom_seg_of_a_dicom_series_and_every_output_says_the_demo_model_is_not_clinical(
        tmp_path, shared_data, capsys):
    series = shared_data / CT_3SLICE
    out = tmp_path / "out"
    formats = "dicomseg,rtstruct,report,seg.nrrd,nifti"
    assert cli.main(["predict", str(series), "-o", str(out), "--device", "cpu", "--format", formats,
                     "--naming", "tg263"]) == 0
    printed = capsys.readouterr().out
    assert f"segmate_hn_fastvit_t12 {BUNDLED_VERSION} is not for clinical use" in printed.splitlines()[0]
    case = out / series.name
    report = json.loads((case / "report.json").read_text())
    organ_keys = list(report["labels"])
    assert report["organs"] == organ_keys and len(organ_keys) == 7  # the default model's organs, in its order

    seg = pydicom.dcmread(case / "seg.dcm")
    assert [s.SegmentLabel for s in seg.SegmentSequence] == [organ(k).tg263 for k in organ_keys]
    sources = series_in_reader_order(series)
    assert_frames_on_the_source_geometry(seg, sources)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(case / "labels.nii.gz")))
    assert labels.shape == (len(sources), sources[0].Rows, sources[0].Columns)
    assert np.array_equal(seg_labels(case / "seg.dcm", sources), segment_numbers(labels, report["labels"]))

    # What made every output, and that it is not for clinical use.
    assert "not for clinical use" in seg.SeriesDescription and len(seg.SeriesDescription) <= 64
    assert seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmVersion == BUNDLED_VERSION
    rtstruct = pydicom.dcmread(case / "rtstruct.dcm")
    assert rtstruct.StructureSetLabel == "NOT CLINICAL USE"  # SH: 16 characters at most
    assert "Not for clinical use" in rtstruct.StructureSetDescription
    assert f"segmate_hn_fastvit_t12 {BUNDLED_VERSION}" in rtstruct.StructureSetDescription
    assert "not for clinical use" in rtstruct.SeriesDescription and len(rtstruct.SeriesDescription) <= 64
    assert "not for clinical use" in report["notice"]
    assert (report["model"]["id"], report["model"]["version"]) == ("segmate_hn_fastvit_t12", BUNDLED_VERSION)
    assert report["model"]["clinical_use"] is False and report["segmate_version"]
    header = nrrd.read_header(str(case / "segmentation.seg.nrrd"))
    assert header["SegMate_ModelId"] == "segmate_hn_fastvit_t12" and header["SegMate_ModelVersion"] == BUNDLED_VERSION
    assert header["SegMate_Notice"] == "not for clinical use" and header["SegMate_ClinicalUse"] == "false"
    assert header["SegMate_Version"] == report["segmate_version"]


def test_predict_refuses_dicomseg_for_an_input_that_is_not_dicom_before_any_work(tmp_path, shared_data, capsys):
    nifti = shared_data / "totalseg_example" / "example_ct_sm.nii.gz"
    assert cli.main(["predict", str(nifti), "-o", str(tmp_path / "out"), "--format", "dicomseg"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--format dicomseg needs DICOM series input" in err and "\n" not in err
    assert not (tmp_path / "out").exists()
