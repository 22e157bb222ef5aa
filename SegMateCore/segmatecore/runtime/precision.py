"""Which precision ``auto`` runs a model in: the fastest one whose masks agree with fp32 for it.

Lower precision is only worth running where the hardware computes it faster: fp16 on a CUDA GPU,
bf16 on a CPU with AMX (:func:`~segmatecore.runtime.optimize.cpu_bf16_is_faster`). Whether a
model's masks survive it is a property of the model, so it is measured once, when the model is
calibrated (:func:`segmatecore.train.calibrate.measure_precision_agreement`), and kept in its
metadata under ``precision_agreement``: per precision, the lowest per-organ Dice against fp32 over
the calibration cases. ``auto`` uses a lower precision only when that record reaches
:data:`AGREEMENT_DICE`; a model without the record runs fp32.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch

from segmatecore.runtime.devices import COMPUTE_PRECISIONS, check_precision
from segmatecore.runtime.optimize import cpu_bf16_is_faster

AGREEMENT_DICE = 0.98


def faster_precision(device: torch.device) -> str | None:
    """The lower precision this device computes faster than fp32, if any."""
    if device.type == "cuda":
        return "fp16"
    if device.type == "cpu" and cpu_bf16_is_faster():
        return "bf16"
    return None


def agrees(meta: Mapping[str, Any], precision: str) -> bool:
    """True when the model's record says its masks in ``precision`` agree with fp32."""
    record = (meta.get("precision_agreement") or {}).get(precision) or {}
    return float(record.get("min_dice", 0.0)) >= AGREEMENT_DICE


def resolve_precision(precision: str, device: torch.device, meta: Mapping[str, Any]) -> str:
    """The precision to compute in: ``precision`` itself, or for ``auto`` the faster precision of
    ``device`` when the model's record allows it, else fp32."""
    check_precision(precision, COMPUTE_PRECISIONS)
    if precision != "auto":
        return precision
    candidate = faster_precision(device)
    return candidate if candidate is not None and agrees(meta, candidate) else "fp32"
