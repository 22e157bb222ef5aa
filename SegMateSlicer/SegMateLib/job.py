"""One segmentation run off the GUI thread: inference on a worker thread, MRML only in ``finish()``.

The input volume is copied into a SimpleITK image when the job is made (on the main thread), so
the worker never touches the scene. ``segmatecore.segment`` checks the cancel event between
batches; a cancelled or failed run raises from ``finish()`` before anything is written, so the
scene is exactly as it was. The panel polls ``progress()`` with a timer; scripts call
``runInThisThread()`` instead of ``start()``.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

STAGE_TITLES = {
    "starting": "Starting",
    "z_pass": "Finding the organs' extent",
    "network": "Segmenting",
    "postprocess": "Post-processing",
    "done": "Done",
}


@dataclass(frozen=True)
class JobProgress:
    """The latest progress report of a job: stage, slices done of total, seconds since start."""

    stage: str
    done: int
    total: int
    elapsed: float

    @property
    def title(self) -> str:
        return STAGE_TITLES.get(self.stage, self.stage)

    def text(self) -> str:
        """For the progress bar: "Segmenting: slice 12 of 40"."""
        if self.stage in ("z_pass", "network") and self.total:
            return f"{self.title}: slice {self.done} of {self.total}"
        return self.title


def elapsedText(seconds: float) -> str:
    minutes, seconds = divmod(int(round(seconds)), 60)
    return f"{minutes}:{seconds:02d}"


class SegmentationJob:
    """Runs ``compute(progress, cancel) -> result`` once; ``finish()`` hands the result to ``write``.

    ``compute`` runs on the worker thread and must not touch MRML; ``write`` runs in the thread
    that calls ``finish()`` (the main thread) and returns what the job's caller gets.
    """

    def __init__(self, compute: Callable[[Callable, threading.Event], Any], write: Callable[[Any], Any],
                 progress: Optional[Callable[[str, int, int], None]] = None,
                 cancel: Optional[threading.Event] = None):
        self._compute = compute
        self._write = write
        self._userProgress = progress
        self.cancelEvent = cancel if cancel is not None else threading.Event()
        self._lock = threading.Lock()
        self._latest = ("starting", 0, 0)
        self._thread: Optional[threading.Thread] = None
        self._startTime: Optional[float] = None
        self._endTime: Optional[float] = None
        self._finished = threading.Event()
        self._finishCalled = False
        self.result: Any = None
        self.error: Optional[BaseException] = None

    # -- running ---------------------------------------------------------------------------------
    def _report(self, stage: str, done: int, total: int) -> None:
        with self._lock:
            self._latest = (stage, int(done), int(total))
        if self._userProgress is not None:
            self._userProgress(stage, done, total)

    def _run(self) -> None:
        try:
            self.result = self._compute(self._report, self.cancelEvent)
            self._report("done", 1, 1)
        except BaseException as exc:  # noqa: BLE001 - handed to finish(), which re-raises it on the caller's thread
            self.error = exc
        finally:
            self._endTime = time.monotonic()
            self._finished.set()

    def start(self) -> None:
        """Start the computation on a daemon worker thread."""
        if self._startTime is not None:
            raise RuntimeError("This segmentation job was already started.")
        self._startTime = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="SegMate segmentation", daemon=True)
        self._thread.start()

    def runInThisThread(self) -> None:
        """Compute synchronously (scripts, batch, tests)."""
        if self._startTime is not None:
            raise RuntimeError("This segmentation job was already started.")
        self._startTime = time.monotonic()
        self._run()

    def cancel(self) -> None:
        """Ask the computation to stop at the next batch; ``finish()`` will then raise SegmentationCancelled."""
        self.cancelEvent.set()

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until the computation ended (True) or the timeout passed (False)."""
        return self._finished.wait(timeout)

    # -- state -----------------------------------------------------------------------------------
    @property
    def started(self) -> bool:
        return self._startTime is not None

    @property
    def done(self) -> bool:
        return self._finished.is_set()

    @property
    def running(self) -> bool:
        return self.started and not self.done

    @property
    def cancelRequested(self) -> bool:
        return self.cancelEvent.is_set()

    def elapsed(self) -> float:
        if self._startTime is None:
            return 0.0
        return (self._endTime if self._endTime is not None else time.monotonic()) - self._startTime

    def progress(self) -> JobProgress:
        with self._lock:
            stage, done, total = self._latest
        return JobProgress(stage, done, total, self.elapsed())

    # -- result ----------------------------------------------------------------------------------
    def finish(self) -> Any:
        """On the main thread once ``done``: write the result and return it, or raise the run's error."""
        if not self.done:
            raise RuntimeError("The segmentation is still running; call finish() once it is done.")
        if self._finishCalled:
            raise RuntimeError("finish() was already called for this segmentation job.")
        self._finishCalled = True
        if self.error is not None:
            raise self.error
        return self._write(self.result)
