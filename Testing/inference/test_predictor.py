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


def test_import_loads_nothing_heavy_and_a_run_without_preview_loads_neither_matplotlib_nor_openvino(
        model_file, tmp_path):
    """``import segmatecore`` is light (the Slicer panel and ``--help`` rely on it), and a run imports
    the optional extras only when asked: matplotlib for the preview, OpenVINO for its runtime."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import segmatecore\n"
        "def loaded(): return sorted(m for m in ('torch', 'timm', 'matplotlib', 'openvino') if m in sys.modules)\n"
        "print('import:', loaded())\n"
        "import numpy as np, SimpleITK as sitk\n"
        "from segmatecore.export.outputs import write_outputs\n"
        "image = sitk.GetImageFromArray(np.random.default_rng(0).integers(-1000, 400, (6, 40, 40)).astype(np.int16))\n"
        "result = segmatecore.SegMatePredictor(sys.argv[1], device='cpu').segment(image)\n"
        "write_outputs(result, sys.argv[2], formats=('nifti', 'seg.nrrd', 'report'))\n"
        "print('run:', loaded())\n"
        "write_outputs(result, sys.argv[2], formats=('preview',), image=image)\n"
        "print('preview:', loaded())\n")
    done = subprocess.run([sys.executable, "-c", code, str(model_file), str(tmp_path)], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = dict(line.split(": ", 1) for line in done.stdout.splitlines() if line.split(":")[0] in
                 ("import", "run", "preview"))
    assert lines["import"] == "[]"
    assert lines["run"] == "['timm', 'torch']"
    assert lines["preview"] == "['matplotlib', 'timm', 'torch']"  # the check can see matplotlib arrive
    assert (tmp_path / "labels.nii.gz").is_file() and (tmp_path / "preview.png").is_file()
