"""On a CUDA GPU: the CPU's labels on the same grid, the GPU's default precision within the Dice bar,
test-time augmentation and the feature cache, the CLI's report and the benchmark's GPU memory.

Skipped where PyTorch sees no CUDA GPU (CI has none). Where one is:
``python -m pytest Testing/runtime/test_cuda.py`` (docs/inference.md, "GPU").
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from segmatecore import segment
from segmatecore.bench.configs import DICE_BAR
from segmatecore.bench.inputs import sample_ct_path
from segmatecore.cli.main import main
from segmatecore.data.organs import OrganSet, PAPER_ORGANS

PAPER = OrganSet(PAPER_ORGANS)  # the organs of a model made with the defaults

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def dice_per_organ(a: sitk.Image, b: sitk.Image, keys: list[str]) -> dict[str, float]:
    x, y = sitk.GetArrayViewFromImage(a), sitk.GetArrayViewFromImage(b)
    scores = {}
    for key in keys:
        p, q = x == PAPER.label(key), y == PAPER.label(key)
        total = int(p.sum()) + int(q.sum())
        scores[key] = 1.0 if total == 0 else 2.0 * int((p & q).sum()) / total
    return scores


def same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    return (a.GetSize(), a.GetOrigin(), a.GetSpacing(), a.GetDirection()) == \
        (b.GetSize(), b.GetOrigin(), b.GetSpacing(), b.GetDirection())


@pytest.fixture(scope="module")
def ct() -> sitk.Image:
    return sitk.ReadImage(str(sample_ct_path()))


@pytest.fixture(scope="module")
def cpu_fp32(ct):
    """The bundled model's labels on the CPU in fp32: the reference every GPU run is held to."""
    return segment(ct, device="cpu", precision="fp32")


def test_fp32_on_the_gpu_gives_the_cpus_labels_on_the_input_grid(ct, cpu_fp32):
    result = segment(ct, device="cuda", precision="fp32")
    assert result.model_info["device"].startswith("cuda") and result.model_info["runtime"] == "torch"
    assert same_grid(result.labelmap, ct)
    scores = dice_per_organ(result.labelmap, cpu_fp32.labelmap, cpu_fp32.organs)
    assert min(scores.values()) >= DICE_BAR, scores
    assert result.z_range == cpu_fp32.z_range


def test_the_gpus_default_precision_agrees_with_fp32_within_the_dice_bar(ct, cpu_fp32):
    result = segment(ct, device="cuda", precision="fp16")  # what auto runs on CUDA for a model that records it
    assert result.model_info["compute_precision"] == "fp16"
    scores = dice_per_organ(result.labelmap, cpu_fp32.labelmap, cpu_fp32.organs)
    assert min(scores.values()) >= DICE_BAR, scores


def test_mirroring_and_the_feature_cache_run_on_the_gpu(ct):
    cached = segment(ct, device="cuda", precision="fp32", tta=True)
    again = segment(ct, device="cuda", precision="fp32", tta=True, feature_cache_mb=0)
    assert cached.model_info["feature_cache"]["slices_reused"] > 0 and again.model_info["feature_cache"] is None
    scores = dice_per_organ(cached.labelmap, again.labelmap, cached.organs)
    assert min(scores.values()) >= DICE_BAR, scores
    cpu = segment(ct, device="cpu", precision="fp32", tta=True)
    scores = dice_per_organ(cached.labelmap, cpu.labelmap, cpu.organs)
    assert min(scores.values()) >= DICE_BAR, scores


def test_every_network_call_on_the_gpu_runs_a_full_batch(ct, cpu_fp32):
    """New batch shapes cost seconds on a GPU, so short batches are filled up (runtime.network)."""
    from segmatecore.hub.catalogue import default_model_id, resolve_model
    from segmatecore.models.checkpoint import load_model

    model = load_model(resolve_model(default_model_id()))
    rows = []
    for part in (model.encoder, model.decoder):
        part.register_forward_hook(
            lambda module, args, out: rows.append(args[0].shape[0]) if torch.is_inference_mode_enabled() else None)
    result = segment(ct, model=model, device="cuda", precision="fp32", batch_size=16)
    assert set(rows) == {16}
    assert result.z_range["slices_run"] % 16 != 0  # the first pass has a short batch
    scores = dice_per_organ(result.labelmap, cpu_fp32.labelmap, cpu_fp32.organs)
    assert min(scores.values()) >= DICE_BAR, scores


def test_a_gpu_runs_pytorch_whatever_runtime_is_asked_for(ct):
    result = segment(ct, device="cuda", precision="fp32", runtime="openvino")
    assert result.model_info["runtime"] == "torch"


def test_predict_on_the_gpu_records_the_device_in_its_report(tmp_path):
    out = tmp_path / "out"
    assert main(["predict", str(sample_ct_path()), "-o", str(out), "--device", "cuda"]) == 0
    case = out / sample_ct_path().name.replace(".nii.gz", "")  # one folder per case
    report = json.loads((case / "report.json").read_text())
    assert report["model"]["device"].startswith("cuda")
    labels = sitk.ReadImage(str(case / "labels.nii.gz"))
    assert same_grid(labels, sitk.ReadImage(str(sample_ct_path())))
    assert np.asarray(sitk.GetArrayViewFromImage(labels)).any()


def test_the_benchmark_reports_gpu_memory_and_the_gpus_own_peak(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGMATE_HOME", str(tmp_path / "home"))
    assert main(["bench", "--quick", "--device", "cuda", "--backbones", "fastvit_t12", "--no-openvino",
                 "--no-bundled", "--json", str(tmp_path / "bench.json")]) == 0
    results = json.loads((tmp_path / "bench.json").read_text())
    rows = [r for r in results["rows"] if r["model"] == "fastvit_t12"]
    assert rows and all(r["device"] == "cuda" and r["peak_gpu_mb"] > 0 for r in rows)
    assert any(r["dtype"] == "float16" for r in rows)  # auto on CUDA
    peer = next(r for r in results["rows"] if r["model"] == "nnunet_3d_fullres")
    assert peer["dtype"] == "float16" and peer["peak_gpu_mb"] > 0  # on the GPU, as nnU-Net runs there
    # a GPU network of a few milliseconds per slice is bound by kernel launches, not by arithmetic
    assert results["machine"]["matmul_gmacs_per_s"] == {} and not any("compute_floor_s" in r for r in rows)
