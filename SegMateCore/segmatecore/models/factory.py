"""``create_model``: a SegMateNet by backbone name, the paper's configuration unless told otherwise."""
from __future__ import annotations

from typing import Any

from segmatecore.models.network import NUM_ORGANS, SegMateNet
from segmatecore.models.widths import SegMateWidths


def create_model(backbone: str, *, deep_supervision: bool = False, pretrained: bool = False,
                 num_classes: int = NUM_ORGANS, widths: SegMateWidths | None = None,
                 metadata: dict[str, Any] | None = None) -> SegMateNet:
    """Build a SegMateNet on ``efficientnetv2_m``, ``mambaout_tiny`` or ``fastvit_t12`` (the paper's),
    or on any timm backbone whose last four feature levels have strides 4, 8, 16 and 32."""
    return SegMateNet(backbone, num_classes=num_classes, deep_supervision=deep_supervision,
                      pretrained=pretrained, widths=widths or SegMateWidths(), metadata=metadata)
