"""Validation during training: the loss and 3D Dice over the validation cases."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from segmatecore.data.preprocess import Preprocessing
from segmatecore.models import SegMateNet
from segmatecore.train.dataset import PreparedCase, SliceDataset
from segmatecore.train.losses import SegMateLoss


@torch.no_grad()
def validate(model: SegMateNet, cases: list[PreparedCase], pre: Preprocessing, loss_fn: SegMateLoss,
             device: torch.device, batch_size: int, amp: bool, max_slices: int | None = None, *,
             organs: list[str], extent_organs: list[str] | None = None) -> dict[str, Any]:
    """Loss and 3D Dice (at the input size, ground-truth z_norm) over the validation cases.

    Dice of organ k in a case is 2|P∩G| / (|P| + |G|) summed over its slices, for annotated organs
    present in the case; the score is the mean over (case, organ) pairs.
    """
    model.eval()
    keys = list(organs)
    losses, per_pair = [], {k: [] for k in keys}
    for case in cases:
        ds = SliceDataset([case], pre, keys, augment="none", extent_organs=extent_organs)
        slices = np.arange(case.depth)
        if max_slices and case.depth > max_slices:
            first, last = ds.extents[0] or case.record["extent"] or (0, case.depth - 1)
            centre = (first + last) // 2
            start = int(np.clip(centre - max_slices // 2, 0, case.depth - max_slices))
            slices = slices[start:start + max_slices]
        inter = torch.zeros(len(keys)); psum = torch.zeros(len(keys)); gsum = torch.zeros(len(keys))
        for i in range(0, len(slices), batch_size):
            items = [ds[int(t)] for t in slices[i:i + batch_size]]
            batch = {k: torch.stack([it[k] for it in items]).to(device) for k in items[0]}
            with torch.autocast(device.type, dtype=torch.float16, enabled=amp and device.type == "cuda"):
                out = model(batch["image"], batch["z_norm"])
            loss, _ = loss_fn(out, batch["target"], batch["annotated"], batch["presence"])
            losses.append((float(loss), len(items)))
            pred = (out.seg.float() > 0).float()
            inter += (pred * batch["target"]).sum(dim=(0, 2, 3)).cpu()
            psum += pred.sum(dim=(0, 2, 3)).cpu()
            gsum += batch["target"].sum(dim=(0, 2, 3)).cpu()
        for c, k in enumerate(keys):
            if k in case.record["annotated"] and gsum[c] > 0:
                per_pair[k].append(float(2 * inter[c] / (psum[c] + gsum[c])))
    model.train()
    total = sum(n for _, n in losses)
    dice = {k: float(np.mean(v)) for k, v in per_pair.items() if v}
    pairs = [d for v in per_pair.values() for d in v]
    return {"loss": sum(l * n for l, n in losses) / max(total, 1), "dice": float(np.mean(pairs)) if pairs else 0.0,
            "dice_per_organ": dice}
