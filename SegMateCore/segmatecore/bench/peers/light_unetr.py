"""Light-UNETR (Liu, Chen, Li, Li, Yuan): a lightweight 3D transformer U-Net of LIDR attention and
compact gated linear units.

Built from the paper's section III-A with the configuration of section IV-B: widths
{C1..C4} = {24, 48, 60, 96}, depths {L1..L4} = {1, 2, 3, 2}, LIDR spatial reduction r = {4, 2, 2, 1},
high-frequency kernels k1 = 3 and k2 = 5, CGLU expansion 2:

- **overlap patch embedding** to H/4 x W/4 x D/4 x C1 (a 7x7x7 stride-4 convolution, as SegFormer's).
- **Light-UNETR block**: a 3x3x3 depthwise convolution (local propagation, residual), then two
  successive LIDR + CGLU pairs (pre-norm, residual).
- **LIDR** (eqs. 1-6): average pooling by r; the channels split in three; the low-frequency third
  through multi-head self-attention (Q, K, V projections), the two high-frequency thirds each
  through a 1x1x1 reduction (to half), BatchNorm, GELU and a grouped convolution of kernel k1 or k2
  that restores the width; concatenated, and a depthwise transposed convolution of stride r
  restores the resolution.
- **CGLU** (eq. 7): W_rec (W_id x * sigmoid(W_gate x)), W_id and W_gate C -> 2C.
- **light downsample / upsample** (Fig. 3f): one convolution (3x3x3, stride 2) or transposed
  convolution (2x2x2, stride 2), a normalisation and squeeze-and-excitation.
- **decoder**: upsampling, the encoder feature of the same level added (the skip connection),
  then the level's blocks; the head upsamples by 4 to the input resolution with the classes.

Choices where the paper is open (docs/peers.md):

- *The decoder mirrors the encoder's levels 3, 2, 1 with their depths (3, 2, 1 blocks)*, skips
  are added, and the head is a 4x4x4 stride-4 transposed convolution C1 -> C1 and a 1x1x1
  convolution to the classes.
- *The downsampling convolution has a 3x3x3 kernel* (overlapping, like the patch embedding);
  upsampling is a 2x2x2 transposed convolution.
- *Normalisation is a LayerNorm over channels* in the blocks and the down/upsampling layers
  (BatchNorm only where eq. 5 names it); SE has a reduction of 4.
- *Attention heads*: head width 8 where C/3 allows it (1, 2, 2 and 4 heads; the third level's 20
  channels use 2 heads of 10), scaled by 1/sqrt(head width).
- *The high-frequency reduction halves the channels* (C/3 -> C/6) and the grouped convolution has
  one group per reduced channel.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

WIDTHS = (24, 48, 60, 96)
DEPTHS = (1, 2, 3, 2)
REDUCTIONS = (4, 2, 2, 1)            # r of LIDR per level
HEADS = (1, 2, 2, 4)
HIGH_KERNELS = (3, 5)                # k1, k2
CGLU_EXPANSION = 2
SE_REDUCTION = 4
PAIRS_PER_BLOCK = 2                  # LIDR + CGLU pairs after each block's depthwise convolution
TRAINING_PATCH = (96, 96, 96)        # the CT crop (Pancreas-CT; Table IV's FLOPs are at 96^3)


class ChannelNorm3d(nn.Module):
    """LayerNorm over the channels of a [B, C, D, H, W] map (per voxel, as a transformer's)."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None, None] * x + self.bias[:, None, None, None]


class SqueezeExcite3d(nn.Module):
    """Squeeze-and-excitation: global average pool, C -> C/4 -> C, sigmoid gate."""

    def __init__(self, channels: int, reduction: int = SE_REDUCTION):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, channels), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(x.mean(dim=(2, 3, 4)))[:, :, None, None, None]


class HighFrequencyBranch(nn.Sequential):
    """Eq. 5: 1x1x1 reduction to half, BatchNorm, GELU, grouped k^3 convolution back to the width."""

    def __init__(self, channels: int, kernel_size: int):
        reduced = channels // 2
        super().__init__(nn.Conv3d(channels, reduced, 1), nn.BatchNorm3d(reduced), nn.GELU(),
                         nn.Conv3d(reduced, channels, kernel_size, padding=kernel_size // 2, groups=reduced))


class LIDR(nn.Module):
    """Lightweight dimension reductive attention (eqs. 1-6): pool by r, split the channels in three
    (self-attention, two high-frequency branches), concatenate, depthwise transposed conv by r."""

    def __init__(self, channels: int, reduction: int, heads: int):
        super().__init__()
        if channels % 3:
            raise ValueError(f"LIDR splits the channels in three; {channels} does not divide by 3.")
        part = channels // 3
        self.reduction, self.heads = reduction, heads
        self.q, self.k, self.v = nn.Linear(part, part), nn.Linear(part, part), nn.Linear(part, part)
        self.high = nn.ModuleList([HighFrequencyBranch(part, k) for k in HIGH_KERNELS])
        self.restore = nn.ConvTranspose3d(channels, channels, reduction, reduction, groups=channels)

    def _attention(self, x: torch.Tensor) -> torch.Tensor:
        b, c, d, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)                                    # [B, N, C/3]

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, -1, self.heads, c // self.heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(self.q(tokens)), split(self.k(tokens)), split(self.v(tokens)))
        return out.transpose(1, 2).reshape(b, -1, c).transpose(1, 2).reshape(b, c, d, h, w)

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        """Average pooling by r (eq. 1); a partial window where a size does not divide, and no more
        than the size on an axis shorter than r."""
        if self.reduction == 1:
            return x
        kernel = tuple(min(self.reduction, n) for n in x.shape[2:])
        return F.avg_pool3d(x, kernel, kernel, ceil_mode=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low, high1, high2 = self._pool(x).chunk(3, dim=1)
        mixed = torch.cat([self._attention(low), self.high[0](high1), self.high[1](high2)], dim=1)
        return crop_to(self.restore(mixed), x.shape[2:])


class CGLU(nn.Module):
    """Compact gated linear unit (eq. 7): W_rec (W_id x * sigmoid(W_gate x)), expansion 2, per voxel."""

    def __init__(self, channels: int, expansion: int = CGLU_EXPANSION):
        super().__init__()
        hidden = channels * expansion
        self.identity = nn.Conv3d(channels, hidden, 1)
        self.gate = nn.Conv3d(channels, hidden, 1)
        self.recover = nn.Conv3d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.recover(self.identity(x) * torch.sigmoid(self.gate(x)))


class LightUNETRBlock(nn.Module):
    """Fig. 3b: a residual depthwise 3x3x3 convolution, then two pre-norm residual LIDR + CGLU pairs."""

    def __init__(self, channels: int, reduction: int, heads: int):
        super().__init__()
        self.local = nn.Conv3d(channels, channels, 3, padding=1, groups=channels)
        self.attention_norms = nn.ModuleList([ChannelNorm3d(channels) for _ in range(PAIRS_PER_BLOCK)])
        self.attentions = nn.ModuleList([LIDR(channels, reduction, heads) for _ in range(PAIRS_PER_BLOCK)])
        self.mlp_norms = nn.ModuleList([ChannelNorm3d(channels) for _ in range(PAIRS_PER_BLOCK)])
        self.mlps = nn.ModuleList([CGLU(channels) for _ in range(PAIRS_PER_BLOCK)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.local(x)
        for attn_norm, attention, mlp_norm, mlp in zip(self.attention_norms, self.attentions, self.mlp_norms, self.mlps):
            x = x + attention(attn_norm(x))
            x = x + mlp(mlp_norm(x))
        return x


def crop_to(x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """The first ``size`` voxels of ``x`` along each spatial axis (upsampling can overshoot by one)."""
    return x[(..., *(slice(0, n) for n in size))]


def light_resample(conv: nn.Module, channels: int) -> nn.Sequential:
    """Fig. 3f: the (transposed) convolution, a normalisation, squeeze-and-excitation."""
    return nn.Sequential(conv, ChannelNorm3d(channels), SqueezeExcite3d(channels))


def stage(channels: int, depth: int, level: int) -> nn.Sequential:
    """One level's blocks."""
    return nn.Sequential(*[LightUNETRBlock(channels, REDUCTIONS[level], HEADS[level]) for _ in range(depth)])


class LightUNETR(nn.Module):
    """[B, in_channels, D, H, W] -> [B, num_classes, D, H, W] logits, any size (an upsampled map is
    cropped to its skip's size where a level had an odd size, e.g. the paper's 112 x 112 x 80)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 2):
        super().__init__()
        self.patch_embed = nn.Sequential(nn.Conv3d(in_channels, WIDTHS[0], 7, 4, 3), ChannelNorm3d(WIDTHS[0]))
        self.encoder = nn.ModuleList([stage(WIDTHS[i], DEPTHS[i], i) for i in range(len(WIDTHS))])
        self.down = nn.ModuleList([light_resample(nn.Conv3d(WIDTHS[i], WIDTHS[i + 1], 3, 2, 1), WIDTHS[i + 1])
                                   for i in range(len(WIDTHS) - 1)])
        self.up = nn.ModuleList([light_resample(nn.ConvTranspose3d(WIDTHS[i + 1], WIDTHS[i], 2, 2), WIDTHS[i])
                                 for i in range(len(WIDTHS) - 1)])
        self.decoder = nn.ModuleList([stage(WIDTHS[i], DEPTHS[i], i) for i in range(len(WIDTHS))])
        self.head = nn.ConvTranspose3d(WIDTHS[0], num_classes, 4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.patch_embed(x)
        skips = []
        for level, blocks in enumerate(self.encoder):
            if level:
                h = self.down[level - 1](h)
            h = blocks(h)
            skips.append(h)
        h = self.decoder[-1](h)
        for level in reversed(range(len(self.up))):
            skip = skips[level]
            h = self.decoder[level](crop_to(self.up[level](h), skip.shape[2:]) + skip)
        return crop_to(self.head(h), x.shape[2:])


def build_light_unetr(in_channels: int = 1, num_classes: int = 10) -> LightUNETR:
    """Light-UNETR with random weights, eval mode (the benchmark measures cost, not accuracy)."""
    return LightUNETR(in_channels, num_classes).eval()
