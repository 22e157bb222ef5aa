"""`segmate predict`: one folder per case, outputs that open, failures that leave nothing behind.

The first test runs the real command line (a subprocess) with a random-init FastViT-T12 saved as
a .safetensors file (there are no trained weights yet), on the real example CT and DICOM series.
The others call segmatecore.cli.main.main() in-process with the intensity test network, for speed.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import SimpleITK as sitk
import slicerio
import torch

from segmatecore import create_model, save_model
from segmatecore.cli import main as cli
from segmatecore.models.checkpoint import default_metadata
from segmatecore.data.organs import OrganSet, PAPER_ORGANS, organ

PAPER = OrganSet(PAPER_ORGANS)  # the organs of a model made with the defaults

SEGMATE = [sys.executable, "-m", "segmatecore.cli.main"]
CASE_FILES = {"labels.nii.gz", "segmentation.seg.nrrd", "report.json", "preview.png"}


@pytest.fixture(scope="module")
def random_model_file(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    meta = default_metadata("fastvit_t12")
    meta["preprocessing"]["input_size"] = [32, 32]
    return save_model(create_model("fastvit_t12"), tmp_path_factory.mktemp("model") / "random.safetensors", meta)


def hidden_entries(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


def test_predict_real_ct_and_dicom_with_a_model_file(shared_data, random_model_file, tmp_path):
    nifti = shared_data / "totalseg_example" / "example_ct_sm.nii.gz"
    dicom = shared_data / "totalseg_example" / "example_ct_dicom"
    truncated = tmp_path / "inputs" / "truncated.nii.gz"
    truncated.parent.mkdir()
    truncated.write_bytes(nifti.read_bytes()[:4000])
    no_dicom = tmp_path / "inputs" / "notes"
    no_dicom.mkdir()
    (no_dicom / "readme.txt").write_text("no images here")
    out = tmp_path / "out"
    # One OpenMP thread: on a CPU shared with other processes more threads only wait on each other.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(SEGMATE + ["predict", str(nifti), str(truncated), str(dicom), str(no_dicom), "-o", str(out),
                                    "--model", str(random_model_file), "--device", "cpu", "--batch-size", "16"],
                         capture_output=True, text=True, timeout=900, env=env)
    assert run.returncode == 1, run.stderr
    lines = run.stdout.splitlines()
    assert any(line.startswith("example_ct_sm: ok, ") for line in lines)
    assert any(line.startswith("example_ct_dicom: ok, ") for line in lines)
    assert any(line.startswith("truncated: FAILED: ") and "truncated" in line[20:] for line in lines)
    assert any(line.startswith("notes: FAILED: ") and "no DICOM series found" in line for line in lines)
    assert lines[-1] == "2 of 4 case(s) done, 2 failed"
    assert sorted(p.name for p in out.iterdir()) == ["example_ct_dicom", "example_ct_sm"]

    for case, source in (("example_ct_sm", sitk.ReadImage(str(nifti))),
                         ("example_ct_dicom", sitk.ReadImage(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(dicom))))):
        folder = out / case
        assert {p.name for p in folder.iterdir()} == CASE_FILES
        labels = sitk.ReadImage(str(folder / "labels.nii.gz"))
        assert labels.GetPixelID() == sitk.sitkUInt8 and labels.GetSize() == source.GetSize()
        assert np.allclose(labels.GetSpacing(), source.GetSpacing()) and np.allclose(labels.GetOrigin(), source.GetOrigin(), atol=1e-3)
        segmentation = slicerio.read_segmentation(str(folder / "segmentation.seg.nrrd"))
        segments = {s["name"]: s for s in segmentation["segments"]}
        for o in PAPER.organs:
            assert segments[o.display_name]["labelValue"] == PAPER.label(o.key)
            assert np.allclose(segments[o.display_name]["color"], o.color_float, atol=1e-3)
            assert segments[o.display_name]["terminology"]["type"][1] == o.type["code"]
        report = json.loads((folder / "report.json").read_text())
        assert report["model"]["backbone"] == "fastvit_t12"
        assert set(report["volumes_ml"]) == {o.key for o in PAPER.organs}
        assert report["z_range"]["mode"] == "auto" and report["z_range"]["num_slices"] == source.GetSize()[2]
        cache = report["model"]["feature_cache"]  # the first pass's encodings served the main pass
        assert cache["slices_stored"] == cache["slices_reused"] == report["z_range"]["slices_run"]
        assert (folder / "preview.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_shards_split_the_inputs_and_clashing_names_get_their_folder(tmp_path, intensity_network, liver_ct_file):
    inputs = [str(liver_ct_file(tmp_path / "in" / name / "ct.nii.gz")) for name in ("a", "b", "c")]
    out = tmp_path / "out"
    assert cli.main(["predict", *inputs, "-o", str(out), "--shard", "0/2", "--format", "nifti"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a_ct", "c_ct"]
    assert cli.main(["predict", *inputs, "-o", str(out), "--shard", "1/2", "--format", "nifti,report"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a_ct", "b_ct", "c_ct"]
    assert {p.name for p in (out / "b_ct").iterdir()} == {"labels.nii.gz", "report.json"}


def test_organs_option_and_rtstruct_for_a_file_input(tmp_path, intensity_network, capsys, liver_ct_file):
    path = liver_ct_file(tmp_path / "case.nii.gz")
    out = tmp_path / "out"
    assert cli.main(["predict", str(path), "-o", str(out), "--organs", "liver,aorta",
                     "--format", "nifti,report,rtstruct"]) == 0
    printed = capsys.readouterr().out
    assert "rtstruct needs a DICOM series as input" in printed
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "case" / "labels.nii.gz")))
    assert set(np.unique(labels)) == {0, PAPER.label("liver")}
    report = json.loads((out / "case" / "report.json").read_text())
    assert report["volumes_ml"]["liver"] == pytest.approx(4 * 10 * 10 * 1.5 * 1.5 * 3.0 / 1000)
    assert set(report["volumes_ml"]) == {"liver", "aorta"}


def test_threshold_option_overrides_the_models_threshold_for_one_organ(tmp_path, intensity_network, liver_ct_file):
    path = liver_ct_file(tmp_path / "case.nii.gz")
    out = tmp_path / "out"
    # the painted liver sits at the centre of its band: p = sigmoid(0.2 * 50) = 0.99995
    assert cli.main(["predict", str(path), "-o", str(out), "--format", "report", "--organs", "liver,aorta",
                     "--threshold", "liver=0.99999"]) == 0
    report = json.loads((out / "case" / "report.json").read_text())
    assert report["volumes_ml"]["liver"] == 0.0
    assert report["model"]["mask_thresholds"] == {"liver": 0.99999, "aorta": 0.5}


def test_z_smoothing_option_overrides_the_models_smoothing_and_no_postprocess_turns_it_off(tmp_path,
                                                                                           intensity_network,
                                                                                           liver_ct_file):
    path = liver_ct_file(tmp_path / "case.nii.gz")  # the liver on 4 slices, 3 mm apart

    def liver_ml(*args: str) -> tuple[float, dict]:
        out = tmp_path / f"out{len(list(tmp_path.iterdir()))}"
        assert cli.main(["predict", str(path), "-o", str(out), "--format", "report", "--organs", "liver,aorta",
                         *args]) == 0
        report = json.loads((out / "case" / "report.json").read_text())
        return report["volumes_ml"]["liver"], report["model"]["z_smoothing_mm"]

    plain, recorded = liver_ml()
    assert plain > 0 and recorded == {"liver": 0.0, "aorta": 0.0}
    # sigma = 3 slices spreads each slice's p ~ 1 so thin that no slice of a 4-slice organ stays above 0.5
    smoothed, recorded = liver_ml("--z-smoothing", "liver=9")
    assert smoothed == 0.0 and recorded == {"liver": 9.0, "aorta": 0.0}
    assert liver_ml("--no-postprocess", "--z-smoothing", "liver=9")[0] == 0.0  # an explicit value still wins
    assert liver_ml("--no-postprocess")[1] == {"liver": 0.0, "aorta": 0.0}


def test_a_failure_while_writing_leaves_no_case_folder_and_keeps_the_previous_one(tmp_path, intensity_network,
                                                                                  monkeypatch, capsys, liver_ct_file):
    path = liver_ct_file(tmp_path / "case.nii.gz")
    out = tmp_path / "out"
    assert cli.main(["predict", str(path), "-o", str(out), "--format", "nifti"]) == 0
    before = (out / "case" / "labels.nii.gz").read_bytes()

    def write_then_fail(result, outdir, **kwargs):
        (Path(outdir) / "labels.nii.gz").write_bytes(b"half")
        raise OSError("No space left on device")

    monkeypatch.setattr("segmatecore.export.outputs.write_outputs", write_then_fail)
    assert cli.main(["predict", str(path), "-o", str(out), "--format", "nifti"]) == 1
    assert "case: FAILED: OSError: No space left on device" in capsys.readouterr().out
    assert (out / "case" / "labels.nii.gz").read_bytes() == before
    fresh = tmp_path / "fresh"
    assert cli.main(["predict", str(path), "-o", str(fresh), "--format", "nifti"]) == 1
    assert list(fresh.iterdir()) == [] and hidden_entries(out) == []


def test_a_cancelled_case_leaves_nothing(tmp_path, intensity_network, monkeypatch, capsys, liver_ct_file):
    path = liver_ct_file(tmp_path / "case.nii.gz")
    out = tmp_path / "out"
    original = intensity_network.forward

    def interrupted(x, z_norm=None):
        if z_norm is not None:  # Ctrl-C during the second pass
            raise KeyboardInterrupt
        return original(x, z_norm)

    monkeypatch.setattr(intensity_network, "forward", interrupted)
    assert cli.main(["predict", str(path), "-o", str(out)]) == 130
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("args, message", [(["--shard", "2/2"], "need 0 <= i < n"),
                                           (["--format", "nifti,png"], "unknown png"),
                                           (["--batch-size", "0"], "--batch-size must be at least 1"),
                                           (["--organs", "liver,heart"], "Unknown organ(s) heart"),
                                           (["--device", "cuda:99"], "Device 'cuda:99'"),
                                           (["--threshold", "liver=1.5"], "strictly between 0 and 1: liver=1.5"),
                                           (["--threshold", "liver"], "expected ORGAN=P"),
                                           (["--organs", "liver", "--threshold", "aorta=0.6"],
                                            "not being segmented: aorta"),
                                           (["--z-smoothing", "liver=-2"], "between 0 (off) and 20 mm: liver=-2.0"),
                                           (["--z-smoothing", "liver=thin"], "expected ORGAN=MM"),
                                           (["--feature-cache-mb", "-1"], "--feature-cache-mb must be 0 (off)")])
def test_bad_options_are_one_line_errors(tmp_path, intensity_network, capsys, args, message, liver_ct_file):
    path = liver_ct_file(tmp_path / "case.nii.gz")
    assert cli.main(["predict", str(path), "-o", str(tmp_path / "out"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_runtime_option_reaches_the_network_and_the_report(tmp_path, random_model_file, monkeypatch, liver_ct_file):
    monkeypatch.setenv("SEGMATE_HOME", str(tmp_path / "home"))  # where the converted network is cached
    path = liver_ct_file(tmp_path / "case.nii.gz")
    for runtime in ("openvino", "torch"):
        out = tmp_path / runtime
        assert cli.main(["predict", str(path), "-o", str(out), "--model", str(random_model_file), "--device", "cpu",
                         "--format", "report", "--runtime", runtime]) == 0
        report = json.loads((out / "case" / "report.json").read_text())
        assert report["model"]["runtime"] == runtime
    assert list((tmp_path / "home").rglob("*.xml"))  # the OpenVINO graphs, converted once and kept
    with pytest.raises(SystemExit) as refused:  # argparse: usage error, before any work
        cli.main(["predict", str(path), "-o", str(tmp_path / "bad"), "--runtime", "tensorrt"])
    assert refused.value.code == 2 and not (tmp_path / "bad").exists()


def peak_rss_of(command: list[str], interval: float = 0.05) -> tuple[int, int]:
    """Run ``command``; return (exit code, peak resident memory in bytes of it and its children)."""
    process = psutil.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak = 0
    while process.poll() is None:
        try:
            rss = process.memory_info().rss + sum(c.memory_info().rss for c in process.children(recursive=True))
            peak = max(peak, rss)
        except psutil.Error:
            pass
        time.sleep(interval)
    return process.returncode, peak


@pytest.mark.slow
def test_peak_memory_of_predict_on_a_512x512x300_volume(shared_data, tmp_path):
    """`pytest -m slow Testing/cli/test_cli_predict.py -s`: prints the figure reported in docs/inference.md."""
    source = sitk.ReadImage(str(shared_data / "totalseg_example" / "example_ct.nii.gz"))
    size = (512, 512, 300)
    spacing = [sp * (n - 1) / (m - 1) for sp, n, m in zip(source.GetSpacing(), source.GetSize(), size)]
    volume = sitk.Resample(source, size, sitk.Transform(), sitk.sitkLinear, source.GetOrigin(), spacing,
                           source.GetDirection(), -1024, sitk.sitkInt16)
    path = tmp_path / "ct_512x512x300.nii.gz"
    sitk.WriteImage(volume, str(path))
    torch.manual_seed(0)
    model = save_model(create_model("fastvit_t12"), tmp_path / "fastvit_512.safetensors",
                       default_metadata("fastvit_t12"))
    code, peak = peak_rss_of(SEGMATE + ["predict", str(path), "-o", str(tmp_path / "out"), "--model", str(model),
                                        "--device", "cpu"])
    print(f"\npeak RSS of segmate predict on 512x512x300 (FastViT-T12, 512 x 512 input, CPU): {peak / 2**30:.2f} GiB")
    assert code == 0 and peak < 2.5e9


def test_naming_tg263_names_the_segments_with_the_same_rule_as_the_slicer_module(tmp_path, intensity_network,
                                                                                 liver_ct_file):
    from segmatecore.data.organs import segment_name

    path = liver_ct_file(tmp_path / "case.nii.gz")
    out = tmp_path / "out"
    assert cli.main(["predict", str(path), "-o", str(out), "--organs", "liver,left_kidney", "--format", "seg.nrrd",
                     "--naming", "tg263"]) == 0
    names = slicerio.segment_names(slicerio.read_segmentation(str(out / "case" / "segmentation.seg.nrrd"),
                                                              skip_voxels=True))
    assert names == ["Liver", "Kidney_L"] == [segment_name(organ(k), "tg263") for k in ("liver", "left_kidney")]


def test_skip_existing_leaves_complete_cases_alone_and_says_so(tmp_path, intensity_network, capsys, liver_ct_file):
    inputs = [str(liver_ct_file(tmp_path / "in" / f"{name}.nii.gz")) for name in ("a", "b")]
    out = tmp_path / "out"
    assert cli.main(["predict", *inputs, "-o", str(out), "--format", "nifti,report"]) == 0
    before = {p: p.read_bytes() for p in out.rglob("*.json")}
    (out / "b" / "labels.nii.gz").unlink()  # b is incomplete: it is segmented again
    capsys.readouterr()
    assert cli.main(["predict", *inputs, "-o", str(out), "--format", "nifti,report", "--skip-existing"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert f"a: skipped, its outputs exist in {out / 'a'}" in lines
    assert any(line.startswith("b: ok, ") for line in lines)
    assert lines[-1] == "2 of 2 case(s) done, 1 skipped"
    assert (out / "a" / "report.json").read_bytes() == before[out / "a" / "report.json"]  # not rewritten
    assert (out / "b" / "labels.nii.gz").is_file()


def test_quiet_prints_only_errors(tmp_path, intensity_network, capsys, liver_ct_file):
    good = liver_ct_file(tmp_path / "in" / "good.nii.gz")
    missing = tmp_path / "in" / "missing.nii.gz"
    assert cli.main(["predict", str(good), "-o", str(tmp_path / "out"), "--format", "report", "--quiet"]) == 0
    printed = capsys.readouterr()
    assert printed.out == "" and printed.err == ""
    assert cli.main(["predict", str(good), str(missing), "-o", str(tmp_path / "out"), "--format", "report", "-q"]) == 1
    printed = capsys.readouterr()
    assert printed.out == ""
    assert printed.err.startswith("missing: FAILED: ") and len(printed.err.strip().splitlines()) == 1


def test_low_memory_sets_batch_one_and_no_feature_cache_unless_given_explicitly(tmp_path, intensity_network,
                                                                                monkeypatch, liver_ct_file):
    from segmatecore.inference.predictor import SegMatePredictor

    path = liver_ct_file(tmp_path / "case.nii.gz")
    real_init, seen = SegMatePredictor.__init__, []

    def recording_init(self, *args, **kwargs):
        seen.append({k: kwargs[k] for k in ("batch_size", "feature_cache_mb")})
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(SegMatePredictor, "__init__", recording_init)

    def settings(*args: str) -> tuple[dict, dict]:
        out = tmp_path / f"out{len(list(tmp_path.iterdir()))}"
        assert cli.main(["predict", str(path), "-o", str(out), "--format", "report", "--device", "cpu", *args]) == 0
        return seen[-1], json.loads((out / "case" / "report.json").read_text())["model"]

    asked, ran = settings()
    assert asked == {"batch_size": None, "feature_cache_mb": 512.0} and ran["batch_size"] == 2
    asked, ran = settings("--low-memory")
    assert asked == {"batch_size": 1, "feature_cache_mb": 0.0} and ran["batch_size"] == 1
    assert ran["feature_cache"] is None
    asked, ran = settings("--low-memory", "--batch-size", "3")
    assert asked == {"batch_size": 3, "feature_cache_mb": 0.0} and ran["batch_size"] == 3


def test_the_notice_of_a_model_not_for_clinical_use_is_one_line_and_a_clinical_model_has_none(
        tmp_path, intensity_network, monkeypatch, capsys, liver_ct_file):
    path = liver_ct_file(tmp_path / "case.nii.gz")
    assert cli.main(["predict", str(path), "-o", str(tmp_path / "demo"), "--format", "report"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("notice: ") and "not for clinical use" in first
    clinical = {"backbone": "intensity-test", "id": "approved", "version": "1.0", "clinical_use": True,
                "intended_use": "thorax CT"}
    monkeypatch.setattr("segmatecore.inference.predictor.load_with_facts", lambda name: (intensity_network, clinical))
    assert cli.main(["predict", str(path), "-o", str(tmp_path / "clinical"), "--format", "report"]) == 0
    assert "not for clinical use" not in capsys.readouterr().out
