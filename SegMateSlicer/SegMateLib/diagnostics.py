"""The Diagnostics text of the panel: versions, device and memory, for bug reports.

Every line is read from the running program (nothing is assumed), and a part that cannot be read
says so instead of failing, so the text can be produced even when PyTorch is broken.
"""
from __future__ import annotations

import os
import platform
import sys


def _slicerVersion() -> str:
    import slicer

    app = getattr(slicer, "app", None)
    if app is None:
        return "not running inside the Slicer application (slicer-core MRML only)"
    return f"{app.applicationVersion} (revision {app.revision})"


def _memoryText() -> str:
    try:
        pageSize, pages = os.sysconf("SC_PAGE_SIZE"), os.sysconf("SC_PHYS_PAGES")
        return f"{pageSize * pages / 2**30:.1f} GiB RAM"
    except (AttributeError, ValueError, OSError):
        pass
    try:
        import psutil

        return f"{psutil.virtual_memory().total / 2**30:.1f} GiB RAM"
    except ImportError:
        return "RAM size unknown"


def _torchLines() -> list[str]:
    try:
        import torch
    except Exception as exc:  # noqa: BLE001 - a broken install must still produce a report
        return [f"PyTorch: not importable ({type(exc).__name__}: {exc})"]
    lines = [f"PyTorch: {torch.__version__} (CUDA build {torch.version.cuda or 'none'})",
             f"CPU threads used by PyTorch: {torch.get_num_threads()}"]
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            lines.append(f"GPU {index}: {props.name}, {props.total_memory / 2**30:.1f} GiB, "
                         f"compute capability {props.major}.{props.minor}")
        lines.append("Device for 'Auto': cuda")
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        lines.append("Device for 'Auto': mps (Apple GPU)")
    else:
        lines.append("CUDA: not available; device for 'Auto': cpu")
    return lines


def _segmateLines() -> list[str]:
    try:
        import segmatecore
    except Exception as exc:  # noqa: BLE001
        return [f"SegMateCore: not importable ({type(exc).__name__}: {exc})"]
    return [f"SegMateCore: {segmatecore.__version__} ({os.path.dirname(segmatecore.__file__)})"]


def diagnosticsText() -> str:
    """Slicer, Python, PyTorch and CUDA versions, the devices and the memory, one fact per line."""
    lines = [f"Slicer: {_slicerVersion()}",
             f"Python: {platform.python_version()} ({sys.executable})",
             f"Operating system: {platform.platform()}",
             f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} logical cores, {_memoryText()}"]
    lines += _torchLines()
    lines += _segmateLines()
    return "\n".join(lines)
