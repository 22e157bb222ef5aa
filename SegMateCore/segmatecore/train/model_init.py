"""What a new model starts from: its organs, the organs that define z_norm's extent, and the weights
of a model it is fine-tuned from."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from segmatecore.data.organs import known_keys
from segmatecore.models import SegMateNet
from segmatecore.train.dataset import PreparedCase


def trained_organs(cases: list[PreparedCase], organs: list[str]) -> list[str]:
    """The model's organs annotated with at least one voxel in the training cases: what it has learnt."""
    return [k for k in organs if any(case.record.get("voxels", {}).get(k, 0) > 0 for case in cases)]


def data_organs(indexes: list[dict[str, Any]]) -> list[str]:
    """The organs the prepared folders hold, in the organ table's order: a new model's default organs."""
    held = {k for index in indexes for k in index["organs"]}
    return [k for k in known_keys() if k in held]


#: An organ defines the z_norm extent when at least this share of the training cases annotates it.
EXTENT_COVERAGE = 0.9


def choose_extent_organs(cases: list[PreparedCase], organs: list[str]) -> list[str]:
    """The organs whose first and last slices define z_norm's extent: those annotated in at least
    ``EXTENT_COVERAGE`` of the training cases (all of them when every case annotates every organ,
    as in TotalSegmentator). Rarely contoured organs would make the extent depend on whether a
    clinician drew them; cases that lack an extent organ train with FiLM off."""
    share = {k: float(np.mean([k in c.record["annotated"] for c in cases])) for k in organs}
    chosen = [k for k in organs if share[k] >= EXTENT_COVERAGE]
    return chosen or [max(organs, key=lambda k: share[k])]


def warm_start(model: SegMateNet, organs: list[str], source: SegMateNet, source_organs: list[str]) -> list[str]:
    """Copy ``source``'s weights into ``model``; the output heads' rows are copied by organ key, so a
    model with another organ set keeps what the source learnt of their shared organs. Returns the
    organs that start from scratch."""
    target = model.state_dict()
    shared = [k for k in organs if k in source_organs]
    rows_to = torch.tensor([organs.index(k) for k in shared], dtype=torch.long)
    rows_from = torch.tensor([source_organs.index(k) for k in shared], dtype=torch.long)
    problems = []
    for name, value in source.state_dict().items():
        if name not in target:
            problems.append(f"unexpected {name}")
        elif _is_head(name) and value.shape[1:] == target[name].shape[1:]:
            target[name][rows_to] = value[rows_from].to(target[name].dtype)
        elif value.shape == target[name].shape and not _is_head(name):
            target[name].copy_(value)
        else:
            problems.append(f"{name} has shape {tuple(value.shape)}, expected {tuple(target[name].shape)}")
    missing = [k for k in target if k not in source.state_dict() and not k.startswith("deep_heads.")]
    if problems or missing:
        raise ValueError(f"the initial model does not fit: {'; '.join((problems + missing)[:3])}.")
    model.load_state_dict(target)
    return [k for k in organs if k not in source_organs]


def _is_head(name: str) -> bool:
    """Tensors with one row per organ."""
    return name.startswith(("seg_head.", "boundary_head.", "presence_head.", "deep_heads."))
