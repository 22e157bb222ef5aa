"""Encoder outputs of the first pass, kept for the second so that no slice is encoded twice.

segment() runs the network twice: a label-free first pass with FiLM off on every few slices (the
z_norm estimate, :mod:`segmatecore.inference.zpass`), then the main pass on every slice with FiLM on. FiLM
modulates the ASPP output, so everything before it (SliceFusion, the backbone, the skip alignment
and ASPP: about 85 % of FastViT-T12's time at 512 x 512) is the same in both passes. The first
pass stores each slice's :class:`~segmatecore.models.Encoded`; the main pass decodes those slices
from the store and encodes only the others. Results are the same as encoding again; the cost is
memory, held until the main pass reaches the slice, and capped by ``max_bytes``: slices that do not
fit are simply encoded again.
"""
from __future__ import annotations

from typing import Iterable, Sequence

from segmatecore.choices import FEATURE_CACHE_MB
from segmatecore.models import Encoded

DEFAULT_MAX_MB = FEATURE_CACHE_MB


class FeatureCache:
    """Per-slice encodings, one per view (a second view is the mirrored slice of test-time augmentation)."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_MB * 2**20):
        self.max_bytes = int(max_bytes)
        self.entries: dict[int, tuple[Encoded, ...]] = {}
        self.bytes = 0
        self.peak_bytes = 0
        self.stored = 0
        self.reused = 0
        self.full = False

    def put(self, t: Sequence[int], views: Sequence[Encoded]) -> None:
        """Keep slice ``t[i]``'s encodings (row i of each view) while they fit under the cap."""
        size = sum(view.nbytes for view in views) // max(len(t), 1)  # every slice's encodings are the same size
        for i, index in enumerate(t):
            index = int(index)
            if index in self.entries:
                continue
            if self.bytes + size > self.max_bytes:
                self.full = True
                return
            self.entries[index] = tuple(view.select(i) for view in views)
            self.bytes += size
            self.stored += 1
            self.peak_bytes = max(self.peak_bytes, self.bytes)

    def get(self, index: int) -> tuple[Encoded, ...] | None:
        return self.entries.get(int(index))

    def release(self, t: Iterable[int], used: bool = True) -> None:
        """Forget slices the main pass has decoded (or will never run)."""
        for index in t:
            item = self.entries.pop(int(index), None)
            if item is not None:
                self.bytes -= sum(view.nbytes for view in item)  # the copies' own size
                self.reused += int(used)

    def keep_only(self, t: Iterable[int]) -> None:
        wanted = {int(v) for v in t}
        self.release([i for i in self.entries if i not in wanted], used=False)

    def summary(self) -> dict[str, int | bool]:
        """For the report: how many slices were stored and reused, and the most memory held."""
        return {"slices_stored": self.stored, "slices_reused": self.reused,
                "peak_mb": round(self.peak_bytes / 2**20, 1), "cap_reached": self.full}
