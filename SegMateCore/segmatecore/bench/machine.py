"""The machine a run measured: its CPU, memory and versions, and its own matrix-multiply peak, against
which every row whose network seconds cover the whole volume gets its compute floor."""
from __future__ import annotations

import os
import platform
from typing import Any, Callable

import torch

from segmatecore.bench.compute_peak import compute_floor_s, machine_peaks
from segmatecore.runtime.optimize import cpu_description


def machine_description() -> dict[str, Any]:
    """The CPU, memory, versions and load the rows of a run are read against."""
    import psutil

    return {"cpu": cpu_description(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "openvino": _openvino_version(), "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "load_average_1_5_15": [round(v, 2) for v in os.getloadavg()]}


def _openvino_version() -> str | None:
    from segmatecore.runtime import openvino as openvino_runtime

    if not openvino_runtime.available():
        return None
    import openvino

    return openvino.__version__


def add_compute_floors(rows: list[dict[str, Any]], depth: int, device: str, quick: bool,
                       peaks: Callable[[int], dict[str, float]] | None = None) -> dict[str, dict[str, float]]:
    """Measure this machine's matrix-multiply peak at each thread count the rows ran with, and give
    every row whose network seconds cover the whole volume (the network-alone rows and the peers) its
    ``compute_floor_s`` (its GMACs at that peak) and ``pct_of_peak`` (floor / network seconds).

    Returns ``{threads: {dtype: GMAC/s}}`` for the results' machine block. ``peaks(threads)`` stands
    in for the measurement in tests. On a GPU nothing is measured: a network of a few milliseconds
    per slice there is bound by kernel launches and memory, not by arithmetic (and its fp32
    convolutions run in TF32), so a matrix-multiply floor would say nothing about it.
    """
    if torch.device(device).type != "cpu":
        return {}
    measure = peaks or (lambda threads: machine_peaks(threads, quick=quick))
    measured: dict[str, dict[str, float]] = {}
    for row in rows:
        if not (row["scope"] == "network" or row.get("kind") == "peer") or not row.get("s_network"):
            continue
        threads = int(row.get("threads") or torch.get_num_threads())
        if str(threads) not in measured:
            measured[str(threads)] = measure(threads)
        peak = measured[str(threads)].get(row["dtype"])
        if not peak:
            continue
        row["compute_floor_s"] = compute_floor_s(row["gmacs_per_slice"], depth, peak)
        row["pct_of_peak"] = round(100.0 * row["compute_floor_s"] / row["s_network"], 1)
    return measured
