"""SegMateNet: SliceFusion -> timm encoder -> ASPP -> FiLM(z) -> asymmetric decoder -> heads.

``encode`` (everything before FiLM) and ``decode`` (FiLM onwards) are public so that inference can
run the encoder once per slice across its two passes.
"""
from __future__ import annotations

import math
from typing import Collection, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from segmatecore.models.blocks import ASPP, ConvBnAct, DecoderBlock, FiLM, SliceFusion
from segmatecore.models.encoder import TimmEncoder, backbone_spec

NUM_ORGANS = 9
ALIGN_WIDTHS = (40, 64, 128, 176)
DECODER_WIDTHS = (160, 88, 48, 24)  # up-convolution widths, deepest first
BLOCK_WIDTHS = (160, 88, 48, 32)    # main-path block widths, deepest first
ASPP_WIDTH = 256
MASK_PRIOR = 0.01    # initial organ probability of every mask and boundary logit
HEADS = ("seg", "boundary", "presence", "deep")


class SegMateOutput(NamedTuple):
    """Logits for masks and boundaries, probabilities for per-slice presence, deep logits.

    ``decode(..., outputs=...)`` leaves the heads it was not asked for as None (deep as ()).
    """

    seg: torch.Tensor
    boundary: torch.Tensor
    presence: torch.Tensor
    deep: tuple[torch.Tensor, ...]


class Encoded(NamedTuple):
    """A batch's encoder output: aligned skips (finest first), ASPP context before FiLM, input size.

    Nothing in it depends on z_norm, so the label-free first pass's encodings serve the second
    pass unchanged (segmatecore.inference.engine.FeatureCache).
    """

    skips: tuple[torch.Tensor, ...]
    context: torch.Tensor
    size: tuple[int, int]

    def select(self, index: int) -> "Encoded":
        """One slice of the batch, copied so that it does not hold on to the whole batch's memory."""
        return Encoded(tuple(s[index:index + 1].clone() for s in self.skips),
                       self.context[index:index + 1].clone(), self.size)

    def rows(self, start: int, stop: int) -> "Encoded":
        """Slices ``start:stop`` of the batch, as views."""
        return Encoded(tuple(s[start:stop] for s in self.skips), self.context[start:stop], self.size)

    def to(self, device: torch.device) -> "Encoded":
        return Encoded(tuple(s.to(device) for s in self.skips), self.context.to(device), self.size)

    @staticmethod
    def cat(parts: "list[Encoded]") -> "Encoded":
        return Encoded(tuple(torch.cat(level) for level in zip(*(p.skips for p in parts))),
                       torch.cat([p.context for p in parts]), parts[0].size)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.skips, self.context))


def _match(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Bilinearly resize x to ref's spatial size when an up-convolution left them different."""
    if x.shape[-2:] != ref.shape[-2:]:
        x = F.interpolate(x, size=ref.shape[-2:], mode="bilinear", align_corners=True)
    return x


class AsymmetricDecoder(nn.Module):
    """Main path with CBAM blocks (widths 160/88/48/32) and nested SE skips x13, x12, x11.

    The up-convolutions are shared between the main path and the nested skips.
    """

    def __init__(self, in_ch: int = ASPP_WIDTH, skip_widths: tuple[int, ...] = ALIGN_WIDTHS):
        super().__init__()
        skips = skip_widths[::-1]  # deepest first: 176, 128, 64, 40
        ups, blocks = [], []
        prev = in_ch
        for up_w, block_w, skip_w in zip(DECODER_WIDTHS, BLOCK_WIDTHS, skips):
            ups.append(nn.ConvTranspose2d(prev, up_w, 2, stride=2))
            blocks.append(DecoderBlock(up_w + skip_w, block_w, attention="cbam"))
            prev = block_w
        self.up = nn.ModuleList(ups)
        self.blocks = nn.ModuleList(blocks)
        # nested: x13 = [up3(dec4), dec3], x12 = [up2(x13), dec2], x11 = [up1(x12), dec1]
        self.nested = nn.ModuleList(
            DecoderBlock(DECODER_WIDTHS[i] + BLOCK_WIDTHS[i], BLOCK_WIDTHS[i], attention="se")
            for i in (1, 2, 3))

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Return the finest nested feature map (x11) and the main-path outputs dec4..dec1."""
        main = []
        for up, block, skip in zip(self.up, self.blocks, reversed(skips)):
            x = block(torch.cat([_match(up(x), skip), skip], dim=1))
            main.append(x)
        nested = main[0]
        for i, block in enumerate(self.nested, start=1):
            nested = block(torch.cat([_match(self.up[i](nested), main[i]), main[i]], dim=1))
        return nested, main


class PresenceHead(nn.Sequential):
    """Per-slice organ presence: global average pool -> dropout -> Linear -> sigmoid."""

    def __init__(self, in_ch: int, num_classes: int, dropout: float = 0.2):
        super().__init__(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
                         nn.Linear(in_ch, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(super().forward(x))


class SegMateNet(nn.Module):
    """The SegMate 2.5D multi-organ network. Input [B, 3, H, W] with H, W divisible by 32."""

    def __init__(self, backbone: str = "fastvit_t12", num_classes: int = NUM_ORGANS,
                 deep_supervision: bool = False, pretrained: bool = False):
        super().__init__()
        self.backbone = backbone_spec(backbone).timm_name
        self.num_classes = num_classes
        self.deep_supervision = deep_supervision
        self.slice_fusion = SliceFusion()
        self.encoder = TimmEncoder(self.backbone, pretrained=pretrained)
        self.align = nn.ModuleList(ConvBnAct(c, w, 1) for c, w in zip(self.encoder.channels, ALIGN_WIDTHS))
        self.aspp = ASPP(self.encoder.channels[-1], ASPP_WIDTH)
        self.film = FiLM(ASPP_WIDTH)
        self.decoder = AsymmetricDecoder(ASPP_WIDTH, ALIGN_WIDTHS)
        self.seg_head = nn.Conv2d(BLOCK_WIDTHS[-1], num_classes, 1)
        self.boundary_head = nn.Conv2d(BLOCK_WIDTHS[-1], num_classes, 1)
        self.presence_head = PresenceHead(BLOCK_WIDTHS[-1], num_classes)
        self.deep_heads = nn.ModuleList(nn.Conv2d(w, num_classes, 1) for w in BLOCK_WIDTHS[:3]) \
            if deep_supervision else nn.ModuleList()
        self.is_reparameterized = False
        self._init_mask_head_bias()

    def _init_mask_head_bias(self, prior: float = MASK_PRIOR) -> None:
        """Start every mask logit at a small organ probability instead of 0.5 (RetinaNet's prior init).

        Organs cover well under 1 % of a slice; from p = 0.5 the first few hundred steps only learn
        "mostly background", which is most of a short CPU run. Loaded weights replace this.
        """
        bias = -math.log((1.0 - prior) / prior)
        for head in (self.seg_head, self.boundary_head, *self.deep_heads):
            nn.init.constant_(head.bias, bias)

    def forward(self, x: torch.Tensor, z_norm: torch.Tensor | None = None) -> SegMateOutput:
        return self.decode(self.encode(x), z_norm)

    def encode(self, x: torch.Tensor) -> Encoded:
        """SliceFusion, backbone, skip alignment and ASPP: the part that does not depend on z_norm."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"SegMateNet expects [B, 3, H, W] (three adjacent slices), got {tuple(x.shape)}")
        if x.shape[-2] % 32 or x.shape[-1] % 32:
            raise ValueError(f"H and W must be divisible by 32, got {tuple(x.shape[-2:])}")
        x = x.to(self.slice_fusion.proj.weight.dtype)  # a network cast to bf16 for inference takes fp32 input
        feats = self.encoder(self.slice_fusion(x))
        skips = tuple(align(f) for align, f in zip(self.align, feats))
        return Encoded(skips, self.aspp(feats[-1]), (int(x.shape[-2]), int(x.shape[-1])))

    def decode(self, encoded: Encoded, z_norm: torch.Tensor | None = None,
               outputs: Collection[str] = HEADS) -> SegMateOutput:
        """FiLM on the slice position, the decoder and the heads named in ``outputs`` (others None).

        Inference asks only for what it reads: masks and presence in the main pass, presence alone in
        the first pass; the boundary head, a training signal, and its full-size upsampling are skipped.
        """
        x11, main = self.decoder(self.film(encoded.context, z_norm), list(encoded.skips))

        def up(t: torch.Tensor) -> torch.Tensor:
            return F.interpolate(t, size=encoded.size, mode="bilinear", align_corners=True)

        deep = tuple(up(head(m)) for head, m in zip(self.deep_heads, main)) if "deep" in outputs else ()
        return SegMateOutput(up(self.seg_head(x11)) if "seg" in outputs else None,
                             up(self.boundary_head(x11)) if "boundary" in outputs else None,
                             self.presence_head(x11) if "presence" in outputs else None, deep)

    def reparameterize(self) -> "SegMateNet":
        """Fuse FastViT's training-time branches for inference (timm's reparameterize_model)."""
        if backbone_spec(self.backbone).reparameterizable and not self.is_reparameterized:
            from timm.utils.model import reparameterize_model
            reparameterize_model(self.encoder, inplace=True)
            self.is_reparameterized = True
        return self


def create_model(backbone: str, *, deep_supervision: bool = False, pretrained: bool = False,
                 num_classes: int = NUM_ORGANS) -> SegMateNet:
    """Build a SegMateNet for ``efficientnetv2_m``, ``mambaout_tiny`` or ``fastvit_t12``
    (the timm names ``tf_efficientnetv2_m``, ``mambaout_tiny``, ``fastvit_t12`` work too)."""
    return SegMateNet(backbone, num_classes=num_classes, deep_supervision=deep_supervision,
                      pretrained=pretrained)
