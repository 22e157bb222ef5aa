"""Shared fixtures: paths to the real data beside the repository and small deterministic models."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import torch
from pydicom.uid import generate_uid

from segmatecore.data.organs import OrganSet, PAPER_ORGANS

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DICOM_SERIES = "totalseg_example/example_ct_dicom"  # the real CT series, below shared/data
sys.path.insert(0, str(Path(__file__).resolve().parent))

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = SHARED / "data"
    if not path.is_dir():
        pytest.fail(f"The real test data are expected in {path} (shared/ beside the repository).")
    return path


@pytest.fixture
def scene():
    """A fresh real MRML scene (slicer-core) assigned to slicer.mrmlScene, cleared afterwards."""
    import slicer

    sys.path.insert(0, str(REPO / "SegMateSlicer"))
    from SegMateLib.segments import ensureConverterRules

    mrml = slicer.vtkMRMLScene()
    slicer.mrmlScene = mrml
    ensureConverterRules()
    yield mrml
    mrml.Clear(1)


@pytest.fixture(scope="module")
def one_torch_thread():
    """For modules of tiny tensors: one thread avoids waking a second one for each small operation."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def dicom_with_uids(shared_data, tmp_path_factory) -> Path:
    """The real CT series with the SOP Instance UIDs that anonymisation blanked restored from each file's
    meta header, plus study and series UIDs, as a PACS export would have them. Stored uncompressed, so
    the tests do not spend their time decoding JPEG 2000."""
    folder = tmp_path_factory.mktemp("ct_dicom")
    study, series = generate_uid(entropy_srcs=["segmate-study"]), generate_uid(entropy_srcs=["segmate-series"])
    for source in sorted((shared_data / DICOM_SERIES).iterdir()):
        ds = pydicom.dcmread(source)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.decompress()
        ds.save_as(folder / source.name)
    return folder


@pytest.fixture(scope="module")
def dicom_labelmap(shared_data, dicom_with_uids) -> sitk.Image:
    """Real organ shapes on the series grid: TotalSegmentator's output for this series, in the label values of a
    model with the paper's nine organs."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(dicom_with_uids)))
    ct = reader.Execute()
    totalseg = sitk.ReadImage(str(shared_data / "totalseg_example/example_seg_dicom.nii.gz"))
    totalseg = sitk.Resample(totalseg, ct, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    class_map = json.loads((shared_data / "totalseg_example/class_map_total.json").read_text())["total"]
    index = {name: int(i) for i, name in class_map.items()}
    source = sitk.GetArrayFromImage(totalseg)
    labels = np.zeros_like(source)
    paper = OrganSet(PAPER_ORGANS)
    for o in paper.organs:
        labels[np.isin(source, [index[n] for n in o.totalsegmentator])] = paper.label(o.key)
    labelmap = sitk.GetImageFromArray(labels)
    labelmap.CopyInformation(ct)
    return labelmap
