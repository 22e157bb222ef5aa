"""SegMateNet: SliceFusion -> timm encoder -> ASPP -> FiLM(z) -> asymmetric decoder -> heads.

``encode`` (everything before FiLM) and ``decode`` (FiLM onwards) are public so that inference can
run the encoder once per slice across its two passes.
"""
from __future__ import annotations

from typing import Any, Collection, NamedTuple

import torch
import torch.nn.functional as F
from timm.utils.model import reparameterize_model
from torch import nn

from segmatecore.models.blocks import ASPP, ConvBnAct, FiLM, SliceFusion
from segmatecore.models.decoder import AsymmetricDecoder
from segmatecore.models.encoder import TimmEncoder, backbone_spec
from segmatecore.models.heads import PresenceHead, mask_head
from segmatecore.models.widths import SegMateWidths

NUM_ORGANS = 9
HEADS = ("seg", "boundary", "presence", "deep")


class SegMateOutput(NamedTuple):
    """Logits, all of them: masks and boundaries [B, C, H, W], per-slice presence [B, C], and the
    deep-supervision masks. ``torch.sigmoid`` of a logit is the organ's probability.

    ``decode(..., outputs=...)`` leaves the heads it was not asked for as None (deep as ()).
    """

    seg: torch.Tensor
    boundary: torch.Tensor
    presence: torch.Tensor
    deep: tuple[torch.Tensor, ...]


class Encoded(NamedTuple):
    """A batch's encoder output: aligned skips (finest first), ASPP context before FiLM, input size.

    Nothing in it depends on z_norm, so the label-free first pass's encodings serve the second
    pass unchanged (segmatecore.runtime.feature_cache).
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


class SegMateNet(nn.Module):
    """The SegMate 2.5D multi-organ network. Input [B, 3, H, W] with H, W divisible by 32.

    ``widths`` sets the layers after the encoder (the paper's by default). ``metadata`` is what
    the model's file says about it (organs, preprocessing, provenance); a model built in memory
    has none until it is given one.
    """

    def __init__(self, backbone: str = "fastvit_t12", num_classes: int = NUM_ORGANS,
                 deep_supervision: bool = False, pretrained: bool = False,
                 widths: SegMateWidths = SegMateWidths(), metadata: dict[str, Any] | None = None):
        super().__init__()
        self.backbone = backbone_spec(backbone).timm_name
        self.num_classes = num_classes
        self.deep_supervision = deep_supervision
        self.widths = widths
        self.metadata = metadata
        self.slice_fusion = SliceFusion()
        self.encoder = TimmEncoder(self.backbone, pretrained=pretrained)
        self.align = nn.ModuleList(ConvBnAct(c, w, 1) for c, w in zip(self.encoder.channels, widths.align))
        self.aspp = ASPP(self.encoder.channels[-1], widths.aspp)
        self.film = FiLM(widths.aspp)
        self.decoder = AsymmetricDecoder(widths)
        self.seg_head = mask_head(widths.head, num_classes)
        self.boundary_head = mask_head(widths.head, num_classes)
        self.presence_head = PresenceHead(widths.head, num_classes)
        self.deep_heads = nn.ModuleList(mask_head(w, num_classes) for w in widths.blocks[:-1]) \
            if deep_supervision else nn.ModuleList()
        self.is_reparameterized = False

    def forward(self, x: torch.Tensor, z_norm: torch.Tensor | None = None) -> SegMateOutput:
        return self.decode(self.encode(x), z_norm)

    def encode(self, x: torch.Tensor) -> Encoded:
        """SliceFusion, backbone, skip alignment and ASPP: the part that does not depend on z_norm."""
        check_slices(x)
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
            reparameterize_model(self.encoder, inplace=True)
            self.is_reparameterized = True
        return self


def check_slices(x: torch.Tensor) -> None:
    """Refuse anything but a batch of 2.5D stacks, [B, 3, H, W], with a clear message."""
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"SegMateNet expects [B, 3, H, W] (three adjacent slices), got {tuple(x.shape)}")


def module_metadata(model: nn.Module) -> dict:
    """The ``.metadata`` of a module run as a SegMate model, with a clear error when it lacks one."""
    metadata = getattr(model, "metadata", None)
    if not isinstance(metadata, dict) or "preprocessing" not in metadata or "organs" not in metadata:
        raise ValueError("A model passed as a module needs a .metadata dict with 'organs' and 'preprocessing' "
                         "(as segmatecore.load_model sets it).")
    return metadata
