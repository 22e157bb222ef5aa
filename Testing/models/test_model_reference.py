"""SegMateNet is the research model's function, stage by stage (shared/reference beside the repository)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from segmatecore import create_model
from segmatecore.models.research import convert_research_state_dict

BACKBONES = ["tf_efficientnetv2_m", "mambaout_tiny", "fastvit_t12"]
STAGES = ["slicefusion", "encoder0", "encoder1", "encoder2", "encoder3", "aspp", "film", "dec4", "dec3", "dec2",
          "dec1", "nested3", "nested2", "nested1", "seg", "boundary", "presence", "deep1", "deep2", "deep3"]


def run_stages(model, x, z):
    """Forward once, capturing every stage the reference records."""
    captured = {}
    hooks = [model.slice_fusion.register_forward_hook(lambda m, i, o: captured.__setitem__("slicefusion", o)),
             model.encoder.register_forward_hook(
                 lambda m, i, o: captured.update({f"encoder{k}": f for k, f in enumerate(o)})),
             model.aspp.register_forward_hook(lambda m, i, o: captured.__setitem__("aspp", o)),
             model.film.register_forward_hook(lambda m, i, o: captured.__setitem__("film", o))]
    for k, block in enumerate(model.decoder.blocks):
        hooks.append(block.register_forward_hook(lambda m, i, o, k=k: captured.__setitem__(f"dec{4 - k}", o)))
    for k, block in enumerate(model.decoder.nested):
        hooks.append(block.register_forward_hook(lambda m, i, o, k=k: captured.__setitem__(f"nested{3 - k}", o)))
    with torch.no_grad():
        out = model(x, z)
    for h in hooks:
        h.remove()
    captured.update(seg=out.seg, boundary=out.boundary, presence=torch.sigmoid(out.presence),  # reference: probabilities
                    deep1=out.deep[0], deep2=out.deep[1], deep3=out.deep[2])
    return {k: v[0].numpy() for k, v in captured.items()}


@pytest.fixture(scope="module", params=BACKBONES)
def imported(request, reference_state_dict, reference_outputs):
    backbone = request.param
    model = create_model(backbone, deep_supervision=True)
    model.load_state_dict(convert_research_state_dict(reference_state_dict(backbone)), strict=True)
    return backbone, model.eval(), reference_outputs(backbone)


@pytest.mark.parametrize("tag,z", [("z037", 0.37), ("znone", None)])
def test_every_stage_matches_research_model(imported, tag, z):
    backbone, model, ref = imported
    x = torch.from_numpy(ref["input"])[None]
    got = run_stages(model, x, None if z is None else torch.tensor([z]))
    for stage in STAGES:
        expected = ref[f"{tag}_{stage}"]
        assert got[stage].shape == expected.shape, (backbone, stage)
        rel = np.abs(got[stage] - expected).max() / max(np.abs(expected).max(), 1e-12)
        assert rel < 1e-4, f"{backbone} {tag} {stage}: relative error {rel:.2e}"


def test_film_changes_output_only_when_z_given(imported):
    _, model, ref = imported
    x = torch.from_numpy(ref["input"])[None]
    with torch.no_grad():
        a, b = model(x, None).seg, model(x, torch.tensor([0.9])).seg
    assert not torch.equal(a, b)


def test_unused_research_blocks_are_dropped(reference_state_dict):
    state = reference_state_dict("fastvit_t12")
    converted = convert_research_state_dict(state)
    assert not any("skip_dec2_4" in k or "skip_dec1_3" in k or "skip_dec1_4" in k for k in converted)
    assert set(converted) == set(create_model("fastvit_t12", deep_supervision=True).state_dict())
