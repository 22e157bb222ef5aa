"""HRMedSeg (Xu, Lou, Li et al.): 2D high-resolution segmentation with a lightweight gated ViT encoder
(LGViT) and an efficient cross-multiscale decoder (ECM-Decoder), built for memory.

Built from the paper's section 3, with its widths (C1 = 96, L = 10, expansion 2) and its input of
1024 x 1024 (every image, CT slices included, is resized to 1024 x 1024 for fine-tuning and
evaluation, section 4.2):

- **LGViT** (3.2): a 16 x 16 patch embedding to C1 = 96 channels (64 x 64 tokens at 1024); two
  MBConvs as channel-interactive layers (1x1 expansion x2, 3x3 depthwise, 1x1 projection, GELU,
  residual; eq. 1); L = 10 token-interactive layers of dual-gated linear attention (DGLA, eqs. 3-5):
  Q, K, V = x W (d = C1), the kernel phi = elu + 1 of linear attention, the inter-gate
  V_gated = SiLU(V) W_gate, the exter-gate SiLU(x W_x) multiplying the attention output, then
  LayerNorm and an MLP of expansion 2, plus the residual.
- **neck** (3.4): a 1x1 and a 3x3 convolution (with LayerNorm, as SAM's neck whose 256-channel
  embedding the encoder is distilled to), which gives the decoder its 256-channel image embedding.
- **ECM-Decoder** (3.3): one learned 256-wide query per class, self-attention on the queries,
  then bidirectional cross-attention layers: the queries attend to the image embedding (keys
  H + psi, values delta(H); eq. 6), the image embedding attends to the queries (queries
  delta(H) + psi; eq. 7). delta is the multiscale module, three parameter-free average poolings
  of 5, 9 and 13; psi the positional encoding. The masks are the dot product of the embedding
  upsampled by two transposed convolutions and an MLP of each query, bilinearly interpolated to
  the output size (eq. 8).

Choices where the paper is open (docs/peers.md):

- *DGLA is one head, d = C1*: eq. 5 multiplies SiLU(x W_x) (width d) with V' (width C1)
  elementwise, and the paper's depth ablation (Table 6: +0.0825 M per layer) is exactly
  9 C1^2: five C1 x C1 projections and the MLP.
- *The decoder has two bidirectional layers, each self-attention on the queries, eq. 6 and eq. 7,
  full 256-wide attention with 8 heads and a LayerNorm after each*, without a query MLP (the paper
  names none); the positional encoding is SAM's fixed random Fourier features; the transposed
  convolutions are SAM's 256 -> 64 -> 32; one query MLP (256 -> 256 -> 256 -> 32) is shared by all
  classes. With these, parameters and multiply-accumulates come within 4 % and 5 % of Table 1.
- *delta(H) = (H + P5(H) + P9(H) + P13(H)) / 4*, stride 1, padding to keep the size: the paper
  says only "three parallel pooling operators".
- *No normalisation in the patch embedding and the MBConvs*, as eq. 1 writes none.
- *Masks per class by sigmoid* (eq. 8); a labelmap takes the highest logit where it is positive.
- *On a CT* (:func:`run_hrmedseg_peer`): every axial slice in the abdominal window [-125, 275] HU
  scaled to [0, 1], the grey level in the three channels the SAM-distilled encoder takes, resized
  to 1024 x 1024 as the paper resizes every image; eq. 8's interpolation returns the masks at the
  slice's own size.
"""
from __future__ import annotations

import math
import time

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from torch import nn

from segmatecore.bench.peers.volume import PeerResult

EMBED_DIM = 96                 # C1
DEPTH = 10                     # L, token-interactive layers
PATCH_SIZE = 16                # S
EXPANSION = 2                  # MBConvs and MLPs
CHANNEL_LAYERS = 2             # MBConvs
DECODER_DIM = 256
DECODER_HEADS = 8
DECODER_LAYERS = 2
POOL_SIZES = (5, 9, 13)
UPSCALED_DIM = 32
NATIVE_SIZE = 1024             # the paper resizes every image to 1024 x 1024
CT_WINDOW = (-125.0, 275.0)    # HU mapped to [0, 1] (the abdominal window of the multi-organ CT benchmark)


class MBConv(nn.Module):
    """Eq. 1: x <- GELU(proj(GELU(dw3x3(GELU(expand1x1(x))))) + x)."""

    def __init__(self, dim: int, expansion: int = EXPANSION):
        super().__init__()
        hidden = dim * expansion
        self.expand = nn.Conv2d(dim, hidden, 1)
        self.depthwise = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.project = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.depthwise(F.gelu(self.expand(x))))
        return F.gelu(self.project(h) + x)


def linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Eq. 3: phi(Q) (phi(K)^T V) normalised by phi(Q) sum_j phi(K_j), phi = elu + 1: linear in tokens."""
    q, k = F.elu(q) + 1, F.elu(k) + 1
    context = torch.bmm(k.transpose(1, 2), v)                      # [B, d, C]
    norm = torch.bmm(q, k.sum(dim=1, keepdim=True).transpose(1, 2))  # [B, N, 1]
    return torch.bmm(q, context) / (norm + eps)


class DualGatedLinearAttention(nn.Module):
    """Eqs. 3-5, a token-interactive layer: H = MLP(LN(SiLU(x W_x) * V')) + x, where V' is linear
    attention over SiLU(V) W_gate (the inter-gate) and SiLU(x W_x) is the exter-gate."""

    def __init__(self, dim: int = EMBED_DIM, expansion: int = EXPANSION):
        super().__init__()
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.inter_gate = nn.Linear(dim, dim)
        self.exter_gate = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * expansion), nn.GELU(), nn.Linear(dim * expansion, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attended = linear_attention(self.q(x), self.k(x), self.inter_gate(F.silu(self.v(x))))
        return self.mlp(self.norm(F.silu(self.exter_gate(x)) * attended)) + x


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of a [B, C, H, W] map (SAM's neck and upscaling)."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class LGViT(nn.Module):
    """Section 3.2 and the neck: [B, 3, H, W] -> [B, 256, H/16, W/16]."""

    def __init__(self, in_channels: int = 3, dim: int = EMBED_DIM, depth: int = DEPTH, out_dim: int = DECODER_DIM):
        super().__init__()
        self.patch_embed = nn.Conv2d(in_channels, dim, PATCH_SIZE, PATCH_SIZE)
        self.channel_layers = nn.Sequential(*[MBConv(dim) for _ in range(CHANNEL_LAYERS)])
        self.token_layers = nn.Sequential(*[DualGatedLinearAttention(dim) for _ in range(depth)])
        self.neck = nn.Sequential(nn.Conv2d(dim, out_dim, 1, bias=False), LayerNorm2d(out_dim),
                                  nn.Conv2d(out_dim, out_dim, 3, padding=1, bias=False), LayerNorm2d(out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.channel_layers(self.patch_embed(x))
        b, c, h, w = x.shape
        tokens = self.token_layers(x.flatten(2).transpose(1, 2))
        return self.neck(tokens.transpose(1, 2).reshape(b, c, h, w))


class Attention(nn.Module):
    """Multi-head attention with query, key, value and output projections (scaled dot product)."""

    def __init__(self, dim: int = DECODER_DIM, heads: int = DECODER_HEADS):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.out = (nn.Linear(dim, dim) for _ in range(4))

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.view(b, n, self.heads, c // self.heads).transpose(1, 2)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out = F.scaled_dot_product_attention(self._split(self.q(q)), self._split(self.k(k)), self._split(self.v(v)))
        b, _, n, _ = out.shape
        return self.out(out.transpose(1, 2).reshape(b, n, -1))


def multiscale(embedding: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """delta(H): the mean of H and its 5, 9 and 13 average poolings (stride 1, same size), on tokens."""
    b, n, c = embedding.shape
    grid = embedding.transpose(1, 2).reshape(b, c, *size)
    pooled = [F.avg_pool2d(grid, k, 1, k // 2, count_include_pad=False) for k in POOL_SIZES]
    grid = (grid + sum(pooled)) / (1 + len(pooled))
    return grid.flatten(2).transpose(1, 2)


class CrossMultiscaleLayer(nn.Module):
    """One bidirectional layer: self-attention on the queries, eq. 6 (queries -> image), eq. 7
    (image -> queries), each with a residual and a LayerNorm."""

    def __init__(self, dim: int = DECODER_DIM, heads: int = DECODER_HEADS):
        super().__init__()
        self.self_attn, self.to_image, self.to_queries = (Attention(dim, heads) for _ in range(3))
        self.norms = nn.ModuleList([nn.LayerNorm(dim) for _ in range(3)])

    def forward(self, queries: torch.Tensor, image: torch.Tensor, position: torch.Tensor,
                size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        queries = self.norms[0](queries + self.self_attn(queries, queries, queries))
        scaled = multiscale(image, size)
        queries = self.norms[1](queries + self.to_image(queries, image + position, scaled))
        image = self.norms[2](scaled + self.to_queries(scaled + position, queries, queries))
        return queries, image


class RandomFourierPosition(nn.Module):
    """SAM's positional encoding: fixed random Gaussian frequencies of the normalised coordinates."""

    def __init__(self, dim: int = DECODER_DIM):
        super().__init__()
        self.register_buffer("frequencies", torch.randn(2, dim // 2))

    def forward(self, size: tuple[int, int]) -> torch.Tensor:
        h, w = size
        ys = (torch.arange(h, device=self.frequencies.device, dtype=self.frequencies.dtype) + 0.5) / h
        xs = (torch.arange(w, device=self.frequencies.device, dtype=self.frequencies.dtype) + 0.5) / w
        coords = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1) * 2 - 1   # [h, w, 2]
        angles = 2 * math.pi * coords @ self.frequencies
        return torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(0, 1)[None]   # [1, h*w, dim]


class ECMDecoder(nn.Module):
    """Section 3.3: class queries refined against the multiscale image embedding, masks by eq. 8."""

    def __init__(self, num_classes: int, dim: int = DECODER_DIM, layers: int = DECODER_LAYERS):
        super().__init__()
        self.queries = nn.Embedding(num_classes, dim)
        self.position = RandomFourierPosition(dim)
        self.layers = nn.ModuleList([CrossMultiscaleLayer(dim) for _ in range(layers)])
        self.upscale = nn.Sequential(nn.ConvTranspose2d(dim, dim // 4, 2, 2), LayerNorm2d(dim // 4), nn.GELU(),
                                     nn.ConvTranspose2d(dim // 4, UPSCALED_DIM, 2, 2), nn.GELU())
        self.query_mlp = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim), nn.ReLU(),
                                       nn.Linear(dim, UPSCALED_DIM))

    def forward(self, embedding: torch.Tensor, output_size: tuple[int, int]) -> torch.Tensor:
        b, c, h, w = embedding.shape
        image = embedding.flatten(2).transpose(1, 2)
        position = self.position((h, w))
        queries = self.queries.weight[None].repeat(b, 1, 1)
        for layer in self.layers:
            queries, image = layer(queries, image, position, (h, w))
        upscaled = self.upscale(image.transpose(1, 2).reshape(b, c, h, w))
        weights = self.query_mlp(queries)                                      # [B, classes, 32]
        masks = torch.einsum("bkc,bchw->bkhw", weights, upscaled)
        return F.interpolate(masks, size=output_size, mode="bilinear", align_corners=False)


class HRMedSeg(nn.Module):
    """[B, in_channels, H, W] -> [B, num_classes, *output_size] mask logits (H, W divisible by 16;
    ``output_size`` defaults to the input's)."""

    def __init__(self, in_channels: int = 3, num_classes: int = 1, depth: int = DEPTH):
        super().__init__()
        self.encoder = LGViT(in_channels, depth=depth)
        self.decoder = ECMDecoder(num_classes)

    def forward(self, x: torch.Tensor, output_size: tuple[int, int] | None = None) -> torch.Tensor:
        if any(n % PATCH_SIZE for n in x.shape[2:]):
            raise ValueError(f"HRMedSeg needs sizes divisible by {PATCH_SIZE}, got {tuple(x.shape[2:])}.")
        return self.decoder(self.encoder(x), tuple(output_size or x.shape[2:]))


def build_hrmedseg(in_channels: int = 3, num_classes: int = 9) -> HRMedSeg:
    """HRMedSeg with random weights, eval mode (the benchmark measures cost, not accuracy): one query
    per organ."""
    return HRMedSeg(in_channels, num_classes).eval()


def ct_to_slices(hu: np.ndarray, window: tuple[float, float] = CT_WINDOW) -> torch.Tensor:
    """[n, H, W] HU -> [n, 3, H, W] in [0, 1]: the abdominal window, the grey level in three channels."""
    lo, hi = window
    x = torch.from_numpy(np.clip((np.asarray(hu, dtype=np.float32) - lo) / (hi - lo), 0.0, 1.0))
    return x[:, None].expand(-1, 3, -1, -1)


@torch.inference_mode()
def run_hrmedseg_peer(image: sitk.Image, network: HRMedSeg, size: int = NATIVE_SIZE, batch_size: int = 2,
                      autocast: torch.dtype | None = None) -> PeerResult:
    """Segment ``image`` as HRMedSeg runs: each axial slice resized to ``size`` x ``size`` (bilinear),
    ``batch_size`` slices at a time, masks interpolated straight back to the slice's size (eq. 8's
    F_inter), labels where the highest organ logit is positive."""
    device = next(network.parameters()).device
    timings = {"preprocess": 0.0, "network": 0.0}
    hu = sitk.GetArrayViewFromImage(image)                       # [z, y, x]: slices along the third axis
    labels = np.zeros(hu.shape, dtype=np.uint8)
    for start in range(0, hu.shape[0], batch_size):
        t0 = time.perf_counter()
        x = ct_to_slices(hu[start:start + batch_size]).to(device)
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        t1 = time.perf_counter()
        with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
            logits = network(x, output_size=tuple(hu.shape[1:])).float()
        best, index = logits.max(dim=1)
        labels[start:start + batch_size] = torch.where(best > 0, index + 1, 0).to(torch.uint8).cpu().numpy()
        t2 = time.perf_counter()
        timings["preprocess"] += t1 - t0
        timings["network"] += t2 - t1
    labelmap = sitk.GetImageFromArray(labels)
    labelmap.CopyInformation(image)
    return PeerResult(labelmap, timings, hu.shape[0], (size, size, hu.shape[0]))
