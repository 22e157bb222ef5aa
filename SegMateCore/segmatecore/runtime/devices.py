"""Devices, precisions and memory: what every runtime needs to know about where it runs."""
from __future__ import annotations

import ctypes

import torch

from segmatecore.choices import PRECISIONS

# Slices per network call. On the CPU a larger batch is no faster and needs more memory, so the
# CPU default stays small.
DEFAULT_BATCH = {"cuda": 16, "mps": 8, "cpu": 2}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` (CUDA, then MPS, then CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``; clear errors otherwise."""
    if isinstance(device, torch.device):
        return device
    name = str(device).strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError("Device 'mps' was requested but Apple's MPS is not available here; use --device cpu.")
        return torch.device("mps")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(f"Device {name!r} was requested but no CUDA GPU is usable by this PyTorch; "
                             "use --device cpu or install a CUDA build of PyTorch.")
        index = name.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise ValueError(f"Device {name!r} does not exist: {torch.cuda.device_count()} CUDA device(s), "
                             f"cuda:0 to cuda:{torch.cuda.device_count() - 1}.")
        return torch.device(name)
    raise ValueError(f"Unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps.")


# What a network computes in: the users' choices, and fp16, which ``auto`` picks on a CUDA GPU
# (segmatecore.runtime.precision).
COMPUTE_PRECISIONS = (*PRECISIONS, "fp16")


def check_precision(precision: str, allowed: tuple[str, ...] = PRECISIONS) -> str:
    """``precision`` itself when it is a known name; a clear error otherwise."""
    if precision not in allowed:
        raise ValueError(f"Unknown precision {precision!r}; use {', '.join(PRECISIONS)}.")
    return precision


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype of ``precision`` on ``device``: bf16 or fp16 when asked (``auto`` on CUDA
    meaning fp16), otherwise None: full fp32."""
    check_precision(precision, COMPUTE_PRECISIONS)
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16" or (precision == "auto" and device.type == "cuda"):
        return torch.float16
    return None


def default_batch_size(device: torch.device) -> int:
    return DEFAULT_BATCH.get(device.type, 4)


def is_out_of_memory(exc: BaseException) -> bool:
    """True for PyTorch's out-of-memory errors on any device."""
    return isinstance(exc, torch.OutOfMemoryError) or (isinstance(exc, RuntimeError) and "out of memory" in str(exc))


def release_freed_memory() -> None:
    """Hand freed heap back to the operating system.

    glibc keeps freed per-batch buffers in a fragmented heap, so a process that segments many
    volumes (Slicer, a cohort) would otherwise grow although nothing leaks.
    """
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, Windows, musl)
        pass
