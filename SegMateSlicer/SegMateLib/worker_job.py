"""One segmentation run in the worker process, as the panel drives it from its timer on the main thread.

The volume is copied into a temporary NRRD file when the job starts (the scene may change while
the worker computes); the worker writes the labelmap beside it. When the worker's answer arrives,
``poll()`` reads the labelmap back and removes the temporary folder, whatever the outcome (result,
error, cancel, crash), so nothing is left on disk. ``finish()`` then writes the segments into the
scene, on the main thread, and only for a complete result; otherwise it raises and the scene is
exactly as it was.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

from .progress import JobProgress
from .volume_files import readVolume, writeVolume
from .worker_client import WorkerCancelled, WorkerClient, WorkerTask

TEMP_PREFIX = "segmate-run-"


def resultFromWorker(answer: dict[str, Any], labelmap) -> Any:
    """A ``segmatecore.SegmentationResult`` from the worker's result message and the labelmap read back."""
    from segmatecore.inference.result import SegmentationResult

    return SegmentationResult(labelmap=labelmap, organs=list(answer["organs"]),
                              labels={k: int(v) for k, v in answer["labels"].items()}, volumes_ml=dict(answer["volumes_ml"]),
                              timings=dict(answer["timings"]), z_range=dict(answer["z_range"]),
                              warnings=list(answer["warnings"]), model_info=dict(answer["model_info"]),
                              source=answer.get("source", "image"))


class WorkerSegmentationJob:
    """Segments one volume in the worker; ``poll()`` from a timer, then ``finish()`` once ``done``."""

    def __init__(self, client: WorkerClient, image, request: dict[str, Any], write: Callable[[Any], Any],
                 tempRoot: Optional[str] = None):
        self._write = write
        self._finishCalled = False
        self.result: Any = None
        self.error: Optional[BaseException] = None
        self.modelLoad: dict[str, Any] = {}  # the worker's "modelLoad": cached or not, seconds spent loading
        self.workerTimings: dict[str, float] = {}  # seconds: importing (first request), the whole request
        self.folder = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=tempRoot))
        self._collected = False
        try:
            inputPath, outputPath = self.folder / "input.nrrd", self.folder / "labels.nrrd"
            geometry = writeVolume(image, inputPath)
            self.task: WorkerTask = client.submit("segment", dict(request, input=str(inputPath), geometry=geometry,
                                                                  output=str(outputPath)))
        except BaseException:
            shutil.rmtree(self.folder, ignore_errors=True)
            raise

    # -- state -----------------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self._collected

    @property
    def running(self) -> bool:
        return not self._collected

    @property
    def cancelRequested(self) -> bool:
        return self.task.cancelRequested

    @property
    def warnings(self) -> list[str]:
        """Warnings the worker reported while running (the result's own list comes with ``finish()``)."""
        return list(self.task.warnings)

    @property
    def workerPid(self) -> Optional[int]:
        return self.task.client.pid

    def elapsed(self) -> float:
        return self.task.elapsed()

    def progress(self) -> JobProgress:
        return self.task.progress()

    # -- driving ---------------------------------------------------------------------------------
    def poll(self) -> JobProgress:
        """Collect the worker's events (main thread); once it answered, read the labelmap and clean up."""
        self.task.poll()
        self._collect()
        return self.progress()

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Poll until done (scripts and tests); False if ``timeout`` seconds passed first."""
        finished = self.task.wait(timeout)
        self._collect()
        return finished

    def cancel(self) -> None:
        """End the worker's process tree at once; the scene is not touched and the temporary files are removed."""
        self.task.cancel()
        self._collect()

    def _collect(self) -> None:
        if self._collected or not self.task.done:
            return
        try:
            if self.task.error is not None:
                self.error = self.task.error
            else:
                answer = self.task.result
                labelmap = readVolume(Path(answer["labelmap"]), answer["geometry"])
                self.modelLoad = dict(answer.get("modelLoad") or {})
                self.workerTimings = {"import": float(answer.get("importSeconds", 0.0)),
                                      "request": float(answer.get("workerSeconds", 0.0))}
                self.result = resultFromWorker(answer, labelmap)
        except Exception as exc:  # noqa: BLE001 - an unreadable answer fails the run, it must not stop the timer
            self.error = RuntimeError(f"The SegMate worker's result could not be read: {exc}")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)
            self._collected = True

    # -- result ----------------------------------------------------------------------------------
    def finish(self) -> Any:
        """On the main thread once ``done``: write the segments and return the run, or raise the run's error.

        A cancelled run raises ``segmatecore.SegmentationCancelled``, as ``SegMateLogic.process`` does.
        """
        if not self.done:
            raise RuntimeError("The segmentation is still running; call finish() once it is done.")
        if self._finishCalled:
            raise RuntimeError("finish() was already called for this segmentation job.")
        self._finishCalled = True
        if isinstance(self.error, WorkerCancelled):
            from segmatecore.inference.result import SegmentationCancelled

            raise SegmentationCancelled(str(self.error)) from None
        if self.error is not None:
            raise self.error
        return self._write(self.result)
