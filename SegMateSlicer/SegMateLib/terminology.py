"""Segment names and SNOMED-CT terminology of SegMate's organs, as Slicer's Terminologies module expects.

The codes come from the organ table (Resources/organs.json, read by ``segmatecore.data.organs``); the
entry string is made and parsed by Slicer's own ``vtkSlicerTerminologiesModuleLogic``, so it has
exactly the format Slicer, DICOM SEG export and slicerio read, for example::

    Segmentation category and type - DICOM master list~SCT^123037004^Anatomical Structure
    ~SCT^39607008^Lung~SCT^7771000^Left~Anatomic codes - DICOM master list~^^~^^

SegMate recognises its own segments by these codes (category, type, modifier), never by name,
so renamed segments are still found and a user's own segments are never taken for SegMate's.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Optional

import slicer

SEGMENTATION_CONTEXT = "Segmentation category and type - DICOM master list"
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"
NAMING_CHOICES = {"slicer": "Slicer standard names", "tg263": "AAPM TG-263 names"}


def _code(entry: Optional[dict]) -> tuple[str, str, str]:
    """(code value, scheme, meaning) of an organ-table code, or empty strings for none."""
    if not entry:
        return "", "", ""
    return entry["code"], entry["scheme"], entry["meaning"]


def terminologyEntry(organ) -> str:
    """The serialized terminology entry of an organ (a ``segmatecore.data.organs.Organ``)."""
    from segmatecore.data.organs import category

    category_value, category_scheme, category_meaning = _code(category())
    type_value, type_scheme, type_meaning = _code(organ.type)
    modifier_value, modifier_scheme, modifier_meaning = _code(organ.modifier)
    return slicer.vtkSlicerTerminologiesModuleLogic.SerializeTerminologyEntry(
        SEGMENTATION_CONTEXT,
        category_value, category_scheme, category_meaning,
        type_value, type_scheme, type_meaning,
        modifier_value, modifier_scheme, modifier_meaning,
        ANATOMIC_CONTEXT, "", "", "", "", "", "")


def _codeKey(codedEntry) -> tuple[str, str]:
    return (codedEntry.GetCodingSchemeDesignator() or "", codedEntry.GetCodeValue() or "")


def terminologiesLogic():
    """The Terminologies module's logic of the running application, as Slicer's own modules use it; a
    bare ``vtkSlicerTerminologiesModuleLogic`` where no application runs (slicer-core, scripts)."""
    modules = getattr(slicer, "modules", None)
    terminologies = getattr(modules, "terminologies", None) if modules is not None else None
    if terminologies is not None:
        return terminologies.logic()
    return slicer.vtkSlicerTerminologiesModuleLogic()


def codesOf(serializedEntry: str) -> Optional[tuple[tuple[str, str], ...]]:
    """(category, type, modifier) as (scheme, code) pairs, or None if the string is not a terminology entry."""
    if not serializedEntry:
        return None
    entry = slicer.vtkSlicerTerminologyEntry()
    if not terminologiesLogic().DeserializeTerminologyEntry(serializedEntry, entry):
        return None
    return (_codeKey(entry.GetCategoryObject()), _codeKey(entry.GetTypeObject()),
            _codeKey(entry.GetTypeModifierObject()))


def organKeyForTerminology(serializedEntry: str) -> Optional[str]:
    """The organ whose codes the entry carries (whatever its context name or segment name), else None."""
    codes = codesOf(serializedEntry)
    return None if codes is None else _organKeysByCodes().get(codes)


@lru_cache(maxsize=1)
def _organKeysByCodes() -> dict:
    from segmatecore.data.organs import known_organs

    return {codesOf(terminologyEntry(organ)): organ.key for organ in known_organs()}


def segmentName(organ, naming: str = "slicer") -> str:
    """The segment name: Slicer's standard name ("Left lung") or the AAPM TG-263 name ("Lung_L")."""
    from segmatecore.data.organs import segment_name

    if naming not in NAMING_CHOICES:
        raise ValueError(f"Unknown naming {naming!r}; use one of {', '.join(NAMING_CHOICES)}.")
    return segment_name(organ, "tg263" if naming == "tg263" else "standard")
