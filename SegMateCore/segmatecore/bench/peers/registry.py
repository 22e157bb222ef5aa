"""The benchmark's peers, one :class:`PeerSpec` each: how to build and run the network on a CT, what
its paper reports for parameters and GFLOPs (and in which counting convention), and its published
accuracy.

The published accuracy is context only: it was measured by the papers' authors on their own data
(brain MRI, cardiac MRI, abdominal CT, ...), with trained weights. The benchmark runs random
weights and measures cost, never accuracy.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import SimpleITK as sitk
import torch
from torch import nn

from segmatecore.bench.peers import hrmedseg
from segmatecore.bench.peers import light_unetr
from segmatecore.bench.peers import lightmedseg
from segmatecore.bench.peers import nnunet
from segmatecore.bench.peers.costs import NetworkCost, network_cost
from segmatecore.bench.peers.volume import PeerResult, run_patch_peer

SEGMENTATION_CLASSES = nnunet.PEER_CLASSES   # background + the nine organs (HRMedSeg: a query per organ)
PEER_SPACING_MM = 1.5       # every 3D peer runs on the nnU-Net peer's (TotalSegmentator's) 1.5 mm grid
# --quick (whose figures mean nothing) keeps each peer to one small network call per patch: the
# sample CT's 366 x 303 x 336 mm fit one 64^3 patch at 6 mm (nnU-Net's smallest: five halvings) and
# one 32^3 patch at 12 mm; HRMedSeg runs its slices at 64 x 64
QUICK_NNUNET = ((64, 64, 64), 6.0)
QUICK_3D = ((32, 32, 32), 12.0)
QUICK_SLICE = 64


@dataclass(frozen=True)
class PaperFigures:
    """What a paper reports for its network's cost, and the shape it counted at.

    ``count`` names the convention its "GFLOPs" follow, one of :class:`NetworkCost`'s fields:
    ``gmacs`` (torch.utils.flop_counter), ``gmacs_layers`` (convolution and linear layers) or
    ``gmacs_layers_transposed_at_output`` (the same, transposed convolutions charged per output
    voxel). ``evidence`` says why that convention (docs/peers.md). ``params_deviation`` is set
    only where the network the paper describes cannot hold the paper's parameter count; the
    check then holds the network to that documented deviation instead of 10 %."""

    params_m: float
    gflops: float
    input_shape: tuple[int, ...]      # [1, channels, *spatial]
    num_classes: int
    source: str
    count: str
    evidence: str
    params_deviation: float | None = None   # where the paper's count cannot be met: the deviation found
    params_note: str = ""                    # ... and why (docs/peers.md)


@dataclass(frozen=True)
class PublishedAccuracy:
    """One accuracy figure from a paper: never measured here."""

    dataset: str
    task: str
    dice: float
    source: str


@dataclass(frozen=True)
class PeerSpec:
    """One peer: its network, how it runs on a whole CT, its paper's figures."""

    key: str
    title: str
    build: Callable[[int, int], nn.Module]          # (in_channels, classes) -> network, eval mode
    in_channels: int
    classes: int
    patch: tuple[int, ...]                          # a 3D patch, or (size, size) for a 2D peer
    quick_patch: tuple[int, ...]
    quick_spacing_mm: float = 0.0                   # 3D peers: the grid of --quick
    normalise: Callable[[np.ndarray], np.ndarray] | None = None
    paper: PaperFigures | None = None
    accuracy: tuple[PublishedAccuracy, ...] = field(default_factory=tuple)

    @property
    def is_3d(self) -> bool:
        return len(self.patch) == 3

    def patch_for(self, quick: bool) -> tuple[int, ...]:
        """The 3D patch, or the 2D slice size, of a full or a --quick run."""
        return self.quick_patch if quick else self.patch

    def network_input(self, quick: bool) -> tuple[int, ...]:
        """The shape of one network call in the benchmark: a patch, or one slice at native size."""
        return (1, self.in_channels, *self.patch_for(quick))

    def how(self, quick: bool) -> str:
        """How the peer runs on the CT, for its row's name."""
        size = self.patch_for(quick)[0]
        if self.is_3d:
            return f"{size}^3 patches, half-patch overlap, {self.spacing_mm(quick):g} mm"
        return f"slice by slice at {size} x {size}"

    def spacing_mm(self, quick: bool) -> float:
        """The isotropic grid a 3D peer resamples the CT to."""
        return self.quick_spacing_mm if quick else PEER_SPACING_MM

    def run(self, image: sitk.Image, network: nn.Module, *, quick: bool, batch_size: int,
            autocast: torch.dtype | None = None) -> PeerResult:
        """Segment ``image`` the way this network runs in practice."""
        if not self.is_3d:
            return hrmedseg.run_hrmedseg_peer(image, network, size=self.patch_for(quick)[0], batch_size=batch_size,
                                              autocast=autocast)
        return run_patch_peer(image, network, patch=self.patch_for(quick), spacing_mm=self.spacing_mm(quick),
                              num_classes=self.classes, normalise=self.normalise, autocast=autocast)

    def benchmark_cost(self, quick: bool) -> NetworkCost:
        """Parameters and GMACs of one network call as the benchmark makes it."""
        return network_cost(lambda: self.build(self.in_channels, self.classes), self.network_input(quick))

    def paper_cost(self) -> NetworkCost:
        """Parameters and GMACs at the paper's own input shape and class count."""
        if self.paper is None:
            raise ValueError(f"{self.title} has no paper figures to check against.")
        return network_cost(lambda: self.build(self.paper.input_shape[1], self.paper.num_classes),
                            self.paper.input_shape)


def light_unetr_ct_normalise(hu: np.ndarray) -> np.ndarray:
    """Light-UNETR's Pancreas-CT preprocessing: HU clipped to [-125, 275] and scaled to [0, 1]."""
    return (np.clip(hu, -125.0, 275.0) + 125.0) / 400.0


NNUNET = PeerSpec(
    key=nnunet.NNUNET_MODEL, title="3D nnU-Net (3d_fullres)",
    build=lambda in_ch, classes: nnunet.build_nnunet_3d_fullres(classes), in_channels=1,
    classes=SEGMENTATION_CLASSES, patch=nnunet.NNUNET_PATCH, quick_patch=QUICK_NNUNET[0],
    quick_spacing_mm=QUICK_NNUNET[1],
    normalise=nnunet.nnunet_ct_normalise,
    accuracy=(PublishedAccuracy("AMOS22 (abdominal CT)", "15 organs", 76.44,
                                "Bio2Vol's evaluation, quoted by the SegMate paper (Table 2)"),))

LIGHTMEDSEG = PeerSpec(
    key="lightmedseg", title="LightMedSeg",
    build=lightmedseg.build_lightmedseg, in_channels=1,
    classes=SEGMENTATION_CLASSES, patch=lightmedseg.TRAINING_PATCH, quick_patch=QUICK_3D[0],
    quick_spacing_mm=QUICK_3D[1],
    normalise=nnunet.nnunet_ct_normalise,
    paper=PaperFigures(0.48, 14.64, (1, 4, 128, 128, 128), 4, "Table 3, BraTS",
                       "gmacs_layers_transposed_at_output",
                       "of the three conventions, the only one that meets the paper's figure",
                       params_deviation=-0.448,
                       params_note="the blocks section 3 describes, at the widths it gives, hold 0.265 M; the "
                                   "paper's per-module figures (anchor detector 8.6 K, structural prior 11.7 K, "
                                   "router 24 K) are met, and no block it describes holds the rest "
                                   "(docs/peers.md)"),
    accuracy=(PublishedAccuracy("BraTS (brain MRI, 4 modalities)", "3 tumour regions", 83.4, "Table 1"),
              PublishedAccuracy("ACDC (cardiac MRI)", "RV, myocardium, LV", 91.24, "Table 2")))

HRMEDSEG = PeerSpec(
    key="hrmedseg", title="HRMedSeg",
    build=hrmedseg.build_hrmedseg, in_channels=3,
    classes=SEGMENTATION_CLASSES - 1, patch=(hrmedseg.NATIVE_SIZE, hrmedseg.NATIVE_SIZE),
    quick_patch=(QUICK_SLICE, QUICK_SLICE),
    paper=PaperFigures(3.53, 9.39, (1, 3, 1024, 1024), 1, "Table 1", "gmacs_layers",
                       "its depth ablation (Table 6) adds per token layer what the layer's projections cost, "
                       "without the attention's matrix products"),
    accuracy=(PublishedAccuracy("Synapse multi-organ (abdominal CT, 2D slices)", "8 organs", 84.25, "Table 2"),
              PublishedAccuracy("Dermoscopy (2D)", "skin lesion", 88.63, "Table 1")))

LIGHT_UNETR = PeerSpec(
    key="light_unetr", title="Light-UNETR",
    build=light_unetr.build_light_unetr, in_channels=1,
    classes=SEGMENTATION_CLASSES, patch=light_unetr.TRAINING_PATCH, quick_patch=QUICK_3D[0],
    quick_spacing_mm=QUICK_3D[1],
    normalise=light_unetr_ct_normalise,
    paper=PaperFigures(1.34, 4.29, (1, 1, 112, 112, 80), 2, "Table III, LA",
                       "gmacs_layers_transposed_at_output",
                       "of the three conventions, the only one that meets the paper's figure"),
    accuracy=(PublishedAccuracy("AbdomenCT-1K (abdominal CT)", "liver, kidney, spleen, pancreas", 92.22,
                                "Table IV, fully supervised"),
              PublishedAccuracy("Pancreas-CT", "pancreas", 80.45, "Table III, fully supervised"),
              PublishedAccuracy("LA (cardiac MRI)", "left atrium", 91.58, "Table III, fully supervised")))

PEERS: dict[str, PeerSpec] = {p.key: p for p in (NNUNET, LIGHTMEDSEG, HRMEDSEG, LIGHT_UNETR)}

SEGMATE_PAPER_ACCURACY = (
    PublishedAccuracy("TotalSegmentator (CT)", "organs, EfficientNetV2-M", 93.51, "SegMate paper, Table 1"),
    PublishedAccuracy("TotalSegmentator (CT)", "organs, FastViT-T12", 92.25, "SegMate paper, Table 1"),
    PublishedAccuracy("AMOS22 (abdominal CT)", "5 organs, FastViT-T12, zero-shot", 88.87, "SegMate paper, Table 2"),
)


def peer_spec(key: str) -> PeerSpec:
    try:
        return PEERS[key]
    except KeyError:
        raise ValueError(f"Unknown peer {key!r}; the peers are {', '.join(PEERS)}.") from None
