"""``make demo`` (segmatecore.cli.demo) and the bundled sample data it segments."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import SimpleITK as sitk
import torch

from segmatecore.cli import demo
from segmatecore.models.checkpoint import default_metadata, save_model
from segmatecore.models import create_model

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "Resources" / "SampleData"


def test_sample_data_are_listed_with_licence_and_attribution():
    samples = json.loads((SAMPLES / "samples.json").read_text())
    assert [s["file"] for s in samples] == ["openkbp_validation_pt_201_ct.nii.gz", "totalsegmentator_example_ct.nii.gz"]
    for sample in samples:
        assert {"name", "file", "description", "license", "attribution"} <= set(sample)
        path = SAMPLES / sample["file"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == sample["sha256"]
        assert (SAMPLES / sample["license_file"]).is_file() and (SAMPLES / sample["thumbnail"]).is_file()
        image = sitk.ReadImage(str(path))
        assert image.GetDimension() == 3 and min(image.GetSize()) >= 100
    assert "MIT License" in (SAMPLES / samples[0]["license_file"]).read_text()
    assert "Apache License" in (SAMPLES / samples[1]["license_file"]).read_text()


@pytest.fixture
def demo_resources(tmp_path, monkeypatch):
    """Resources/ with the real organ table, schema and samples, and a catalogue naming a test model."""
    resources = tmp_path / "Resources"
    (resources / "SampleData").mkdir(parents=True)
    (resources / "Models").mkdir()
    for name in ("organs.json", "models.schema.json"):
        shutil.copy(REPO / "Resources" / name, resources / name)
    first = json.loads((SAMPLES / "samples.json").read_text())[0]
    shutil.copy(SAMPLES / "samples.json", resources / "SampleData")
    # the slices around the esophagus only: the same CT, a sixth of the work
    ct = sitk.ReadImage(str(SAMPLES / first["file"]))
    sitk.WriteImage(ct[:, :, 10:34], str(resources / "SampleData" / first["file"]))
    monkeypatch.setenv("SEGMATE_RESOURCES", str(resources))
    monkeypatch.chdir(tmp_path)
    return resources


def write_catalogue(resources: Path, model: Path | None, sha256: str) -> None:
    entry = {"id": "test_default", "title": "untrained test model", "version": "1", "backbone": "fastvit_t12",
             "organs": [o["key"] for o in json.loads((resources / "organs.json").read_text())["organs"]],
             "trained_organs": ["spinal_cord", "esophagus"], "input_size": [64, 64],
             "file_size": model.stat().st_size if model else 1, "sha256": sha256, "license": "Apache-2.0",
             "url": "", "demo": True, "metrics": {"dataset": "none", "cases": 1, "organs": {}},
             "cpu_seconds_per_volume": 1.0}
    (resources / "models.json").write_text(json.dumps({"format_version": 1, "default_model": "test_default",
                                                        "models": [entry]}))


def test_demo_without_its_model_says_so_and_writes_nothing(demo_resources, capsys):
    write_catalogue(demo_resources, None, "0" * 64)
    assert demo.main(["-o", "out"]) == 1
    err = capsys.readouterr().err
    assert "default model test_default is missing" in err
    assert not Path("out").exists()


def test_demo_refuses_a_model_that_differs_from_the_catalogue(demo_resources, capsys):
    model = create_model("fastvit_t12")
    path = save_model(model, demo_resources / "Models" / "test_default.safetensors",
                      default_metadata("fastvit_t12"), dtype=torch.float16)
    write_catalogue(demo_resources, path, "0" * 64)
    assert demo.main(["-o", "out"]) == 1
    assert "does not match the SHA-256" in capsys.readouterr().err
    assert not Path("out").exists()


def test_demo_segments_the_sample_and_writes_every_output(demo_resources, capsys):
    """An untrained network at 64 x 64 on 24 slices keeps this fast; the test is of the path, not the accuracy."""
    torch.manual_seed(0)
    meta = default_metadata("fastvit_t12", trained_organs=["spinal_cord", "esophagus"],
                            provenance={"source": "test: untrained"})
    meta["preprocessing"]["input_size"] = [64, 64]
    path = save_model(create_model("fastvit_t12"), demo_resources / "Models" / "test_default.safetensors", meta,
                      dtype=torch.float16)
    write_catalogue(demo_resources, path, hashlib.sha256(path.read_bytes()).hexdigest())
    assert demo.main(["-o", "out"]) == 0
    out = capsys.readouterr().out
    files = sorted(p.name for p in Path("out").iterdir())
    assert files == ["labels.nii.gz", "preview.png", "report.json", "segmentation.seg.nrrd"]
    labels = sitk.ReadImage("out/labels.nii.gz")
    ct = sitk.ReadImage(str(demo_resources / "SampleData" / "openkbp_validation_pt_201_ct.nii.gz"))
    assert labels.GetSize() == ct.GetSize() == (128, 128, 24)
    assert labels.GetSpacing() == ct.GetSpacing() and labels.GetOrigin() == ct.GetOrigin()
    report = json.loads(Path("out/report.json").read_text())
    assert report["model"]["id"] == "test_default"
    assert set(report["volumes_ml"]) == {"spinal_cord", "esophagus"}
    assert str(Path("out").resolve()) in out and "segmentation took" in out
