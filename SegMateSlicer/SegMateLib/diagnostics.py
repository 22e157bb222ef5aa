"""The Diagnostics text of the panel: versions, device and memory, for bug reports.

Every line is read from the running program (nothing is assumed), and a part that cannot be read
says so instead of failing, so the text can be produced even when PyTorch is broken. The PyTorch,
GPU and SegMateCore lines come from Slicer's Python in a separate process (``worker.py
--diagnostics``), the way the network runs: a PyTorch that fails to import, or crashes while it
loads, is reported there and never imported into Slicer itself.
"""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from typing import Optional

ENGINE_TIMEOUT_S = 120


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


def engineLines() -> list[str]:
    """PyTorch, devices and SegMateCore as this Python sees them (run in the worker's Python)."""
    return _torchLines() + _segmateLines()


def engineLinesFromWorkerPython(interpreter: Optional[str] = None, timeout: float = ENGINE_TIMEOUT_S) -> list[str]:
    """``engineLines()`` computed by the Python the worker runs with, in a separate process."""
    from .worker_client import workerInterpreter, workerScript

    command = [interpreter or workerInterpreter(), str(workerScript()), "--diagnostics"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, encoding="utf-8", errors="replace",
                              timeout=timeout, check=False, env=dict(os.environ, PYTHONIOENCODING="utf-8"))
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [f"PyTorch: could not be asked ({type(exc).__name__}: {exc})"]
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    if done.returncode != 0:
        last = next((line for line in reversed(done.stderr.splitlines()) if line.strip()), "")
        lines.append(f"Worker Python exited with code {done.returncode}: {last}")
    return lines


def diagnosticsText(interpreter: Optional[str] = None) -> str:
    """Slicer, Python, PyTorch and CUDA versions, the devices and the memory, one fact per line."""
    lines = [f"Slicer: {_slicerVersion()}",
             f"Python: {platform.python_version()} ({sys.executable})",
             f"Operating system: {platform.platform()}",
             f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} logical cores, {_memoryText()}"]
    lines += engineLinesFromWorkerPython(interpreter)
    return "\n".join(lines)
