"""A model for inference, from a catalogue id, a .safetensors file or a module, with its facts.

Every output says which model made it: its catalogue id and version when known, else what its
metadata says, its intended use and whether it is for clinical use.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from segmatecore.hub.catalogue import CatalogueError, catalogue_entries, default_model_id, resolve_model
from segmatecore.models.checkpoint import load_model
from segmatecore.models.network import module_metadata
from segmatecore.hub.intended_use import intended_use

# What a model's file and the catalogue tell about it.
MODEL_FILE_FACTS = ("id", "version", "path", "provenance", "backbone", "input_size", "intended_use", "clinical_use")


def load_with_facts(model: str | os.PathLike | nn.Module | None) -> tuple[nn.Module, dict[str, Any]]:
    """The network and its facts, from a module, a .safetensors path, a catalogue id or None (the default)."""
    if isinstance(model, nn.Module):
        return model, model_facts(module_metadata(model), None)
    if model is not None and Path(model).is_file():
        path = Path(model)
        entry = _catalogue_entry_of_file(path)
    else:
        path = Path(resolve_model(model))
        model_id = str(model) if model is not None else default_model_id()
        entry = next((e for e in catalogue_entries() if e["id"] == model_id), None)
    loaded = load_model(path, device="cpu")
    return loaded, model_facts(loaded.metadata, path, entry)


def _catalogue_entry_of_file(path: Path) -> dict[str, Any] | None:
    """The catalogue entry a model file is named after (a catalogue model's file is <id>.safetensors)."""
    try:
        return next((e for e in catalogue_entries() if e["id"] == path.stem), None)
    except CatalogueError:
        return None


def model_facts(meta: dict[str, Any], path: Path | None, entry: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the outputs say about the model (see the module docstring)."""
    provenance = meta.get("provenance", {}) or {}
    entry = entry or {}
    return {"backbone": meta.get("backbone"),
            "id": entry.get("id") or meta.get("id") or provenance.get("id") or (path.stem if path else None),
            "version": entry.get("version") or meta.get("version") or provenance.get("version"),
            **intended_use(meta, entry),
            "input_size": list(meta["preprocessing"]["input_size"]), "provenance": provenance,
            "path": str(path) if path else None}
