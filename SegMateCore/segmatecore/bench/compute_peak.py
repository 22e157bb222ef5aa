"""The machine's own matrix-multiply throughput: the ceiling a network's convolutions can reach.

A network that needs G GMACs per slice cannot run N slices in less than G * N / peak seconds on a
machine whose best multiply-accumulate rate is ``peak``, whatever the runtime. ``segmate bench``
measures that rate in the same run as its rows (a large square ``torch.mm``: the best case of the
GEMM kernels PyTorch itself uses, not the CPU's theoretical FMA rate), so that each network row can
be read as a share of what this CPU can do, and a target as feasible or not (docs/benchmark.md).
"""
from __future__ import annotations

import time
from typing import Callable

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
SIZE = 2048      # 8.6 GMACs per multiply: large enough for the GEMM kernels' best rate on a CPU
QUICK_SIZE = 256


def matmul_gmacs_per_s(dtype: torch.dtype = torch.float32, size: int = SIZE, rounds: int = 5,
                       threads: int | None = None, clock: Callable[[], float] = time.perf_counter) -> float:
    """Best multiply-accumulates per second (in G) of a ``size`` x ``size`` matrix product on the CPU
    over ``rounds``.

    The best round, not the mean: the ceiling is what the machine can do, and a busy moment only
    ever slows a round down. ``threads`` sets PyTorch's thread count for the measurement and is
    restored after it.
    """
    if size < 1 or rounds < 1:
        raise ValueError(f"size and rounds must be at least 1, got {size} and {rounds}.")
    saved = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        generator = torch.Generator().manual_seed(0)
        a = torch.randn(size, size, generator=generator).to(dtype)
        b = torch.randn(size, size, generator=generator).to(dtype)
        out = torch.empty(size, size, dtype=dtype)
        with torch.inference_mode():
            torch.mm(a, b, out=out)  # warm-up: kernel selection, first-touch of the output
            best = float("inf")
            for _ in range(rounds):
                start = clock()
                torch.mm(a, b, out=out)
                best = min(best, clock() - start)
    finally:
        torch.set_num_threads(saved)
    return size ** 3 / max(best, 1e-9) / 1e9


def machine_peaks(threads: int | None = None, quick: bool = False) -> dict[str, float]:
    """``{"float32": GMAC/s, "bfloat16": GMAC/s}`` of this machine's CPU at ``threads``."""
    size = QUICK_SIZE if quick else SIZE
    return {name: round(matmul_gmacs_per_s(dtype, size, threads=threads), 1) for name, dtype in DTYPES.items()}


def peaks_text(peaks: dict[str, dict[str, float]]) -> str:
    """``{threads: {dtype: GMAC/s}}`` as one line: "2 threads: float32 165 GMAC/s, bfloat16 83 GMAC/s; ..."."""
    return "; ".join(f"{threads} thread{'s' if threads != '1' else ''}: "
                     + ", ".join(f"{dtype} {rate:.0f} GMAC/s" for dtype, rate in rates.items())
                     for threads, rates in peaks.items())


def compute_floor_s(gmacs_per_slice: float, slices: int, peak_gmacs_per_s: float) -> float:
    """The fewest seconds ``slices`` slices can take at the machine's peak rate."""
    if peak_gmacs_per_s <= 0:
        raise ValueError(f"A peak rate must be positive, got {peak_gmacs_per_s}.")
    return gmacs_per_slice * slices / peak_gmacs_per_s

