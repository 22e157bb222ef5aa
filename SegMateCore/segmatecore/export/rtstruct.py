"""DICOM RTSTRUCT output (rt-utils): one ROI per non-empty organ, referencing the CT series."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from segmatecore.data.atomic import atomic_path
from segmatecore.export.common import check_labelmap, dicom_texts, resolve_legend, series_files


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

    labelmap = check_labelmap(labelmap)
    chosen = resolve_legend(legend)
    dicom_dir = Path(dicom_dir)
    files, series_count = series_files(dicom_dir, series_uid)
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
    with atomic_path(path) as tmp:
        ds.save_as(str(tmp))  # what RTStruct.save does, without its print
    return Path(path)
