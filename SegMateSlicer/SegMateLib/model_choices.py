"""The models the panel offers: the SegMateCore catalogue (bundled, downloadable, imported) as choices.

Thin on purpose: listing, importing, downloading and clearing are ``segmatecore.hub``'s job;
this only shapes its entries for a combo box and says which organs each model was trained on.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional


@dataclass(frozen=True)
class ModelChoice:
    """One entry of the model combo box."""

    id: str
    title: str
    installed: bool
    demo: bool
    default: bool
    source: str
    organs: tuple[str, ...]
    trainedOrgans: tuple[str, ...]
    backbone: str = ""
    path: str = ""

    @property
    def label(self) -> str:
        """What the combo box shows: the title, marked as demonstration and/or not installed."""
        text = self.title
        if self.demo:
            text += " [demonstration]"
        if not self.installed:
            text += " (file missing: reinstall SegMate)" if self.source == "bundled" else " (not installed: downloads on use)"
        return text

    @property
    def downloadable(self) -> bool:
        """Not on this computer yet, but the catalogue says where to download it from."""
        return not self.installed and self.source == "download"

    def untrainedOrgans(self) -> list[str]:
        return [key for key in self.organs if key not in self.trainedOrgans]

    def infoText(self) -> str:
        """The line under the model choice: backbone, installed or not, demonstration, untrained organs."""
        parts = [f"backbone {self.backbone or '?'}", "installed" if self.installed else "not installed"]
        if self.demo:
            parts.append("demonstration model, not for clinical use")
        if self.untrainedOrgans():
            parts.append("not trained on: " + ", ".join(key.replace("_", " ") for key in self.untrainedOrgans()))
        return "; ".join(parts)


def _choice(entry: dict[str, Any]) -> ModelChoice:
    organs = tuple(entry.get("organs") or ())
    trained = entry.get("trained_organs")
    if trained is None and entry.get("installed") and entry.get("path"):
        trained = _trainedOrgansFromFile(entry["path"])
    return ModelChoice(id=entry["id"], title=entry.get("title") or entry["id"], installed=bool(entry.get("installed")),
                       demo=bool(entry.get("demo")), default=bool(entry.get("default")),
                       source=entry.get("source", ""), organs=organs,
                       trainedOrgans=tuple(trained if trained is not None else organs),
                       backbone=entry.get("backbone") or "", path=entry.get("path") or "")


def _trainedOrgansFromFile(path: str) -> Optional[list[str]]:
    from segmatecore.models.checkpoint import CheckpointError, read_metadata

    try:
        meta = read_metadata(path)
    except (CheckpointError, OSError):
        return None
    return list(meta.get("trained_organs") or meta.get("organs") or [])


def modelChoices() -> list[ModelChoice]:
    """Every model the catalogue lists, the default first."""
    from segmatecore.hub.catalogue import list_models

    choices = [_choice(entry) for entry in list_models()]
    return sorted(choices, key=lambda choice: not choice.default)


def findChoice(choices: list[ModelChoice], modelId: str) -> Optional[ModelChoice]:
    return next((choice for choice in choices if choice.id == modelId), None)
