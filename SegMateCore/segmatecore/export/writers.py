"""Output files of a segmentation: NIfTI labels, Slicer .seg.nrrd, DICOM RTSTRUCT and SEG, JSON report, PNG preview.

Every writer writes to a temporary file beside the target and renames it into place, so an
interrupted run never leaves a half-written file; :func:`write_outputs` also stages a case's files
together, so a case either gets all the files asked for or none.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from segmatecore.choices import DICOM_FORMATS
from segmatecore.data.geometry import to_canonical
from segmatecore.models.intended_use import NOT_FOR_CLINICAL_USE
from segmatecore.data.organs import Organ, category, organ, segment_name

NOT_CLINICAL_LABEL = "NOT CLINICAL USE"  # the structure set label (SH: 16 characters) of such a model

OUTPUT_FILES = {
    "nifti": "labels.nii.gz",
    "seg.nrrd": "segmentation.seg.nrrd",
    "report": "report.json",
    "preview": "preview.png",
    "rtstruct": "rtstruct.dcm",
    "dicomseg": "seg.dcm",
}
DEFAULT_FORMATS = ("nifti", "seg.nrrd", "report", "preview")

# Slicer's terminology contexts that hold SNOMED-CT anatomical structures (Terminologies module).
SEGMENTATION_CONTEXT = "Segmentation category and type - DICOM master list"
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"

# Window (level, width) in HU for the preview.
WINDOWS = {"soft_tissue": (40.0, 400.0), "lung": (-600.0, 1500.0)}
OVERLAY_ALPHA = 0.45


# --------------------------------------------------------------------------------------------- common

@contextlib.contextmanager
def _atomic_target(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` (same extension), renamed onto ``path`` only on success.

    The writer creates the temporary file itself, so it gets the usual permissions (umask).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    extension = path.name[path.name.index("."):] if "." in path.name else ""
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.partial{extension}"
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _resolve_legend(legend: Mapping[str, int]) -> list[tuple[Organ, int]]:
    """The labelmap's legend (organ key -> label value) as (organ, value) pairs, checked."""
    if not legend:
        raise ValueError("No organs given to export; pass the labelmap's legend {organ key: label value} "
                         "(SegmentationResult.labels).")
    resolved = [(organ(k), int(v)) for k, v in legend.items()]
    bad = [f"{o.key}={v}" for o, v in resolved if not 1 <= v <= 255]
    if bad or len({v for _, v in resolved}) != len(resolved):
        raise ValueError(f"label values must be distinct and in 1..255; got {dict(legend)}.")
    return resolved


def _check_labelmap(labelmap: sitk.Image) -> sitk.Image:
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


def _code(code: Mapping[str, str]) -> list[str]:
    return [code["scheme"], code["code"], code["meaning"]]


def slicer_terminology(o: Organ) -> dict[str, Any]:
    """The organ's terminology in slicerio's dict form (Slicer stores it as a TerminologyEntry tag)."""
    terminology = {"contextName": SEGMENTATION_CONTEXT, "category": _code(category()), "type": _code(o.type),
                   "anatomicContextName": ANATOMIC_CONTEXT}
    if o.modifier:
        terminology["typeModifier"] = _code(o.modifier)
    return terminology


# --------------------------------------------------------------------------------------------- NIfTI, .seg.nrrd

def write_labels_nifti(labelmap: sitk.Image, path: str | os.PathLike) -> Path:
    """uint8 NIfTI labelmap (value k+1 = organ channel k, 0 = background), compressed.

    NIfTI keeps its geometry in single precision, so the stored origin and directions can differ
    from the input's by float32 rounding (below a micrometre); the .seg.nrrd keeps full precision.
    """
    labelmap = _check_labelmap(labelmap)
    with _atomic_target(path) as tmp:
        sitk.WriteImage(labelmap, str(tmp), useCompression=True)
    return Path(path)


def seg_nrrd_fields(made_by: Mapping[str, Any]) -> dict[str, str]:
    """NRRD header fields (``key:=value``) that say what made a segmentation (``SegmentationResult.made_by()``)."""
    fields = {"SegMate_Version": made_by.get("segmate_version"), "SegMate_ModelId": made_by.get("model_id"),
              "SegMate_ModelVersion": made_by.get("model_version"), "SegMate_IntendedUse": made_by.get("intended_use"),
              "SegMate_ClinicalUse": "true" if made_by.get("clinical_use") else "false"}
    if not made_by.get("clinical_use"):
        fields["SegMate_Notice"] = NOT_FOR_CLINICAL_USE
    return {k: " ".join(str(v).split()) for k, v in fields.items() if v is not None}  # one line each


def write_seg_nrrd(labelmap: sitk.Image, legend: Mapping[str, int], path: str | os.PathLike,
                   naming: str = "standard", tags: dict[str, dict[str, str]] | None = None,
                   header: Mapping[str, str] | None = None) -> Path:
    """Slicer segmentation with one segment per organ: name, recommended colour and SNOMED-CT terminology.

    ``tags`` (organ key -> {tag: value}, e.g. ``SegmentationResult.segment_tags()``) are stored with
    each segment, where Slicer shows and keeps them; ``header`` fields (e.g. :func:`seg_nrrd_fields`)
    go into the NRRD header.

    The voxels are the labelmap's own (``legend``: organ key -> label value; labels of organs not
    listed become background) on exactly its grid, so Slicer shows it aligned with the CT.
    """
    import slicerio

    labelmap = _check_labelmap(labelmap)
    chosen = _resolve_legend(legend)
    names = [segment_name(o, naming) for o, _ in chosen]
    keep = np.zeros(256, dtype=bool)
    keep[[value for _, value in chosen]] = True
    voxels = sitk.GetArrayFromImage(labelmap)  # [k, j, i], written with index_order="C" (no transposed copy)
    voxels[~keep[voxels]] = 0
    size = labelmap.GetSize()
    segmentation = {
        "voxels": voxels,
        "ijkToLPS": ijk_to_lps(labelmap),
        "containedRepresentationNames": ["Binary labelmap"],
        "segments": [{"id": o.key, "labelValue": value, "layer": 0, "name": name, "nameAutoGenerated": False,
                      "color": list(o.color_float), "colorAutoGenerated": False,
                      "extent": [0, size[0] - 1, 0, size[1] - 1, 0, size[2] - 1],
                      "terminology": slicer_terminology(o),
                      **({"tags": dict(tags[o.key])} if tags and o.key in tags else {})}
                     for (o, value), name in zip(chosen, names)],
        **{str(k): str(v) for k, v in (header or {}).items()},
    }
    with _atomic_target(path) as tmp:
        slicerio.write_segmentation(str(tmp), segmentation, index_order="C")
    return Path(path)


# --------------------------------------------------------------------------------------------- report

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
    from segmatecore import __version__

    summary = result.to_dict()
    model = dict(summary.pop("model", {}) or {})
    chosen = _resolve_legend(result.labels)
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
    with _atomic_target(path) as tmp:
        tmp.write_text(text + "\n", encoding="utf-8")
    return Path(path)


# --------------------------------------------------------------------------------------------- preview

def _label_statistics(labelmap: sitk.Image) -> sitk.LabelShapeStatisticsImageFilter:
    """Voxel counts and centroids of every label, in one pass of ITK (memory stays at the labelmap's)."""
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.ComputePerimeterOff()
    stats.ComputeFeretDiameterOff()
    stats.Execute(labelmap)
    return stats


def _organs_centre(labelmap: sitk.Image, stats: sitk.LabelShapeStatisticsImageFilter,
                   chosen: Sequence[tuple[Organ, int]], frame: Any) -> tuple[int, int, int]:
    """Canonical voxel index of the organs' centre of mass (the volume centre when there are none)."""
    present = [value for _, value in chosen if value in set(stats.GetLabels())]
    if not present:
        return tuple(n // 2 for n in frame.canonical_shape)  # type: ignore[return-value]
    weights = np.array([stats.GetNumberOfPixels(label) for label in present], dtype=float)
    centroid = weights @ np.array([stats.GetCentroid(label) for label in present]) / weights.sum()
    index = labelmap.TransformPhysicalPointToContinuousIndex(centroid.tolist())
    centre = []
    for c, axis in enumerate(frame.axes):
        value = frame.size[axis] - 1 - index[axis] if frame.flips[c] else index[axis]
        centre.append(int(np.clip(round(value), 0, frame.size[axis] - 1)))
    return tuple(centre)  # type: ignore[return-value]


def oriented_views(image: sitk.Image, labelmap: sitk.Image, legend: Mapping[str, int],
                   stats: sitk.LabelShapeStatisticsImageFilter | None = None) -> dict[str, dict[str, Any]]:
    """Axial, coronal and sagittal slices through the organs' centre, in radiological display layout.

    Each view has ``ct`` and ``labels`` 2D arrays whose row 0 is the top of the picture, the
    physical ``pixel_mm`` (height, width), the slice ``position`` (RAS, as Slicer shows it) and the
    patient directions at the ``left``/``right`` edges. Axial: seen from the feet, patient's right
    on the left, anterior up. Coronal: seen from the front, patient's right on the left, superior
    up. Sagittal: anterior on the left, superior up. Built on the canonical RAS layout, so any input
    direction shows upright anatomy.
    """
    if image.GetSize() != labelmap.GetSize():
        raise ValueError(f"The CT ({image.GetSize()}) and the labelmap ({labelmap.GetSize()}) differ in size; "
                         "pass the image that was segmented.")
    if not (np.allclose(image.GetSpacing(), labelmap.GetSpacing(), rtol=1e-5)
            and np.allclose(image.GetDirection(), labelmap.GetDirection(), atol=1e-5)
            and np.allclose(image.GetOrigin(), labelmap.GetOrigin(), atol=1e-3)):
        raise ValueError("The CT and the labelmap have different geometry; pass the image that was segmented.")
    ct, frame = to_canonical(image)
    labels, _ = to_canonical(labelmap)
    stats = stats or _label_statistics(labelmap)
    ci, cj, ck = _organs_centre(labelmap, stats, _resolve_legend(legend), frame)
    sr, sa, ss = frame.spacing
    index = [0, 0, 0]
    for c, value in enumerate((ci, cj, ck)):
        axis = frame.axes[c]
        index[axis] = frame.size[axis] - 1 - value if frame.flips[c] else value
    x, y, z = labelmap.TransformIndexToPhysicalPoint(index)
    right, anterior, superior = -x, -y, z  # LPS -> RAS, as Slicer shows slice offsets
    # Canonical axes: i -> patient right, j -> anterior, k -> superior. Reversing i puts the patient's
    # right on the picture's left; reversing j / k puts anterior / superior at the top.
    views = {
        "axial": (np.s_[::-1, ::-1, ck], (sa, sr), f"S {superior:.1f} mm", ("R", "L")),
        "coronal": (np.s_[::-1, cj, ::-1], (ss, sr), f"A {anterior:.1f} mm", ("R", "L")),
        "sagittal": (np.s_[ci, ::-1, ::-1], (ss, sa), f"R {right:.1f} mm", ("A", "P")),
    }
    # Copies: the canonical arrays are views of the images' buffers, which the caller may free.
    return {name: {"ct": np.array(ct[cut].T), "labels": np.array(labels[cut].T), "pixel_mm": pixel_mm,
                   "position": position, "left": edges[0], "right": edges[1]}
            for name, (cut, pixel_mm, position, edges) in views.items()}


def write_preview(image: sitk.Image, labelmap: sitk.Image, legend: Mapping[str, int], path: str | os.PathLike,
                  window: str | tuple[float, float] = "soft_tissue", title: str | None = None) -> Path:
    """PNG of axial, coronal and sagittal views with the organs overlaid in their colours and a legend.

    ``window`` is "soft_tissue" (level 40, width 400 HU), "lung" (-600, 1500) or (level, width).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    labelmap = _check_labelmap(labelmap)
    chosen = _resolve_legend(legend)
    if isinstance(window, str):
        if window not in WINDOWS:
            raise ValueError(f"Unknown preview window {window!r}; use one of {', '.join(WINDOWS)} or (level, width).")
        window = WINDOWS[window]
    level, width = window
    stats = _label_statistics(labelmap)
    views = oriented_views(image, labelmap, legend, stats)

    colours = np.zeros((256, 4))
    for o, value in chosen:
        colours[value] = (*o.color_float, OVERLAY_ALPHA)
    found = set(stats.GetLabels())

    fig = Figure(figsize=(13.5, 5.6), dpi=100, facecolor="black")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3, gridspec_kw={"left": 0.01, "right": 0.99, "top": 0.9, "bottom": 0.16, "wspace": 0.04})
    for ax, (name, view) in zip(axes, views.items()):
        rows, cols = view["ct"].shape
        height_mm, width_mm = rows * view["pixel_mm"][0], cols * view["pixel_mm"][1]
        extent = (0.0, width_mm, height_mm, 0.0)  # physical extent: correct aspect ratio whatever the spacing
        ax.imshow(view["ct"].astype(np.float32), cmap="gray", vmin=level - width / 2, vmax=level + width / 2,
                  extent=extent, interpolation="bilinear")
        ax.imshow(colours[view["labels"]], extent=extent, interpolation="nearest")
        ax.set_title(f"{name}   {view['position']}", color="white", fontsize=11)
        text = {"color": "yellow", "fontsize": 13, "fontweight": "bold", "va": "center"}
        ax.text(0.02, 0.5, view["left"], transform=ax.transAxes, ha="left", **text)
        ax.text(0.98, 0.5, view["right"], transform=ax.transAxes, ha="right", **text)
        ax.set_axis_off()
    handles = [Patch(facecolor=o.color_float, edgecolor="white", label=o.display_name)
               for o, value in chosen if value in found]
    if handles:
        legend = fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 0.04),
                            ncol=min(len(handles), 5), frameon=False, fontsize=10)
        for label in legend.get_texts():
            label.set_color("white")
    missing = [o.display_name for o, value in chosen if value not in found]
    if missing:
        fig.text(0.5, 0.015, "Not found: " + ", ".join(missing), color="#bbbbbb", fontsize=9, ha="center")
    if title:
        fig.suptitle(title, color="white", fontsize=12)
    with _atomic_target(path) as tmp:
        fig.savefig(tmp, format="png", facecolor=fig.get_facecolor())
    return Path(path)


# --------------------------------------------------------------------------------------------- RTSTRUCT

def _series_files(dicom_dir: Path, series_uid: str | None) -> tuple[list[str], int]:
    """The files of the series in ``dicom_dir`` that the reader picks (``series_uid``, else the largest CT
    series), and how many series the folder holds."""
    import pydicom

    from segmatecore.data.io import choose_series, list_dicom_series

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


@contextlib.contextmanager
def _series_folder(dicom_dir: Path, files: list[str], series_count: int) -> Iterator[Path]:
    """A folder holding exactly ``files``: rt-utils reads every DICOM image below the folder it is given."""
    if series_count == 1 and not any(p.is_dir() for p in dicom_dir.iterdir()):
        yield dicom_dir
        return
    with tempfile.TemporaryDirectory(prefix="segmate-series-") as staging:
        for index, file in enumerate(files):
            link = Path(staging) / f"{index:05d}.dcm"
            try:
                os.symlink(os.path.abspath(file), link)
            except OSError:  # no symlinks (e.g. Windows without developer mode)
                shutil.copy2(file, link)
        yield Path(staging)


def _rtutils_grid(series_data: Sequence[Any]) -> sitk.Image:
    """An empty image on the grid of rt-utils' masks: mask[row, column, slice] of its sorted series.

    Directions and slice spacing come from rt-utils' own functions, so the grid is the one its
    contours are computed on.
    """
    from rt_utils import image_helper

    first = series_data[0]
    row_spacing, column_spacing = (float(v) for v in first.PixelSpacing)
    if abs(row_spacing - column_spacing) > 1e-6 * max(row_spacing, column_spacing):
        raise ValueError(f"The series has non-square pixels ({row_spacing} x {column_spacing} mm); rt-utils places "
                         "contours wrongly for those (qurit/rt-utils issue #92), so no RTSTRUCT is written.")
    row_dir, column_dir, slice_dir = image_helper.get_slice_directions(first)
    grid = sitk.Image([int(first.Columns), int(first.Rows), len(series_data)], sitk.sitkUInt8)
    grid.SetOrigin([float(v) for v in first.ImagePositionPatient])
    grid.SetSpacing([column_spacing, row_spacing, float(image_helper.get_spacing_between_slices(series_data))])
    grid.SetDirection(np.column_stack([row_dir, column_dir, slice_dir]).flatten().tolist())
    return grid


def _check_same_grid(labelmap: sitk.Image, grid: sitk.Image, tolerance: float = 1e-2) -> None:
    """Raise unless every voxel centre of ``grid`` is a voxel centre of ``labelmap`` (a permutation/flip)."""
    origin = np.array(labelmap.TransformPhysicalPointToContinuousIndex(grid.GetOrigin()))
    steps = [np.array(labelmap.TransformPhysicalPointToContinuousIndex(
        grid.TransformContinuousIndexToPhysicalPoint([float(a == axis) for a in range(3)]))) - origin
        for axis in range(3)]
    corner = origin + sum((n - 1) * step for n, step in zip(grid.GetSize(), steps))
    aligned = (np.all(np.abs(origin - np.round(origin)) < tolerance)
               and all(np.sum(np.abs(np.abs(step) - np.eye(3)[int(np.argmax(np.abs(step)))])) < tolerance
                       for step in steps)
               and len({int(np.argmax(np.abs(step))) for step in steps}) == 3
               and np.all(np.round(np.minimum(origin, corner)) == 0)
               and np.all(np.round(np.maximum(origin, corner)) == np.array(labelmap.GetSize()) - 1))
    if not aligned:
        raise ValueError("The labelmap is not on the voxel grid of this DICOM series; write the RTSTRUCT with the "
                         "labelmap that was segmented from this series.")


def rtutils_mask_order(labelmap: sitk.Image, series_data: Sequence[Any]) -> np.ndarray:
    """The labelmap as rt-utils masks expect it: [row, column, slice] of rt-utils' sorted series."""
    grid = _rtutils_grid(series_data)
    _check_same_grid(labelmap, grid)
    on_grid = sitk.Resample(labelmap, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return np.transpose(sitk.GetArrayFromImage(on_grid), (1, 2, 0))  # [slice, row, col] -> [row, col, slice]


def dicom_texts(made_by: Mapping[str, Any] | None) -> dict[str, Any]:
    """What the DICOM objects (RTSTRUCT, SEG) say about what made them, within their VRs' lengths.

    ``made_by`` is ``SegmentationResult.made_by()``; None (a bare labelmap) counts as a model of
    unknown use, so not for clinical use. Keys: ``label`` (SH, 16 characters), ``series_description``
    and ``model`` (LO, 64), ``software_versions`` (LO values), ``description`` (ST, 1024),
    ``clinical`` (bool), and the ``made_by`` fields themselves.
    """
    from segmatecore import __version__

    made_by = dict(made_by or {})
    made_by.setdefault("segmate_version", __version__)
    clinical = bool(made_by.get("clinical_use"))
    model = " ".join(str(v) for v in (made_by.get("model_id"), made_by.get("model_version")) if v) or "custom model"
    use = " ".join(str(made_by.get("intended_use") or "").split())
    description = (f"Made by SegMate {made_by['segmate_version']} with model {model}."
                   + ("" if clinical else f" {NOT_FOR_CLINICAL_USE.capitalize()}.")
                   + (f" Intended use: {use}" if use else ""))
    return {**made_by, "clinical": clinical, "model": model[:64],
            "label": "SegMate" if clinical else NOT_CLINICAL_LABEL,
            "series_description": "SegMate organs at risk" + ("" if clinical else f", {NOT_FOR_CLINICAL_USE}"),
            "software_versions": [f"SegMate {made_by['segmate_version']}"[:64], model[:64]],
            "description": description[:1024]}


def write_rtstruct(labelmap: sitk.Image, legend: Mapping[str, int], dicom_dir: str | os.PathLike,
                   path: str | os.PathLike, series_uid: str | None = None,
                   made_by: Mapping[str, Any] | None = None) -> Path:
    """DICOM RTSTRUCT (rt-utils) referencing the CT series, one ROI per non-empty organ, TG-263 names.

    Organs without any voxel get no ROI (many RT systems reject ROIs without contours); the report
    lists their volume as 0. ``made_by`` (``SegmentationResult.made_by()``) goes into the structure
    set's label and description, the series description and the software versions: for a model not
    for clinical use they say so (:func:`dicom_texts`).
    """
    from rt_utils import RTStructBuilder

    labelmap = _check_labelmap(labelmap)
    chosen = _resolve_legend(legend)
    dicom_dir = Path(dicom_dir)
    files, series_count = _series_files(dicom_dir, series_uid)
    with _series_folder(dicom_dir, files, series_count) as folder:
        rtstruct = RTStructBuilder.create_new(dicom_series_path=str(folder))
    masks = rtutils_mask_order(labelmap, rtstruct.series_data)
    for o, value in chosen:
        mask = masks == value
        if mask.any():
            rtstruct.add_roi(mask=mask, color=list(o.color), name=o.tg263, description=o.display_name,
                             roi_generation_algorithm=0)
    texts = dicom_texts(made_by)
    ds = rtstruct.ds
    ds.Manufacturer = "SegMate"
    ds.ManufacturerModelName = "SegMate"
    ds.SoftwareVersions = texts["software_versions"]
    ds.StructureSetLabel = texts["label"]
    ds.StructureSetDescription = texts["description"]
    ds.SeriesDescription = texts["series_description"]
    for observation in ds.RTROIObservationsSequence:
        observation.RTROIInterpretedType = "ORGAN"
    with _atomic_target(path) as tmp:
        ds.save_as(str(tmp))  # what RTStruct.save does, without its print
    return Path(path)


# --------------------------------------------------------------------------------------------- all outputs

def write_outputs(result: Any, outdir: str | os.PathLike, formats: Sequence[str] = DEFAULT_FORMATS,
                  image: sitk.Image | None = None, dicom_dir: str | os.PathLike | None = None,
                  naming: str = "standard", series_uid: str | None = None) -> dict[str, Path]:
    """Write a case's files into ``outdir`` (names in :data:`OUTPUT_FILES`); all of them or, on error, none.

    ``image`` (the CT) is needed for the preview; ``dicom_dir`` for the RTSTRUCT and the DICOM SEG
    (default: the folder the result's DICOM series was read from). ``naming`` ("standard" or
    "tg263") names the segments of the .seg.nrrd and the DICOM SEG; RTSTRUCT ROIs always carry
    TG-263 names, as radiotherapy systems expect.
    """
    formats = list(dict.fromkeys([formats] if isinstance(formats, str) else formats))
    unknown = [f for f in formats if f not in OUTPUT_FILES]
    if unknown or not formats:
        raise ValueError(f"Unknown output format(s) {', '.join(unknown) or '(none given)'}; "
                         f"choose from {', '.join(OUTPUT_FILES)}.")
    segment_name(_resolve_legend(result.labels)[0][0], naming)  # validates naming before anything is written
    if "preview" in formats and image is None:
        raise ValueError("The preview needs the CT image: pass image=..., or leave 'preview' out of formats.")
    dicom_formats = [f for f in formats if f in DICOM_FORMATS]
    if dicom_formats:
        dicom_dir = dicom_dir or getattr(result, "dicom_dir", None)
        if dicom_dir is None:
            raise ValueError(f"{', '.join(dicom_formats)} needs the DICOM series the CT was read from: pass "
                             f"dicom_dir=..., or leave {', '.join(dicom_formats)} out of formats.")
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    writers = {
        "nifti": lambda p: write_labels_nifti(result.labelmap, p),
        "seg.nrrd": lambda p: write_seg_nrrd(result.labelmap, result.labels, p, naming=naming,
                                             tags=result.segment_tags(), header=seg_nrrd_fields(result.made_by())),
        "report": lambda p: write_report(result, p),
        "preview": lambda p: write_preview(image, result.labelmap, result.labels, p, title=_case_title(result)),
        "rtstruct": lambda p: write_rtstruct(result.labelmap, result.labels, dicom_dir, p, series_uid=series_uid,
                                             made_by=result.made_by()),
        "dicomseg": lambda p: _write_dicom_seg(result, dicom_dir, p, naming, series_uid),
    }
    with tempfile.TemporaryDirectory(dir=outdir, prefix=".segmate-partial-") as staging:
        for fmt in formats:
            writers[fmt](Path(staging) / OUTPUT_FILES[fmt])
        written = {}
        for fmt in formats:
            target = outdir / OUTPUT_FILES[fmt]
            os.replace(Path(staging) / OUTPUT_FILES[fmt], target)
            written[fmt] = target
    return written


def _write_dicom_seg(result: Any, dicom_dir: str | os.PathLike, path: Path, naming: str,
                     series_uid: str | None) -> Path:
    from segmatecore.export.dicom_seg import write_dicom_seg

    return write_dicom_seg(result.labelmap, result.labels, dicom_dir, path, series_uid=series_uid, naming=naming,
                           made_by=result.made_by())


def _case_title(result: Any) -> str:
    source = str(getattr(result, "source", "") or "")
    return Path(source).name if source else ""
