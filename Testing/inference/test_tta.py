"""Mirror test-time augmentation: the flipped pass comes back to the right place and the right side."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from torch import nn

from segmatecore import segment
from segmatecore.inference.tta import average_with_mirror
from segmatecore.models import SegMateOutput
from segmatecore.data.organs import OrganSet, PAPER_ORGANS, lateral_swap

PAPER = OrganSet(PAPER_ORGANS)  # the organs of a model made with the defaults


class SidedModel(nn.Module):
    """An intensity test network whose kidney channels also know the side: left_kidney only in the rows of
    the patient's left (in a canonical slice, rows run toward the patient's right), right_kidney in the
    others, as a trained network would. A flipped image's left kidney therefore comes out as right."""

    def __init__(self, inner: nn.Module):
        """``inner``: an intensity test network trained on both kidneys and the liver."""
        super().__init__()
        self.inner = inner
        self.inner.centre[list(PAPER_ORGANS).index("right_kidney")] = self.inner.centre[list(PAPER_ORGANS).index("left_kidney")]
        self.inner.half_width[list(PAPER_ORGANS).index("right_kidney")] = self.inner.half_width[list(PAPER_ORGANS).index("left_kidney")]
        self.metadata = self.inner.metadata

    def forward(self, x: torch.Tensor, z_norm: torch.Tensor | None = None) -> SegMateOutput:
        out = self.inner(x, z_norm)
        seg = out.seg.clone()
        rows = seg.shape[-2]
        left, right = list(PAPER_ORGANS).index("left_kidney"), list(PAPER_ORGANS).index("right_kidney")
        seg[:, left, rows // 2:] = -20.0
        seg[:, right, :rows // 2] = -20.0
        return out._replace(seg=seg)


def kidney_ct(band_centre) -> sitk.Image:
    """A kidney-band blob on one side of a 64 x 64 slice and a liver-band blob across the middle."""
    a = np.full((6, 64, 64), -1000, dtype=np.int16)  # z, y, x
    a[1:5, 20:30, 6:16] = band_centre("left_kidney")  # low x
    a[1:5, 40:50, 24:40] = band_centre("liver")
    image = sitk.GetImageFromArray(a)
    image.SetSpacing((1.5, 1.5, 3.0))
    return image


def test_tta_brings_the_mirrored_pass_back_to_the_same_place_and_side(intensity_model, band_centre):
    model = SidedModel(intensity_model(organs=["left_kidney", "right_kidney", "liver"], input_size=64))
    image = kidney_ct(band_centre)
    plain = segment(image, model=model, device="cpu", z_norm="none", organs=["left_kidney", "right_kidney", "liver"])
    mirrored = segment(image, model=model, device="cpu", z_norm="none", tta=True,
                       organs=["left_kidney", "right_kidney", "liver"])
    plain_labels, tta_labels = sitk.GetArrayFromImage(plain.labelmap), sitk.GetArrayFromImage(mirrored.labelmap)
    sided = [k for k in ("left_kidney", "right_kidney") if plain.volumes_ml[k] > 0]
    assert len(sided) == 1 and plain.volumes_ml["liver"] > 0  # the blob is one kidney, on its side
    # the flipped pass calls the blob the other kidney at the mirrored place; flipped back and
    # swapped it agrees voxel for voxel (without the swap each side would get p = 0.5 and vanish)
    assert np.array_equal(plain_labels, tta_labels)
    assert mirrored.model_info["tta"] is True and plain.model_info["tta"] is False


def test_average_with_mirror_averages_probabilities_of_the_unflipped_swapped_pass():
    torch.manual_seed(0)
    keys = list(PAPER_ORGANS)
    seg = torch.randn(2, len(keys), 8, 6)
    presence = torch.randn(2, len(keys))  # logits, as every head returns
    swap = lateral_swap(PAPER_ORGANS)
    out = SegMateOutput(seg, torch.zeros(2, len(keys), 8, 6), presence, ())
    exact_mirror = SegMateOutput(seg.flip(-2)[:, swap], out.boundary, presence[:, swap], ())
    same = average_with_mirror(out, exact_mirror, swap)
    torch.testing.assert_close(torch.sigmoid(same.seg), torch.sigmoid(seg), atol=1e-6, rtol=0)
    torch.testing.assert_close(torch.sigmoid(same.presence), torch.sigmoid(presence), atol=1e-6, rtol=0)
    other = SegMateOutput(torch.full_like(seg, -30.0), out.boundary, torch.full_like(presence, -30.0), ())
    half = average_with_mirror(out, other, swap)
    torch.testing.assert_close(torch.sigmoid(half.seg), torch.sigmoid(seg) / 2, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.sigmoid(half.presence), torch.sigmoid(presence) / 2, atol=1e-5, rtol=0)


def test_lateral_swap_pairs_left_and_right_and_refuses_half_a_pair():
    keys = list(PAPER_ORGANS)
    swap = lateral_swap(PAPER_ORGANS)
    assert [keys[i] for i in swap][:2] == ["right_lung", "left_lung"]
    assert keys[swap[keys.index("spinal_cord")]] == "spinal_cord"
    assert lateral_swap(["liver", "right_kidney", "left_kidney"]) == [0, 2, 1]
    with pytest.raises(ValueError, match="missing: right_lung"):
        lateral_swap(["left_lung", "liver"])


def test_cli_options_reach_segment_and_evaluate_refuses_to_record_tta_figures(tmp_path, capsys, intensity_network,
                                                                             liver_ct_file):
    import json

    from segmatecore.cli import main as cli

    path = liver_ct_file(tmp_path / "case.nii.gz")
    assert cli.main(["predict", str(path), "-o", str(tmp_path / "out"), "--format", "report", "--tta"]) == 0
    report = json.loads((tmp_path / "out" / "case" / "report.json").read_text())
    assert report["model"]["tta"] is True and report["volumes_ml"]["liver"] > 0
    capsys.readouterr()
    assert cli.main(["evaluate", "--model", "m.safetensors", "--data", str(tmp_path), "-o", str(tmp_path / "e"),
                     "--tta", "--record-in-model"]) == 2
    assert "run it without --tta" in capsys.readouterr().err
