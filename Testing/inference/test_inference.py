"""segment(): real CTs end to end, the z_norm estimate, streaming, device policy, progress and cancel.

There are no trained weights yet, so two things are tested apart:
- the z_norm *estimation logic* (segmatecore.inference.zpass) on per-slice presence sequences derived from
  the real reference masks in ../shared/data (what a perfect presence head would say, plus
  isolated false positives and missed slices), against the extent those masks give;
- the *plumbing* end to end through segment(), with the intensity test network (whose presence
  head is exact) and with a random-init FastViT-T12 at 64 x 64 on real CTs.
"""
from __future__ import annotations

import json
import threading
import tracemalloc

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from segmatecore import SegmentationCancelled, create_model, segment
from segmatecore.runtime import optimize
from segmatecore.models.checkpoint import default_metadata
from segmatecore.data.geometry import to_canonical
from segmatecore.inference.gate import PresenceGate
from segmatecore.runtime.devices import autocast_dtype, resolve_device
from segmatecore.data.io import load_volume
from segmatecore.data.organs import OrganSet, PAPER_ORGANS
from segmatecore.data.validation import InputError
from segmatecore.inference.zpass import ZPassConfig, estimate_extent, robust_extent

PAPER = OrganSet(PAPER_ORGANS)  # the organs of a model made with the defaults

NO_POSTPROCESS = {"largest_component": False, "fill_holes": False}
TIMING_KEYS = {"read", "preprocess", "z_pass", "network", "resample", "postprocess", "total"}


# ---- z_norm estimation logic on presence derived from real reference masks -----------------------

def totalseg_presence(shared_data, name: str) -> tuple[np.ndarray, float]:
    """[slices, 9] organ presence per canonical axial slice from a TotalSegmentator multilabel map."""
    folder = shared_data / "totalseg_example"
    class_map = {v: int(k) for k, v in json.loads((folder / "class_map_total.json").read_text())["total"].items()}
    image = sitk.ReadImage(str(folder / name))  # kept alive: the canonical array is a view of its buffer
    canonical, frame = to_canonical(image)
    slices = np.stack([np.isin(canonical, [class_map[s] for s in o.totalsegmentator]).any(axis=(0, 1))
                       for o in PAPER.organs], axis=1)
    return slices, frame.spacing[2]


def openkbp_presence(shared_data, case: str) -> tuple[np.ndarray, float]:
    """[slices, 9] presence from OpenKBP's clinical contours (1 = spinal cord, 2 = esophagus)."""
    image = sitk.ReadImage(str(shared_data / "openkbp" / case / "labels.nii.gz"))
    canonical, frame = to_canonical(image)
    slices = np.zeros((canonical.shape[2], 9), dtype=bool)
    slices[:, PAPER.channel("spinal_cord")] = (canonical == 1).any(axis=(0, 1))
    slices[:, PAPER.channel("esophagus")] = (canonical == 2).any(axis=(0, 1))
    return slices, frame.spacing[2]


def reference_extent(slices: np.ndarray) -> tuple[int, int]:
    any_organ = np.flatnonzero(slices.any(axis=1))
    return int(any_organ[0]), int(any_organ[-1])


def noisy_presence_head(slices: np.ndarray, slice_mm: float, seed: int):
    """A presence head that is right except for isolated false positives and missed slices.

    False positives: up to 3 single slices more than 20 mm outside the organ extent and from each
    other (closer ones can be bridged, see ZPassConfig.max_gap_mm). Misses: 3 single slices inside the extent,
    at least 3 slices from its ends (a miss at the end of the extent moves the estimate by at most
    the miss; see the test below).
    """
    rng = np.random.default_rng(seed)
    probability = np.where(slices, 0.9, 0.05).astype(np.float32)
    first, last = reference_extent(slices)
    away = int(20 // slice_mm) + 1
    outside = np.r_[0:max(first - away, 0), min(last + away + 1, len(slices)):len(slices)]
    false_positives: list[int] = []
    for t in rng.permutation(outside):
        if len(false_positives) < 3 and all(abs(int(t) - f) >= away for f in false_positives):
            false_positives.append(int(t))
            probability[t, rng.integers(9)] = 0.8
    inside = np.arange(first + 3, last - 2)
    for t in rng.choice(inside, size=min(3, inside.size), replace=False):
        probability[t] = 0.1
    calls = []

    def presence(t: np.ndarray) -> np.ndarray:
        calls.append(len(t))
        return probability[t]

    return presence, calls


REAL_MASKS = [("totalseg", "example_seg_fast_force_split.nii.gz"), ("totalseg", "example_seg_dicom.nii.gz"),
              ("openkbp", "train_pt_109"), ("openkbp", "train_pt_113"), ("openkbp", "train_pt_100"),
              ("openkbp", "validation_pt_222")]


@pytest.mark.parametrize("kind, name", REAL_MASKS, ids=[n for _, n in REAL_MASKS])
def test_estimated_extent_matches_the_reference_masks(shared_data, kind, name):
    slices, slice_mm = (totalseg_presence if kind == "totalseg" else openkbp_presence)(shared_data, name)
    for seed in range(3):
        presence, calls = noisy_presence_head(slices, slice_mm, seed)
        extent = estimate_extent(presence, len(slices), slice_mm)
        assert extent.found and (extent.first, extent.last) == reference_extent(slices), seed
        assert sum(calls) == extent.slices_run <= len(slices) // 2 + 6  # the first pass is sampled


@pytest.mark.parametrize("miss", [1, 2])
def test_a_miss_at_the_end_of_the_extent_moves_the_estimate_by_that_miss_at_most(shared_data, miss):
    slices, slice_mm = totalseg_presence(shared_data, "example_seg_fast_force_split.nii.gz")
    first, last = reference_extent(slices)
    probability = np.where(slices, 0.9, 0.05).astype(np.float32)
    probability[first + miss] = 0.1  # the head misses one slice near the start of the extent
    probability[last - miss] = 0.1  # and one near its end
    extent = estimate_extent(lambda t: probability[t], len(slices), slice_mm)
    assert first <= extent.first <= first + miss + 1 and last - miss - 1 <= extent.last <= last


def test_no_organ_found_and_tiny_volumes():
    nothing = estimate_extent(lambda t: np.zeros((len(t), 9)), 40, 2.0)
    assert not nothing.found and (nothing.first, nothing.last) == (0, 39)
    one = estimate_extent(lambda t: np.ones((len(t), 9)), 1, 2.0)
    assert one.found and (one.first, one.last) == (0, 0) and one.z_norm(0) == 0.0
    # Runs shorter than min_run are ignored unless nothing longer exists; short gaps are bridged.
    assert robust_extent(np.array([0, 1, 0, 0, 1, 1, 1, 0, 1], bool), 2) == (4, 6)
    assert robust_extent(np.array([0, 1, 0, 0, 1, 1, 1, 0, 1], bool), 2, max_gap=1) == (4, 8)
    assert robust_extent(np.array([0, 1, 0, 0, 0], bool), 2) == (1, 1)


def test_z_norm_follows_the_training_formula():
    extent = estimate_extent(lambda t: (np.isin(t, np.arange(10, 31)))[:, None].astype(np.float32), 50, 1.0,
                             ZPassConfig(step_mm=4.0))
    assert (extent.first, extent.last) == (10, 30)
    t = np.array([0, 10, 20, 30, 49])
    assert np.allclose(extent.z_norm(t), [0.0, 0.0, 0.5, 1.0, 1.0])


# ---- end to end with the intensity test network -----------------------------------------------------

@pytest.fixture(scope="module")
def organ_in_slices(band_centre):
    """``organ_in_slices(nz=20, first=5, last=14, key="liver")``: a 32 x 32 x nz LPS CT-like volume, body
    300 HU (no band), the organ in axial slices first..last."""
    def make(nz: int = 20, first: int = 5, last: int = 14, key: str = "liver") -> sitk.Image:
        a = np.full((nz, 32, 32), -1000, dtype=np.int16)
        a[:, 3:29, 3:29] = 300
        a[first:last + 1, 12:24, 10:22] = band_centre(key)
        image = sitk.GetImageFromArray(a)
        image.SetSpacing((2.0, 2.0, 2.5))
        return image
    return make


def z_values_of_second_pass(model) -> list[float]:
    return [float(v) for z in model.z_seen if z is not None for v in z]


def test_auto_z_norm_estimates_the_extent_and_feeds_film_with_it(organ_in_slices, intensity_model):
    model = intensity_model(input_size=32)
    result = segment(organ_in_slices(), model, device="cpu", batch_size=3, postprocess=NO_POSTPROCESS)
    assert result.z_range == {"mode": "auto", "first": 5, "last": 14, "num_slices": 20,
                              "slices_run": result.z_range["slices_run"], "skipped_outside": False}
    assert 0 < result.z_range["slices_run"] < 20
    expected = np.clip((np.arange(20) - 5) / 9, 0, 1)
    assert np.allclose(z_values_of_second_pass(model), expected)
    liver = sitk.GetArrayFromImage(result.organ_mask("liver"))
    assert liver[5:15].any(axis=(1, 2)).all() and not liver[:5].any() and not liver[15:].any()


def test_volume_and_none_modes(organ_in_slices, intensity_model):
    model = intensity_model(input_size=32)
    result = segment(organ_in_slices(), model, device="cpu", z_norm="volume")
    assert np.allclose(z_values_of_second_pass(model), np.arange(20) / 19)
    assert (result.z_range["first"], result.z_range["last"]) == (0, 19)
    model = intensity_model(input_size=32)
    result = segment(organ_in_slices(), model, device="cpu", z_norm="none")
    assert model.z_seen and all(z is None for z in model.z_seen) and result.z_range["first"] is None
    with pytest.raises(ValueError, match="Unknown z_norm"):
        segment(organ_in_slices(), model, z_norm="ground_truth")


def test_skip_outside_extent_runs_only_the_slices_inside(organ_in_slices, intensity_model):
    model = intensity_model(input_size=32)
    result = segment(organ_in_slices(), model, device="cpu", batch_size=4, skip_outside_extent=True)
    second_pass = sum(len(z) for z in model.z_seen if z is not None)
    assert second_pass == 10 and result.z_range["skipped_outside"]
    full = segment(organ_in_slices(), intensity_model(input_size=32), device="cpu")
    assert np.array_equal(sitk.GetArrayFromImage(result.labelmap), sitk.GetArrayFromImage(full.labelmap))


def test_the_first_pass_finding_nothing_falls_back_to_the_volume_with_a_warning(organ_in_slices, intensity_model):
    model = intensity_model(input_size=32)
    result = segment(organ_in_slices(first=3, last=2), model, device="cpu")
    assert result.z_range["mode"] == "volume" and (result.z_range["first"], result.z_range["last"]) == (0, 19)
    assert any("found no organ" in w for w in result.warnings)
    assert all(v == 0 for v in result.volumes_ml.values())


@pytest.fixture(scope="module")
def blind_to_one_organ(intensity_model):
    """The class of the intensity network whose presence head never reports ``blind`` (its masks still do)."""
    class BlindToOneOrgan(intensity_model):
        def __init__(self, blind: str, **kwargs):
            super().__init__(**kwargs)
            self.blind = list(PAPER_ORGANS).index(blind)

        def forward(self, x, z_norm=None):
            out = super().forward(x, z_norm)
            presence = out.presence.clone()
            presence[:, self.blind] = -30.0  # a logit: probability ~1e-13
            return out._replace(presence=presence)

    return BlindToOneOrgan


def test_an_organ_the_first_pass_never_finds_is_left_empty_with_a_warning(organ_in_slices, blind_to_one_organ,
                                                                          band_centre):
    """A liver mask in a CT where the presence head finds no liver (a neck CT) is dropped, and said so."""
    image = organ_in_slices(key="liver")
    array = sitk.GetArrayFromImage(image)
    array[5:15, 4:8, 4:8] = band_centre("aorta")  # an organ the first pass does find, so it has an extent
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((2.0, 2.0, 2.5))
    gated = segment(image, blind_to_one_organ("liver", input_size=32), device="cpu", organs=["liver"])
    assert gated.volumes_ml["liver"] == 0.0
    assert any("found no liver" in w and "presence gate" in w for w in gated.warnings)
    kept = segment(image, blind_to_one_organ("liver", input_size=32), device="cpu", organs=["liver"],
                   postprocess={"presence_gate": False})
    assert kept.volumes_ml["liver"] == pytest.approx(10 * 12 * 12 * 2.0 * 2.0 * 2.5 / 1000)
    assert not any("found no" in w for w in kept.warnings)


@pytest.fixture(scope="module")
def presence_from_another_organ(intensity_model):
    """The class of the intensity network whose liver presence is the aorta's: its presence head sees less
    liver than its masks."""
    class PresenceFromAnotherOrgan(intensity_model):
        def forward(self, x, z_norm=None):
            out = super().forward(x, z_norm)
            presence = out.presence.clone()
            presence[:, list(PAPER_ORGANS).index("liver")] = presence[:, list(PAPER_ORGANS).index("aorta")]
            return out._replace(presence=presence)

    return PresenceFromAnotherOrgan


def test_segment_keeps_a_mask_only_on_the_slices_where_the_first_pass_found_its_organ(organ_in_slices,
        presence_from_another_organ, band_centre):
    array = sitk.GetArrayFromImage(organ_in_slices(key="liver"))  # liver on slices 5..14
    array[5:10, 4:8, 4:8] = band_centre("aorta")                   # presence "liver" only on 5..9
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((2.0, 2.0, 2.5))
    gated = sitk.GetArrayFromImage(segment(image, presence_from_another_organ(input_size=32), device="cpu",
                                           organs=["liver"]).labelmap)
    liver_slices = np.flatnonzero((gated == PAPER.label("liver")).any(axis=(1, 2)))
    assert liver_slices[0] == 5 and 9 <= liver_slices[-1] <= 10  # up to the next "absent" sample (every 2nd slice)
    full = sitk.GetArrayFromImage(segment(image, presence_from_another_organ(input_size=32), device="cpu",
                                          organs=["liver"], postprocess={"presence_gate": False}).labelmap)
    assert np.flatnonzero((full == PAPER.label("liver")).any(axis=(1, 2))).tolist() == list(range(5, 15))


def test_the_presence_gate_keeps_an_organ_only_near_where_the_first_pass_found_it():
    """Slices are sampled every 5 mm; an organ's range reaches up to its nearest 'absent' samples."""
    presence = np.zeros((40, 2), dtype=np.float32)
    presence[10:21, 0] = 0.9              # organ 0 on slices 10..20 (2.5 mm slices: sampled every 2)
    extent = estimate_extent(lambda t: presence[t], 40, 2.5)
    assert (extent.first, extent.last) == (10, 20)
    assert extent.organ_ranges[1] is None
    first, last = extent.organ_ranges[0]
    assert 9 <= first <= 10 and 20 <= last <= 21
    assert not PresenceGate({0: extent.organ_ranges[0], 1: None}, 2).mask(np.array([5, 10, 20, 25]))[:, 1].any()
    assert PresenceGate({0: extent.organ_ranges[0]}, 2).mask(np.array([5, 10, 20, 25]))[:, 0].tolist() == [0, 1, 1, 0]


def test_organ_subset_labels_and_volumes(organ_in_slices, intensity_model):
    image = organ_in_slices()
    result = segment(image, intensity_model(input_size=32), organs=["liver", "aorta"], device="cpu")
    assert result.organs == ["liver", "aorta"]
    assert set(np.unique(sitk.GetArrayFromImage(result.labelmap))) == {0, PAPER.label("liver")}
    assert result.volumes_ml["liver"] == pytest.approx(10 * 12 * 12 * 2.0 * 2.0 * 2.5 / 1000)
    assert result.volumes_ml["aorta"] == 0.0
    with pytest.raises(ValueError, match="Unknown organ"):
        segment(image, intensity_model(input_size=32), organs=["heart"])
    with pytest.raises(KeyError):
        result.organ_mask("trachea")


def test_untrained_organs_are_off_by_default_and_warned_when_asked(organ_in_slices, intensity_model):
    model = intensity_model(["liver"], input_size=32)
    assert segment(organ_in_slices(), model, device="cpu").organs == ["liver"]
    asked = segment(organ_in_slices(), model, organs=["liver", "aorta"], device="cpu")
    assert any("not trained on aorta" in w for w in asked.warnings)


def test_progress_reaches_the_total_and_cancel_stops_between_batches(organ_in_slices, intensity_model):
    calls = []
    segment(organ_in_slices(), intensity_model(input_size=32), device="cpu", batch_size=4,
            progress=lambda stage, done, total: calls.append((stage, done, total)))
    network = [(d, t) for s, d, t in calls if s == "network"]
    assert network[0] == (0, 20) and network[-1] == (20, 20)
    assert all(a[0] <= b[0] for a, b in zip(network, network[1:]))
    assert {s for s, _, _ in calls} == {"z_pass", "network", "postprocess"}

    cancel = threading.Event()
    model = intensity_model(input_size=32)

    def cancel_after_first_batch(stage, done, total):
        if stage == "network" and done > 0:
            cancel.set()

    with pytest.raises(SegmentationCancelled):
        segment(organ_in_slices(), model, device="cpu", batch_size=4, progress=cancel_after_first_batch,
                cancel=cancel, z_norm="none")
    assert sum(model.batches_seen) == 4  # one batch, then it stopped


@pytest.fixture(scope="module")
def runs_out_of_memory(intensity_model):
    """The class of raises the error PyTorch raises on a full GPU whenever a batch is larger than ``limit``."""
    class RunsOutOfMemory(intensity_model):
        limit = 2

        def forward(self, x, z_norm=None):
            if x.shape[0] > self.limit:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return super().forward(x, z_norm)

    return RunsOutOfMemory


def test_out_of_memory_halves_the_batch_and_gives_the_same_result(organ_in_slices, runs_out_of_memory, intensity_model):
    reference = segment(organ_in_slices(), intensity_model(input_size=32), device="cpu", batch_size=8)
    model = runs_out_of_memory(input_size=32)
    result = segment(organ_in_slices(), model, device="cpu", batch_size=8)
    assert np.array_equal(sitk.GetArrayFromImage(result.labelmap), sitk.GetArrayFromImage(reference.labelmap))
    assert any("batch size lowered to 4" in w for w in result.warnings)
    assert any("batch size lowered to 2" in w for w in result.warnings)
    assert max(model.batches_seen) <= 2 and result.model_info["batch_size"] == 2
    model.limit = 0
    with pytest.raises(MemoryError, match="Out of memory on the CPU even with batch size 1"):
        segment(organ_in_slices(), model, device="cpu", batch_size=2)


def test_probabilities_are_streamed_not_held_for_the_volume(band_centre, intensity_model):
    """Numpy memory stays far below the 256 x 256 x 40 x 9 float32 probabilities (94 MB)."""
    a = np.full((40, 256, 256), -1000, dtype=np.int16)
    a[:, 40:220, 40:220] = 300
    a[10:30, 80:160, 60:140] = band_centre("liver")
    image = sitk.GetImageFromArray(a)
    tracemalloc.start()
    result = segment(image, intensity_model(input_size=64), device="cpu", batch_size=4, postprocess=NO_POSTPROCESS)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    full_probabilities = a.size * 9 * 4
    assert peak < full_probabilities / 4, peak
    assert result.volumes_ml["liver"] > 0


def test_device_and_precision_policy(organ_in_slices, intensity_model):
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    assert resolve_device("auto").type == expected
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU is usable"):
            resolve_device("cuda:0")
    else:
        with pytest.raises(ValueError, match="does not exist"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")
    with pytest.raises(ValueError, match="Unknown device 'tpu'"):
        resolve_device("tpu")
    assert autocast_dtype(torch.device("cuda"), "auto") == torch.float16
    assert autocast_dtype(torch.device("cpu"), "auto") is None
    assert autocast_dtype(torch.device("cpu"), "bf16") == torch.bfloat16
    assert autocast_dtype(torch.device("cuda"), "fp32") is None
    with pytest.raises(ValueError, match="Unknown precision"):
        segment(organ_in_slices(), intensity_model(input_size=32), precision="fp8")


@pytest.fixture(scope="module")
def autocast_recorder(intensity_model):
    """The class of the intensity network, recording the CPU autocast dtype each batch ran under (None: off)."""
    class AutocastRecorder(intensity_model):
        def forward(self, x, z_norm=None):
            self.seen.add(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
            return super().forward(x, z_norm)

    return AutocastRecorder


@pytest.mark.parametrize("amx", [False, True])
def test_bf16_on_a_cpu_without_amx_runs_with_a_warning(monkeypatch, amx, organ_in_slices, autocast_recorder):
    monkeypatch.setattr(optimize, "cpu_bf16_is_faster", lambda: amx)
    image = organ_in_slices()
    runs = {}
    for precision in ("bf16", "fp32"):
        network = autocast_recorder(input_size=32)
        network.seen = set()
        runs[precision] = (segment(image, network, device="cpu", precision=precision), network.seen)
    (bf16, bf16_seen), (fp32, fp32_seen) = runs["bf16"], runs["fp32"]
    slower = [w for w in bf16.warnings if "no AMX" in w]
    assert len(slower) == (0 if amx else 1)
    assert not any("no AMX" in w for w in fp32.warnings)
    assert bf16_seen == {torch.bfloat16} and fp32_seen == {None}  # still honoured: it ran in bf16
    assert bf16.volumes_ml["liver"] > 0


# ---- bad and doubtful input through segment() --------------------------------------------------------

def _image(array, vector=False):
    return sitk.GetImageFromArray(array, isVector=vector)


BAD = {
    "2D": _image(np.zeros((64, 64), np.int16)),
    "RGB": _image(np.zeros((4, 32, 32, 3), np.uint8), vector=True),
    "4D": sitk.JoinSeries([_image(np.zeros((4, 16, 16), np.int16))] * 3),
    "NaN voxels": _image(np.where(np.arange(4 * 16 * 16).reshape(4, 16, 16) == 7, np.nan, 0.0).astype(np.float32)),
}


@pytest.mark.parametrize("name", BAD)
def test_bad_images_are_refused_in_one_line(name, intensity_model):
    model = intensity_model(input_size=32)
    with pytest.raises(InputError) as err:
        segment(BAD[name], model, device="cpu")
    assert "\n" not in str(err.value) and not model.batches_seen


def test_mr_like_intensity_is_warned(intensity_model):
    a = np.zeros((6, 32, 32), np.int16)
    a[:, 8:24, 8:24] = 800
    result = segment(_image(a), intensity_model(input_size=32), device="cpu")
    assert any("does not look like CT" in w for w in result.warnings)


# ---- real CTs end to end ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def random_fastvit():
    """FastViT-T12 with random weights at 64 x 64 (no trained weights exist yet), as load_model returns it."""
    torch.manual_seed(0)
    model = create_model("fastvit_t12").eval().reparameterize()
    model.metadata = default_metadata("fastvit_t12")
    model.metadata["preprocessing"]["input_size"] = [64, 64]
    return model


def check_result(result, image: sitk.Image) -> np.ndarray:
    assert result.labelmap.GetSize() == image.GetSize() and result.labelmap.GetSpacing() == image.GetSpacing()
    assert result.labelmap.GetOrigin() == image.GetOrigin()
    assert result.labelmap.GetDirection() == image.GetDirection()
    assert result.labelmap.GetPixelID() == sitk.sitkUInt8
    labels = sitk.GetArrayFromImage(result.labelmap)
    assert set(np.unique(labels)) <= {0} | {PAPER.label(k) for k in result.organs}
    assert set(result.timings) == TIMING_KEYS and result.timings["total"] > 0
    voxel_ml = float(np.prod(image.GetSpacing())) / 1000
    counts = np.bincount(labels.ravel(), minlength=10)
    for key in result.organs:
        assert result.volumes_ml[key] == pytest.approx(counts[PAPER.label(key)] * voxel_ml)
    return labels


def test_real_nifti_with_a_random_fastvit(shared_data, random_fastvit):
    path = shared_data / "totalseg_example" / "example_ct_sm.nii.gz"
    result = segment(path, random_fastvit, device="cpu", batch_size=8)
    check_result(result, sitk.ReadImage(str(path)))
    assert result.organs == list(PAPER_ORGANS) and result.source == str(path)
    assert result.z_range["num_slices"] == 30 and result.model_info["backbone"] == "fastvit_t12"


def test_real_dicom_series_with_the_intensity_network(shared_data, bands_for, intensity_model):
    folder = shared_data / "totalseg_example" / "example_ct_dicom"
    loaded = load_volume(folder)
    result = segment(loaded, intensity_model(input_size=64), device="cpu", batch_size=10, postprocess=NO_POSTPROCESS)
    labels = check_result(result, loaded.image)
    assert result.dicom_dir == str(folder) and labels.any()
    # Contrast-enhanced soft tissue (60-160 HU, the "trachea" band) fills large regions: the labels
    # follow it there, after the trip to 64 x 64 and back.
    hu = sitk.GetArrayViewFromImage(loaded.image)
    lo, hi = bands_for(PAPER_ORGANS)["trachea"]
    assert np.mean(labels[(hu > lo + 30) & (hu < hi - 30)] == PAPER.label("trachea")) > 0.5


def test_real_openkbp_case_end_to_end(shared_data, intensity_model):
    path = shared_data / "openkbp" / "train_pt_100" / "ct.nii.gz"
    result = segment(path, intensity_model(["spinal_cord", "esophagus"], input_size=64), device="cpu",
                     batch_size=16, z_norm="volume")
    check_result(result, sitk.ReadImage(str(path)))
    assert result.organs == ["spinal_cord", "esophagus"]
