"""Smoothing organ probabilities along z: streamed exactly, applied by segment(), fitted by calibrate."""
from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy.ndimage import gaussian_filter1d

from segmatecore import read_metadata, segment
from segmatecore.models.checkpoint import CheckpointError, default_metadata, validate_metadata
from segmatecore.cli.main import main
from segmatecore.data.geometry import canonical_image
from segmatecore.data.geometry import to_canonical
from segmatecore.inference.postprocess import z_smoothing_mm
from segmatecore.data.organs import OrganSet, PAPER_ORGANS
from segmatecore.train.calibrate import CaseSweep, calibrate_masks
from segmatecore.data.prepared import load_cases
from segmatecore.inference.labels import ProbabilitiesOnGrid
from segmatecore.inference.predictor import SegMatePredictor
from segmatecore.inference.zsmoothing import ZSmoother

PAPER = OrganSet(PAPER_ORGANS)  # the organs of a model made with the defaults

SPACING_Z = 4.0
# A cord on slices 2-8 whose slice 5 the network all but misses (p = sigmoid(0.2 * (50 - 70)) = 0.018):
# the flicker of a 2.5D network. No threshold on the grid recovers slice 5; smoothing along z does.
FLICKER_OFFSET_HU = 70.0


def reference_smoothing(p: torch.Tensor, sigmas: list[float]) -> torch.Tensor:
    """Whole-volume Gaussian along z (dim 0) per organ channel, edge slices repeated, by SciPy's own
    filter (kernel cut at 3 sigma, rounded up): what streaming must equal."""
    volume = p.double().numpy()
    channels = [volume[:, c] if s == 0 else
                gaussian_filter1d(volume[:, c], s, axis=0, mode="nearest", radius=math.ceil(3.0 * s))
                for c, s in enumerate(sigmas)]
    return torch.from_numpy(np.stack(channels, axis=1)).float()


def stream(p: torch.Tensor, sigmas: list[float], cuts: list[int], offset: int = 0) -> dict[int, torch.Tensor]:
    got: dict[int, torch.Tensor] = {}
    largest = max(b - a for a, b in zip(cuts[:-1], cuts[1:]))

    def sink(t, q):
        assert len(t) == len(q) <= largest  # the sink's memory is sized by the batch, not by the kernel
        for i, x in zip(t.tolist(), q):
            assert i not in got
            got[i] = x

    smoother = ZSmoother(sigmas, sink)
    for a, b in zip(cuts[:-1], cuts[1:]):
        smoother(np.arange(a, b) + offset, p[a:b])
    smoother.finish()
    return got


@pytest.mark.parametrize("cuts", [[0, 23], [0, 1, 2, 3, 9, 23], [0, 4, 5, 12, 23], list(range(24))])
def test_streamed_smoothing_equals_smoothing_the_whole_volume_in_any_batches(cuts):
    torch.manual_seed(0)
    p = torch.rand(23, 3, 5, 4)
    sigmas = [0.0, 1.3, 2.5]  # per channel; 0 = untouched
    got = stream(p, sigmas, cuts)
    assert sorted(got) == list(range(23))
    expected = reference_smoothing(p, sigmas)
    for j in range(23):
        torch.testing.assert_close(got[j], expected[j], atol=1e-6, rtol=0)
        assert torch.equal(got[j][0], p[j][0])


def test_a_gap_in_the_slices_starts_a_new_run_with_its_own_edges():
    torch.manual_seed(1)
    p = torch.rand(12, 1, 3, 3)
    got: dict[int, torch.Tensor] = {}
    smoother = ZSmoother([1.0], lambda t, q: got.update(zip(t.tolist(), q)))
    smoother(np.array([0, 1, 2, 3]), p[:4])
    smoother(np.array([4, 5, 8, 9]), torch.cat([p[4:6], p[8:10]]))  # slices 6 and 7 were not run
    smoother(np.array([10, 11]), p[10:12])
    smoother.finish()
    assert sorted(got) == [0, 1, 2, 3, 4, 5, 8, 9, 10, 11]
    first, second = reference_smoothing(p[:6], [1.0]), reference_smoothing(p[8:], [1.0])
    for j in range(6):
        torch.testing.assert_close(got[j], first[j], atol=1e-6, rtol=0)
    for j in range(4):
        torch.testing.assert_close(got[8 + j], second[j], atol=1e-6, rtol=0)


def test_smoothing_comes_from_the_model_unless_the_caller_overrides_it():
    meta = {"z_smoothing_mm": {"spinal_cord": 6.0}}
    assert z_smoothing_mm(["spinal_cord", "esophagus"], meta) == [6.0, 0.0]
    assert z_smoothing_mm(["spinal_cord"], meta, {"z_smoothing_mm": {"spinal_cord": 0}}) == [0.0]
    assert z_smoothing_mm(["spinal_cord", "esophagus"], meta, {"z_smoothing_mm": 0}) == [0.0, 0.0]  # the panel's "off"
    with pytest.raises(ValueError, match="between 0 .off. and 20 mm: spinal_cord=-1"):
        z_smoothing_mm(["spinal_cord"], meta, {"z_smoothing_mm": {"spinal_cord": -1}})
    with pytest.raises(ValueError, match="not being segmented: liver"):
        z_smoothing_mm(["spinal_cord"], meta, {"z_smoothing_mm": {"liver": 2}})
    good = default_metadata("fastvit_t12")
    assert validate_metadata({**good, "z_smoothing_mm": {"spinal_cord": 6.0}})
    for bad in ({"spinal_cord": 25.0}, {"not_an_organ": 2.0}, {"spinal_cord": "6"}):
        with pytest.raises(CheckpointError, match="z_smoothing_mm"):
            validate_metadata({**good, "z_smoothing_mm": bad})


@pytest.fixture(scope="module")
def flicker_volume(band_centre) -> tuple[np.ndarray, np.ndarray]:
    """A cord tube on slices 2..8 whose slice 5 is painted off its band (the network misses it), and its label."""
    ct = np.zeros((12, 48, 48), dtype=np.int16)
    lab = np.zeros(ct.shape, dtype=np.uint8)
    ct[2:9, 20:26, 20:26] = band_centre("spinal_cord")
    ct[5, 20:26, 20:26] = band_centre("spinal_cord") + FLICKER_OFFSET_HU
    lab[2:9, 20:26, 20:26] = 1
    return ct, lab


@pytest.fixture(scope="module")
def flicker_image(flicker_volume) -> sitk.Image:
    image = sitk.GetImageFromArray(flicker_volume[0])
    image.SetSpacing((1.5, 1.5, SPACING_Z))
    return image


def test_segment_smooths_each_organ_by_the_models_sigma_before_its_threshold(flicker_image, flicker_volume,
                                                                             intensity_model):
    model = intensity_model(organs=["spinal_cord"], input_size=48)
    image = flicker_image
    voxel_ml = 1.5 * 1.5 * SPACING_Z / 1000
    plain = segment(image, model=model, device="cpu", z_norm="none", batch_size=3)
    assert plain.volumes_ml["spinal_cord"] == pytest.approx(6 * 36 * voxel_ml)  # slice 5 missed
    model.metadata["z_smoothing_mm"] = {"spinal_cord": SPACING_Z}  # one slice
    smoothed = segment(image, model=model, device="cpu", z_norm="none", batch_size=3)
    labels = sitk.GetArrayFromImage(smoothed.labelmap)
    assert np.array_equal(labels > 0, flicker_volume[1] > 0)  # the whole tube, ends kept, nothing added
    assert smoothed.model_info["z_smoothing_mm"] == {"spinal_cord": SPACING_Z}
    off = segment(image, model=model, device="cpu", z_norm="none", postprocess={"z_smoothing_mm": 0})  # all organs
    assert off.volumes_ml == plain.volumes_ml


@pytest.fixture(scope="module")
def flicker_cases(tmp_path_factory, validation_copies, flicker_volume):
    ct, lab = flicker_volume
    return validation_copies(tmp_path_factory.mktemp("flicker"), ct, lab, {"spinal_cord": 1}, (1.5, 1.5, SPACING_Z))


def test_calibration_fits_the_smoothing_that_recovers_a_flickering_slice(flicker_cases, tmp_path, intensity_model):
    model = intensity_model(organs=["spinal_cord"], input_size=48)
    model.metadata["z_smoothing_mm"] = {"spinal_cord": 8.0}  # the model's own value must not reach the sweep
    cord = calibrate_masks(model, [flicker_cases], "val")["spinal_cord"]
    assert cord["dice_by_smoothing"]["0"] == pytest.approx(2 * 6 / 13, abs=1e-4)  # best without: 6 of 7 slices
    assert cord["dice_at_threshold"] == pytest.approx(1.0)
    # 2 mm (half a slice) lifts slice 5 to 0.23 and its outer neighbours stay at 0.11: the least
    # smoothing that works, at the threshold nearest 0.5 that works with it
    assert (cord["z_smoothing_mm"], cord["threshold"]) == (2.0, 0.2)
    without = calibrate_masks(model, [flicker_cases], "val", smoothing_mm=[0])["spinal_cord"]
    assert without["z_smoothing_mm"] == 0.0 and without["dice_at_threshold"] == pytest.approx(2 * 6 / 13, abs=1e-4)

    model.metadata.update(z_smoothing_mm={"spinal_cord": cord["z_smoothing_mm"]},
                          mask_thresholds={"spinal_cord": cord["threshold"]})
    case = load_cases([flicker_cases], "val")[0]
    result = segment(canonical_image(case.image, case.record["spacing"]), model=model, device="cpu")
    assert result.volumes_ml["spinal_cord"] == pytest.approx(7 * 36 * 1.5 * 1.5 * SPACING_Z / 1000)


def test_calibrate_command_records_the_smoothing_and_info_shows_it(flicker_cases, tmp_path, capsys):
    from segmatecore import create_model, save_model

    small = default_metadata("fastvit_t12")
    small["preprocessing"]["input_size"] = [64, 64]
    path = save_model(create_model("fastvit_t12"), tmp_path / "m.safetensors", small)
    out = tmp_path / "calibrated.safetensors"
    assert main(["calibrate", "--model", str(path), "--data", str(flicker_cases), "--z-smoothing-mm", "0", "4",
                 "-o", str(out)]) == 0
    meta = read_metadata(out)
    record = meta["provenance"]["mask_thresholds"]["organs"]["spinal_cord"]
    assert meta["z_smoothing_mm"] == {"spinal_cord": record["z_smoothing_mm"]}
    assert set(record["dice_by_smoothing"]) == {"0", "4"}
    agreement = meta["precision_agreement"]["bf16"]  # measured by default, for precision auto
    assert agreement["cases"] == len(load_cases([flicker_cases], "val")) and set(agreement["organs"]) >= {"spinal_cord"}
    assert agreement["agrees"] == (agreement["min_dice"] >= 0.98) and "calibrate" in agreement["command"]
    capsys.readouterr()
    smoothed = save_model(create_model("fastvit_t12"), tmp_path / "s.safetensors",
                          {"z_smoothing_mm": {"spinal_cord": 6.0}})
    assert main(["info", str(smoothed)]) == 0
    assert "z smoothing     spinal_cord 6 mm; others none" in capsys.readouterr().out
    assert main(["calibrate", "--model", str(path), "--data", str(flicker_cases), "--z-smoothing-mm", "30",
                 "-o", str(out)]) == 2
    assert "--z-smoothing-mm values must lie between 0 and 20 mm" in capsys.readouterr().err


def test_running_out_of_memory_after_smoothing_fails_clearly_instead_of_losing_slices(monkeypatch, flicker_image,
                                                                                      intensity_model):
    from segmatecore.inference import labels as inference

    model = intensity_model(organs=["spinal_cord"], input_size=48)
    image = flicker_image
    real = inference.labels_on_grid
    calls = {"n": 0}

    def first_call_fails(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise torch.OutOfMemoryError("out of memory (test)")
        return real(*args, **kwargs)

    # without smoothing (labels straight from the logits) the runner retries the batch smaller and nothing is lost
    real_from_logits = inference.labels_on_grid_from_logits

    def first_logits_call_fails(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise torch.OutOfMemoryError("out of memory (test)")
        return real_from_logits(*args, **kwargs)

    monkeypatch.setattr(inference, "labels_on_grid_from_logits", first_logits_call_fails)
    plain = segment(image, model=model, device="cpu", z_norm="none", batch_size=4)
    assert plain.volumes_ml["spinal_cord"] == pytest.approx(6 * 36 * 1.5 * 1.5 * SPACING_Z / 1000)
    assert any("batch size lowered to 2" in w for w in plain.warnings)
    calls["n"] = 0
    monkeypatch.setattr(inference, "labels_on_grid", first_call_fails)
    model.metadata["z_smoothing_mm"] = {"spinal_cord": SPACING_Z}
    with pytest.raises(MemoryError, match="smoothed along z.*smaller batch size"):
        segment(image, model=model, device="cpu", z_norm="none", batch_size=4)


def test_calibration_scores_what_segment_draws_when_the_network_grid_differs(flicker_cases, intensity_model):
    # segment() smooths on the network's 32 x 32 grid, then resizes to the CT's 48 x 48; the
    # calibration sweep smooths on the CT's grid. Both are linear, on different axes, so the Dice the
    # sweep counts for a pair must be the Dice of what segment() draws with that pair.
    model = intensity_model(organs=["spinal_cord"], input_size=32)
    case = load_cases([flicker_cases], "val")[0]
    image = canonical_image(case.image, case.record["spacing"])
    truth = case.masks(["spinal_cord"])  # canonical
    sweep = CaseSweep(truth, ["spinal_cord"], [0.3, 0.5], [0.0, 4.0], SPACING_Z)
    SegMatePredictor(model, device="cpu").stream(image, ProbabilitiesOnGrid(sweep, image.GetSize()[:2]))
    counted = sweep.dice()[0]  # [smoothing, threshold]
    for s, mm in enumerate((0.0, 4.0)):
        for g, threshold in enumerate((0.3, 0.5)):
            model.metadata.update(z_smoothing_mm={"spinal_cord": mm}, mask_thresholds={"spinal_cord": threshold})
            drawn = np.asarray(to_canonical(segment(image, model=model, device="cpu").labelmap)[0]) > 0
            dice = 2 * (drawn & truth[0]).sum() / (drawn.sum() + truth[0].sum())
            assert dice == pytest.approx(counted[s, g], abs=1e-9), (mm, threshold)
    assert len({round(float(d), 6) for d in counted.ravel()}) > 1  # the pairs draw different masks
