"""Per-organ mask thresholds: fitted on validation cases, stored in the model, applied by segment()."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from segmatecore import load_model, read_metadata, segment
from segmatecore.models.checkpoint import CheckpointError, default_metadata, validate_metadata
from segmatecore.cli.main import main
from segmatecore.data.geometry import canonical_image
from segmatecore.inference.postprocess import labels_from_probabilities, mask_thresholds
from segmatecore.train.calibrate import calibrate_masks
from segmatecore.data.prepared import load_cases
from segmatecore.data.prepare import prepare

SHAPE = (10, 64, 64)  # z, y, x
# The intensity model's cord logit is 0.2 * (50 - |HU - centre|): the labelled core (at the centre)
# has p ~ 1, the unlabelled rim 45 HU off has p = sigmoid(1) = 0.73, so 0.5 draws the cord too
# wide and only a threshold above 0.73 draws it exactly.
RIM_OFFSET_HU = 45.0
RIM_P = 1.0 / (1.0 + np.exp(-0.2 * (50.0 - RIM_OFFSET_HU)))


def cord_volume(band_centre) -> tuple[np.ndarray, np.ndarray]:
    ct = np.zeros(SHAPE, dtype=np.int16)
    lab = np.zeros(SHAPE, dtype=np.uint8)
    ct[2:8, 38:48, 26:36] = band_centre("spinal_cord") + RIM_OFFSET_HU  # rim, not labelled
    ct[2:8, 40:46, 28:34] = band_centre("spinal_cord")
    lab[2:8, 40:46, 28:34] = 1
    ct[3:9, 20:26, 30:36] = band_centre("esophagus")  # drawn exactly: any threshold is right
    lab[3:9, 20:26, 30:36] = 2
    return ct, lab


@pytest.fixture(scope="module")
def validation_cases(tmp_path_factory, validation_copies, band_centre):
    ct, lab = cord_volume(band_centre)
    return validation_copies(tmp_path_factory.mktemp("calibrate"), ct, lab, {"spinal_cord": 1, "esophagus": 2},
                             (1.5, 1.5, 4.0))


def test_per_organ_thresholds_decide_each_organ_separately():
    p = torch.zeros(1, 2, 1, 3)
    p[0, 0, 0] = torch.tensor([0.6, 0.8, 0.8])  # cord
    p[0, 1, 0] = torch.tensor([0.0, 0.0, 0.9])  # oesophagus
    labels = torch.tensor([1, 2], dtype=torch.uint8)
    assert labels_from_probabilities(p, labels).tolist() == [[[1, 1, 2]]]
    assert labels_from_probabilities(p, labels, torch.tensor([0.7, 0.5])).tolist() == [[[0, 1, 2]]]
    # a voxel the oesophagus would win is the cord's when the oesophagus is below its own threshold
    assert labels_from_probabilities(p, labels, torch.tensor([0.7, 0.95])).tolist() == [[[0, 1, 1]]]


def test_thresholds_come_from_the_model_unless_the_caller_overrides_them():
    meta = {"mask_thresholds": {"spinal_cord": 0.7}}
    assert mask_thresholds(["spinal_cord", "esophagus"], meta) == [0.7, 0.5]
    assert mask_thresholds(["spinal_cord"], meta, {"thresholds": {"spinal_cord": 0.4}}) == [0.4]
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        mask_thresholds(["spinal_cord"], meta, {"thresholds": {"spinal_cord": 1.0}})
    with pytest.raises(ValueError, match="not being segmented: liver"):
        mask_thresholds(["spinal_cord"], meta, {"thresholds": {"liver": 0.6}})
    good = default_metadata("fastvit_t12")
    assert validate_metadata({**good, "mask_thresholds": {"spinal_cord": 0.7}})
    with pytest.raises(CheckpointError, match="mask_thresholds"):
        validate_metadata({**good, "mask_thresholds": {"spinal_cord": 0.0}})
    with pytest.raises(CheckpointError, match="mask_thresholds"):
        validate_metadata({**good, "mask_thresholds": {"not_an_organ": 0.6}})


def test_segment_cuts_each_organ_at_the_models_threshold(validation_cases, intensity_model):
    case = load_cases([validation_cases], "val")[0]
    image = canonical_image(case.image, case.record["spacing"])
    model = intensity_model(organs=["spinal_cord", "esophagus"], input_size=64)
    wide = segment(image, model=model, device="cpu")
    model.metadata["mask_thresholds"] = {"spinal_cord": 0.75}
    exact = segment(image, model=model, device="cpu")
    overridden = segment(image, model=model, device="cpu", postprocess={"thresholds": {"spinal_cord": 0.5}})
    voxel_ml = 1.5 * 1.5 * 4.0 / 1000
    assert wide.volumes_ml["spinal_cord"] == pytest.approx(6 * 10 * 10 * voxel_ml)  # core and rim
    assert exact.volumes_ml["spinal_cord"] == pytest.approx(6 * 6 * 6 * voxel_ml)  # the labelled core
    assert overridden.volumes_ml["spinal_cord"] == wide.volumes_ml["spinal_cord"]
    assert exact.volumes_ml["esophagus"] == wide.volumes_ml["esophagus"]
    assert exact.model_info["mask_thresholds"] == {"spinal_cord": 0.75, "esophagus": 0.5}


def test_calibration_finds_the_threshold_that_matches_the_reference(validation_cases, intensity_model):
    assert 0.70 < RIM_P < 0.75
    model = intensity_model(organs=["spinal_cord", "esophagus"], input_size=64)
    model.metadata["mask_thresholds"] = {"spinal_cord": 0.9}  # would hide the rim (p 0.73) if it leaked into the sweep
    report = calibrate_masks(model, [validation_cases], "val")
    cord, eso = report["spinal_cord"], report["esophagus"]
    assert cord["calibrated"] and cord["cases"] == 3
    assert cord["threshold"] == 0.75 and cord["dice_at_threshold"] == pytest.approx(1.0)
    assert cord["dice_at_0.5"] == pytest.approx(2 * 216 / (216 + 600), abs=1e-4)  # core / (core + core and rim)
    assert eso["threshold"] == 0.5 and eso["dice_at_threshold"] == pytest.approx(1.0)  # flat: stays at 0.5
    few = calibrate_masks(model, [validation_cases], "val", min_cases=4)
    assert not few["spinal_cord"]["calibrated"] and few["spinal_cord"]["threshold"] == 0.5


def test_calibrate_command_writes_thresholds_and_leaves_the_weights_alone(tmp_path, nifti_pairs, tiny_training):
    src = nifti_pairs(tmp_path / "src", cases=3)
    prepare("nifti-pairs", src, tmp_path / "data", workers=1, fractions=(0.34, 0.66, 0.0), progress=False)
    start, out = tmp_path / "model.safetensors", tmp_path / "calibrated.safetensors"
    assert main(["train", "--backbone", "fastvit_t12", "--data", str(tmp_path / "data"), *tiny_training, "--max-steps", "1",
                 "--run-dir", str(tmp_path / "run"), "-o", str(start), "--dtype", "fp16"]) == 0
    # the precision agreement (measured by default) has its own test in test_zsmoothing.py
    assert main(["calibrate", "--model", str(start), "--data", str(tmp_path / "data"), "--min-cases", "1",
                 "--precision-agreement", "none", "-o", str(out)]) == 0
    meta = read_metadata(out)
    assert "precision_agreement" not in meta
    assert set(meta["mask_thresholds"]) == {"spinal_cord", "esophagus", "left_kidney"}
    record = meta["provenance"]["mask_thresholds"]
    assert record["split"] == "val" and record["command"].startswith("segmate calibrate")
    assert {k: v["threshold"] for k, v in record["organs"].items()} == meta["mask_thresholds"]
    before, after = load_model(start, reparameterize=False), load_model(out, reparameterize=False)
    assert all(torch.equal(a, b) for a, b in zip(before.state_dict().values(), after.state_dict().values()))
    assert out.stat().st_size < start.stat().st_size * 1.01  # still fp16


def test_info_shows_the_thresholds_a_model_file_applies(tmp_path, capsys):
    from segmatecore import create_model, save_model

    path = save_model(create_model("fastvit_t12"), tmp_path / "m.safetensors", {"mask_thresholds": {"spinal_cord": 0.7}})
    assert main(["info", str(path)]) == 0
    assert "mask thresholds spinal_cord 0.70; others 0.50" in capsys.readouterr().out
