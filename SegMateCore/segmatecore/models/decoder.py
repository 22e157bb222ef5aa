"""The asymmetric decoder: a CBAM main path and nested SE skips sharing its up-convolutions."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from segmatecore.models.blocks import DecoderBlock
from segmatecore.models.widths import SegMateWidths


def match_size(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Bilinearly resize x to ref's spatial size when an up-convolution left them different."""
    if x.shape[-2:] != ref.shape[-2:]:
        x = F.interpolate(x, size=ref.shape[-2:], mode="bilinear", align_corners=True)
    return x


class AsymmetricDecoder(nn.Module):
    """Main path with CBAM blocks (paper widths 160/88/48/32) and nested SE skips x13, x12, x11.

    The up-convolutions are shared between the main path and the nested skips.
    """

    def __init__(self, widths: SegMateWidths = SegMateWidths()):
        super().__init__()
        skips = widths.align[::-1]  # deepest first
        ups, blocks = [], []
        prev = widths.aspp
        for up_w, block_w, skip_w in zip(widths.decoder, widths.blocks, skips):
            ups.append(nn.ConvTranspose2d(prev, up_w, 2, stride=2))
            blocks.append(DecoderBlock(up_w + skip_w, block_w, attention="cbam"))
            prev = block_w
        self.up = nn.ModuleList(ups)
        self.blocks = nn.ModuleList(blocks)
        # nested: x13 = [up3(dec4), dec3], x12 = [up2(x13), dec2], x11 = [up1(x12), dec1]
        self.nested = nn.ModuleList(
            DecoderBlock(widths.decoder[i] + widths.blocks[i], widths.blocks[i], attention="se")
            for i in range(1, len(widths.blocks)))

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Return the finest nested feature map (x11) and the main-path outputs dec4..dec1."""
        main = []
        for up, block, skip in zip(self.up, self.blocks, reversed(skips)):
            x = block(torch.cat([match_size(up(x), skip), skip], dim=1))
            main.append(x)
        nested = main[0]
        for i, block in enumerate(self.nested, start=1):
            nested = block(torch.cat([match_size(self.up[i](nested), main[i]), main[i]], dim=1))
        return nested, main
