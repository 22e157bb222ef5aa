"""The bundled sample CTs (Resources/SampleData/samples.json) as Slicer Sample Data sources.

Each entry becomes the keyword arguments of ``SampleData.SampleDataLogic.registerCustomSampleDataSource``
with a ``file://`` URI, so the Sample Data module "downloads" the file from the extension's own
folder into its cache and loads it, checksum verified. Nothing here imports Qt.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CATEGORY = "SegMate"


def samplesFile() -> Path:
    """samples.json in the SegMateCore resources (the repository's Resources/, or the extension's copy)."""
    from .corepath import coreResourcePath

    return coreResourcePath("SampleData", "samples.json")


def sampleDataSources(samplesJson: Path | None = None) -> list[dict[str, Any]]:
    """Keyword arguments for ``registerCustomSampleDataSource``, one dict per sample CT."""
    path = Path(samplesJson) if samplesJson else samplesFile()
    if not path.is_file():
        return []
    folder = path.parent
    sources = []
    for sample in json.loads(path.read_text(encoding="utf-8")):
        dataFile = folder / sample["file"]
        if not dataFile.is_file():
            raise FileNotFoundError(f"{path} lists {sample['file']}, which is not in {folder}; reinstall SegMate.")
        source = {
            "category": CATEGORY,
            "sampleName": sample["name"],
            "uris": dataFile.resolve().as_uri(),
            "fileNames": dataFile.name,
            "nodeNames": sample.get("node_name") or dataFile.name.split(".")[0],
        }
        if sample.get("thumbnail") and (folder / sample["thumbnail"]).is_file():
            source["thumbnailFileName"] = str((folder / sample["thumbnail"]).resolve())
        if sample.get("sha256"):
            source["checksums"] = f"SHA256:{sample['sha256']}"
        sources.append(source)
    return sources
