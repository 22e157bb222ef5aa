"""The SegMate worker process: SegMateCore runs here, never in Slicer's own process.

Slicer starts it with its own Python (``PythonSlicer``, see ``worker_client``) and talks to it in
JSON lines (``protocol``): requests on standard input, events on standard output. Anything a
library prints goes to standard error instead, so it cannot break a message.

The worker answers one request at a time and keeps the last prepared network between requests,
so a second run skips importing PyTorch and loading the weights. It exits when its standard input
closes (Slicer exited, the module was reloaded, or the panel let it go), and on its own after
``--idle-timeout`` seconds without a request. A run is cancelled by ending the process.
"""
from __future__ import annotations

import argparse
import logging
import os
import queue
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Optional

if __package__ in (None, ""):  # started as a script by WorkerClient: import this package, not its folder's files
    sys.path[0] = str(Path(__file__).resolve().parents[1])
    __package__ = "SegMateLib"  # noqa: A001 - makes the relative imports below work when run as a script

from . import protocol  # noqa: E402
from .corepath import ensureSegMateCoreImportable  # noqa: E402
from .volume_files import readVolume, writeVolume  # noqa: E402

DEFAULT_IDLE_TIMEOUT_S = 600.0
DOWNLOAD_REPORT_BYTES = 1 << 22


class EventWriter:
    """Writes protocol events, one line each, to the stream Slicer reads (thread-safe)."""

    def __init__(self, stream):
        self._stream = stream
        self._lock = threading.Lock()

    def send(self, message: dict[str, Any]) -> None:
        line = protocol.encode(message) + "\n"
        with self._lock:
            self._stream.write(line)
            self._stream.flush()


class RequestEvents:
    """What one request's work reports: progress (SegMateCore's callback signature) and warnings."""

    def __init__(self, writer: EventWriter, requestId: int):
        self._writer = writer
        self.requestId = requestId

    def progress(self, stage: str, done: int, total: int) -> None:
        self._writer.send(protocol.progressEvent(self.requestId, stage, done, total))

    def warning(self, message: str) -> None:
        self._writer.send(protocol.warningEvent(self.requestId, message))


class _WarningsToEvents(logging.Handler):
    """SegMateCore's logged warnings (e.g. an out-of-memory fallback) reach the panel while the run goes on."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.events: Optional[RequestEvents] = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.events is not None:
            self.events.warning(record.getMessage())


class ModelCache:
    """The last predictor (a model prepared for inference), kept between requests.

    The key is the model file (path, size, modification time), the device and the precision, the
    three things that decide what the predictor made of it. Only one is kept: a panel uses one
    model at a time, and each costs hundreds of MB.
    """

    def __init__(self):
        self._key: Optional[tuple] = None
        self._predictor = None

    def get(self, model: Optional[str], device, precision: str, modelPath: Path, onLoad: Callable[[], None]):
        """(predictor, seconds spent loading: 0.0 when it was kept from an earlier request).

        ``model`` is what the request named (None, a catalogue id or a path), so the results name
        the model the way ``segment()`` does; ``onLoad`` is called before a load that is needed.
        """
        stat = modelPath.stat()
        key = (str(modelPath.resolve()), stat.st_size, stat.st_mtime_ns, str(device), precision)
        if key == self._key:
            return self._predictor, 0.0
        from segmatecore.inference.predictor import SegMatePredictor

        onLoad()
        self._key = self._predictor = None  # the previous network is released before the next one loads
        start = time.perf_counter()
        predictor = SegMatePredictor(model, device=device, precision=precision)
        self._key, self._predictor = key, predictor
        return predictor, time.perf_counter() - start


def _modelPath(model: Optional[str], allowDownload: bool, events: RequestEvents) -> Path:
    """The model file, downloaded first (with progress) when the panel confirmed the download."""
    from segmatecore.hub.catalogue import ModelNotInstalledError, catalogue_entries, is_bundled, resolve_model
    from segmatecore.hub.download import download

    try:
        return Path(resolve_model(model))
    except ModelNotInstalledError:
        entry = next((e for e in catalogue_entries() if e["id"] == model), None)
        if not allowDownload or entry is None or is_bundled(entry):
            raise
    reported = [-DOWNLOAD_REPORT_BYTES]

    def report(done: int, total: int) -> None:
        if done - reported[0] >= DOWNLOAD_REPORT_BYTES or done >= total:
            reported[0] = done
            events.progress("download", done, total)

    events.progress("download", 0, entry["file_size"])
    download(model, progress=report)
    return Path(resolve_model(model))


class Worker:
    """Dispatches requests to their commands; keeps the model cache between them."""

    def __init__(self, writer: EventWriter):
        self.writer = writer
        self.models = ModelCache()
        self._warnings = _WarningsToEvents()
        logging.getLogger("segmatecore").addHandler(self._warnings)

    def handle(self, message: dict[str, Any]) -> None:
        requestId = message.get("id")
        command = {"segment": self.segment, "models": self.modelChoices, "import": self.importModel}.get(
            message.get("command"))
        if command is None:
            self.writer.send(protocol.errorEvent(requestId, f"Unknown command {message.get('command')!r}."))
            return
        events = RequestEvents(self.writer, requestId)
        self._warnings.events = events
        try:
            result = command(dict(message.get("args") or {}), events)
        except BaseException as exc:  # noqa: BLE001 - every failure becomes an error event; the worker lives on
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            self.writer.send(protocol.errorEvent(requestId, str(exc) or type(exc).__name__, type(exc).__name__,
                                                 traceback.format_exc()))
        else:
            self.writer.send(protocol.resultEvent(requestId, result))
        finally:
            self._warnings.events = None

    # -- commands --------------------------------------------------------------------------------
    def segment(self, args: dict[str, Any], events: RequestEvents) -> dict[str, Any]:
        """Segment the volume file ``input`` and write the labelmap to ``output``; return the result's facts.

        Besides SegMateCore's result: ``modelLoad`` (``cached``: the network was kept from an earlier
        request; ``seconds`` spent loading and preparing it) and ``importSeconds`` (importing PyTorch
        and SegMateCore, paid by the first request of a worker), so a panel can tell what a click cost.
        """
        start = time.perf_counter()
        imported = "segmatecore.inference.predictor" in sys.modules
        from segmatecore.runtime.devices import default_batch_size, resolve_device
        from segmatecore.runtime.feature_cache import DEFAULT_MAX_MB

        from .devices import torchDevice

        importSeconds = 0.0 if imported else time.perf_counter() - start
        image = readVolume(Path(args["input"]), args["geometry"])
        model = args.get("model")
        device = resolve_device(torchDevice(args.get("device", "auto")))
        precision = args.get("precision", "auto")
        path = _modelPath(model, bool(args.get("download")), events)
        predictor, loadSeconds = self.models.get(model, device, precision, path,
                                                 onLoad=lambda: events.progress("loading", 0, 1))
        predictor.batch_size = int(args.get("batchSize") or default_batch_size(device))
        cacheMb = args.get("featureCacheMb")
        predictor.feature_cache_mb = DEFAULT_MAX_MB if cacheMb is None else float(cacheMb)
        result = predictor.segment(image, organs=args.get("organs"), z=args.get("zNorm", "auto"),
                                   postprocess=args.get("postprocess"), tta=bool(args.get("tta")),
                                   progress=events.progress)
        geometry = writeVolume(result.labelmap, Path(args["output"]))
        return {"labelmap": str(args["output"]), "geometry": geometry, "organs": list(result.organs),
                "labels": dict(result.labels), "volumes_ml": dict(result.volumes_ml), "timings": dict(result.timings),
                "z_range": dict(result.z_range), "warnings": list(result.warnings),
                "model_info": dict(result.model_info), "source": result.source,
                "modelLoad": {"cached": loadSeconds == 0.0, "seconds": loadSeconds},
                "importSeconds": importSeconds, "workerSeconds": time.perf_counter() - start}

    def modelChoices(self, args: dict[str, Any], events: RequestEvents) -> dict[str, Any]:
        """The panel's model choices (``model_choices.modelChoices``) as plain dicts."""
        from dataclasses import asdict

        from .model_choices import modelChoices

        return {"models": [asdict(choice) for choice in modelChoices()]}

    def importModel(self, args: dict[str, Any], events: RequestEvents) -> dict[str, Any]:
        """Check a model file and copy it into the model cache (``segmatecore.hub.download.install_from_file``)."""
        from segmatecore.hub.download import install_from_file

        installed = install_from_file(args["path"])
        return {"path": str(installed), "id": installed.stem}


def _readRequests(stream, requests: "queue.Queue[Optional[str]]") -> None:
    """Stdin reader thread. Standard input closing means Slicer is gone or let the worker go: exit at once,
    abandoning a request in progress (nobody is left to receive its result)."""
    for line in stream:
        if line.strip():
            requests.put(line)
    os._exit(0)


def _protocolStream():
    """The real standard output for events; file descriptor 1 and sys.stdout now lead to standard error."""
    events = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8", buffering=1)
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    return events


def serve(stdin, writer: EventWriter, idleTimeout: float, worker: Optional[Worker] = None,
          readRequests: Callable = _readRequests) -> int:
    """The request loop: one request at a time until stdin closes or ``idleTimeout`` seconds pass idle."""
    worker = worker or Worker(writer)
    requests: "queue.Queue[Optional[str]]" = queue.Queue()
    threading.Thread(target=readRequests, args=(stdin, requests), name="SegMate requests", daemon=True).start()
    writer.send(protocol.readyEvent(os.getpid()))
    while True:
        try:
            line = requests.get(timeout=idleTimeout if idleTimeout > 0 else None)
        except queue.Empty:
            writer.send(protocol.exitingEvent("idle"))
            return 0
        if line is None:
            return 0
        try:
            message = protocol.decode(line)
        except protocol.ProtocolError as exc:
            writer.send(protocol.errorEvent(None, f"Unreadable request: {exc}", "ProtocolError"))
            continue
        worker.handle(message)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="SegMate worker process (started by the SegMate Slicer module).")
    parser.add_argument("--idle-timeout", type=float, default=DEFAULT_IDLE_TIMEOUT_S,
                        help="exit after this many seconds without a request (0: never)")
    parser.add_argument("--diagnostics", action="store_true",
                        help="print PyTorch, GPU and SegMateCore facts as seen by this Python, then exit")
    args = parser.parse_args(argv)
    ensureSegMateCoreImportable()
    if args.diagnostics:
        from .diagnostics import engineLines

        print("\n".join(engineLines()))
        return 0
    writer = EventWriter(_protocolStream())
    return serve(sys.stdin, writer, args.idle_timeout)


if __name__ == "__main__":
    sys.exit(main())
