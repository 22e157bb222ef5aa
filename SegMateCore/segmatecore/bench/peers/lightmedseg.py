"""LightMedSeg (Tyagi, Rathi, Goyal): a 3D U-Net of ghost and depthwise convolutions, steered by learned
spatial anchors, a texture map and a learned skip router.

Built from the paper's section 3, block by block, with its widths:

- **stem** (3.1): GhostConv3D, ratio 2: a 3x3x3 stride-2 convolution makes half of C0 = 8
  channels, a 3x3x3 depthwise convolution of those the other half; concatenated, GroupNorm(4).
- **global anchor detector** (3.2): three Conv3D (3x3x3, stride 2) + GN(4) + SiLU on the input,
  global average pooling, an MLP of hidden width 128 (SiLU) to 3K logits, sigmoid: K = 8 anchors in
  [0, 1]^3. Its stated 8.6 K parameters fix the three convolutions' width at 8.
- **local structural prior module** (3.3) on the stem output: the texture map T (5x5x5 depthwise
  smoothing + GN + SiLU, the absolute residual, a 1x1x1 convolution to one channel, sigmoid), the
  spatial gating head (two 3x3x3 convolutions + GN + SiLU, then to one channel, sigmoid) and the
  adaptive feature mixer (two 1x1x1 experts blended by a per-voxel softmax of a 1x1x1 convolution of
  the gate).
- **encoder** (3.4), widths 8, 16, 32, 64: per stage a GhostConv3D modulated by FiLM from the
  flattened anchors ((1 + gamma) x + beta, gamma and beta linear in the anchors), a detail path
  (3x3x3 depthwise + GN + SiLU) and a smoothing path (1x1x1) blended by T resampled to the stage,
  and squeeze-and-excitation of width max(4, C/8); max pooling between stages 1-2, 2-3 and 3-4.
- **learned skip router** (3.5): at decoder levels 1 and 2 (D/8 and D/4), every encoder output
  projected to 64 channels (1x1x1) and resampled to the level, a two-layer 1x1x1 controller
  (256 -> 64 -> 4) gives per-voxel softmax weights over the four stages, the weighted sum is
  projected to the level's width. At levels 3 and 4 (D/2 and D) only the matching feature map is
  projected and resampled.
- **adaptive decoder** (3.6), widths 64, 32, 16, 8: a 2x2x2 transposed convolution, plus the
  spatial position bias (per-voxel signed offsets to the K anchors, summed over the three axes,
  1x1x1 convolution K -> C), concatenated with the skip and fused by a 1x1x1 convolution; three
  branches (3x3x3 depthwise, GhostConv3D, 1x1x1, each + GN + SiLU) blended by a per-voxel softmax
  of a 1x1x1 convolution; squeeze-and-excitation.
- **head**: a 1x1x1 convolution to the classes.

Choices where the paper is open or contradicts itself (docs/peers.md):

- *Where the decoder's four levels sit, and the head.* Section 3.6 has the four 2x2x2 upsamplings
  restore D/16 -> D/8 -> D/4 -> D/2 -> D (its last stage output is B x C0 x D x H x W) and then adds a
  stride-2 transposed convolution in the head: five doublings after four halvings, which would
  double the output past the input. Section 3.5 agrees with the four levels (level 4's skip is the
  stem output "trilinearly upsampled", D/2 -> D). This module keeps the four upsamplings and leaves
  the head's transposed convolution out: the head is the 1x1x1 convolution alone.
- *The spatial gating head's widths*: 8 -> 16 -> 16, then 16 -> 1, which is what its stated 10.5 K
  parameters allow (8 -> 16 -> 1 would be 3.9 K).
- *One router controller* for both routed levels (the router's stated 24 K parameters are the four
  projections, 7.9 K, and one controller, 16.7 K).
- *GroupNorm(4) after the encoder's GhostConv3D*, before FiLM (as the stem normalises its own).
- Levels 3 and 4 take encoder stage 1 and the stem output through a 1x1x1 projection to their
  width (level 4's then upsampled trilinearly).
- *Parameters*: the blocks above at the paper's widths hold 0.27 M parameters, not 0.48 M; the
  paper's own per-module figures (anchor detector 8.6 K, structural prior 11.7 K, router 24 K)
  are met, and no block it describes holds the other 0.2 M (docs/peers.md).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ANCHORS = 8                               # K
STEM_WIDTH = 8                            # C0
ENCODER_WIDTHS = (8, 16, 32, 64)
DECODER_WIDTHS = (64, 32, 16, 8)
ROUTER_WIDTH = 64
ANCHOR_MLP_HIDDEN = 128
TRAINING_PATCH = (128, 128, 128)          # the paper's random training crops
DIVISOR = 16                              # stem /2 and three max pools: a patch must divide by 16


def group_norm(channels: int) -> nn.GroupNorm:
    """GN_4 of the paper: four groups."""
    return nn.GroupNorm(4, channels)


class GhostConv3d(nn.Module):
    """GhostNet's convolution in 3D, ratio 2: a k^3 convolution makes half the output channels (the
    primary features), a k^3 depthwise convolution of those the other half (the ghost features)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1):
        super().__init__()
        primary = out_ch // 2
        self.primary = nn.Conv3d(in_ch, primary, kernel_size, stride, kernel_size // 2)
        self.cheap = nn.Conv3d(primary, out_ch - primary, kernel_size, 1, kernel_size // 2, groups=primary)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        primary = self.primary(x)
        return torch.cat([primary, self.cheap(primary)], dim=1)


class SqueezeExcite3d(nn.Module):
    """Squeeze-and-excitation of bottleneck width max(4, C // 8) with SiLU (the paper's eq. 10)."""

    def __init__(self, channels: int):
        super().__init__()
        hidden = max(4, channels // 8)
        self.fc = nn.Sequential(nn.Linear(channels, hidden), nn.SiLU(), nn.Linear(hidden, channels), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(x.mean(dim=(2, 3, 4)))[:, :, None, None, None]


def norm_act(module: nn.Module, channels: int) -> nn.Sequential:
    """``module`` -> GN_4 -> SiLU."""
    return nn.Sequential(module, group_norm(channels), nn.SiLU())


class PatchEmbedStem(nn.Sequential):
    """Section 3.1: a stride-2 GhostConv3D to C0 channels, GN_4."""

    def __init__(self, in_ch: int, width: int = STEM_WIDTH):
        super().__init__(GhostConv3d(in_ch, width, 3, stride=2), group_norm(width))


class GlobalAnchorDetector(nn.Module):
    """Section 3.2: K anchor coordinates in [0, 1]^3 predicted from the input volume."""

    def __init__(self, in_ch: int, anchors: int = ANCHORS, width: int = STEM_WIDTH, hidden: int = ANCHOR_MLP_HIDDEN):
        super().__init__()
        self.anchors = anchors
        self.encoder = nn.Sequential(*[norm_act(nn.Conv3d(c, width, 3, 2, 1), width) for c in (in_ch, width, width)])
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.SiLU(), nn.Linear(hidden, 3 * anchors))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        descriptor = self.encoder(x).mean(dim=(2, 3, 4))
        return torch.sigmoid(self.mlp(descriptor)).view(-1, self.anchors, 3)


class LocalStructuralPrior(nn.Module):
    """Section 3.3: the texture routing map T and the structurally adapted stem features F0'."""

    def __init__(self, width: int = STEM_WIDTH):
        super().__init__()
        self.smooth = norm_act(nn.Conv3d(width, width, 5, 1, 2, groups=width), width)
        self.texture = nn.Conv3d(width, 1, 1)
        self.gating_head = nn.Sequential(norm_act(nn.Conv3d(width, 2 * width, 3, 1, 1), 2 * width),
                                         norm_act(nn.Conv3d(2 * width, 2 * width, 3, 1, 1), 2 * width),
                                         nn.Conv3d(2 * width, 1, 1))
        self.expert_weights = nn.Conv3d(1, 2, 1)
        self.experts = nn.ModuleList([nn.Conv3d(width, width, 1), nn.Conv3d(width, width, 1)])

    def forward(self, stem: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        texture = torch.sigmoid(self.texture((self.smooth(stem) - stem).abs()))
        gate = torch.sigmoid(self.gating_head(stem))
        alpha = torch.softmax(self.expert_weights(gate), dim=1)
        mixed = alpha[:, :1] * self.experts[0](stem) + alpha[:, 1:] * self.experts[1](stem)
        return texture, mixed


class AnchorFiLM(nn.Module):
    """Eq. 6: (1 + gamma) x + beta with gamma, beta linear (no bias) in the flattened anchors."""

    def __init__(self, anchors: int, channels: int):
        super().__init__()
        self.gamma = nn.Linear(3 * anchors, channels, bias=False)
        self.beta = nn.Linear(3 * anchors, channels, bias=False)

    def forward(self, x: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        s = anchors.flatten(1)
        return (1 + self.gamma(s))[:, :, None, None, None] * x + self.beta(s)[:, :, None, None, None]


class EncoderStage(nn.Module):
    """Section 3.4: anchor-conditioned GhostConv3D, texture-routed detail/smoothing paths, SE."""

    def __init__(self, in_ch: int, out_ch: int, anchors: int, pool: bool):
        super().__init__()
        self.pool = nn.MaxPool3d(2) if pool else nn.Identity()
        self.ghost = nn.Sequential(GhostConv3d(in_ch, out_ch), group_norm(out_ch))
        self.film = AnchorFiLM(anchors, out_ch)
        self.detail = norm_act(nn.Conv3d(out_ch, out_ch, 3, 1, 1, groups=out_ch), out_ch)
        self.smooth = nn.Conv3d(out_ch, out_ch, 1)
        self.se = SqueezeExcite3d(out_ch)

    def forward(self, x: torch.Tensor, anchors: torch.Tensor, texture: torch.Tensor) -> torch.Tensor:
        x = self.film(self.ghost(self.pool(x)), anchors)
        t = resample(texture, x.shape[2:])
        return self.se(t * self.detail(x) + (1 - t) * self.smooth(x))


def resample(x: torch.Tensor, size: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """Trilinear resampling to ``size`` (a no-op at the same size)."""
    if tuple(x.shape[2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="trilinear", align_corners=False)


def project_and_resample(projection: nn.Module, x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """``resample(projection(x), size)``, in whichever order costs fewer multiply-accumulates.

    A 1x1x1 convolution and trilinear resampling commute (the resampling weights sum to one), so
    projecting before or after gives the same tensor; the smaller grid is the cheaper place."""
    if x.shape[2:].numel() > torch.Size(size).numel():
        return projection(resample(x, size))
    return resample(projection(x), size)


class SkipRouter(nn.Module):
    """Section 3.5: all four encoder stages, projected to 64 channels and resampled to the level, mixed
    by per-voxel softmax weights of a shared two-layer controller, projected to each level's width."""

    def __init__(self, encoder_widths: tuple[int, ...], level_widths: tuple[int, ...], width: int = ROUTER_WIDTH):
        super().__init__()
        self.projections = nn.ModuleList([nn.Conv3d(c, width, 1) for c in encoder_widths])
        stages = len(encoder_widths)
        self.controller = nn.Sequential(nn.Conv3d(stages * width, width, 1), nn.SiLU(), nn.Conv3d(width, stages, 1))
        self.outputs = nn.ModuleList([nn.Conv3d(width, c, 1) for c in level_widths])

    def forward(self, skips: list[torch.Tensor], level: int, size: tuple[int, ...]) -> torch.Tensor:
        aligned = [project_and_resample(p, e, size) for p, e in zip(self.projections, skips)]
        weights = torch.softmax(self.controller(torch.cat(aligned, dim=1)), dim=1)
        fused = sum(weights[:, i:i + 1] * a for i, a in enumerate(aligned))
        return self.outputs[level](fused)


class SpatialPositionBias(nn.Module):
    """Eqs. 14-15: per voxel, the signed offsets to each anchor summed over the three axes (built from
    three 1D arrays by broadcasting), projected K -> C by a 1x1x1 convolution."""

    def __init__(self, anchors: int, channels: int):
        super().__init__()
        self.proj = nn.Conv3d(anchors, channels, 1)

    def forward(self, anchors: torch.Tensor, size: tuple[int, int, int]) -> torch.Tensor:
        axes = [torch.arange(n, device=anchors.device, dtype=anchors.dtype) / n for n in size]
        d, h, w = (axes[i][None, None, :] - anchors[:, :, i, None] for i in range(3))
        offsets = d[..., :, None, None] + h[..., None, :, None] + w[..., None, None, :]
        return self.proj(offsets)


class DecoderStage(nn.Module):
    """Section 3.6: a 2x2x2 transposed convolution (+ spatial position bias), fused with the skip,
    three branches blended per voxel, SE."""

    def __init__(self, in_ch: int, out_ch: int, anchors: int):
        super().__init__()
        self.up = nn.ConvTranspose3d(in_ch, out_ch, 2, 2)
        self.position = SpatialPositionBias(anchors, out_ch)
        self.fuse = nn.Conv3d(2 * out_ch, out_ch, 1)
        self.blend = nn.Conv3d(out_ch, 3, 1)
        self.branches = nn.ModuleList([norm_act(nn.Conv3d(out_ch, out_ch, 3, 1, 1, groups=out_ch), out_ch),
                                       norm_act(GhostConv3d(out_ch, out_ch), out_ch),
                                       norm_act(nn.Conv3d(out_ch, out_ch, 1), out_ch)])
        self.se = SqueezeExcite3d(out_ch)

    @staticmethod
    def output_size(x: torch.Tensor) -> tuple[int, int, int]:
        return tuple(2 * n for n in x.shape[2:])

    def forward(self, x: torch.Tensor, skip: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        u = self.up(x)
        u = u + self.position(anchors, tuple(u.shape[2:]))
        d = self.fuse(torch.cat([u, skip], dim=1))
        weights = torch.softmax(self.blend(d), dim=1)
        gated = sum(weights[:, i:i + 1] * branch(d) for i, branch in enumerate(self.branches))
        return self.se(gated)


class LightMedSeg(nn.Module):
    """The whole network: [B, in_channels, D, H, W] -> [B, num_classes, D, H, W] logits (sizes divisible
    by 16)."""

    def __init__(self, in_channels: int = 4, num_classes: int = 4, anchors: int = ANCHORS):
        super().__init__()
        self.stem = PatchEmbedStem(in_channels)
        self.anchor_detector = GlobalAnchorDetector(in_channels, anchors)
        self.prior = LocalStructuralPrior(STEM_WIDTH)
        widths = (STEM_WIDTH, *ENCODER_WIDTHS)
        self.encoder = nn.ModuleList([EncoderStage(widths[i], widths[i + 1], anchors, pool=i > 0)
                                      for i in range(len(ENCODER_WIDTHS))])
        self.bottleneck = nn.Conv3d(ENCODER_WIDTHS[-1], ROUTER_WIDTH, 1)
        self.router = SkipRouter(ENCODER_WIDTHS, DECODER_WIDTHS[:2])
        self.aligned_skips = nn.ModuleList([nn.Conv3d(ENCODER_WIDTHS[0], DECODER_WIDTHS[2], 1),
                                            nn.Conv3d(STEM_WIDTH, DECODER_WIDTHS[3], 1)])
        ins = (ROUTER_WIDTH, *DECODER_WIDTHS[:-1])
        self.decoder = nn.ModuleList([DecoderStage(ins[j], DECODER_WIDTHS[j], anchors)
                                      for j in range(len(DECODER_WIDTHS))])
        self.head = nn.Conv3d(DECODER_WIDTHS[-1], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(n % DIVISOR for n in x.shape[2:]):
            raise ValueError(f"LightMedSeg needs every spatial size divisible by {DIVISOR}, got {tuple(x.shape[2:])}.")
        anchors = self.anchor_detector(x)
        stem = self.stem(x)
        texture, h = self.prior(stem)
        skips = []
        for stage in self.encoder:
            h = stage(h, anchors, texture)
            skips.append(h)
        d = self.bottleneck(h)
        for j, stage in enumerate(self.decoder):
            size = stage.output_size(d)
            if j < 2:
                skip = self.router(skips, j, size)
            else:
                source = skips[0] if j == 2 else stem
                skip = project_and_resample(self.aligned_skips[j - 2], source, size)
            d = stage(d, skip, anchors)
        return self.head(d)


def build_lightmedseg(in_channels: int = 1, num_classes: int = 10) -> LightMedSeg:
    """LightMedSeg with random weights, eval mode (the benchmark measures cost, not accuracy)."""
    return LightMedSeg(in_channels, num_classes).eval()
