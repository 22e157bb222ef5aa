"""`segmate import-research`: research .pth layouts become SegMate models computing the same function."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from segmatecore import load_model
from segmatecore.cli.main import main


@pytest.mark.parametrize("layout", ["bare", "wrapped_ddp"])
def test_cli_import_matches_reference(tmp_path, layout, capsys, reference_state_dict, reference_outputs):
    state = reference_state_dict("fastvit_t12")
    if layout == "wrapped_ddp":
        state = {"epoch": 3, "model_state_dict": {f"module.{k}": v for k, v in state.items()}}
    ckpt = tmp_path / "research.pth"
    torch.save(state, ckpt)
    out = tmp_path / "imported.safetensors"
    assert main(["import-research", str(ckpt), "--backbone", "fastvit_t12", "-o", str(out),
                 "--input-size", "128"]) == 0
    assert "sha256" in capsys.readouterr().out
    model = load_model(out)
    meta = model.metadata
    assert meta["provenance"]["source"] == "research-import"
    assert meta["provenance"]["research_checkpoint"] == "research.pth"
    assert meta["preprocessing"]["input_size"] == [128, 128]
    assert not any(k.startswith("deep_heads") for k in model.state_dict())
    ref = reference_outputs("fastvit_t12")
    with torch.no_grad():
        res = model(torch.from_numpy(ref["input"])[None], torch.tensor([0.37]))
    for name, got in (("seg", res.seg), ("presence", torch.sigmoid(res.presence))):  # reference presence: probabilities
        expected = ref[f"z037_{name}"]
        assert np.abs(got[0].numpy() - expected).max() / np.abs(expected).max() < 1e-4


def test_import_refuses_non_research_checkpoint(tmp_path, capsys):
    ckpt = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(1)}, ckpt)
    assert main(["import-research", str(ckpt), "--backbone", "fastvit_t12", "-o", str(tmp_path / "o.safetensors")]) == 2
    assert "Unrecognised research checkpoint key" in capsys.readouterr().err
    assert not (tmp_path / "o.safetensors").exists()


def test_import_refuses_wrong_backbone(tmp_path, capsys, reference_state_dict):
    ckpt = tmp_path / "r.pth"
    torch.save(reference_state_dict("fastvit_t12"), ckpt)
    assert main(["import-research", str(ckpt), "--backbone", "mambaout_tiny", "-o", str(tmp_path / "o.safetensors")]) == 2
    assert "do not fit a mambaout_tiny" in capsys.readouterr().err


def test_info_prints_parameters_and_gmacs(capsys):
    assert main(["info", "fastvit_t12", "--size", "512"]) == 0
    text = capsys.readouterr().out
    assert "12.24 M" in text and "9.11" in text
