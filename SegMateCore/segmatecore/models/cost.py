"""Model cost figures: parameters and multiply-accumulates per slice (torch.utils.flop_counter)."""
from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from segmatecore.models import SegMateNet


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def gmacs_per_slice(model: SegMateNet, size: int = 512, with_film: bool = True) -> float:
    """GMACs of one 2.5D slice at ``size`` x ``size`` (FLOPs / 2, the paper's "GFLOPs")."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    x = torch.zeros(1, 3, size, size, device=device)
    z = torch.full((1,), 0.5, device=device) if with_film else None
    counter = FlopCounterMode(display=False)
    with counter:
        model(x, z)
    model.train(was_training)
    return counter.get_total_flops() / 2e9
