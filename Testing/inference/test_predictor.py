"""The predictor: a model loaded and prepared once, then reused for every CT of a cohort."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from segmatecore import SegmentationCancelled, segment
from segmatecore.inference.predictor import SegMatePredictor
from segmatecore.models import create_model
from segmatecore.models.checkpoint import default_metadata, save_model


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    torch.manual_seed(0)
    meta = default_metadata("fastvit_t12")
    meta["preprocessing"]["input_size"] = [32, 32]
    return save_model(create_model("fastvit_t12"), tmp_path_factory.mktemp("model") / "tiny.safetensors", meta)


def ct(seed: int, slices: int = 6) -> sitk.Image:
    rng = np.random.default_rng(seed)
    image = sitk.GetImageFromArray(rng.integers(-1000, 400, size=(slices, 40, 40)).astype(np.int16))
    image.SetSpacing((1.5, 1.5, 3.0))
    return image


def test_a_cohort_loads_and_prepares_the_model_once(model_file, monkeypatch):
    import segmatecore.inference.predictor as predictor_module
    import segmatecore.runtime.network as network_module

    calls = {"load": 0, "prepare": 0}
    real_load, real_prepare = predictor_module.load_with_facts, network_module.prepare_for_inference

    def load(*args, **kwargs):
        calls["load"] += 1
        return real_load(*args, **kwargs)

    def prepare(*args, **kwargs):
        calls["prepare"] += 1
        return real_prepare(*args, **kwargs)

    monkeypatch.setattr(predictor_module, "load_with_facts", load)
    monkeypatch.setattr(network_module, "prepare_for_inference", prepare)
    predictor = SegMatePredictor(model_file, device="cpu")
    results = [predictor.segment(ct(seed), z="volume") for seed in range(3)]
    assert calls == {"load": 1, "prepare": 1}
    assert all(r.model_info["id"] == "tiny" for r in results)


def test_the_predictor_draws_what_one_shot_segment_draws(model_file):
    image = ct(7)
    reused = SegMatePredictor(model_file, device="cpu")
    reused.segment(ct(8))  # a first case must leave nothing behind for the next
    again = reused.segment(image, tta=True)
    once = segment(image, model=model_file, device="cpu", tta=True)
    assert np.array_equal(sitk.GetArrayFromImage(again.labelmap), sitk.GetArrayFromImage(once.labelmap))
    assert again.z_range == once.z_range and again.organs == once.organs


def test_a_module_given_to_the_predictor_is_prepared_on_a_copy(model_file):
    from segmatecore import load_model

    module = load_model(model_file)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    SegMatePredictor(module, device="cpu").segment(ct(1), z="volume")
    after = module.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("options, message", [({"precision": "fp8"}, "Unknown precision"),
                                              ({"runtime": "tensorrt"}, "Unknown runtime"),
                                              ({"batch_size": 0}, "batch_size must be at least 1"),
                                              ({"feature_cache_mb": -1}, "feature_cache_mb must be 0")])
def test_bad_settings_are_refused_before_the_model_loads(options, message, monkeypatch):
    import segmatecore.inference.predictor as predictor_module

    monkeypatch.setattr(predictor_module, "load_with_facts", lambda model: pytest.fail("the model was loaded"))
    with pytest.raises(ValueError, match=message):
        SegMatePredictor("no-such-model", device="cpu", **options)


def test_a_cancelled_run_raises_and_the_predictor_still_works(model_file):
    predictor = SegMatePredictor(model_file, device="cpu")
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(SegmentationCancelled):
        predictor.segment(ct(2), cancel=cancel)
    assert predictor.segment(ct(2)).labelmap.GetSize() == (40, 40, 6)
