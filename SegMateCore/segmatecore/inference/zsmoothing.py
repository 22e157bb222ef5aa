"""Gaussian smoothing of organ probabilities along z, streamed batch by batch.

A 2.5D network sees three slices at a time, so a thin tubular organ (spinal cord, oesophagus)
flickers from one slice to the next where the image is ambiguous. Averaging each organ's
probability over neighbouring slices before the threshold removes that flicker; how much (a
Gaussian's sigma in millimetres, 0 = off) is fitted per organ on validation cases together with
the threshold (:mod:`segmatecore.train.calibrate`) and stored in the model's metadata as
``z_smoothing_mm``.

Only a window of slices lives in memory: each batch is released as soon as the slices after it
arrive. Beyond the first and last slice of a run of consecutive slices the edge slice is
repeated, so a volume's ends are not faded out.
"""
from __future__ import annotations

import math
from collections import deque
from typing import Callable, Sequence

import numpy as np
import torch

# A guard against a sigma given in slices by mistake for millimetres on a thin-slice CT: the window
# of 6 sigma + 1 slices would then hold hundreds of slices.
MAX_SIGMA_SLICES = 64.0

SmoothedSink = Callable[[np.ndarray, torch.Tensor], None]


def gaussian_weights(sigmas: Sequence[float]) -> torch.Tensor:
    """[C, 2R + 1] normalised Gaussian kernels (sigma in slices) sharing the largest radius R;
    a sigma of 0 is the identity."""
    sigmas = [float(s) for s in sigmas]
    bad = [s for s in sigmas if not 0.0 <= s <= MAX_SIGMA_SLICES]
    if bad:
        raise ValueError(f"z smoothing sigma {bad[0]} slices is outside 0-{MAX_SIGMA_SLICES:g}.")
    radius = max([math.ceil(3.0 * s) for s in sigmas] + [0])
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    rows = []
    for s in sigmas:
        if s == 0.0:
            row = (offsets == 0).double()
        else:
            row = torch.exp(-0.5 * (offsets / s) ** 2) * (offsets.abs() <= math.ceil(3.0 * s))
        rows.append(row / row.sum())
    return torch.stack(rows).float()


def sigmas_in_slices(sigmas_mm: Sequence[float], slice_spacing_mm: float) -> list[float]:
    return [float(s) / float(slice_spacing_mm) for s in sigmas_mm]


class ZSmoother:
    """Feeds ``sink(t, probabilities)`` with each channel smoothed along z by its own Gaussian.

    Call it like a probability sink with batches ``(t, [B, C, H, W])`` in slice order, then
    :meth:`finish` once. A gap in ``t`` ends one run and starts another. The smoothed slices reach
    ``sink`` in order, in batches no larger than the largest given, up to R slices later than they
    came in. Two ring buffers, allocated once, hold what is waiting: 2R + 1 slices of the smoothed
    channels and R + 1 slices of the others, so a long volume does not churn the heap.
    """

    def __init__(self, sigmas_slices: Sequence[float], sink: SmoothedSink):
        weights = gaussian_weights(sigmas_slices)
        self.radius = (weights.shape[1] - 1) // 2
        self.smoothed = torch.tensor([c for c, s in enumerate(sigmas_slices) if float(s) > 0.0], dtype=torch.long)
        self.passed = torch.tensor([c for c, s in enumerate(sigmas_slices) if float(s) == 0.0], dtype=torch.long)
        self.kernel = weights.index_select(0, self.smoothed)[:, :, None, None]  # [Cs, 2R + 1, 1, 1]
        self.channels = len(sigmas_slices)
        self.sink = sink
        self.window: torch.Tensor | None = None  # [2R + 1, Cs, H, W] ring, edge copies included
        self.held: torch.Tensor | None = None  # [R + 1, Cp, H, W] ring: the other channels of waiting slices
        self.filled = 0  # slices in the window
        self.oldest = 0  # ring position of the window's oldest slice
        self.waiting: deque[tuple[int, int]] = deque()  # (slice index, position in held), oldest first
        self.next_held = 0
        self.last: int | None = None
        self.batch = 1  # the largest batch given: what reaches the sink at once, whatever is released

    @torch.inference_mode()  # the ring buffers are inference tensors: every update happens in this mode
    def __call__(self, t: np.ndarray, probabilities: torch.Tensor) -> None:
        if self.radius == 0:
            self.sink(np.asarray(t), probabilities)
            return
        if self.window is None:  # the buffers and indices live where the probabilities do
            device, (h, w) = probabilities.device, probabilities.shape[-2:]
            self.smoothed, self.passed, self.kernel = (x.to(device) for x in (self.smoothed, self.passed, self.kernel))
            self.window = torch.empty((2 * self.radius + 1, len(self.smoothed), h, w), device=device)
            self.held = torch.empty((self.radius + 1, len(self.passed), h, w), device=device)
        self.batch = max(self.batch, len(t))
        out: list[tuple[int, torch.Tensor]] = []
        smoothed, passed = self.smoothed, self.passed
        for i, index in enumerate(np.asarray(t).tolist()):
            if self.last is not None and index != self.last + 1:
                self._close_run(out)
            part = probabilities[i].index_select(0, smoothed)
            for _ in range(self.radius if self.last is None else 0):
                self._push(part)  # the first slice repeated before the start
            self.held[self.next_held] = probabilities[i].index_select(0, passed)
            self.waiting.append((index, self.next_held))
            self.next_held = (self.next_held + 1) % len(self.held)
            self.last = index
            self._push(part)
            self._emit_ready(out)
        self._deliver(out)

    @torch.inference_mode()
    def finish(self) -> None:
        """Release the last slices (the final edge slice repeated beyond the end)."""
        if self.radius == 0:
            return
        out: list[tuple[int, torch.Tensor]] = []
        self._close_run(out)
        self._deliver(out)

    def _push(self, part: torch.Tensor) -> None:
        size = len(self.window)
        self.window[(self.oldest + self.filled) % size] = part
        self.filled += 1

    def _close_run(self, out: list[tuple[int, torch.Tensor]]) -> None:
        if self.last is None:
            return
        size = len(self.window)
        edge = self.window[(self.oldest + self.filled - 1) % size].clone()
        while self.waiting:
            self._push(edge)
            self._emit_ready(out)
        self.filled, self.oldest, self.last = 0, 0, None

    def _emit_ready(self, out: list[tuple[int, torch.Tensor]]) -> None:
        size = len(self.window)
        if self.filled < size:
            return
        index, position = self.waiting.popleft()
        full = torch.empty((self.channels, *self.window.shape[2:]), device=self.window.device)
        acc = torch.zeros_like(self.window[0])
        for k in range(size):
            acc.addcmul_(self.window[(self.oldest + k) % size], self.kernel[:, k])
        full[self.smoothed] = acc
        full[self.passed] = self.held[position]
        out.append((index, full))
        self.oldest = (self.oldest + 1) % size
        self.filled -= 1

    def _deliver(self, out: list[tuple[int, torch.Tensor]]) -> None:
        # finish() releases R slices at once; the sink's own buffers (the resize to the CT's grid)
        # grow with what it is given, so it never gets more than a batch.
        for start in range(0, len(out), self.batch):
            chunk = out[start:start + self.batch]
            self.sink(np.asarray([i for i, _ in chunk]), torch.stack([p for _, p in chunk]))
