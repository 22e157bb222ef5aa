"""Batch segmentation of a folder: every CT volume (NIfTI, NRRD, MetaImage, DICOM series) to a .seg.nrrd.

Each case is read into a volume node, segmented by ``SegMateLogic.process`` (the panel's segmentation
and segment writing, run in this process: a batch has no GUI to keep responsive), saved with Slicer's
own segmentation writer, and its nodes are removed. One CSV row
per case records the outcome, the time, the organ volumes and SegMateCore's warnings; a failing
case is logged and the loop goes on.
"""
from __future__ import annotations

import csv
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

CSV_NAME = "segmate_batch.csv"
SEGMENTATION_SUFFIX = ".seg.nrrd"


@dataclass(frozen=True)
class Case:
    """One input: a volume file or a folder holding one DICOM series."""

    name: str
    path: Path


def _isVolumeFile(path: Path) -> bool:
    from segmatecore.data.io import VOLUME_SUFFIXES

    name = path.name.lower()
    return not name.endswith(SEGMENTATION_SUFFIX) and any(name.endswith(s) for s in VOLUME_SUFFIXES) \
        and not name.endswith(".raw")


def _holdsDicom(folder: Path) -> bool:
    from segmatecore.data.io import list_dicom_series

    return bool(list_dicom_series(folder, recursive=True))


def findCases(inputPath: Path) -> list[Case]:
    """The cases under ``inputPath``: a single file or DICOM folder, or each volume file and DICOM sub-folder.

    DICOM files lying directly in the folder make the folder itself one case.
    """
    from segmatecore.data.io import case_name, list_dicom_series

    inputPath = Path(inputPath)
    if not inputPath.exists():
        raise FileNotFoundError(f"Input {inputPath} does not exist.")
    if inputPath.is_file():
        return [Case(case_name(inputPath), inputPath)]
    cases: list[Case] = []
    if list_dicom_series(inputPath, recursive=False):
        cases.append(Case(inputPath.name, inputPath))
    for entry in sorted(inputPath.iterdir()):
        if entry.is_file() and _isVolumeFile(entry):
            cases.append(Case(case_name(entry), entry))
        elif entry.is_dir() and _holdsDicom(entry):
            cases.append(Case(entry.name, entry))
    names = [c.name for c in cases]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"Several inputs in {inputPath} would write the same output ({', '.join(duplicates)}); "
                         "rename them or run them separately.")
    return cases


def saveSegmentation(segmentationNode, path: Path) -> None:
    """Write a segmentation node to .seg.nrrd with Slicer's segmentation storage node."""
    path.parent.mkdir(parents=True, exist_ok=True)
    storageNode = segmentationNode.GetStorageNode()
    if storageNode is None:
        segmentationNode.AddDefaultStorageNode()
        storageNode = segmentationNode.GetStorageNode()
    storageNode.SetFileName(str(path))
    if not storageNode.WriteData(segmentationNode):
        raise OSError(f"Slicer could not write {path}.")


def _removeNodes(scene, nodes: Iterable[Any]) -> None:
    for node in nodes:
        if node is None or node.GetScene() is None:
            continue
        related = []
        if node.IsA("vtkMRMLDisplayableNode"):
            related += [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())]
        if node.IsA("vtkMRMLStorableNode"):
            related += [node.GetNthStorageNode(i) for i in range(node.GetNumberOfStorageNodes())]
        scene.RemoveNode(node)
        for other in related:
            if other is not None and other.GetScene() is not None:
                scene.RemoveNode(other)


def segmentCase(case: Case, outputFolder: Path, logic, scene, **options) -> dict[str, Any]:
    """Segment one case and save it; returns its CSV row (status ok)."""
    from segmatecore.data.io import read_volume

    from .volume_image import volumeNodeFromImage

    start = time.perf_counter()
    output = outputFolder / f"{case.name}{SEGMENTATION_SUFFIX}"
    loaded = read_volume(case.path, series_uid=options.pop("seriesUid", None))
    volumeNode = segmentationNode = None
    try:
        volumeNode = volumeNodeFromImage(loaded.image, case.name, scene)
        run = logic.process(volumeNode, None, **options)
        segmentationNode = run.segmentationNode
        saveSegmentation(segmentationNode, output)
    finally:
        _removeNodes(scene, [segmentationNode, volumeNode])
    result = run.result
    row = {"case": case.name, "input": str(case.path), "output": str(output), "status": "ok",
           "seconds": round(time.perf_counter() - start, 2), "organs": " ".join(result.organs),
           "warnings": " | ".join(list(loaded.warnings) + list(result.warnings)),
           "error": ""}
    row.update({f"{key}_ml": round(result.volumes_ml.get(key, 0.0), 3) for key in result.organs})
    return row


def runBatch(inputPath, outputFolder, logic=None, scene=None, csvPath=None, skipExisting: bool = False,
             log: Callable[[str], None] = print, **options) -> list[dict[str, Any]]:
    """Segment every case under ``inputPath`` into ``outputFolder``; write and return the CSV rows.

    ``options`` are ``SegMateLogic.process`` options (organs, model, device, batchSize, postprocess,
    naming, tta, precision, featureCacheMb). A case that fails gets status "failed" and its error; the
    others still run.
    """
    import slicer

    from .logic import SegMateLogic

    logic = logic or SegMateLogic()
    scene = scene or slicer.mrmlScene
    outputFolder = Path(outputFolder)
    outputFolder.mkdir(parents=True, exist_ok=True)
    csvPath = Path(csvPath) if csvPath else outputFolder / CSV_NAME
    cases = findCases(Path(inputPath))
    if not cases:
        raise ValueError(f"No CT volume (NIfTI, NRRD, MetaImage or DICOM series) found in {inputPath}.")
    rows = []
    for index, case in enumerate(cases, 1):
        output = outputFolder / f"{case.name}{SEGMENTATION_SUFFIX}"
        if skipExisting and output.is_file():
            rows.append({"case": case.name, "input": str(case.path), "output": str(output), "status": "skipped",
                         "seconds": 0.0, "organs": "", "warnings": "", "error": "output exists"})
            log(f"[{index}/{len(cases)}] {case.name}: skipped, {output.name} exists")
            continue
        try:
            row = segmentCase(case, outputFolder, logic, scene, **dict(options))
            log(f"[{index}/{len(cases)}] {case.name}: {row['seconds']} s -> {output.name}")
        except Exception as exc:  # noqa: BLE001 - one bad case must not stop the batch; the CSV records it
            row = {"case": case.name, "input": str(case.path), "output": "", "status": "failed", "seconds": 0.0,
                   "organs": "", "warnings": "", "error": f"{type(exc).__name__}: {exc}"}
            log(f"[{index}/{len(cases)}] {case.name}: FAILED: {exc}")
        rows.append(row)
        writeCsv(csvPath, rows)
    writeCsv(csvPath, rows)
    return rows


def writeCsv(path: Path, rows: list[dict[str, Any]]) -> None:
    """The batch log: fixed columns first, then one ``<organ>_ml`` column per organ seen."""
    fixed = ["case", "input", "output", "status", "seconds", "organs", "warnings", "error"]
    extra = sorted({k for row in rows for k in row if k not in fixed})
    with Path(path).open("w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=fixed + extra, restval="")
        writer.writeheader()
        writer.writerows(rows)


def parseOrgans(text: Optional[str]) -> Optional[list[str]]:
    """"liver,aorta" or "liver aorta" -> keys; None or "" -> None (the model's trained organs)."""
    if not text:
        return None
    return [key for key in text.replace(",", " ").split() if key]
