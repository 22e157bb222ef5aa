"""Where the shared resources (organ table, model catalogue, bundled models, sample data) live.

In a source checkout they are the repository's top-level ``Resources/``; an installed package or
the Slicer extension carries a copy in ``segmatecore/_resources``. ``SEGMATE_RESOURCES`` overrides.
"""
from __future__ import annotations

import os
from pathlib import Path


def resources_dir() -> Path:
    env = os.environ.get("SEGMATE_RESOURCES")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent
    for candidate in (here / "_resources", here.parents[1] / "Resources"):
        if (candidate / "organs.json").is_file():
            return candidate
    raise FileNotFoundError("SegMate resources (organs.json) not found; set SEGMATE_RESOURCES to the Resources folder.")


def resource_path(*parts: str) -> Path:
    return resources_dir().joinpath(*parts)
