"""Parameters and multiply-accumulates of a peer network, counted three ways on the meta device.

SegMate's "GFLOPs" are multiply-accumulates counted with ``torch.utils.flop_counter`` (its FLOPs
halved): every convolution, linear layer and matrix product, each transposed convolution charged
for its input voxels (what it computes). Papers count differently, and a peer is checked against
its paper in the paper's own convention, so :func:`network_cost` reports all three:

- ``gmacs``: ``torch.utils.flop_counter`` / 2, the benchmark's convention;
- ``gmacs_layers``: convolution and linear layers only, from module hooks (no matrix products
  between activations, such as attention's), transposed convolutions charged for their input;
- ``gmacs_layers_transposed_at_output``: the same, but a transposed convolution charged for every
  output voxel (thop's ``count_convNd`` rule), which overstates a stride-s transposed convolution
  s^d times.

Large inputs are counted on the meta device (nothing computed, no memory: a 128^3 patch of the
nnU-Net peer is 478 GMACs); small ones, where the meta device's per-operator overhead costs more
than the arithmetic, on the CPU.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

REAL_INPUT_LIMIT = 2**18   # input values up to which counting runs on the CPU (a 64^3 patch)
CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


@dataclass(frozen=True)
class NetworkCost:
    """Parameters and GMACs of one forward pass at one input shape."""

    params: int
    gmacs: float
    gmacs_layers: float
    gmacs_layers_transposed_at_output: float

    @property
    def params_m(self) -> float:
        return self.params / 1e6


def _layer_macs(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor,
                transposed_at_output: bool) -> int:
    kernel = module.weight.shape[2:].numel() if isinstance(module, (*CONVOLUTIONS, *TRANSPOSED)) else 1
    if isinstance(module, TRANSPOSED) and not transposed_at_output:
        # every input value is spread over (out_channels / groups) x kernel outputs
        return inputs[0].numel() * (module.out_channels // module.groups) * kernel
    if isinstance(module, (*CONVOLUTIONS, *TRANSPOSED)):
        return output.numel() * (module.in_channels // module.groups) * kernel
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    return 0


def network_cost(build: Callable[[], nn.Module], input_shape: tuple[int, ...]) -> NetworkCost:
    """Cost of ``build()`` on one input of ``input_shape`` (batch 1: [1, channels, *spatial])."""
    with torch.device("cpu" if math.prod(input_shape) <= REAL_INPUT_LIMIT else "meta"):
        network = build()
        x = torch.zeros(input_shape)
    totals = {False: 0, True: 0}

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        for rule in totals:
            totals[rule] += _layer_macs(module, inputs, output, rule)

    handles = [m.register_forward_hook(hook) for m in network.modules()
               if isinstance(m, (*CONVOLUTIONS, *TRANSPOSED, nn.Linear))]
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter:
            network(x)
    finally:
        for handle in handles:
            handle.remove()
    return NetworkCost(params=sum(p.numel() for p in network.parameters()),
                       gmacs=counter.get_total_flops() / 2e9, gmacs_layers=totals[False] / 1e9,
                       gmacs_layers_transposed_at_output=totals[True] / 1e9)
