"""The device policy of a run: batches, progress, cancelling and running out of memory.

On an out-of-memory error the batch is halved and the same slices run again; at batch 1 on a GPU
the network moves to the CPU and carries on, each time with a warning. ``cancel`` is checked
between batches, and freed memory goes back to the operating system every few batches.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from segmatecore.inference.batches import SliceBatches
from segmatecore.inference.result import SegmentationCancelled
from segmatecore.runtime.devices import is_out_of_memory, release_freed_memory
from segmatecore.runtime.network import Network

log = logging.getLogger(__name__)

# Hand freed heap back to the OS every this many batches: glibc otherwise keeps the per-batch buffers.
TRIM_EVERY_BATCHES = 8
ProgressCallback = Callable[[str, int, int], None]


@dataclass
class BatchRunner:
    """Runs a per-batch function over slice indices for one network and one volume."""

    network: Network
    batch_size: int
    cancel: Any = None
    progress: ProgressCallback | None = None
    warnings: list[str] = field(default_factory=list)
    on_device_change: Callable[[torch.device], None] | None = None

    def __post_init__(self) -> None:
        self.network.batch_size = self.batch_size

    def check_cancel(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise SegmentationCancelled("Segmentation cancelled; no output was written.")

    def run(self, stage: str, slices: np.ndarray, step: Callable[[np.ndarray], None], scale: int = 1) -> None:
        """Call ``step(t)`` for batches ``t`` of ``scale`` x the batch size over ``slices``."""
        batches = SliceBatches(slices, lambda: self.batch_size * scale)
        if self.progress:
            self.progress(stage, 0, len(batches))
        for count, t in enumerate(batches, start=1):
            self.check_cancel()
            try:
                step(t)
            except Exception as exc:  # noqa: BLE001 - only out-of-memory errors are handled here
                if not is_out_of_memory(exc):
                    raise
                self._recover_from_oom(exc)
                batches.retry()
                continue
            if count % TRIM_EVERY_BATCHES == 0:
                release_freed_memory()
            if self.progress:
                self.progress(stage, batches.done, len(batches))

    def _recover_from_oom(self, exc: BaseException) -> None:
        device = self.network.device
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if self.batch_size > 1:
            self.batch_size = max(1, self.batch_size // 2)
            self.network.batch_size = self.batch_size
            self.warnings.append(f"out of memory on {device}; batch size lowered to {self.batch_size}.")
        elif device.type != "cpu":
            self.warnings.append(f"out of memory on {device} even with batch size 1; continuing on the CPU "
                                 "(slower).")
            self.network.move_to_cpu()
            if self.on_device_change is not None:
                self.on_device_change(self.network.device)
        else:
            raise MemoryError(f"Out of memory on the CPU even with batch size 1 ({exc}); close other programs "
                              "or use a smaller model input size.") from exc
        log.warning(self.warnings[-1])
