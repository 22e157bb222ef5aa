"""Checks on an input volume before segmentation: refuse what cannot be a CT volume, warn on doubt.

Refusals raise :class:`InputError` with one line that says what was found and what to do;
warnings are returned as strings so every caller (CLI, Slicer, batch) shows the same text.
The thresholds below are the table in docs/reliability.md; change both together.

Three entry points, cheapest first:

- :func:`validate_header`: geometry from a file header, before any voxel is read, so a volume too
  large for memory is refused without loading it;
- :func:`validate_dicom_series`: slice positions of a DICOM series, before SimpleITK stacks it
  (it places slices on a uniform grid, so gaps, uneven steps and gantry tilt move voxels);
- :func:`validate_volume`: the full check of an image in memory (geometry, then intensities).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from segmatecore.data.geometry import closest_canonical_axes

# Spacing in mm: outside [MIN, MAX] the header is broken (or in metres); outside TYPICAL, warn.
MIN_SPACING_MM = 0.01
MAX_SPACING_MM = 100.0
TYPICAL_IN_PLANE_MM = (0.2, 3.0)
TYPICAL_SLICE_MM = (0.2, 10.0)
# Directions: tolerance for "unit" and "orthogonal"; obliquity (or tilt) beyond this is warned.
DIRECTION_TOLERANCE = 1e-3
OBLIQUE_WARN_DEGREES = 15.0
# Size: fewer axial slices than the 2.5D context is warned; more voxels than MAX is refused.
MIN_CONTEXT_SLICES = 3
MAX_VOXELS = 2**31
# Intensities: CT in HU holds air (about -1000) and tissue or bone (above 100).
CT_AIR_BELOW_HU = -500.0
CT_TISSUE_ABOVE_HU = 100.0
# DICOM: a step larger than this times the usual one is a missing slice; positions off by more than
# WARN (fraction of the step) are warned, by more than REFUSE they would land on another slice.
MISSING_SLICE_FACTOR = 1.5
POSITION_WARN_FRACTION = 0.05
POSITION_REFUSE_FRACTION = 0.5
_CHUNK_VOXELS = 1 << 24

_IPP, _IOP, _MODALITY, _ROWS, _COLUMNS = "0020|0032", "0020|0037", "0008|0060", "0028|0010", "0028|0011"


class InputError(ValueError):
    """An input SegMate refuses; the message says what was found and what is expected."""


def validate_volume(image: sitk.Image, source: str = "input") -> list[str]:
    """Refuse what SegMate cannot segment; return the warnings for what it can but doubts."""
    warnings = validate_geometry(image.GetDimension(), image.GetNumberOfComponentsPerPixel(), image.GetSize(),
                                 image.GetSpacing(), image.GetDirection(), source,
                                 pixel_type=image.GetPixelIDTypeAsString())
    return warnings + validate_intensities(image, source)


def validate_header(reader: sitk.ImageFileReader, source: str = "input") -> list[str]:
    """The geometry checks on a header read with ``ReadImageInformation()``, before the voxels are read."""
    pixel_type = sitk.GetPixelIDValueAsString(reader.GetPixelID())
    return validate_geometry(reader.GetDimension(), reader.GetNumberOfComponents(), reader.GetSize(),
                             reader.GetSpacing(), reader.GetDirection(), source, pixel_type=pixel_type)


def validate_geometry(dimension: int, components: int, size: Sequence[int], spacing: Sequence[float],
                      direction: Sequence[float], source: str = "input", pixel_type: str = "") -> list[str]:
    """Dimensions, components, size, spacing and direction; no voxel is touched."""
    _check_dimensions(dimension, components, size, pixel_type, source)
    _check_size(size, source)
    matrix = np.asarray(direction, dtype=float).reshape(3, 3)
    _check_direction_values(matrix, source)
    axes, _ = closest_canonical_axes(matrix)
    warnings = _check_spacing(spacing, axes, source)
    warnings += _check_obliquity(matrix, axes, source)
    slices = int(size[axes[2]])
    if slices < MIN_CONTEXT_SLICES:
        warnings.append(f"{source}: only {slices} axial slice{'s' if slices > 1 else ''}; the network reads each "
                        "slice with its neighbours above and below (repeating the edge slice), so results on so few "
                        "slices are less reliable than on a full scan.")
    return warnings


def _check_dimensions(dimension: int, components: int, size: Sequence[int], pixel_type: str, source: str) -> None:
    if dimension != 3:
        raise InputError(f"{source}: found a {dimension}D image of size {tuple(size)}; SegMate needs a 3D CT volume "
                         "(a stack of axial slices). Give one 3D volume (for a 4D series, extract one time point).")
    if components != 1:
        raise InputError(f"{source}: found {components} components per voxel (e.g. RGB or a vector image); SegMate "
                         "needs a scalar CT volume in Hounsfield units.")
    if "complex" in pixel_type.lower():
        raise InputError(f"{source}: found complex voxels ({pixel_type}); SegMate needs a real-valued CT volume "
                         "in Hounsfield units.")
    if min(size) < 1:
        raise InputError(f"{source}: the volume is empty (size {tuple(size)}); give a volume with at least one slice.")


def _check_size(size: Sequence[int], source: str) -> None:
    voxels = math.prod(int(s) for s in size)
    if voxels > MAX_VOXELS:
        raise InputError(f"{source}: {' x '.join(str(s) for s in size)} is {voxels:,} voxels, more than SegMate "
                         f"segments in one piece ({MAX_VOXELS:,}, e.g. 2048 x 2048 x 512); crop it to the region "
                         "to contour or resample it to a coarser grid first.")


def _check_direction_values(matrix: np.ndarray, source: str) -> None:
    if not np.isfinite(matrix).all() or abs(np.linalg.det(matrix)) < DIRECTION_TOLERANCE:
        raise InputError(f"{source}: the direction matrix {np.round(matrix, 4).ravel().tolist()} is degenerate "
                         "(its axes do not span 3D space); the file's orientation header is broken.")
    lengths = np.linalg.norm(matrix, axis=0)
    if np.any(np.abs(lengths - 1.0) > DIRECTION_TOLERANCE):
        raise InputError(f"{source}: the direction matrix columns have lengths {np.round(lengths, 4).tolist()}, "
                         "not 1; the orientation header is broken (voxel size belongs in the spacing).")


def _check_spacing(spacing: Sequence[float], axes: Sequence[int], source: str) -> list[str]:
    values = [float(s) for s in spacing]
    if not all(math.isfinite(s) and s > 0 for s in values):
        raise InputError(f"{source}: the voxel spacing {tuple(values)} must be positive and finite; the file's "
                         "header is broken.")
    if min(values) < MIN_SPACING_MM or max(values) > MAX_SPACING_MM:
        raise InputError(f"{source}: the voxel spacing {_mm(values)} mm is outside {MIN_SPACING_MM}-{MAX_SPACING_MM:g} "
                         "mm, so the header is wrong (metres instead of mm?); fix the spacing and try again.")
    in_plane = [values[axes[0]], values[axes[1]]]
    slice_mm = values[axes[2]]
    lo, hi = TYPICAL_IN_PLANE_MM
    slo, shi = TYPICAL_SLICE_MM
    if not (lo <= min(in_plane) and max(in_plane) <= hi and slo <= slice_mm <= shi):
        return [f"{source}: voxel spacing {_mm(in_plane)} mm in-plane and {slice_mm:g} mm between slices is outside "
                f"what CT scanners produce ({lo:g}-{hi:g} mm in-plane, {slo:g}-{shi:g} mm between slices); check the "
                "header's spacing. SegMate does not resample between slices, so results on such grids are less "
                "reliable."]
    return []


def _check_obliquity(matrix: np.ndarray, axes: Sequence[int], source: str) -> list[str]:
    """Warn when the image axes are far from the canonical axes SegMate slices along."""
    angles = [_angle_degrees(matrix[:, axes[c]], np.eye(3)[c]) for c in range(3)]
    oblique = max(angles)
    tilt = _shear_degrees(matrix)
    if oblique <= OBLIQUE_WARN_DEGREES:
        return []
    what = (f"sheared by {tilt:.1f} degrees (a gantry tilt kept as a sheared grid)" if tilt > 0.1
            else "oblique")
    return [f"{source}: the volume is {what}: its axes are up to {oblique:.1f} degrees from the patient axes. "
            "SegMate segments it in the closest canonical orientation without resampling, so the result stays exact "
            "on the input grid, but the network sees slices tilted that far from axial and may be less accurate."]


def _angle_degrees(u: np.ndarray, v: np.ndarray) -> float:
    cos = abs(float(np.dot(u, v))) / float(np.linalg.norm(u) * np.linalg.norm(v))
    return math.degrees(math.acos(min(1.0, cos)))


def _shear_degrees(matrix: np.ndarray) -> float:
    """How far the image axes are from perpendicular (0 for a rotation, the tilt for a tilted gantry)."""
    pairs = ((0, 1), (0, 2), (1, 2))
    return max(90.0 - _angle_degrees(matrix[:, a], matrix[:, b]) for a, b in pairs)


def validate_intensities(image: sitk.Image, source: str = "input") -> list[str]:
    """Refuse NaN or infinite voxels; warn when the values do not look like CT in Hounsfield units.

    Reads the voxels in slabs of a view, so even a 2,000-slice volume costs no extra copy.
    """
    array = sitk.GetArrayViewFromImage(image)
    floating = np.issubdtype(array.dtype, np.floating)
    slab = max(1, _CHUNK_VOXELS // max(1, array[0].size))
    lo, hi, bad = math.inf, -math.inf, 0
    for start in range(0, array.shape[0], slab):
        block = array[start:start + slab]
        if floating:
            finite = np.isfinite(block)
            if not finite.all():
                bad += int(block.size - np.count_nonzero(finite))
                continue
        lo, hi = min(lo, float(block.min())), max(hi, float(block.max()))
    if bad:
        raise InputError(f"{source}: {bad:,} voxels are NaN or infinite; fix or mask them (e.g. set them to "
                         "-1000 HU, air) before segmenting.")
    if lo == hi:
        return [f"{source}: every voxel is {lo:g}; the volume is blank, so there is nothing to segment."]
    if lo > CT_AIR_BELOW_HU or hi < CT_TISSUE_ABOVE_HU:
        return [f"{source}: intensities range {lo:g} to {hi:g}, which does not look like CT in Hounsfield units "
                "(air is about -1000 HU, soft tissue 0-100 HU). If this is CT stored with an offset (e.g. +1024), "
                "subtract it first; on other modalities (MR, PET) results are meaningless."]
    return []


def validate_dicom_series(file_names: Sequence[str], source: str = "input") -> list[str]:
    """Check the slices of one DICOM series, in the order they will be stacked, before reading the voxels.

    SimpleITK's ImageSeriesReader puts slice k at ``k * |last - first| / (n - 1)`` mm from the first
    slice, along the slice normal of the first file, so a missing slice, uneven steps or a tilted gantry move slices
    away from the position the scanner recorded. This measures that displacement in mm: beyond half
    a slice step the series is refused (masks would land on the wrong slice), smaller ones are warned.
    """
    if not file_names:
        raise InputError(f"{source}: the DICOM series has no files.")
    headers = [_dicom_header(name, source) for name in file_names]
    warnings: list[str] = []
    modalities = sorted({h["modality"] or "?" for h in headers})
    if modalities != ["CT"]:
        warnings.append(f"{source}: the DICOM modality is {', '.join(modalities)}, not CT; SegMate is trained on CT "
                        "and results on other modalities are meaningless.")
    sizes = sorted({(h["columns"], h["rows"]) for h in headers})
    if len(sizes) > 1:
        raise InputError(f"{source}: the series mixes slice sizes {', '.join(f'{c}x{r}' for c, r in sizes)}; it holds "
                         "more than one image stack (e.g. a localizer). Export the axial CT series alone.")
    if len(headers) < 2:  # one file (one slice, or an enhanced multi-frame CT): nothing to stack
        return warnings
    unplaced = next((name for name, h in zip(file_names, headers) if h["position"] is None), None)
    if unplaced is not None:
        raise InputError(f"{source}: {unplaced} has no valid Image Position/Orientation (Patient); SegMate cannot "
                         "place its slice. Export the series with its geometry tags.")
    orientation = np.array(headers[0]["orientation"])
    if any(np.abs(np.array(h["orientation"]) - orientation).max() > DIRECTION_TOLERANCE for h in headers):
        raise InputError(f"{source}: the series mixes slice orientations; it holds more than one image stack "
                         "(e.g. a localizer or reformats). Export the axial CT series alone.")
    return warnings + _check_slice_positions(np.array([h["position"] for h in headers]), orientation, source)


def _check_slice_positions(positions: np.ndarray, orientation: np.ndarray, source: str) -> list[str]:
    """Compare each slice's recorded position with where the uniform stack puts it."""
    n = len(positions)
    normal = np.cross(orientation[:3], orientation[3:])
    if np.linalg.norm(normal) < 0.5:
        raise InputError(f"{source}: the Image Orientation (Patient) {orientation.tolist()} does not give two "
                         "perpendicular unit vectors; the series' geometry tags are broken.")
    normal /= np.linalg.norm(normal)
    along = (positions - positions[0]) @ normal
    steps = np.diff(along)
    if np.any(np.abs(steps) < MIN_SPACING_MM):
        k = int(np.argmin(np.abs(steps)))
        raise InputError(f"{source}: slices {k + 1} and {k + 2} lie at the same position {tuple(round(float(v), 2) for v in positions[k])} mm; "
                         "the series holds more than one volume (e.g. several phases or echoes). Export one volume.")
    if not (np.all(steps > 0) or np.all(steps < 0)):
        raise InputError(f"{source}: the files are not in slice order (positions go back and forth along the "
                         "slice normal); pass them sorted by position, as GetGDCMSeriesFileNames returns them.")
    usual = float(np.median(np.abs(steps)))
    gaps = np.flatnonzero(np.abs(steps) > MISSING_SLICE_FACTOR * usual)
    if gaps.size:
        k = int(gaps[0])
        raise InputError(f"{source}: {gaps.size} gap{'s' if gaps.size > 1 else ''} in the slice positions (e.g. "
                         f"{abs(steps[k]):.2f} mm between slices {k + 1} and {k + 2} where the series steps "
                         f"{usual:.2f} mm): slices are missing, and stacking the rest evenly would put them in "
                         "the wrong place. Export the complete series, or resample it to even spacing first.")
    even = along[0] + np.arange(n) * (along[-1] - along[0]) / (n - 1)
    uneven = float(np.abs(along - even).max())
    if uneven > POSITION_REFUSE_FRACTION * usual:
        raise InputError(f"{source}: read as an evenly spaced stack, slices would sit up to {uneven:.2f} mm from "
                         f"their recorded positions (more than half the {usual:.2f} mm slice step): the spacing is "
                         "too uneven. Resample the series to even spacing first.")
    stack_spacing = float(np.linalg.norm(positions[-1] - positions[0])) / (n - 1)
    axis = normal if along[-1] > 0 else -normal
    stacked = positions[0] + np.arange(n)[:, None] * stack_spacing * axis
    error = float(np.linalg.norm(positions - stacked, axis=1).max())
    if error <= POSITION_WARN_FRACTION * usual:
        return []
    tilt = _angle_degrees(positions[-1] - positions[0], normal)
    if tilt > 0.1:
        return [f"{source}: gantry tilt of {tilt:.1f} degrees; SimpleITK stacks the slices as if untilted (no "
                f"resampling), so positions in the image and its labelmap are up to {error:.2f} mm from the scanner's "
                "positions (each labelmap slice still matches its CT slice)."]
    return [f"{source}: uneven slice spacing (steps from {np.abs(steps).min():.2f} to {np.abs(steps).max():.2f} mm); "
            f"read as an evenly spaced stack, slices sit up to {error:.2f} mm from their recorded positions."]


def _dicom_header(file_name: str, source: str) -> dict:
    """The tags the checks need (position and orientation None when missing or invalid)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(file_name))
    reader.LoadPrivateTagsOff()
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise InputError(f"{source}: {file_name} is not a readable DICOM file; remove it or export the series "
                         "again.") from None

    def tag(key: str) -> str:
        return reader.GetMetaData(key).strip(" \0") if reader.HasMetaDataKey(key) else ""

    try:
        position = [float(v) for v in tag(_IPP).split("\\")]
        orientation = [float(v) for v in tag(_IOP).split("\\")]
        if len(position) != 3 or len(orientation) != 6 or not np.isfinite(position + orientation).all():
            raise ValueError
    except ValueError:
        position = orientation = None
    return {"position": position, "orientation": orientation, "modality": tag(_MODALITY).upper(),
            "rows": tag(_ROWS), "columns": tag(_COLUMNS)}


def _mm(values: Sequence[float]) -> str:
    return " x ".join(f"{float(v):g}" for v in values)
