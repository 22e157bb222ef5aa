"""Consumers of the main pass: what becomes of each batch's mask logits.

The main pass hands every batch to a consumer as ``(t, logits, keep)``: slice indices, [B, C, h, w]
mask logits on the network's grid for the organs being segmented, and the presence gate's
[B, C] keep mask (None: no gate). :class:`LabelWriter` turns them into the labelmap on the input's
grid, with the model's thresholds and smoothing along z; :class:`ProbabilitiesOnGrid` hands the
probabilities on the input's grid to a function (``segmate calibrate`` fits thresholds from them).
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from segmatecore.data.preprocess import resize_slices
from segmatecore.inference.postprocess import labels_on_grid, labels_on_grid_from_logits
from segmatecore.inference.zsmoothing import ZSmoother
from segmatecore.runtime.devices import is_out_of_memory

ProbabilitySink = Callable[[np.ndarray, torch.Tensor], None]


def gated_probabilities(logits: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """Probabilities of ``logits``, 0 where the presence gate drops an organ."""
    probabilities = torch.sigmoid(logits.float())
    return probabilities if keep is None else probabilities * keep.to(probabilities.device)[:, :, None, None]


class LabelWriter:
    """The canonical [z, x, y] uint8 labelmap of a volume, written batch by batch.

    Each organ's mask is its probability, smoothed along z by ``sigmas`` (slices; 0: none), above
    its threshold. Smoothing commutes with the in-plane resize, so it runs on the network's grid.
    """

    def __init__(self, shape: tuple[int, int, int], labels: Sequence[int], thresholds: Sequence[float],
                 sigmas: Sequence[float]):
        nx, ny, nz = shape
        self.size = (nx, ny)
        self.labels_zxy = np.zeros((nz, nx, ny), dtype=np.uint8)
        self.label_values = torch.tensor(list(labels), dtype=torch.uint8)
        self.thresholds = torch.tensor(list(thresholds), dtype=torch.float32)
        self.smoother = ZSmoother(sigmas, self._write) if any(sigmas) else None

    def _write(self, t: np.ndarray, probabilities: torch.Tensor) -> None:
        self.labels_zxy[t] = labels_on_grid(probabilities, self.size, self.label_values, self.thresholds).cpu().numpy()

    def __call__(self, t: np.ndarray, logits: torch.Tensor, keep: torch.Tensor | None) -> None:
        if self.smoother is None:  # the usual case: no probability is needed
            keep = None if keep is None else keep.to(logits.device)
            self.labels_zxy[t] = labels_on_grid_from_logits(logits, self.size, self.label_values, self.thresholds,
                                                            keep).cpu().numpy()
            return
        try:
            self.smoother(t, gated_probabilities(logits, keep))
        except Exception as exc:  # noqa: BLE001 - only out-of-memory errors are changed
            if not is_out_of_memory(exc):
                raise
            # The smoother holds slices it can no longer hand over: retrying this batch smaller
            # (the runner's answer to an out-of-memory error) would leave them empty.
            raise MemoryError(f"Out of memory while writing the slices smoothed along z ({exc}); run again with a "
                              "smaller batch size, or without z smoothing (--z-smoothing ORGAN=0).") from exc

    def finish(self) -> np.ndarray:
        """The canonical [x, y, z] labelmap, once every slice has been written."""
        if self.smoother is not None:
            self.smoother.finish()
        return self.labels_zxy.transpose(1, 2, 0)


class ProbabilitiesOnGrid:
    """Hands ``sink(t, [B, C, nx, ny] probabilities)`` on the input's canonical in-plane grid."""

    def __init__(self, sink: ProbabilitySink, size: tuple[int, int]):
        self.sink = sink
        self.size = size

    def __call__(self, t: np.ndarray, logits: torch.Tensor, keep: torch.Tensor | None) -> None:
        self.sink(t, resize_slices(gated_probabilities(logits, keep), self.size))

    def finish(self) -> None:
        return None
