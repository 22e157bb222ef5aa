"""Inference-time preparation of a loaded model for a device and precision."""
from __future__ import annotations

import torch

from .models import SegMateNet


def prepare_for_inference(model: SegMateNet, device: torch.device, precision: str = "auto"
                          ) -> tuple[SegMateNet, torch.dtype | None]:
    """Eval mode, FastViT re-parameterisation, device placement; return (model, autocast dtype or None)."""
    model = model.eval().reparameterize().to(device)
    if device.type == "cuda" and precision in ("auto", "fp16"):
        return model, torch.float16
    if precision == "bf16":
        return model, torch.bfloat16
    return model, None
