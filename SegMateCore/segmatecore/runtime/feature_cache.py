"""Encoder outputs of the first pass, kept for the second so that no slice is encoded twice.

Inference runs the network twice: a label-free first pass with FiLM off on some slices (the
z estimate, :mod:`segmatecore.inference.zpass`), then the main pass on every slice with FiLM on.
FiLM modulates the ASPP output, so everything before it (SliceFusion, the backbone, the skip
alignment and ASPP, most of the network's time) is the same in both passes. :class:`CachedEncoder`
wraps a :class:`~segmatecore.runtime.network.Network`: the first pass stores each slice's
encoding, the main pass takes those slices from the store and encodes only the others. Results are
the same as encoding again; the cost is memory, held until the main pass reaches the slice and
capped by ``max_bytes``: slices that do not fit are simply encoded again.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from segmatecore.choices import FEATURE_CACHE_MB

DEFAULT_MAX_MB = FEATURE_CACHE_MB


class FeatureCache:
    """Per-slice encodings (anything with ``select``, ``nbytes``, ``to`` and ``cat``, such as
    :class:`~segmatecore.models.Encoded`)."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_MB * 2**20):
        self.max_bytes = int(max_bytes)
        self.entries: dict[int, Any] = {}
        self.bytes = 0
        self.peak_bytes = 0
        self.stored = 0
        self.reused = 0
        self.full = False

    def put(self, t: Sequence[int], encoded: Any) -> None:
        """Keep slice ``t[i]``'s encoding (row i of ``encoded``) while it fits under the cap."""
        size = encoded.nbytes // max(len(t), 1)  # every slice's encodings are the same size
        for i, index in enumerate(t):
            index = int(index)
            if index in self.entries:
                continue
            if self.bytes + size > self.max_bytes:
                self.full = True
                return
            self.entries[index] = encoded.select(i)
            self.bytes += size
            self.stored += 1
            self.peak_bytes = max(self.peak_bytes, self.bytes)

    def get(self, index: int) -> Any | None:
        return self.entries.get(int(index))

    def release(self, t: Iterable[int], used: bool = True) -> None:
        """Forget slices the main pass has decoded (or will never run)."""
        for index in t:
            item = self.entries.pop(int(index), None)
            if item is not None:
                self.bytes -= item.nbytes  # the copies' own size
                self.reused += int(used)

    def keep_only(self, t: Iterable[int]) -> None:
        wanted = {int(v) for v in t}
        self.release([i for i in self.entries if i not in wanted], used=False)

    def uncached(self, t: Iterable[int]) -> int:
        return sum(self.get(i) is None for i in t)

    def summary(self) -> dict[str, int | float | bool]:
        """For the report: how many slices were stored and reused, and the most memory held."""
        return {"slices_stored": self.stored, "slices_reused": self.reused,
                "peak_mb": round(self.peak_bytes / 2**20, 1), "cap_reached": self.full}


class CachedEncoder:
    """``encode`` of a network (or of a wrapper such as test-time augmentation) through a cache.

    ``cache`` None encodes every slice every time.
    """

    def __init__(self, encode: Callable[[torch.Tensor], Any], cache: FeatureCache | None, device: torch.device):
        self.encode_batch = encode
        self.cache = cache
        self.device = device

    def encode(self, t: np.ndarray, inputs: Callable[[np.ndarray], torch.Tensor], remember: bool) -> Any:
        """Encodings of slices ``t`` in order; ``inputs(t)`` makes the inputs of those not kept.

        ``remember``: keep the new encodings for a later call (the first pass)."""
        if self.cache is None:
            return self.encode_batch(inputs(t))
        cached = [self.cache.get(i) for i in t]
        missing = np.asarray([i for i, c in zip(t, cached) if c is None], dtype=np.int64)
        fresh = self.encode_batch(inputs(missing)) if missing.size else None
        if remember and fresh is not None:
            self.cache.put(missing, fresh)
        return fresh if fresh is not None and missing.size == len(t) else self._assemble(cached, fresh)

    def done_with(self, t: np.ndarray) -> None:
        """The main pass has decoded slices ``t``: release their encodings."""
        if self.cache is not None:
            self.cache.release(t)

    def _assemble(self, cached: list[Any], fresh: Any) -> Any:
        """Encodings in slice order, from the cache where kept and from ``fresh`` otherwise."""
        parts, row = [], 0
        for item in cached:
            if item is None:
                parts.append(fresh.rows(row, row + 1))
                row += 1
            else:
                parts.append(item.to(self.device))
        return type(parts[0]).cat(parts)
