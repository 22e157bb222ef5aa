"""precision auto: the faster precision only where the model's recorded agreement with fp32 allows it."""
from __future__ import annotations

import pytest
import torch

from segmatecore.runtime import precision as precision_module
from segmatecore.runtime.precision import AGREEMENT_DICE, resolve_precision

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def meta(**records) -> dict:
    return {"precision_agreement": {p: {"min_dice": d} for p, d in records.items()}}


@pytest.mark.parametrize("amx", [True, False])
def test_auto_on_the_cpu_uses_bf16_only_with_amx_and_a_passing_record(monkeypatch, amx):
    monkeypatch.setattr(precision_module, "cpu_bf16_is_faster", lambda: amx)
    assert resolve_precision("auto", CPU, meta(bf16=0.995)) == ("bf16" if amx else "fp32")
    assert resolve_precision("auto", CPU, meta(bf16=AGREEMENT_DICE - 0.001)) == "fp32"
    assert resolve_precision("auto", CPU, {}) == "fp32"  # no record: fp32
    assert resolve_precision("auto", CPU, meta(fp16=0.999)) == "fp32"  # a record for another precision


def test_auto_on_a_gpu_uses_fp16_only_with_its_record():
    assert resolve_precision("auto", CUDA, meta(fp16=0.99)) == "fp16"
    assert resolve_precision("auto", CUDA, meta(bf16=0.99)) == "fp32"
    assert resolve_precision("auto", CUDA, {}) == "fp32"


def test_an_explicit_precision_is_kept_and_an_unknown_one_refused():
    assert resolve_precision("bf16", CPU, {}) == "bf16" and resolve_precision("fp32", CUDA, meta(fp16=1.0)) == "fp32"
    with pytest.raises(ValueError, match="Unknown precision"):
        resolve_precision("int8", CPU, {})


def test_the_predictor_reports_what_it_computed_in(monkeypatch):
    from segmatecore.inference.predictor import SegMatePredictor
    from segmatecore.models import create_model
    from segmatecore.models.checkpoint import default_metadata
    import SimpleITK as sitk
    import numpy as np

    monkeypatch.setattr(precision_module, "cpu_bf16_is_faster", lambda: True)
    model = create_model("fastvit_t12").eval()
    model.metadata = {**default_metadata("fastvit_t12"), **meta(bf16=0.99)}
    model.metadata["preprocessing"]["input_size"] = [32, 32]
    predictor = SegMatePredictor(model, device="cpu")
    assert predictor.compute_precision == "bf16"
    result = predictor.segment(sitk.GetImageFromArray(np.zeros((3, 32, 32), np.int16)), z="volume")
    assert result.model_info["precision"] == "auto" and result.model_info["compute_precision"] == "bf16"
