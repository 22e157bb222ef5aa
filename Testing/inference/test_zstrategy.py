"""z strategies: each gives FiLM the z its name promises, on the same path as every other run."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from segmatecore.inference.predictor import SegMatePredictor
from segmatecore.inference.zpass import ZPassConfig
from segmatecore.inference.zstrategy import AutoZ, GroundTruthZ, NoZ, VolumeZ, z_strategy
from segmatecore.models.checkpoint import default_metadata

DEPTH = 12


@pytest.fixture
def ct() -> sitk.Image:
    array = np.full((DEPTH, 32, 32), -1000, dtype=np.int16)
    array[:, 8:24, 8:24] = -850  # inside the first organ's band of the intensity network
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((1.0, 1.0, 3.0))
    return image


def z_given(model) -> np.ndarray | None:
    values = [z for z in model.z_seen]
    if all(z is None for z in values):
        return None
    return np.sort(np.concatenate([z.numpy() for z in values if z is not None]))


@pytest.mark.parametrize("z, expected", [
    ("volume", np.arange(DEPTH) / (DEPTH - 1)),
    (GroundTruthZ(3, 7), np.clip((np.arange(DEPTH) - 3) / 4, 0, 1)),
    ("none", None),
])
def test_each_strategy_feeds_its_z_to_the_network(ct, intensity_model, z, expected):
    model = intensity_model(input_size=32)
    result = SegMatePredictor(model, device="cpu").segment(ct, z=z)
    seen = z_given(model)
    if expected is None:
        assert seen is None
        assert result.z_range["mode"] == "none"
    else:
        np.testing.assert_allclose(seen, np.sort(expected.astype(np.float32)), atol=1e-6)
        assert result.z_range["mode"] == z_strategy(z).mode


def test_ground_truth_outside_the_volume_is_a_clear_error(ct, intensity_model):
    predictor = SegMatePredictor(intensity_model(input_size=32), device="cpu")
    with pytest.raises(ValueError, match="outside the volume's 12 slices"):
        predictor.segment(ct, z=GroundTruthZ(5, 12))


def test_an_unknown_strategy_name_lists_the_choices():
    with pytest.raises(ValueError, match="use auto, volume, none, or a GroundTruthZ"):
        z_strategy("organs")


def test_auto_spans_the_first_pass_extent_and_falls_back_to_the_volume_when_nothing_is_found():
    meta = default_metadata("fastvit_t12", organs=["spinal_cord", "esophagus"])
    present = np.zeros(40, dtype=np.float32)
    present[10:21] = 0.9

    def first_pass(t, channels):
        assert list(channels) == [0, 1]
        return np.stack([present[t], np.zeros(len(t), np.float32)], axis=1)

    plan = AutoZ(ZPassConfig(step_mm=3.0, min_run_mm=3.0)).plan(40, 1.0, meta, first_pass)
    assert (plan.extent.first, plan.extent.last) == (10, 20)
    np.testing.assert_allclose(plan.z(np.array([10, 15, 20, 30])), [0.0, 0.5, 1.0, 1.0])
    assert plan.report()["mode"] == "auto" and plan.report()["first"] == 10
    nothing = AutoZ().plan(40, 1.0, meta, lambda t, c: np.zeros((len(t), 2), np.float32))
    assert nothing.report()["mode"] == "volume" and "found no organ" in nothing.warnings[0]
    np.testing.assert_allclose(nothing.z(np.array([0, 39])), [0.0, 1.0])
    assert VolumeZ().plan(40, 1.0, meta, None).z(np.array([0])) is not None and NoZ().plan(40, 1.0, meta).z(
        np.array([0])) is None
