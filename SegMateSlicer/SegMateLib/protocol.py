"""The messages between Slicer and the SegMate worker process: one JSON object per line.

Slicer writes requests to the worker's standard input; the worker writes events to its standard
output. Both are plain JSON (no pickles, nothing that can execute code); volumes travel as files
(see ``volume_files``) whose paths the messages name.

Request (Slicer to worker)::

    {"id": 3, "command": "segment", "args": {...}}

Commands: ``segment`` (a volume file in, a labelmap file out), ``models`` (the model choices),
``import`` (install a model file). Events (worker to Slicer), each with the ``id`` of its request::

    {"id": 3, "event": "progress", "stage": "network", "done": 12, "total": 40}
    {"id": 3, "event": "warning", "message": "..."}
    {"id": 3, "event": "result", "result": {...}}           # the request succeeded; it is the last event
    {"id": 3, "event": "error", "message": "...", "errorType": "ValueError", "details": "traceback"}

Events without an ``id``: ``ready`` (once, when the worker has started: its pid and protocol
version) and ``exiting`` (the worker leaves on its own, with the reason: ``idle``).
"""
from __future__ import annotations

import json
import math
from pathlib import PurePath
from typing import Any, Optional

PROTOCOL_VERSION = 1
COMMANDS = ("segment", "models", "import")
FINAL_EVENTS = ("result", "error")


class ProtocolError(ValueError):
    """A line that is not a message of this protocol."""


def _plain(value: Any) -> Any:
    """JSON for the values SegMateCore's results hold besides dicts, lists and str: numpy scalars, paths."""
    if isinstance(value, PurePath):
        return str(value)
    item = getattr(value, "item", None)  # numpy scalars, without importing numpy here
    if callable(item):
        return item()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"{type(value).__name__} cannot travel in a SegMate worker message")


def _finite(value: Any) -> Any:
    """NaN and infinities are not JSON: they travel as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value


def encode(message: dict[str, Any]) -> str:
    """One line of JSON (no newline inside; the caller adds the line end)."""
    plain = json.loads(json.dumps(message, default=_plain))  # numpy scalars and paths become JSON values
    return json.dumps(_finite(plain), allow_nan=False)


def decode(line: str) -> dict[str, Any]:
    """A message from one line; ProtocolError for anything else."""
    try:
        message = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"not a JSON line ({exc}): {line[:200]!r}") from None
    if not isinstance(message, dict) or not ("event" in message or "command" in message):
        raise ProtocolError(f"not a SegMate worker message: {line[:200]!r}")
    return message


def request(requestId: int, command: str, args: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    if command not in COMMANDS:
        raise ValueError(f"Unknown worker command {command!r}; known: {', '.join(COMMANDS)}.")
    return {"id": requestId, "command": command, "args": dict(args or {})}


def progressEvent(requestId: int, stage: str, done: int, total: int) -> dict[str, Any]:
    return {"id": requestId, "event": "progress", "stage": str(stage), "done": int(done), "total": int(total)}


def warningEvent(requestId: Optional[int], message: str) -> dict[str, Any]:
    return {"id": requestId, "event": "warning", "message": str(message)}


def resultEvent(requestId: int, result: dict[str, Any]) -> dict[str, Any]:
    return {"id": requestId, "event": "result", "result": result}


def errorEvent(requestId: Optional[int], message: str, errorType: str = "", details: str = "") -> dict[str, Any]:
    return {"id": requestId, "event": "error", "message": str(message), "errorType": errorType, "details": details}


def readyEvent(pid: int) -> dict[str, Any]:
    return {"event": "ready", "pid": int(pid), "protocol": PROTOCOL_VERSION}


def exitingEvent(reason: str) -> dict[str, Any]:
    return {"event": "exiting", "reason": reason}
