"""Organ sets belong to the model: a nine-organ model (the paper's) and a seven-organ head-and-neck
model side by side in one process, through every consumer: model files, segment(), the command
line, the Slicer logic and `segmate evaluate`.

Both are intensity test networks (the ``intensity_model`` fixture) whose channel i is drawn where the
centre slice lies in band i: one painted volume is "left lung" for the nine-organ model and
"spinal cord" for the seven-organ one, so every name, label value and colour downstream must come
from the model that made the labelmap, never from a global table.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
import slicerio
import torch
import vtk

from segmatecore import create_model, save_model, segment
from segmatecore.cli import main as cli
from segmatecore.models.checkpoint import default_metadata, load_model, read_metadata
from segmatecore.evaluation.evaluate import evaluate
from segmatecore.data.organs import PAPER_ORGANS, OrganSet, organ

from SegMateLib.logic import SegMateLogic
from SegMateLib.terminology import organKeyForTerminology

SHAPE = (8, 64, 64)  # k, j, i: the networks' input size, so no resizing blurs the block edges
SPACING = (1.5, 1.5, 3.0)
RAS_STORED = (-1, 0, 0, 0, -1, 0, 0, 0, 1)  # as many NIfTI files


@pytest.fixture(scope="module")
def organ_sets(head_neck_organs) -> dict[str, tuple[str, ...]]:
    """The two test networks' organs in channel order: the paper's nine and seven head and neck organs."""
    return {"nine": PAPER_ORGANS, "seven": head_neck_organs}


@pytest.fixture(scope="module")
def painted(bands_for):
    """``painted(channels=(0, 3, 6))``: blocks painted in the bands of the given channels, on air: the
    n-th channel's block is at rows 4 + 12n.."""
    def paint(channels=(0, 3, 6)) -> np.ndarray:
        array = np.full(SHAPE, -1000, dtype=np.int16)
        bands = bands_for(range(9))
        for n, c in enumerate(channels):
            lo, hi = bands[c]
            array[1:7, 4 + 12 * n:12 + 12 * n, 10:30] = (lo + hi) / 2
        return array
    return paint


def image_of(array: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING)
    image.SetDirection(RAS_STORED)
    return image


@pytest.fixture(scope="module")
def networks(organ_sets, intensity_model):
    return {name: intensity_model(input_size=64, organ_set=keys) for name, keys in organ_sets.items()}


def test_both_models_segment_in_one_process_with_their_own_organs_and_labels(networks, organ_sets, painted):
    image = image_of(painted())
    results = {name: segment(image, net, device="cpu", z_norm="volume") for name, net in networks.items()}
    for name, keys in organ_sets.items():
        result = results[name]
        assert result.organs == list(keys)
        assert result.labels == {k: i + 1 for i, k in enumerate(keys)}
        labels = sitk.GetArrayFromImage(result.labelmap)
        for n, channel in enumerate((0, 3, 6)):
            block = labels[1:7, 4 + 12 * n:12 + 12 * n, 10:30]
            assert (block == channel + 1).all(), (name, keys[channel])
        assert result.volumes_ml[keys[0]] > 0
    assert results["nine"].volumes_ml["left_lung"] == pytest.approx(results["seven"].volumes_ml["spinal_cord"])


def test_model_files_of_both_organ_sets_load_side_by_side(tmp_path, organ_sets, painted):
    paths = {}
    for name, keys in organ_sets.items():
        meta = default_metadata("fastvit_t12", organs=list(keys))
        meta["preprocessing"]["input_size"] = [32, 32]
        torch.manual_seed(0)
        paths[name] = save_model(create_model("fastvit_t12", num_classes=len(keys)), tmp_path / f"{name}.safetensors", meta)
    loaded = {name: load_model(path) for name, path in paths.items()}
    for name, keys in organ_sets.items():
        assert loaded[name].num_classes == len(keys) and read_metadata(paths[name])["organs"] == list(keys)
        result = segment(image_of(painted()), loaded[name], device="cpu", z_norm="volume")
        assert result.organs == list(keys)
        assert set(np.unique(sitk.GetArrayFromImage(result.labelmap))) <= {0, *result.labels.values()}


def test_a_model_refuses_organs_it_does_not_predict_and_names_its_own(networks, painted):
    with pytest.raises(ValueError, match="brainstem") as error:
        segment(image_of(painted()), networks["nine"], organs=["brainstem"], device="cpu")
    assert "left_lung" in str(error.value)


@pytest.fixture
def by_name(monkeypatch, networks):
    """`--model nine` / `--model seven` load the matching test network."""
    def load(name):
        net = name if isinstance(name, torch.nn.Module) else networks[str(name)]
        return net, {"id": str(name), "version": None}

    monkeypatch.setattr("segmatecore.inference.predictor.load_with_facts", load)


def test_command_line_outputs_carry_each_models_legend(tmp_path, by_name, organ_sets, painted):
    ct = tmp_path / "ct.nii.gz"
    sitk.WriteImage(image_of(painted()), str(ct))
    for name, keys in organ_sets.items():
        out = tmp_path / name
        assert cli.main(["predict", str(ct), "-o", str(out), "--model", name, "--device", "cpu",
                         "--z-norm", "volume", "--format", "nifti,seg.nrrd,report"]) == 0
        report = json.loads((out / "ct" / "report.json").read_text())
        assert report["labels"] == {k: i + 1 for i, k in enumerate(keys)}
        assert [s["key"] for s in report["segments"]] == list(keys)
        segmentation = slicerio.read_segmentation(str(out / "ct" / "segmentation.seg.nrrd"))
        for segment_info in segmentation["segments"]:
            assert segment_info["labelValue"] == report["labels"][segment_info["id"]]
            assert segment_info["name"] == organ(segment_info["id"]).display_name
        labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "ct" / "labels.nii.gz")))
        assert (labels[1:7, 4:12, 10:30] == report["labels"][keys[0]]).all()


def test_command_line_organs_follow_the_model(tmp_path, by_name, capsys, painted):
    ct = tmp_path / "ct.nii.gz"
    sitk.WriteImage(image_of(painted()), str(ct))
    assert cli.main(["predict", str(ct), "-o", str(tmp_path / "a"), "--model", "seven", "--device", "cpu",
                     "--organs", "left_parotid,mandible", "--format", "report"]) == 0
    report = json.loads((tmp_path / "a" / "ct" / "report.json").read_text())
    assert report["labels"] == {"left_parotid": 4, "mandible": 7}
    assert cli.main(["predict", str(ct), "-o", str(tmp_path / "b"), "--model", "seven", "--device", "cpu",
                     "--organs", "liver", "--format", "report"]) == 2
    message = capsys.readouterr().err
    assert "liver" in message and "spinal_cord" in message and "mandible" in message


def test_slicer_logic_writes_each_models_segments(scene, networks, organ_sets, painted, head_neck_organs):
    volume = slicer.util.addVolumeFromArray(painted(), np.diag([-1.5, -1.5, 3.0, 1.0]), name="CT")
    logic = SegMateLogic()
    for name, keys in organ_sets.items():
        run = logic.process(volume, None, model=networks[name], device="cpu", zNorm="volume")
        segmentation = run.segmentationNode.GetSegmentation()
        assert list(run.segmentIds) == list(keys)
        for key, segment_id in run.segmentIds.items():
            found = segmentation.GetSegment(segment_id)
            assert found.GetName() == organ(key).display_name
            assert organKeyForTerminology(found.GetTerminology()) == key
            assert np.allclose(found.GetColor(), organ(key).color_float)
        exported = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
        ids = vtk.vtkStringArray()
        ids.InsertNextValue(run.segmentIds[keys[0]])
        assert slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(run.segmentationNode, ids,
                                                                                     exported, volume)
        first = slicer.util.arrayFromVolume(exported)
        assert first[1:7, 4:12, 10:30].all() and (first > 0).sum() == 6 * 8 * 20
    assert [o.key for o in logic.organTable(head_neck_organs)] == list(head_neck_organs)


@pytest.fixture(scope="module")
def head_neck_data(tmp_path_factory, head_neck_organs, bands_for, prepared_pairs):
    """Two cases with a cord and a left parotid, painted in the seven-organ model's bands."""
    bands = bands_for(head_neck_organs)
    pairs = []
    for n in range(2):
        lab = np.zeros(SHAPE, dtype=np.uint8)
        lab[1:7, 4:12, 10:30] = 1
        lab[2:6, 20:30, 28:36] = 2
        ct = np.full(SHAPE, -1000, dtype=np.int16)
        ct[lab == 1] = sum(bands["spinal_cord"]) / 2
        ct[lab == 2] = sum(bands["left_parotid"]) / 2
        pairs.append((ct, lab))
    return prepared_pairs(tmp_path_factory.mktemp("hn"), pairs, {"spinal_cord": 1, "left_parotid": 2}, (0.0, 0.0, 1.0),
                          spacing=SPACING, direction=RAS_STORED)


def test_evaluate_scores_each_model_on_its_own_organs(head_neck_data, networks, tmp_path):
    seven = evaluate(networks["seven"], [head_neck_data], tmp_path / "seven", device="cpu")
    scores = seven["modes"]["label_free"]
    assert set(scores) == {"spinal_cord", "left_parotid"}
    assert scores["left_parotid"]["dice"]["mean"] == pytest.approx(1.0)
    assert scores["spinal_cord"]["dice"]["mean"] == pytest.approx(1.0)
    nine = evaluate(networks["nine"], [head_neck_data], tmp_path / "nine", device="cpu")
    assert set(nine["modes"]["label_free"]) == {"spinal_cord"}  # the nine-organ model has no parotids
    assert (tmp_path / "seven" / "boxplot.png").stat().st_size > 0
    with pytest.raises(ValueError, match="liver"):
        evaluate(networks["seven"], [head_neck_data], tmp_path / "x", device="cpu", organs=["liver"])


def test_organ_sets_check_their_keys(head_neck_organs):
    with pytest.raises(ValueError, match="heart"):
        OrganSet(["liver", "heart"])
    with pytest.raises(ValueError, match="once"):
        OrganSet(["liver", "liver"])
    assert OrganSet(head_neck_organs).labels()["mandible"] == 7


HEAD_NECK_CODES = {  # checked against Slicer's terminology (DICOM master list) and DICOM PS3.16
    "brainstem": ("SCT^119238007^Brain stem", "^^", "Brainstem"),
    "left_parotid": ("SCT^45289007^Parotid gland", "SCT^7771000^Left", "Parotid_L"),
    "right_parotid": ("SCT^45289007^Parotid gland", "SCT^24028007^Right", "Parotid_R"),
    "larynx": ("SCT^4596009^Larynx", "^^", "Larynx"),
    "mandible": ("SCT^91609006^Mandible", "^^", "Bone_Mandible"),
}


@pytest.mark.parametrize("key", list(HEAD_NECK_CODES))
def test_head_and_neck_terminology_is_serialised_by_slicer(key):
    """The terminology string comes from Slicer's own vtkSlicerTerminologiesModuleLogic and is read
    back by it; left and right parotids differ only by their laterality modifier."""
    from SegMateLib.terminology import segmentName, terminologyEntry

    type_code, modifier, tg263 = HEAD_NECK_CODES[key]
    entry = terminologyEntry(organ(key))
    assert entry == ("Segmentation category and type - DICOM master list~SCT^123037004^Anatomical Structure"
                     f"~{type_code}~{modifier}~Anatomic codes - DICOM master list~^^~^^")
    assert organKeyForTerminology(entry) == key
    parsed = slicer.vtkSlicerTerminologyEntry()
    assert slicer.vtkSlicerTerminologiesModuleLogic.DeserializeTerminologyEntry(entry, parsed)
    assert parsed.GetTypeObject().GetCodeValue() == type_code.split("^")[1]
    assert segmentName(organ(key), "tg263") == tg263
    assert segmentName(organ(key)) == {"brainstem": "Brainstem", "left_parotid": "Left parotid gland",
                                       "right_parotid": "Right parotid gland", "larynx": "Larynx",
                                       "mandible": "Mandible"}[key]
