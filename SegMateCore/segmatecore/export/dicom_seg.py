"""DICOM Segmentation (SEG) output with highdicom: one binary segment per organ, on the CT series' own frames.

The frames are the source series' images themselves (their positions, orientation and pixel
spacing, in the order the series' files are read), not a resampled copy: each image's plane is
looked up in the labelmap, which must hold it voxel for voxel. Segments are coded with the organ
table's SNOMED-CT category, type and laterality modifier and carry the organ's recommended colour;
the algorithm identification names SegMate and the model, and the series description says when
the model is not for clinical use.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from segmatecore.data.atomic import atomic_path
from segmatecore.data.organs import Organ, category, segment_name
from segmatecore.export.common import check_labelmap, dicom_texts, resolve_legend, series_files

SEG_SERIES_NUMBER = 901  # the SEG's own series in the study; any number not taken by the CT's usual series
CONTENT_LABEL = "SEGMATE"  # CS, at most 16 characters
GRID_TOLERANCE = 0.05  # voxels: how far an image's pixel centres may lie from the labelmap's voxel centres


def source_datasets(dicom_dir: str | os.PathLike, series_uid: str | None = None) -> list[Any]:
    """The headers of the series' images (the series the CT reader picks), in the reader's order."""
    import pydicom

    files, _ = series_files(Path(dicom_dir), series_uid)
    return [pydicom.dcmread(f, stop_before_pixels=True) for f in files]


def _image_plane(ds: Any) -> sitk.Image:
    """An empty one-slice image with exactly the pixel grid of one DICOM image (its plane in LPS)."""
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        row_spacing, column_spacing = (float(v) for v in ds.PixelSpacing)
        orientation = np.array([float(v) for v in ds.ImageOrientationPatient])
        position = [float(v) for v in ds.ImagePositionPatient]
    except (AttributeError, TypeError, ValueError):
        raise ValueError(f"DICOM image {ds.get('SOPInstanceUID', '?')} lacks its plane geometry (Rows, Columns, "
                         "PixelSpacing, ImageOrientationPatient, ImagePositionPatient); no DICOM SEG can be "
                         "written for this series.") from None
    along_row, along_column = orientation[:3], orientation[3:]  # directions of increasing column / row index
    plane = sitk.Image([columns, rows, 1], sitk.sitkUInt8)
    plane.SetOrigin(position)
    plane.SetSpacing([column_spacing, row_spacing, 1.0])
    plane.SetDirection(np.column_stack([along_row, along_column, np.cross(along_row, along_column)]).flatten().tolist())
    return plane


def _check_plane_on_grid(labelmap: sitk.Image, plane: sitk.Image) -> None:
    """Raise unless every pixel centre of ``plane`` is a voxel centre of ``labelmap`` (no interpolation)."""
    columns, rows, _ = plane.GetSize()

    def index(i: float, j: float) -> np.ndarray:
        return np.array(labelmap.TransformPhysicalPointToContinuousIndex(
            plane.TransformContinuousIndexToPhysicalPoint([i, j, 0.0])))

    origin = index(0, 0)
    steps = [index(1, 0) - origin, index(0, 1) - origin]
    axes = [int(np.argmax(np.abs(step))) for step in steps]
    corners = [origin, index(columns - 1, 0), index(0, rows - 1), index(columns - 1, rows - 1)]
    size = np.array(labelmap.GetSize()) - 1
    aligned = (np.all(np.abs(origin - np.round(origin)) < GRID_TOLERANCE) and axes[0] != axes[1]
               and all(np.sum(np.abs(np.abs(step) - np.eye(3)[axis])) < GRID_TOLERANCE
                       for step, axis in zip(steps, axes))
               and all(np.all(c > -GRID_TOLERANCE) and np.all(c < size + GRID_TOLERANCE) for c in corners))
    if not aligned:
        raise ValueError("The labelmap is not on the voxel grid of this DICOM series; write the DICOM SEG with the "
                         "labelmap that was segmented from this series.")


def frames_on_source(labelmap: sitk.Image, datasets: Sequence[Any]) -> np.ndarray:
    """The labelmap as one frame per source image, [image, row, column], in the order of ``datasets``."""
    frames = np.zeros((len(datasets), int(datasets[0].Rows), int(datasets[0].Columns)), dtype=np.uint8)
    for k, ds in enumerate(datasets):
        plane = _image_plane(ds)
        if plane.GetSize()[:2] != (frames.shape[2], frames.shape[1]):
            raise ValueError("The images of this DICOM series differ in size; a DICOM SEG needs one image size.")
        _check_plane_on_grid(labelmap, plane)
        on_plane = sitk.Resample(labelmap, plane, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
        frames[k] = sitk.GetArrayFromImage(on_plane)[0]
    return frames


def _coded(code: Mapping[str, str]) -> Any:
    from highdicom.sr import CodedConcept

    return CodedConcept(value=code["code"], scheme_designator=code["scheme"], meaning=code["meaning"])


def segment_description(number: int, o: Organ, naming: str, algorithm: Any) -> Any:
    """One segment: the organ's name, SNOMED-CT codes (with its laterality modifier) and recommended colour."""
    import highdicom as hd

    description = hd.seg.SegmentDescription(
        segment_number=number, segment_label=segment_name(o, naming)[:64],
        segmented_property_category=_coded(category()), segmented_property_type=_coded(o.type),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm,
        display_color=hd.color.CIELabColor.from_rgb(*o.color))
    if o.modifier:  # DICOM: the modifier sits inside the property type's code item
        description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [_coded(o.modifier)]
    return description


def algorithm_identification(texts: Mapping[str, Any]) -> Any:
    """SegMate and the model (name, version), with SegMate's version and the model's intended use as parameters."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    parameters = {"segmate_version": str(texts["segmate_version"]), "model_id": str(texts.get("model_id") or ""),
                  "model_version": str(texts.get("model_version") or ""),
                  "clinical_use": "true" if texts["clinical"] else "false"}
    return hd.AlgorithmIdentificationSequence(
        name=f"SegMate {texts.get('model_id') or 'custom model'}"[:64], family=codes.DCM.ArtificialIntelligence,
        version=str(texts.get("model_version") or texts["segmate_version"])[:64],
        source=f"SegMate {texts['segmate_version']}"[:64], parameters=parameters)


def write_dicom_seg(labelmap: sitk.Image, legend: Mapping[str, int], dicom_dir: str | os.PathLike,
                    path: str | os.PathLike, series_uid: str | None = None, naming: str = "standard",
                    made_by: Mapping[str, Any] | None = None) -> Path:
    """A binary DICOM SEG referencing the CT series in ``dicom_dir``: one segment per organ of ``legend``
    (organ key -> label value), in its order, on the series' own image frames.

    ``made_by`` (``SegmentationResult.made_by()``) names the model in the algorithm identification;
    for a model not for clinical use the series and content descriptions say so. Frames without
    any organ are left out, as the standard allows.
    """
    import highdicom as hd

    labelmap = check_labelmap(labelmap)
    chosen = resolve_legend(legend)
    datasets = source_datasets(dicom_dir, series_uid)
    segment_of_label = np.zeros(256, dtype=np.uint8)
    for number, (_, value) in enumerate(chosen, start=1):
        segment_of_label[value] = number
    frames = segment_of_label[frames_on_source(labelmap, datasets)]  # label values -> segment numbers
    texts = dicom_texts(made_by)
    with warnings.catch_warnings():  # the CT's own patient name, copied as it is, may be a single component
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name")
        seg = _segmentation(hd, datasets, frames, chosen, naming, texts)
    with atomic_path(path) as tmp:
        seg.save_as(str(tmp))
    return Path(path)


def _segmentation(hd: Any, datasets: Sequence[Any], frames: np.ndarray, chosen: Sequence[tuple[Organ, int]],
                  naming: str, texts: Mapping[str, Any]) -> Any:
    from pydicom.uid import generate_uid

    algorithm = algorithm_identification(texts)
    return hd.seg.Segmentation(
        source_images=datasets, pixel_array=frames, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment_description(n, o, naming, algorithm) for n, (o, _) in enumerate(chosen, start=1)],
        series_instance_uid=generate_uid(), series_number=SEG_SERIES_NUMBER, sop_instance_uid=generate_uid(),
        instance_number=1, manufacturer="SegMate", manufacturer_model_name="SegMate",
        software_versions=texts["software_versions"], device_serial_number=texts["model"] or "SegMate",
        content_label=CONTENT_LABEL, content_description=texts["series_description"][:64],
        series_description=texts["series_description"][:64], specific_character_set="ISO_IR 192")
