"""All the files of a case at once: :func:`write_outputs` stages them together and moves them into
place only when every one was written, so a case gets all the files asked for or none. Each format
itself is written atomically (:mod:`segmatecore.data.atomic`)."""
from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import SimpleITK as sitk

from segmatecore.choices import DICOM_FORMATS
from segmatecore.data.organs import segment_name
from segmatecore.export.common import resolve_legend
from segmatecore.export.dicom_seg import write_dicom_seg
from segmatecore.export.nifti import write_labels_nifti
from segmatecore.export.nrrd import seg_nrrd_fields, write_seg_nrrd
from segmatecore.export.preview import write_preview
from segmatecore.export.report import write_report
from segmatecore.export.rtstruct import write_rtstruct

OUTPUT_FILES = {
    "nifti": "labels.nii.gz",
    "seg.nrrd": "segmentation.seg.nrrd",
    "report": "report.json",
    "preview": "preview.png",
    "rtstruct": "rtstruct.dcm",
    "dicomseg": "seg.dcm",
}
DEFAULT_FORMATS = ("nifti", "seg.nrrd", "report", "preview")


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
    segment_name(resolve_legend(result.labels)[0][0], naming)  # validates naming before anything is written
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
    return write_dicom_seg(result.labelmap, result.labels, dicom_dir, path, series_uid=series_uid, naming=naming,
                           made_by=result.made_by())


def _case_title(result: Any) -> str:
    source = str(getattr(result, "source", "") or "")
    return Path(source).name if source else ""
