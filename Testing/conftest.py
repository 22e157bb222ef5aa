"""Shared fixtures: paths to the real data beside the repository, small synthetic CTs and datasets, and
the intensity test network (support/intensity_model.py), which tests ask for instead of importing it.

``pytest.ini`` puts ``Testing`` (for ``support``) and ``SegMateSlicer`` (for ``SegMateLib``) on the path.
"""
from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import torch
from pydicom.uid import generate_uid

from segmatecore.data.organs import OrganSet, PAPER_ORGANS
from segmatecore.resources import resource_path
from support import intensity_model as intensity, reference_fill
from support.datasets import nifti_pairs_dataset, prepared_pairs_dataset, validation_copies_dataset
from support.dicom_series import write_ct_series as write_series

TESTING = Path(__file__).resolve().parent
REPO = TESTING.parent
SHARED = REPO.parent / "shared"
DICOM_SERIES = "totalseg_example/example_ct_dicom"  # the real CT series, below shared/data

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
    from SegMateLib.segments import ensureConverterRules

    mrml = slicer.vtkMRMLScene()
    slicer.mrmlScene = mrml
    ensureConverterRules()
    yield mrml
    mrml.Clear(1)


@pytest.fixture(scope="session")
def scene_snapshot():
    """``scene_snapshot(scene)``: every node (ID, class, name) and every segment (ID, name, label value,
    extent, voxels) in the scene, to compare before and after: what 'the scene is unchanged' means."""
    from vtk.util import numpy_support
    from SegMateLib.segments import binaryLabelmapName

    def segments_of(node) -> list[tuple]:
        segmentation = node.GetSegmentation()
        found = []
        for index in range(segmentation.GetNumberOfSegments()):
            segment_id = segmentation.GetNthSegmentID(index)
            segment = segmentation.GetSegment(segment_id)
            labelmap = segment.GetRepresentation(binaryLabelmapName())
            scalars = labelmap.GetPointData().GetScalars()
            voxels = numpy_support.vtk_to_numpy(scalars).tobytes() if scalars is not None else b""
            found.append((node.GetID(), index, segment_id, segment.GetName(), segment.GetLabelValue(),
                          tuple(labelmap.GetExtent()), voxels))
        return found

    def snapshot(scene) -> dict:
        nodes = [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]
        return {"nodes": [(n.GetID(), n.GetClassName(), n.GetName()) for n in nodes],
                "segments": [s for n in nodes if n.IsA("vtkMRMLSegmentationNode") for s in segments_of(n)]}
    return snapshot


@pytest.fixture(scope="module")
def one_torch_thread():
    """For modules of tiny tensors: one thread avoids waking a second one for each small operation."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def write_ct_series():
    """``write_ct_series(folder, slices, positions, *, orientation, pixel_spacing, modality, series_uid, study_uid,
    first_instance, prefix)``: SimpleITK slices written as a DICOM CT series; returns the file names in order."""
    return write_series


@pytest.fixture(scope="session")
def dicom_series(shared_data) -> Path:
    """The real CT series (anonymised, JPEG 2000) below shared/data."""
    return shared_data / DICOM_SERIES


@pytest.fixture(scope="module")
def dicom_with_uids(dicom_series, tmp_path_factory) -> Path:
    """The real CT series with the SOP Instance UIDs that anonymisation blanked restored from each file's
    meta header, plus study and series UIDs, as a PACS export would have them. Stored uncompressed, so
    the tests do not spend their time decoding JPEG 2000."""
    folder = tmp_path_factory.mktemp("ct_dicom")
    study, series = generate_uid(entropy_srcs=["segmate-study"]), generate_uid(entropy_srcs=["segmate-series"])
    for source in sorted(dicom_series.iterdir()):
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


@pytest.fixture(scope="session")
def support_env() -> dict[str, str]:
    """The environment for a child Python that imports ``support`` and ``SegMateLib`` (it has no fixtures)."""
    paths = [str(TESTING), str(REPO / "SegMateSlicer"), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}


# ---- the intensity test network ---------------------------------------------------------------------

@pytest.fixture(scope="session")
def intensity_model() -> type[intensity.IntensityModel]:
    """The intensity test network's class: call it for a fresh network, or subclass it."""
    return intensity.IntensityModel


@pytest.fixture(scope="session")
def band_centre():
    """``band_centre(key, bands=DEFAULT_BANDS)``: the HU to paint for a voxel the network must call ``key``."""
    return intensity.band_centre


@pytest.fixture(scope="session")
def bands_for():
    """``bands_for(keys)``: each channel's HU band for a network with these organs in this order."""
    return intensity.bands_for


@pytest.fixture(scope="session")
def head_neck_organs() -> tuple[str, ...]:
    """The seven head and neck organs of a second test network, in channel order."""
    return intensity.HEAD_NECK_ORGANS


@pytest.fixture(scope="session")
def organ_blocks_ct():
    """``organ_blocks_ct(shape)``: a body with a block of every paper organ's band, as an int16 [k, j, i] array."""
    return intensity.organ_blocks_ct


@pytest.fixture
def intensity_network(monkeypatch):
    """Make ``--model`` (segmate predict, evaluate) load one intensity test network, whatever the argument."""
    model = intensity.IntensityModel(input_size=32)
    monkeypatch.setattr("segmatecore.inference.predictor.load_with_facts",
                        lambda name: (model, {"backbone": "intensity-test", "id": str(name), "version": None}))
    return model


@pytest.fixture(scope="session")
def liver_ct_file(band_centre):
    """``liver_ct_file(path, slices=8)``: write a small CT-like NIfTI with a liver-band organ on its left half."""
    def write(path: Path, slices: int = 8) -> Path:
        a = np.full((slices, 32, 32), -1000, dtype=np.int16)
        a[:, 4:28, 4:28] = 300
        a[2:6, 10:20, 16:26] = band_centre("liver")
        image = sitk.GetImageFromArray(a)
        image.SetSpacing((1.5, 1.5, 3.0))
        path.parent.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(image, str(path))
        return path
    return write


# ---- synthetic datasets and training ------------------------------------------------------------------

@pytest.fixture(scope="session")
def nifti_pairs():
    """``nifti_pairs(root, cases=4, shape_zyx=(16, 40, 48), seed=0)``: a synthetic nifti-pairs source folder
    (body, spinal cord, esophagus, left kidney) ready for ``segmate prepare``."""
    return nifti_pairs_dataset


@pytest.fixture(scope="session")
def prepared_pairs():
    """``prepared_pairs(root, [(ct, labels), ...], label_map, fractions, spacing=(1, 1, 1), direction=None)``:
    array pairs written as NIfTI cases and prepared; returns the data folder."""
    return prepared_pairs_dataset


@pytest.fixture(scope="session")
def validation_copies():
    """``validation_copies(root, ct, labels, label_map, spacing, copies=3)``: a prepared dataset whose
    validation split is copies of one case; returns its data folder."""
    return validation_copies_dataset


@pytest.fixture(scope="session")
def tiny_training() -> tuple[str, ...]:
    """`segmate train` options for a run of a few steps on 64 x 64 slices."""
    return ("--input-size", "64", "--batch-size", "2", "--samples-per-epoch", "4", "--epochs", "4", "--workers", "0",
            "--val-max-slices", "2", "--augment", "light", "--log-every", "1")


# ---- the research code's reference ----------------------------------------------------------------------

@pytest.fixture(scope="session")
def reference_state_dict():
    """``reference_state_dict(backbone)``: the research-layout weights filled by shared/reference's formula."""
    return functools.partial(reference_fill.reference_state_dict, SHARED / "reference")


@pytest.fixture(scope="session")
def reference_outputs():
    """``reference_outputs(backbone)``: the research code's outputs, per stage, for those weights."""
    return functools.partial(reference_fill.reference_outputs, SHARED / "reference")


# ---- network agreement ----------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def sample_ct() -> sitk.Image:
    """The bundled sample CT (Resources/SampleData)."""
    return sitk.ReadImage(str(resource_path("SampleData", "totalsegmentator_example_ct.nii.gz")))


@pytest.fixture(scope="session")
def assert_agrees():
    """``assert_agrees(a, b, bar=DICE_BAR)``: two [B, organs, H, W] masks agree with Dice >= bar for every organ."""
    from segmatecore.bench.configs import DICE_BAR
    from segmatecore.bench.jobs import dice

    def check(a: torch.Tensor, b: torch.Tensor, bar: float = DICE_BAR) -> None:
        scores = [dice(a[:, k].numpy(), b[:, k].numpy()) for k in range(a.shape[1])]
        assert min(scores) >= bar, f"Dice per organ vs fp32: {np.round(scores, 4).tolist()}"
    return check
