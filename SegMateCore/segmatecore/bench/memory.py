"""What a row cost the machine besides time: peak memory (sampled and the kernel's high-water mark)
and the share of the CPUs the hypervisor gave to others while it ran (Linux ``/proc/stat``)."""
from __future__ import annotations

import os
import resource
import sys
import threading
from pathlib import Path


class PeakMemory:
    """Peak resident set size of a process (``pid``; None: this one), sampled by a thread (psutil)
    every ``interval`` seconds. Sampling another process lets a row measure code it cannot import."""

    def __init__(self, interval: float = 0.01, pid: int | None = None):
        import psutil

        self._process = psutil.Process(pid)
        self._gone = psutil.NoSuchProcess
        self.interval = interval
        self.peak = self.peak_private = 0
        self._read()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _read(self) -> None:
        try:
            info = self._process.memory_info()
        except self._gone:  # a sampled process that has exited keeps the peak it reached
            return
        self.peak = max(self.peak, info.rss)
        # rss minus file-backed pages (shared libraries): the memory the process itself allocated
        self.peak_private = max(self.peak_private, info.rss - getattr(info, "shared", 0))

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._read()
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._read()

    @property
    def peak_mb(self) -> float:
        return self.peak / 2**20

    @property
    def peak_private_mb(self) -> float:
        return self.peak_private / 2**20


def kernel_peak_mb() -> float:
    """The kernel's high-water mark of this process's resident set.

    On Linux, VmHWM of /proc/self/status: ru_maxrss is no use in a worker, because Linux carries
    the parent's high-water mark over fork and exec (every row would report the orchestrating
    process's peak, whatever the row used). Elsewhere ru_maxrss (bytes on macOS).
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def machine_cpu_seconds() -> tuple[float, float] | None:
    """(all, stolen) CPU seconds of the whole machine so far, from Linux's /proc/stat; None elsewhere.

    Stolen time is what the hypervisor gave this virtual machine's CPUs to other guests: a row can
    run much slower with no load inside the VM, so each row records the share stolen while it ran.
    """
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu" or len(fields) < 9:
        return None
    ticks = [int(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    return sum(ticks) / hz, ticks[7] / hz


def steal_percent(before: tuple[float, float] | None, after: tuple[float, float] | None) -> float | None:
    """Share of all CPU time between two :func:`machine_cpu_seconds` readings that was stolen."""
    if before is None or after is None or after[0] <= before[0]:
        return None
    return round(100.0 * (after[1] - before[1]) / (after[0] - before[0]), 1)
