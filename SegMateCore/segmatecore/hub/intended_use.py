"""What a model is for and whether its contours may be used clinically, as every output states it.

A model says so in its file's metadata (``intended_use`` and ``clinical_use``, at the top level or
in its provenance, e.g. from the ``--provenance`` JSON of ``segmate train``; ``demo: true`` marks a
demonstration model); the catalogue entry of the same id is the fallback. SegMate is research software: unless a
model declares ``clinical_use: true`` and is not a demonstration model, it is treated as not for
clinical use, and the report, the .seg.nrrd, the RTSTRUCT and the DICOM SEG say so.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any


NOT_FOR_CLINICAL_USE = "not for clinical use"
UNSTATED = "not stated by the model"


def _sources(meta: Mapping[str, Any] | None, entry: Mapping[str, Any] | None) -> list[Mapping[str, Any]]:
    """Where to look, most specific first: the metadata, its provenance, then the catalogue entry."""
    meta = meta or {}
    provenance = meta.get("provenance") if isinstance(meta.get("provenance"), Mapping) else {}
    return [meta, provenance, entry or {}]


def _flag(value: Any) -> bool | None:
    """A stored flag as a bool (safetensors metadata may hold "true"/"false" strings); None if absent."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    return None


def intended_use(meta: Mapping[str, Any] | None, entry: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``{"intended_use": text, "clinical_use": bool}`` of a model, from its metadata, else its catalogue entry."""
    sources = _sources(meta, entry)
    demo = any(_flag(s.get("demo")) for s in sources)
    declared = next((f for f in (_flag(s.get("clinical_use")) for s in sources) if f is not None), None)
    text = next((str(s[k]).strip() for k in ("intended_use", "description") for s in sources
                 if isinstance(s.get(k), str) and s[k].strip()), UNSTATED)
    return {"intended_use": " ".join(text.split()), "clinical_use": bool(declared) and not demo}


def is_clinical(model_info: Mapping[str, Any] | None) -> bool:
    """Whether a result's model (its ``model_info``) may be used clinically; False when unknown."""
    return bool((model_info or {}).get("clinical_use", False))


def notice(model_info: Mapping[str, Any] | None) -> str | None:
    """The one-line notice ``segmate predict`` prints for a model not for clinical use, else None."""
    if is_clinical(model_info):
        return None
    info = model_info or {}
    model = model_name(info.get("id"), info.get("version"), unnamed="this model")
    return f"notice: {model} is {NOT_FOR_CLINICAL_USE}; review every contour before any use."


def model_name(model_id: Any, version: Any, unnamed: str = "custom model") -> str:
    """``"<model id> <version>"``, leaving out whichever is unknown; ``unnamed`` when both are."""
    return " ".join(str(v) for v in (model_id, version) if v) or unnamed
