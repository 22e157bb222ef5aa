"""The batch script (SegMateSlicer/Scripts/segmate_batch.py): arguments, exit codes and the folder loop.

Runs in a real MRML scene from slicer-core, as ``Slicer --no-main-window --python-script`` would.
Cases are tiny CT-like volumes; the voxel checks use the intensity test model, and one full
command-line run uses a real SegMate model file (random weights, 32 x 32 input).
"""
from __future__ import annotations

import csv
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
import slicerio

import segmate_batch as batch  # SegMateSlicer/Scripts is on pytest.ini's pythonpath
import segmatecore
from segmatecore.data.organs import OrganSet, PAPER_ORGANS, organ

from SegMateLib.batch import CSV_NAME, findCases, parseOrgans, runBatch

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "SegMateSlicer" / "Scripts" / "segmate_batch.py"

PAPER = OrganSet(PAPER_ORGANS)  # the organs of a model made with the defaults

ORGANS = ["liver", "aorta"]


@pytest.fixture(scope="module")
def ct_image(band_centre):
    """``ct_image(shift, oblique=False)``: a small CT with a liver (moved ``shift`` rows) and an aorta."""
    def make(shift: int, oblique: bool = False) -> sitk.Image:
        array = np.full((8, 30, 32), -1000, dtype=np.int16)
        array[2:7, 5 + shift:20 + shift, 4:16] = band_centre("liver")
        array[1:8, 22:27, 18:24] = band_centre("aorta")
        array[0, 0, 0] = 300
        image = sitk.GetImageFromArray(array)
        image.SetSpacing((1.2, 1.1, 3.0))
        image.SetOrigin((-20.0, 15.0, 100.0 + shift))
        if oblique:
            c, s = np.cos(0.3), np.sin(0.3)
            image.SetDirection((c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0))
        return image
    return make


@pytest.fixture
def case_folder(tmp_path, ct_image) -> Path:
    """Two NIfTI/NRRD volumes, a DICOM series folder, a damaged file, and files the loop must ignore."""
    folder = tmp_path / "cases"
    folder.mkdir()
    sitk.WriteImage(ct_image(0), str(folder / "alpha.nii.gz"))
    sitk.WriteImage(ct_image(3, oblique=True), str(folder / "beta.nrrd"))
    (folder / "damaged.nii.gz").write_bytes(b"not an image")
    (folder / "notes.txt").write_text("ignored")
    (folder / "old.seg.nrrd").write_bytes(b"ignored: a segmentation, not a CT")
    return folder


def test_find_cases_lists_volumes_and_dicom_folders(case_folder, shared_data):
    shutil.copytree(shared_data / "dcmqi_ct3slice" / "ct-3slice", case_folder / "gamma_dicom")
    (case_folder / "empty_folder").mkdir()
    cases = findCases(case_folder)
    assert [(c.name, c.path.name) for c in cases] == [
        ("alpha", "alpha.nii.gz"), ("beta", "beta.nrrd"), ("damaged", "damaged.nii.gz"), ("gamma_dicom", "gamma_dicom")]
    assert [c.name for c in findCases(case_folder / "beta.nrrd")] == ["beta"]
    assert [c.name for c in findCases(case_folder / "gamma_dicom")] == ["gamma_dicom"]
    with pytest.raises(FileNotFoundError):
        findCases(case_folder / "missing")


def test_folder_loop_writes_a_seg_nrrd_per_case_and_a_csv_log(scene, case_folder, tmp_path, ct_image, intensity_model):
    model = intensity_model(organs=ORGANS, input_size=64)
    output = tmp_path / "out"
    messages = []
    rows = runBatch(case_folder, output, scene=scene, log=messages.append, organs=ORGANS, model=model,
                    device="cpu", naming="tg263")

    assert [(r["case"], r["status"]) for r in rows] == [("alpha", "ok"), ("beta", "ok"), ("damaged", "failed")]
    assert "damaged.nii.gz" in rows[2]["error"] and "InputError" in rows[2]["error"]
    assert scene.GetNumberOfNodesByClass("vtkMRMLVolumeNode") == 0
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0
    assert len(messages) == 3 and "FAILED" in messages[2]
    with (output / CSV_NAME).open(newline="") as stream:
        logged = list(csv.DictReader(stream))
    assert [(r["case"], r["status"]) for r in logged] == [("alpha", "ok"), ("beta", "ok"), ("damaged", "failed")]
    for row, name, image in ((logged[0], "alpha", ct_image(0)), (logged[1], "beta", ct_image(3, oblique=True))):
        assert row["output"] == str(output / f"{name}.seg.nrrd") and row["organs"] == "liver aorta"
        expected = segmatecore.segment(image, model=model, organs=ORGANS, device="cpu")
        assert float(row["liver_ml"]) == pytest.approx(expected.volumes_ml["liver"], abs=1e-3)
        saved = slicerio.read_segmentation(row["output"])
        by_name = {s["name"]: s for s in saved["segments"]}
        assert sorted(by_name) == ["A_Aorta", "Liver"]
        labels = sitk.GetArrayFromImage(expected.labelmap).transpose(2, 1, 0)
        for key in ORGANS:
            np.testing.assert_array_equal(saved["voxels"] == by_name[organ(key).tg263]["labelValue"],
                                          labels == PAPER.label(key))
        lps = np.array(image.GetDirection()).reshape(3, 3) @ np.diag(image.GetSpacing())
        assert np.allclose(saved["ijkToLPS"][:3, :3], lps, atol=1e-6)
        assert np.allclose(saved["ijkToLPS"][:3, 3], image.GetOrigin(), atol=1e-6)

    again = runBatch(case_folder, output, scene=scene, log=messages.append, skipExisting=True, organs=ORGANS,
                     model=model, device="cpu")
    assert [r["status"] for r in again] == ["skipped", "skipped", "failed"]


def test_organ_list_parsing():
    assert parseOrgans(None) is None and parseOrgans("") is None
    assert parseOrgans("liver,aorta") == ["liver", "aorta"]
    assert parseOrgans("liver aorta, trachea") == ["liver", "aorta", "trachea"]


@pytest.mark.parametrize("argv, message", [
    ([], "--input"),
    (["--input", "x"], "--output"),
    (["--input", "/no/such/folder", "--output", "out"], "does not exist"),
    (["--", "--input", ".", "--output", "out", "--batch-size", "0"], "--batch-size must be at least 1"),
    (["--input", ".", "--output", "out", "--naming", "short"], "invalid choice"),
    (["--input", ".", "--output", "out", "--precision", "fp16"], "invalid choice"),
    (["--input", ".", "--output", "out", "--feature-cache-mb", "-1"], "--feature-cache-mb must be 0"),
])
def test_bad_arguments_exit_2_with_a_message(argv, message, capsys):
    assert batch.main(argv) == batch.EXIT_USAGE
    assert message in capsys.readouterr().err


def test_precision_and_feature_cache_options_reach_the_logic(case_folder, tmp_path, monkeypatch):
    import SegMateLib.batch

    received = {}
    monkeypatch.setattr(SegMateLib.batch, "runBatch", lambda *args, **options: received.update(options) or [])
    argv = ["--input", str(case_folder), "--output", str(tmp_path / "out")]
    assert batch.main(argv + ["--precision", "bf16", "--feature-cache-mb", "0"], log=lambda _: None) == 0
    assert received["precision"] == "bf16" and received["featureCacheMb"] == 0
    assert batch.main(argv, log=lambda _: None) == 0
    assert received["precision"] == "auto" and received["featureCacheMb"] is None  # SegMateCore's defaults


def test_command_line_run_with_a_model_file(scene, case_folder, tmp_path):
    from segmatecore.models.checkpoint import default_metadata, save_model
    from segmatecore.models import create_model

    network = create_model("fastvit_t12")
    metadata = default_metadata("fastvit_t12")
    metadata["preprocessing"]["input_size"] = [32, 32]
    model_path = save_model(network, tmp_path / "tiny.safetensors", metadata)
    (case_folder / "beta.nrrd").unlink()
    output = tmp_path / "out"
    log = []
    code = batch.main(["--", "--input", str(case_folder), "--output", str(output), "--model", str(model_path),
                       "--device", "cpu", "--organs", "liver,aorta", "--batch-size", "8", "--csv",
                       str(tmp_path / "log.csv")], log=log.append)
    assert code == batch.EXIT_SOME_FAILED  # the damaged file fails, alpha succeeds
    with (tmp_path / "log.csv").open(newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert [(r["case"], r["status"]) for r in rows] == [("alpha", "ok"), ("damaged", "failed")]
    saved = slicerio.read_segmentation(str(output / "alpha.seg.nrrd"))
    assert sorted(s["name"] for s in saved["segments"]) == ["Aorta", "Liver"]
    assert "1 of 2 case(s) done, 1 failed" in log[-1]


def test_an_unexpected_error_ends_with_exit_code_3_and_its_traceback(case_folder, tmp_path, monkeypatch):
    import SegMateLib.batch

    def broken(*args, **options):
        raise OSError("No space left on device")

    monkeypatch.setattr(SegMateLib.batch, "runBatch", broken)
    log = []
    code = batch.main(["--input", str(case_folder), "--output", str(tmp_path / "out")], log=log.append)
    assert code == batch.EXIT_ERROR
    assert "unexpected error: OSError: No space left on device" in log[-1] and "Traceback" in log[-1]


# Runs the script as Slicer runs a --python-script: Slicer's application exists, and an exception that
# escapes the script is printed while Slicer keeps running (headless, it would wait forever).
AS_SLICER_RUNS_IT = """
import runpy, sys
import slicer
exits = []
slicer.app = object()
slicer.mrmlScene = slicer.vtkMRMLScene()
slicer.util.exit = exits.append
sys.argv = [{script!r}] + {argv!r}
try:
    runpy.run_path({script!r}, run_name="__main__")
except BaseException as exc:
    print("escaped the script:", type(exc).__name__, exc)
print("exit codes:", exits)
"""


@pytest.mark.parametrize("make_argv, code, message", [
    (lambda folder, tmp: ["--input", str(folder)], 2, "the following arguments are required: --output"),
    (lambda folder, tmp: ["--input", str(folder), "--output", str(tmp / "a_file.txt")], 3, "FileExistsError"),
    (lambda folder, tmp: ["--input", str(tmp / "empty"), "--output", str(tmp / "out")], 2, "No CT volume"),
], ids=["usage", "unexpected-error", "nothing-to-do"])
def test_every_path_ends_slicer_with_an_exit_code(case_folder, tmp_path, make_argv, code, message):
    (tmp_path / "a_file.txt").write_text("not a folder")
    (tmp_path / "empty").mkdir()
    harness = textwrap.dedent(AS_SLICER_RUNS_IT).format(script=str(SCRIPT), argv=make_argv(case_folder, tmp_path))
    done = subprocess.run([sys.executable, "-c", harness], capture_output=True, text=True, timeout=300)
    assert f"exit codes: [{code}]" in done.stdout, done.stdout + done.stderr
    assert message in done.stdout + done.stderr
    assert "escaped the script" not in done.stdout
