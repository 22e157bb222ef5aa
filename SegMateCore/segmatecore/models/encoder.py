"""timm ``features_only`` encoder wrapper that always returns four NCHW levels (strides 4-32)."""
from __future__ import annotations

from dataclasses import dataclass

import timm
import torch
from torch import nn


@dataclass(frozen=True)
class BackboneSpec:
    """What SegMate needs to know about one supported timm backbone."""

    key: str
    timm_name: str
    out_indices: tuple[int, ...]
    channels: tuple[int, int, int, int]
    nhwc: bool = False
    reparameterizable: bool = False


BACKBONES: dict[str, BackboneSpec] = {
    spec.timm_name: spec for spec in (
        BackboneSpec("efficientnetv2_m", "tf_efficientnetv2_m", (1, 2, 3, 4), (48, 80, 176, 512)),
        BackboneSpec("mambaout_tiny", "mambaout_tiny", (0, 1, 2, 3), (96, 192, 384, 576), nhwc=True),
        BackboneSpec("fastvit_t12", "fastvit_t12", (0, 1, 2, 3), (64, 128, 256, 512),
                     reparameterizable=True),
    )
}
_ALIASES = {spec.key: spec.timm_name for spec in BACKBONES.values()}


def backbone_spec(name: str) -> BackboneSpec:
    """Resolve a short key (``fastvit_t12``) or timm name (``tf_efficientnetv2_m``)."""
    timm_name = _ALIASES.get(name, name)
    if timm_name not in BACKBONES:
        choices = ", ".join(sorted(set(_ALIASES) | set(BACKBONES)))
        raise ValueError(f"Unknown backbone {name!r}. Choose one of: {choices}.")
    return BACKBONES[timm_name]


class TimmEncoder(nn.Module):
    """One-channel timm encoder; levels come back NCHW whatever the backbone's own layout."""

    def __init__(self, backbone: str, pretrained: bool = False):
        super().__init__()
        self.spec = backbone_spec(backbone)
        self.model = timm.create_model(self.spec.timm_name, pretrained=pretrained, features_only=True,
                                       in_chans=1, out_indices=self.spec.out_indices)
        self.channels = self.spec.channels

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = self.model(x)
        if self.spec.nhwc:
            feats = [f.permute(0, 3, 1, 2) for f in feats]
        return list(feats)
