"""Slicer's side of the SegMate worker process: start it, send requests, collect events, end it.

Slicer's Python gives other threads the GIL only while Python code runs on the main thread, so
nothing heavy may run in a thread of Slicer's process. The network therefore runs in a child
process (``worker.py``, started with Slicer's own Python). A reader thread here only turns the
child's output lines into events on a queue; the panel's timer calls ``poll()`` on the main
thread, which hands the events to the request they belong to. The child's standard error is kept
(its last lines) to explain a crash.

``cancel()`` ends the child's whole process tree at once (psutil, or the process group where
psutil is missing); the next request starts a new child. A child that exits (killed, crashed,
idle) is noticed by the reader thread reaching the end of its output.
"""
from __future__ import annotations

import collections
import logging
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional

from . import protocol
from .progress import JobProgress

DEFAULT_IDLE_TIMEOUT_S = 600.0
STDERR_LINES_KEPT = 40
FIRST_EVENT_WAIT_S = 0.02  # each poll waits this long once, so the reader thread gets the GIL in Slicer
KILL_WAIT_S = 3.0


class WorkerError(RuntimeError):
    """The worker reported that a request failed; ``errorType`` and ``details`` (its traceback) say more."""

    def __init__(self, message: str, errorType: str = "", details: str = ""):
        super().__init__(message)
        self.errorType = errorType
        self.details = details


class WorkerCrashed(RuntimeError):
    """The worker process ended while it was working on a request; Slicer and the scene are unaffected."""


class WorkerCancelled(RuntimeError):
    """The request was cancelled: its worker process was ended."""


def workerScript() -> Path:
    return Path(__file__).resolve().with_name("worker.py")


def workerInterpreter() -> str:
    """The Python that runs the worker: Slicer's own (``PythonSlicer``), or this Python outside Slicer.

    Inside Slicer ``sys.executable`` is PythonSlicer, which sets up Slicer's environment (library
    paths, site-packages with PyTorch) before running Python; it is looked up beside it too.
    """
    executable = Path(sys.executable)
    if executable.stem.lower().startswith("pythonslicer"):
        return str(executable)
    for folder in (executable.parent, executable.parent.parent / "bin"):
        for name in ("PythonSlicer", "PythonSlicer.exe"):
            if (folder / name).is_file():
                return str(folder / name)
    found = shutil.which("PythonSlicer")
    if found and "slicer" in executable.name.lower():
        return found
    return str(executable)


def describeExit(returncode: Optional[int], stderrTail: list[str]) -> str:
    """Why the worker ended, in words, with what to try."""
    if returncode is not None and returncode < 0:
        number = -returncode
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        if name == "SIGKILL":
            cause = ("was killed (SIGKILL). The system most often does this when it runs out of memory. Try a "
                     "smaller batch size (Advanced), untick 'Reuse the first pass's features', or close other "
                     "programs")
        elif name == "SIGSEGV":
            cause = ("crashed (segmentation fault) in a native library such as PyTorch, CUDA or OpenMP. Try the "
                     "CPU device, or reinstall PyTorch with the 'PyTorch Util' module")
        else:
            cause = f"was ended by {name}"
    elif returncode == 0:
        cause = "exited before answering"
    else:
        cause = f"exited with code {returncode}"
        if os.name == "nt" and returncode in (3221225477, -1073741819):
            cause += " (access violation in a native library: try the CPU device)"
    last = next((line for line in reversed(stderrTail) if line.strip()), "")
    detail = f" Its last message: {last.strip()}" if last else ""
    return (f"The SegMate worker process {cause}. Slicer and the scene are unaffected; nothing was changed. "
            f"Click Segment OARs to try again (a new worker starts).{detail}")


class WorkerTask:
    """One request to the worker, as the main thread sees it: progress, warnings, then a result or an error."""

    def __init__(self, client: "WorkerClient", requestId: int, command: str, args: dict[str, Any]):
        self.client = client
        self.id = requestId
        self.command = command
        self.args = args
        self.startTime = time.monotonic()
        self.endTime: Optional[float] = None
        self.latest = ("starting", 0, 0)
        self.events: list[dict[str, Any]] = []
        self.warnings: list[str] = []
        self.result: Optional[dict[str, Any]] = None
        self.error: Optional[BaseException] = None
        self.cancelRequested = False

    # -- state -----------------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self.endTime is not None

    def elapsed(self) -> float:
        return (self.endTime if self.endTime is not None else time.monotonic()) - self.startTime

    def progress(self) -> JobProgress:
        stage, done, total = self.latest
        return JobProgress(stage, done, total, self.elapsed())

    # -- driving ---------------------------------------------------------------------------------
    def poll(self) -> JobProgress:
        """Collect the events that arrived (main thread; the panel's timer calls this); return the progress."""
        self.client.poll()
        return self.progress()

    def wait(self, timeout: Optional[float] = None, interval: float = 0.05) -> bool:
        """Poll until done (scripts and tests); False if ``timeout`` seconds passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.done:
            if deadline is not None and time.monotonic() >= deadline:
                return False
            self.client.poll(wait=interval)
        return True

    def cancel(self) -> None:
        """End the worker's process tree now; the task is done, with WorkerCancelled."""
        self.cancelRequested = True
        if not self.done:
            self.client.cancel()

    # -- called by the client --------------------------------------------------------------------
    def _receive(self, event: dict[str, Any]) -> None:
        event = dict(event, receivedAt=time.monotonic())
        self.events.append(event)
        kind = event.get("event")
        if kind == "progress":
            self.latest = (event.get("stage", ""), int(event.get("done", 0)), int(event.get("total", 0)))
        elif kind == "warning":
            self.warnings.append(str(event.get("message", "")))
        elif kind == "result":
            self.result = event.get("result") or {}
            self.latest = ("done", 1, 1)
            self._end()
        elif kind == "error":
            self.error = WorkerError(str(event.get("message", "")), str(event.get("errorType", "")),
                                     str(event.get("details", "")))
            self._end()

    def _fail(self, error: BaseException) -> None:
        if not self.done:
            self.error = error
            self._end()

    def _end(self) -> None:
        self.endTime = time.monotonic()


class _Process:
    """One started worker: the Popen, its reader threads, and what they collected."""

    def __init__(self, popen: subprocess.Popen, events: "queue.Queue"):
        self.popen = popen
        self.startedAt = time.monotonic()
        self.readyAt: Optional[float] = None
        self.stderrTail: collections.deque[str] = collections.deque(maxlen=STDERR_LINES_KEPT)
        self.exitingReason: Optional[str] = None
        self.ended = False
        self._errors = threading.Thread(target=self._readErrors, name="SegMate worker stderr", daemon=True)
        self._errors.start()
        threading.Thread(target=self._readEvents, args=(events,), name="SegMate worker events", daemon=True).start()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def _readEvents(self, events: "queue.Queue") -> None:
        for line in self.popen.stdout:
            if not line.strip():
                continue
            try:
                events.put((self, protocol.decode(line)))
            except protocol.ProtocolError as exc:  # logged by the main thread: Slicer's log is not thread-safe
                events.put((self, {"event": "_unreadable", "message": str(exc)}))
        returncode = self.popen.wait()
        self._errors.join(timeout=1.0)  # its last words explain the exit
        events.put((self, {"event": "_ended", "returncode": returncode}))

    def _readErrors(self) -> None:
        for line in self.popen.stderr:
            self.stderrTail.append(line.rstrip("\n"))


class WorkerClient:
    """Starts the worker when a request needs it, and sends it one request at a time.

    ``command`` replaces the command line (tests start stand-in workers with it); ``environment``
    adds variables to the child's environment.
    """

    def __init__(self, interpreter: Optional[str] = None, idleTimeout: float = DEFAULT_IDLE_TIMEOUT_S,
                 environment: Optional[dict[str, str]] = None, command: Optional[list[str]] = None):
        self.interpreter = interpreter
        self.idleTimeout = idleTimeout
        self.environment = dict(environment or {})
        self.command = list(command) if command else None
        self._events: "queue.Queue" = queue.Queue()
        self._process: Optional[_Process] = None
        self._task: Optional[WorkerTask] = None
        self._nextId = 1
        self.startedProcesses = 0

    # -- state -----------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        process = self._process
        return process is not None and not process.ended and process.popen.poll() is None

    @property
    def pid(self) -> Optional[int]:
        return self._process.pid if self._process is not None else None

    @property
    def startupSeconds(self) -> Optional[float]:
        """Seconds from starting the current worker to its "ready" event (Python and SegMateLib loaded)."""
        process = self._process
        if process is None or process.readyAt is None:
            return None
        return process.readyAt - process.startedAt

    @property
    def busy(self) -> bool:
        return self._task is not None and not self._task.done

    def commandLine(self) -> list[str]:
        if self.command:
            return list(self.command)
        return [self.interpreter or workerInterpreter(), str(workerScript()), "--idle-timeout", str(self.idleTimeout)]

    # -- requests --------------------------------------------------------------------------------
    def submit(self, command: str, args: Optional[dict[str, Any]] = None) -> WorkerTask:
        """Send a request (starting a worker if none runs); its events arrive through ``poll()``."""
        if self.busy:
            raise RuntimeError(f"The SegMate worker is still busy with '{self._task.command}'; wait for it or "
                               "cancel it first.")
        self.poll()  # learn of a worker that ended since the last request
        task = WorkerTask(self, self._nextId, command, dict(args or {}))
        message = protocol.request(task.id, command, task.args)
        self._nextId += 1
        self._task = task
        try:
            self._send(message)
        except BaseException:
            self._task = None
            raise
        return task

    def _send(self, message: dict[str, Any]) -> None:
        for attempt in (1, 2):
            if not self.running:
                self._start()
            try:
                self._process.popen.stdin.write(protocol.encode(message) + "\n")
                self._process.popen.stdin.flush()
                return
            except (BrokenPipeError, OSError):
                if attempt == 2:
                    raise WorkerCrashed(describeExit(self._process.popen.poll(), list(self._process.stderrTail)))
                self._forget()  # it was leaving (idle timeout) just as the request came: start a new one

    def _start(self) -> None:
        environment = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONIOENCODING="utf-8", **self.environment)
        options: dict[str, Any] = {}
        if os.name == "nt":
            options["creationflags"] = subprocess.CREATE_NO_WINDOW | subprocess.CREATE_NEW_PROCESS_GROUP
        else:
            options["start_new_session"] = True  # its own process group: ended as a whole, spared a terminal's Ctrl-C
        try:
            popen = subprocess.Popen(self.commandLine(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, encoding="utf-8", errors="replace",
                                     bufsize=1, env=environment, **options)
        except OSError as exc:
            raise WorkerCrashed(f"The SegMate worker process could not be started ({exc}). Check that Slicer's "
                                "Python (PythonSlicer) is present in the Slicer installation.") from exc
        self._process = _Process(popen, self._events)
        self.startedProcesses += 1

    # -- events ----------------------------------------------------------------------------------
    def poll(self, wait: float = FIRST_EVENT_WAIT_S) -> None:
        """Hand the events that arrived to their task (main thread). Waits up to ``wait`` seconds for the
        first one: that wait releases the GIL, which in Slicer is what lets the reader thread run."""
        try:
            item = self._events.get(timeout=wait) if wait > 0 else self._events.get_nowait()
        except queue.Empty:
            return
        while True:
            self._dispatch(*item)
            try:
                item = self._events.get_nowait()
            except queue.Empty:
                return

    def _dispatch(self, process: _Process, event: dict[str, Any]) -> None:
        kind = event.get("event")
        task = self._task
        if kind == "_ended":
            process.ended = True
            if process is not self._process:
                return
            self._process = None
            if process.stderrTail:
                logging.debug("SegMate worker's last messages:\n" + "\n".join(process.stderrTail))
            if task is None or task.done:
                return
            if process.exitingReason == "idle" and not task.events and not task.cancelRequested:
                self._resend(task)  # it left after its idle time just as this request came: a new worker takes it
            else:
                task._fail(WorkerCrashed(describeExit(event.get("returncode"), list(process.stderrTail))))
            return
        if kind == "_unreadable":
            logging.warning(f"SegMate worker: ignored output line: {event.get('message')}")
            return
        if kind == "exiting":
            process.exitingReason = str(event.get("reason", ""))
            return
        if kind == "ready":
            process.readyAt = time.monotonic()
            return
        if process is not self._process:
            return
        if task is not None and event.get("id") == task.id:
            task._receive(event)
        elif kind == "error":
            logging.warning(f"SegMate worker: {event.get('message')}")

    def _resend(self, task: WorkerTask) -> None:
        try:
            self._send(protocol.request(task.id, task.command, task.args))
        except WorkerCrashed as exc:
            task._fail(exc)

    # -- ending ----------------------------------------------------------------------------------
    def cancel(self) -> None:
        """End the worker's process tree now (Cancel); the current task ends with WorkerCancelled."""
        task = self._task
        if task is not None:
            task.cancelRequested = True
        self._killTree()
        if task is not None:
            task._fail(WorkerCancelled("Cancelled; nothing was changed."))

    def shutdown(self, timeout: float = 5.0) -> None:
        """Let the worker go: close its input (it exits at once), and end it if it has not after ``timeout``."""
        process = self._process
        if process is None:
            return
        try:
            process.popen.stdin.close()
        except OSError:
            pass
        try:
            process.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._killTree()
        if self._task is not None:
            self._task._fail(WorkerCancelled("The SegMate worker was stopped; nothing was changed."))
        self._forget()

    def _killTree(self) -> None:
        process = self._process
        if process is None:
            return
        killProcessTree(process.popen.pid)
        try:
            process.popen.wait(timeout=KILL_WAIT_S)
        except subprocess.TimeoutExpired:
            logging.warning(f"SegMate worker {process.popen.pid} did not end after being killed.")
        self._forget()

    def _forget(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            process.ended = True
            for stream in (process.popen.stdin,):
                try:
                    stream.close()
                except OSError:
                    pass


def killProcessTree(pid: int) -> None:
    """Kill a process and every process it started (psutil; without it, its process group or taskkill)."""
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        try:
            parent = psutil.Process(pid)
        except psutil.NoSuchProcess:
            return
        processes = parent.children(recursive=True) + [parent]
        for process in processes:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(processes, timeout=KILL_WAIT_S)
        return
    if os.name == "nt":
        subprocess.run(["taskkill", "/F", "/T", "/PID", str(pid)], capture_output=True, check=False)
    else:
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

