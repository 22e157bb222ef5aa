"""The documented deterministic fill of shared/reference (README there), for tests only."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch


def reference_state_dict(folder: Path, backbone: str) -> dict[str, torch.Tensor]:
    """Research-layout state dict for ``backbone`` filled by the README's formula (``folder``: shared/reference)."""
    shapes = json.loads((folder / f"research_state_dict_{backbone}.json").read_text())
    state: dict[str, torch.Tensor] = {}
    i = 0
    for key in sorted(shapes):
        shape = shapes[key]
        if key.endswith("num_batches_tracked"):
            state[key] = torch.zeros((), dtype=torch.long)
            continue
        n = int(np.prod(shape)) if shape else 1
        j = np.arange(n, dtype=np.float64)
        base = np.sin(0.37 * (j + 1) + 1.3 * (i + 1))
        if key.endswith("running_var"):
            vals = 1 + 0.5 * np.abs(base)
        elif key.endswith(".gamma"):
            vals = 0.1 * base
        elif len(shape) >= 2:
            vals = 1.5 * base / math.sqrt(n / shape[0])
        elif key.endswith(".weight"):
            vals = 1 + 0.1 * base
        else:
            vals = 0.05 * base
        state[key] = torch.from_numpy(vals.reshape(shape)).to(torch.float32)
        i += 1
    return state


def reference_outputs(folder: Path, backbone: str) -> dict[str, np.ndarray]:
    """The research code's recorded outputs for ``backbone`` on the reference input."""
    with np.load(folder / f"research_outputs_{backbone}.npz") as z:
        return {k: z[k] for k in z.files}
