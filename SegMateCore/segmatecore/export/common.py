"""What the output formats share: the legend and labelmap checks, the voxel-to-LPS matrix, the
DICOM series an output references and what DICOM objects say about the model that made them."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from segmatecore import __version__
from segmatecore.data.io import choose_series, list_dicom_series
from segmatecore.data.organs import Organ, organ
from segmatecore.hub.intended_use import NOT_FOR_CLINICAL_USE
from segmatecore.hub.intended_use import model_name

NOT_CLINICAL_LABEL = "NOT CLINICAL USE"  # the structure set label (SH: 16 characters) of such a model


def resolve_legend(legend: Mapping[str, int]) -> list[tuple[Organ, int]]:
    """The labelmap's legend (organ key -> label value) as (organ, value) pairs, checked."""
    if not legend:
        raise ValueError("No organs given to export; pass the labelmap's legend {organ key: label value} "
                         "(SegmentationResult.labels).")
    resolved = [(organ(k), int(v)) for k, v in legend.items()]
    bad = [f"{o.key}={v}" for o, v in resolved if not 1 <= v <= 255]
    if bad or len({v for _, v in resolved}) != len(resolved):
        raise ValueError(f"label values must be distinct and in 1..255; got {dict(legend)}.")
    return resolved


def check_labelmap(labelmap: sitk.Image) -> sitk.Image:
    """The labelmap as a 3D uint8 image, or a clear error."""
    if not isinstance(labelmap, sitk.Image):
        raise TypeError(f"Expected the labelmap as a SimpleITK image, got {type(labelmap).__name__}.")
    if labelmap.GetDimension() != 3 or labelmap.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"Expected a 3D scalar labelmap, got a {labelmap.GetDimension()}D image with "
                         f"{labelmap.GetNumberOfComponentsPerPixel()} component(s) per voxel.")
    if labelmap.GetPixelID() == sitk.sitkUInt8:
        return labelmap
    if labelmap.GetPixelID() not in (sitk.sitkInt8, sitk.sitkInt16, sitk.sitkUInt16, sitk.sitkInt32,
                                     sitk.sitkUInt32, sitk.sitkInt64, sitk.sitkUInt64):
        raise ValueError(f"Expected an integer labelmap (value k+1 = organ channel k), got "
                         f"{labelmap.GetPixelIDTypeAsString()}.")
    stats = sitk.MinimumMaximumImageFilter()
    stats.Execute(labelmap)
    if stats.GetMinimum() < 0 or stats.GetMaximum() > 255:
        raise ValueError(f"Labelmap values must lie in 0..255, found {stats.GetMinimum():g}..{stats.GetMaximum():g}.")
    return sitk.Cast(labelmap, sitk.sitkUInt8)


def ijk_to_lps(image: sitk.Image) -> np.ndarray:
    """The 4x4 voxel-index-to-LPS matrix of an image (direction x spacing, then origin)."""
    matrix = np.eye(4)
    direction = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    matrix[:3, :3] = direction @ np.diag(image.GetSpacing())
    matrix[:3, 3] = image.GetOrigin()
    return matrix


def series_files(dicom_dir: Path, series_uid: str | None) -> tuple[list[str], int]:
    """The files of the series in ``dicom_dir`` that the reader picks (``series_uid``, else the largest CT
    series), and how many series the folder holds; the DICOM outputs reference these images."""
    import pydicom  # heavy, and only the DICOM outputs need it

    if not dicom_dir.is_dir():
        raise ValueError(f"RTSTRUCT needs the DICOM series folder of the CT; {dicom_dir} is not a folder.")
    series = list_dicom_series(dicom_dir, recursive=False)
    if not series:
        raise ValueError(f"No DICOM series found in {dicom_dir}; RTSTRUCT needs the folder of the CT series.")
    chosen, _ = choose_series(series, series_uid, dicom_dir)
    uids = [str(pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
                .get("SOPInstanceUID", "") or "") for f in chosen.files]
    if not all(uids) or len(set(uids)) != len(uids):
        raise ValueError(f"The DICOM images in {dicom_dir} lack unique SOP Instance UIDs (removed by anonymisation?); "
                         "an RTSTRUCT references its images by these UIDs, so none can be written for this series.")
    return list(chosen.files), len(series)


def dicom_texts(made_by: Mapping[str, Any] | None) -> dict[str, Any]:
    """What the DICOM objects (RTSTRUCT, SEG) say about what made them, within their VRs' lengths.

    ``made_by`` is ``SegmentationResult.made_by()``; None (a bare labelmap) counts as a model of
    unknown use, so not for clinical use. Keys: ``label`` (SH, 16 characters), ``series_description``
    and ``model`` (LO, 64), ``software_versions`` (LO values), ``description`` (ST, 1024),
    ``clinical`` (bool), and the ``made_by`` fields themselves.
    """
    made_by = dict(made_by or {})
    made_by.setdefault("segmate_version", __version__)
    clinical = bool(made_by.get("clinical_use"))
    model = model_name(made_by.get("model_id"), made_by.get("model_version"))
    use = " ".join(str(made_by.get("intended_use") or "").split())
    description = (f"Made by SegMate {made_by['segmate_version']} with model {model}."
                   + ("" if clinical else f" {NOT_FOR_CLINICAL_USE.capitalize()}.")
                   + (f" Intended use: {use}" if use else ""))
    return {**made_by, "clinical": clinical, "model": model[:64],
            "label": "SegMate" if clinical else NOT_CLINICAL_LABEL,
            "series_description": "SegMate organs at risk" + ("" if clinical else f", {NOT_FOR_CLINICAL_USE}"),
            "software_versions": [f"SegMate {made_by['segmate_version']}"[:64], model[:64]],
            "description": description[:1024]}
