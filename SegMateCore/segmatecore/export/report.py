"""The JSON report of a case: volumes, timings, model, z-range, warnings, organs, input geometry, version."""
from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from segmatecore import __version__
from segmatecore.data.atomic import write_text_atomic
from segmatecore.export.common import resolve_legend
from segmatecore.hub.intended_use import NOT_FOR_CLINICAL_USE


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (Path, os.PathLike)):
        return os.fspath(value)
    if isinstance(value, (set, tuple)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def build_report(result: Any) -> dict[str, Any]:
    """The report of one case as a JSON-ready dict: the result's own summary (``to_dict``) plus the
    SegMate version, the time, and what each label value in the files means (see docs/outputs.md)."""
    summary = result.to_dict()
    model = dict(summary.pop("model", {}) or {})
    chosen = resolve_legend(result.labels)
    made_by = result.made_by()
    model.pop("intended_use", None), model.pop("clinical_use", None)
    return {
        "segmate_version": __version__,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **({} if made_by["clinical_use"] else {"notice": f"{NOT_FOR_CLINICAL_USE}: {made_by['intended_use']}"}),
        **summary,
        "model": {"id": model.pop("id", None), "version": model.pop("version", None),
                  "backbone": model.pop("backbone", None), "intended_use": made_by["intended_use"],
                  "clinical_use": made_by["clinical_use"], **model},
        "segments": [{"value": value, "key": o.key, "name": o.display_name, "tg263": o.tg263, "color": list(o.color),
                      "volume_ml": summary["volumes_ml"].get(o.key, 0.0)} for o, value in chosen],
    }


def write_report(result: Any, path: str | os.PathLike) -> Path:
    """JSON report: volumes in mL, timings, model, z-range used, warnings, organs, input geometry, version."""
    text = json.dumps(build_report(result), indent=2, default=_json_default)
    return write_text_atomic(path, text + "\n")
