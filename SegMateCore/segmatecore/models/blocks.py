"""Building blocks of SegMateNet, one small nn.Module each.

Widths and ordering follow the SegMate paper; the research checkpoint layout is mapped onto
these names by :mod:`segmatecore.models.research`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConvBnAct(nn.Sequential):
    """Conv2d (no bias) -> BatchNorm2d -> optional activation."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, dilation: int = 1,
                 act: bool = True):
        padding = dilation * (kernel_size // 2)
        layers = [nn.Conv2d(in_ch, out_ch, kernel_size, padding=padding, dilation=dilation, bias=False),
                  nn.BatchNorm2d(out_ch)]
        if act:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class SliceFusion(nn.Module):
    """Fuses the three adjacent axial slices (t-1, t, t+1) into one channel for the encoder."""

    def __init__(self, in_ch: int = 3, hidden: int = 16):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, hidden, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(hidden)
        self.act = nn.SiLU(inplace=True)
        self.proj = nn.Conv2d(hidden, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.act(self.bn(self.conv(x))))


class SqueezeExcite(nn.Module):
    """Channel gate: global average pool -> Linear(C, C/r) -> ReLU -> Linear(C/r, C) -> sigmoid."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc = nn.Sequential(nn.Linear(channels, hidden, bias=False), nn.ReLU(inplace=True),
                                nn.Linear(hidden, channels, bias=False), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.fc(x.mean(dim=(2, 3)))
        return x * gate[:, :, None, None]


class ChannelAttention(nn.Module):
    """CBAM channel attention: avg- and max-pooled descriptors through one shared MLP."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Conv2d(channels, hidden, 1, bias=False)
        self.fc2 = nn.Conv2d(hidden, channels, 1, bias=False)

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self._mlp(F.adaptive_avg_pool2d(x, 1))
        mx = self._mlp(F.adaptive_max_pool2d(x, 1))
        return x * torch.sigmoid(avg + mx)


class SpatialAttention(nn.Module):
    """CBAM spatial attention: channel mean and max -> 7x7 conv -> sigmoid."""

    def __init__(self, kernel_size: int = 7):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        desc = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.conv(desc))


class CBAM(nn.Module):
    """Convolutional Block Attention Module: channel attention, then spatial attention."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.channel = ChannelAttention(channels, reduction)
        self.spatial = SpatialAttention()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spatial(self.channel(x))


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1x1 and 3x3 dilated 6/12/18 branches, fused by a 1x1."""

    def __init__(self, in_ch: int, out_ch: int = 256, dilations: tuple[int, ...] = (6, 12, 18)):
        super().__init__()
        self.branches = nn.ModuleList(
            [ConvBnAct(in_ch, out_ch, 1)] + [ConvBnAct(in_ch, out_ch, 3, dilation=d) for d in dilations])
        self.project = ConvBnAct(out_ch * len(self.branches), out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([b(x) for b in self.branches], dim=1))


class FiLM(nn.Module):
    """Feature-wise modulation by the normalised slice position z: y = gamma(z) * x + beta(z).

    Heads start near the identity (weights N(0, 0.01), gamma bias 1, beta bias 0). With no z the
    module is the identity, which is how a label-free first pass runs the network. A NaN entry of
    ``z_norm`` makes the module the identity for that sample alone: training uses it for slices
    whose organ extent is unknown (a case that lacks a contour defining the extent).
    """

    def __init__(self, channels: int = 256, hidden: int = 128, dropout: float = 0.1):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(1, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
                                 nn.Linear(hidden, hidden), nn.ReLU(inplace=True))
        self.gamma = nn.Linear(hidden, channels)
        self.beta = nn.Linear(hidden, channels)
        for head, bias in ((self.gamma, 1.0), (self.beta, 0.0)):
            nn.init.normal_(head.weight, 0.0, 0.01)
            nn.init.constant_(head.bias, bias)

    def forward(self, x: torch.Tensor, z_norm: torch.Tensor | None = None) -> torch.Tensor:
        if z_norm is None:
            return x
        z = z_norm.reshape(-1, 1).to(x.dtype)
        known = ~torch.isnan(z)
        h = self.mlp(torch.where(known, z, torch.zeros_like(z)))
        gamma = torch.where(known, self.gamma(h), torch.ones_like(z))
        beta = torch.where(known, self.beta(h), torch.zeros_like(z))
        return gamma[:, :, None, None] * x + beta[:, :, None, None]


class DecoderBlock(nn.Module):
    """conv3x3-BN-ReLU -> Dropout2d -> conv3x3-BN-ReLU -> attention -> + residual -> ReLU."""

    def __init__(self, in_ch: int, out_ch: int, attention: str = "cbam", dropout: float = 0.1):
        super().__init__()
        self.conv1 = ConvBnAct(in_ch, out_ch, 3)
        self.drop = nn.Dropout2d(dropout)
        self.conv2 = ConvBnAct(out_ch, out_ch, 3)
        self.attention = CBAM(out_ch) if attention == "cbam" else SqueezeExcite(out_ch)
        self.residual = ConvBnAct(in_ch, out_ch, 1, act=False) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.attention(self.conv2(self.drop(self.conv1(x))))
        return F.relu(y + self.residual(x))
