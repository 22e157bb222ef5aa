"""The presence gate: an organ's mask is kept only on the slices where the first pass found it.

The label-free first pass (:class:`~segmatecore.inference.zstrategy.AutoZ`) gives each organ its
own range of slices. Outside it the organ's probability is set to 0; an organ found on no slice is
left empty, with a warning, rather than drawn where it is not (a liver in a head-and-neck CT).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from segmatecore.data.organs import OrganSet, organ
from segmatecore.inference.zpass import ZExtent
from segmatecore.inference.zstrategy import trained_organs

NOT_FOUND = ("the first pass found no {name} in this CT, so it is left empty (presence gate; to keep the "
             "network's mask use --no-presence-gate, or untick 'Drop organs the first pass does not find' in "
             "Slicer)")


class PresenceGate:
    """Per output column (organ being segmented): the (first, last) slices it may occupy, or None."""

    def __init__(self, ranges: dict[int, tuple[int, int] | None], columns: int):
        self.ranges = ranges
        self.columns = columns

    @classmethod
    def from_extent(cls, extent: ZExtent, keys: Sequence[str], meta: dict) -> "PresenceGate":
        """The gate for organs ``keys`` from the first pass's per-organ ranges (over trained organs)."""
        channels = list(OrganSet.of(meta))
        trained = [channels.index(k) for k in trained_organs(meta)]
        by_channel = dict(zip(trained, extent.organ_ranges))
        ranges = {i: by_channel[channels.index(k)] for i, k in enumerate(keys) if channels.index(k) in by_channel}
        return cls(ranges, len(keys))

    def warnings(self, keys: Sequence[str]) -> list[str]:
        return [NOT_FOUND.format(name=organ(keys[i]).name) for i, r in self.ranges.items() if r is None]

    def mask(self, t: np.ndarray) -> torch.Tensor | None:
        """[len(t), columns] float: 0 where the first pass put the column's organ outside slice t."""
        if not self.ranges:
            return None
        keep = np.ones((len(t), self.columns), dtype=np.float32)
        for column, allowed in self.ranges.items():
            keep[:, column] = 0.0 if allowed is None else ((t >= allowed[0]) & (t <= allowed[1]))
        return torch.from_numpy(keep)
