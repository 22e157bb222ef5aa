"""timm ``features_only`` encoder returning the last four feature levels (strides 4-32), NCHW.

Channels, strides and the output layout come from timm's ``feature_info``, so any timm backbone
with four such levels can be built. The table below keeps what timm does not publish: the
paper's short names and which backbones have branches to fuse for inference.
"""
from __future__ import annotations

from dataclasses import dataclass

import timm
import torch
from torch import nn

REDUCTIONS = (4, 8, 16, 32)


@dataclass(frozen=True)
class BackboneSpec:
    """A backbone's short name (the paper's, or the timm name), timm name and whether
    :meth:`SegMateNet.reparameterize` fuses its training-time branches."""

    key: str
    timm_name: str
    reparameterizable: bool = False


BACKBONES: dict[str, BackboneSpec] = {
    spec.timm_name: spec for spec in (
        BackboneSpec("efficientnetv2_m", "tf_efficientnetv2_m"),
        BackboneSpec("mambaout_tiny", "mambaout_tiny"),
        BackboneSpec("fastvit_t12", "fastvit_t12", reparameterizable=True),
    )
}
_ALIASES = {spec.key: spec.timm_name for spec in BACKBONES.values()}


def backbone_spec(name: str) -> BackboneSpec:
    """Resolve a paper name (``fastvit_t12``), or any timm model name (``tf_efficientnetv2_m``, ``resnet18``)."""
    timm_name = _ALIASES.get(name, name)
    if timm_name in BACKBONES:
        return BACKBONES[timm_name]
    if isinstance(timm_name, str) and timm.is_model(timm_name):
        return BackboneSpec(timm_name, timm_name)
    choices = ", ".join(sorted(set(_ALIASES) | set(BACKBONES)))
    raise ValueError(f"Unknown backbone {name!r}: not a timm model. The paper's backbones: {choices}.")


class TimmEncoder(nn.Module):
    """One-channel timm encoder; levels come back NCHW whatever the backbone's own layout."""

    def __init__(self, backbone: str, pretrained: bool = False):
        super().__init__()
        self.spec = backbone_spec(backbone)
        self.model = timm.create_model(self.spec.timm_name, pretrained=pretrained, features_only=True,
                                       in_chans=1, out_indices=tuple(range(-len(REDUCTIONS), 0)))
        info = self.model.feature_info
        self.channels: tuple[int, ...] = tuple(info.channels())
        self.reductions: tuple[int, ...] = tuple(info.reduction())
        if self.reductions != REDUCTIONS:
            raise ValueError(f"Backbone {self.spec.timm_name!r} has feature levels at strides {self.reductions}; "
                             f"SegMate needs its last four at strides {REDUCTIONS}.")
        self.nhwc = getattr(self.model, "output_fmt", "NCHW") == "NHWC"

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = self.model(x)
        if self.nhwc:
            feats = [f.permute(0, 3, 1, 2) for f in feats]
        return list(feats)
