"""How every output names the model that made it, in a module that imports nothing heavy.

The Slicer panel names the model in its segment tags without loading PyTorch, and the report,
the notice of ``segmate predict`` and the DICOM objects use the same words, so a reviewer finds
one name for one model everywhere.
"""
from __future__ import annotations

from typing import Any


def model_name(model_id: Any, version: Any, unnamed: str = "custom model") -> str:
    """``"<model id> <version>"``, leaving out whichever is unknown; ``unnamed`` when both are."""
    return " ".join(str(v) for v in (model_id, version) if v) or unnamed
