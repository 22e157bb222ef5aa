"""Reading CT volumes with SimpleITK: NIfTI, NRRD, MHA/MHD files and DICOM series folders.

Every failure becomes an :class:`~segmatecore.data.validation.InputError` with one line that says what
was found and what SegMate expects, so the CLI, the Slicer module and scripts show the same text.
"""
from __future__ import annotations

import contextlib
import gzip
import math
import os
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import SimpleITK as sitk

from segmatecore.data.validation import InputError, validate_dicom_series, validate_header, validate_volume

EXPECTED = "a NIfTI (.nii, .nii.gz), NRRD (.nrrd), MetaImage (.mha, .mhd) file or a folder with a DICOM CT series"
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".seg.nrrd", ".nrrd", ".nhdr", ".mha", ".mhd")
_MODALITY, _SERIES_UID, _DESCRIPTION = "0008|0060", "0020|000e", "0008|103e"


@dataclass
class LoadedVolume:
    """A validated input volume, where it came from and what looked doubtful about it."""

    image: sitk.Image
    source: str
    warnings: list[str] = field(default_factory=list)
    dicom_dir: Path | None = None
    series_uid: str | None = None
    read_seconds: float = 0.0


@dataclass(frozen=True)
class DicomSeries:
    """One series found in a DICOM folder (files sorted by slice position, as GDCM orders them)."""

    uid: str
    directory: Path
    files: tuple[str, ...]
    modality: str
    description: str

    @property
    def num_slices(self) -> int:
        return len(self.files)

    def label(self) -> str:
        uid = self.uid or "(no SeriesInstanceUID)"
        text = f"{uid} [{self.modality or '?'}, {self.num_slices} files"
        return text + (f", {self.description!r}]" if self.description else "]")


@contextlib.contextmanager
def _quiet_itk() -> Iterator[None]:
    """Silence ITK's stderr warnings while we turn failures into our own one-line errors."""
    previous = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(previous)


def _itk_reason(exc: Exception) -> str:
    """The last informative line of a SimpleITK exception, without source paths."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for line in reversed(lines):
        if "No such file or directory" not in line:
            return line.split("ERROR: ")[-1]
    return lines[-1] if lines else type(exc).__name__


def case_name(path: str | Path) -> str:
    """The name of a case: the file name without its image suffix, or the folder's name."""
    name = Path(path).name
    for suffix in VOLUME_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def load_volume(image_or_path: sitk.Image | str | os.PathLike | LoadedVolume,
                series_uid: str | None = None) -> LoadedVolume:
    """Read (if a path) and validate an input volume; raises InputError with a one-line message.

    A LoadedVolume (already read and validated) is returned as it is.
    """
    if isinstance(image_or_path, LoadedVolume):
        return image_or_path
    start = time.perf_counter()
    if isinstance(image_or_path, sitk.Image):
        loaded = LoadedVolume(image_or_path, "image")
    else:
        loaded = read_volume(image_or_path, series_uid=series_uid)
    loaded.warnings.extend(validate_volume(loaded.image, loaded.source))
    loaded.read_seconds = time.perf_counter() - start
    return loaded


def read_volume(path: str | os.PathLike, series_uid: str | None = None) -> LoadedVolume:
    """Read a volume file or a DICOM series folder (not yet validated as CT)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder; expected {EXPECTED}.")
    if path.is_dir():
        return read_dicom_folder(path, series_uid)
    if _is_dicom_file(path):
        return read_dicom_folder(path.parent, series_uid or _series_tags(str(path))[2], recursive=False)
    if series_uid:
        raise InputError(f"{path}: a series UID was given but the input is not DICOM; give the DICOM folder instead.")
    return LoadedVolume(read_image_file(path), str(path))


def is_dicom_input(path: str | os.PathLike) -> bool:
    """Whether an input is read as a DICOM series: a folder, or a DICOM file (which reads its series)."""
    path = Path(path)
    return path.is_dir() or (path.is_file() and _is_dicom_file(path))


def _is_dicom_file(path: Path) -> bool:
    """DICOM Part 10 files carry 'DICM' after a 128-byte preamble."""
    with path.open("rb") as fh:
        head = fh.read(132)
    return len(head) == 132 and head[128:] == b"DICM"


def read_image_file(path: Path) -> sitk.Image:
    """One image file with SimpleITK, refusing empty, unreadable and truncated files."""
    size = path.stat().st_size
    if size == 0:
        raise InputError(f"{path}: the file is empty (0 bytes); expected {EXPECTED}. Copy or export it again.")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    with _quiet_itk():
        try:
            reader.ReadImageInformation()
        except RuntimeError as exc:
            raise InputError(f"{path}: not a readable image ({_itk_reason(exc)}); expected {EXPECTED}.") from None
        validate_header(reader, str(path))  # refuse impossible geometry before the voxels are read
        if path.name.lower().endswith((".nii", ".nii.gz")):
            _check_nifti_complete(path, reader)
        try:
            return reader.Execute()
        except RuntimeError as exc:
            raise InputError(f"{path}: the image data could not be read, the file is probably truncated or damaged "
                             f"({_itk_reason(exc)}). Copy or export it again.") from None


def _check_nifti_complete(path: Path, reader: sitk.ImageFileReader) -> None:
    """ITK reads a truncated NIfTI without complaint (filling zeros), so check the byte count first."""
    meta = {k: reader.GetMetaData(k) for k in reader.GetMetaDataKeys()}
    try:
        ndim = int(meta["dim[0]"])
        voxels = math.prod(int(meta[f"dim[{i}]"]) for i in range(1, ndim + 1))
        expected = int(float(meta["vox_offset"])) + voxels * int(meta["bitpix"]) // 8
    except (KeyError, ValueError):
        return
    if path.name.lower().endswith(".gz"):
        actual = _gzip_payload_size(path, expected)
    else:
        actual = path.stat().st_size
    if actual < expected:
        found = f"{actual} of {expected} bytes" if actual >= 0 else "the compressed data end before the image does"
        raise InputError(f"{path}: the file is truncated ({found}); copy or export it again.")


def _gzip_payload_size(path: Path, expected: int) -> int:
    """Uncompressed size of a gzip file, -1 if the stream ends early or is damaged.

    The gzip trailer holds the size modulo 2**32, which answers at once when it matches ``expected``;
    otherwise the file is decompressed (without keeping the data) to be sure.
    """
    with path.open("rb") as fh:
        fh.seek(-4, os.SEEK_END)
        if int.from_bytes(fh.read(4), "little") == expected % 2**32:
            return expected
    total = 0
    try:
        with gzip.open(path, "rb") as fh:
            while chunk := fh.read(1 << 22):
                total += len(chunk)
    except (EOFError, OSError, zlib.error):
        return -1
    return total


def list_dicom_series(folder: str | os.PathLike, recursive: bool = True) -> list[DicomSeries]:
    """Every DICOM series in ``folder`` (and its sub-folders), as GDCM groups and orders them."""
    folder = Path(folder)
    found: list[DicomSeries] = []
    directories = sorted({folder, *(Path(d) for d, _, _ in os.walk(folder))}) if recursive else [folder]
    with _quiet_itk():
        for directory in directories:
            for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(directory)):
                files = tuple(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(directory), uid))
                if files:
                    modality, description, _ = _series_tags(files[0])
                    found.append(DicomSeries(uid, directory, files, modality, description))
    return found


def _series_tags(filename: str) -> tuple[str, str, str]:
    """Modality, series description and series UID of one DICOM file ('' when absent)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(filename)
    try:
        with _quiet_itk():
            reader.ReadImageInformation()
    except RuntimeError:
        return "", "", ""

    def tag(key: str) -> str:
        return reader.GetMetaData(key).strip(" \0") if reader.HasMetaDataKey(key) else ""

    return tag(_MODALITY).upper(), tag(_DESCRIPTION), tag(_SERIES_UID)


def choose_series(series: list[DicomSeries], series_uid: str | None, folder: Path) -> tuple[DicomSeries, list[str]]:
    """The requested series, else the CT series with the most slices (warning when there is a choice)."""
    if not series:
        raise InputError(f"{folder}: no DICOM series found in this folder or its sub-folders; expected {EXPECTED}.")
    if series_uid:
        for s in series:
            if s.uid == series_uid:
                return s, []
        known = "; ".join(s.label() for s in series)
        raise InputError(f"{folder}: no series with UID {series_uid}; found: {known}.")
    warnings = []
    ct = [s for s in series if s.modality == "CT"]
    if not ct:
        ct = series
        modalities = ", ".join(sorted({s.modality or "?" for s in series}))
        warnings.append(f"{folder}: no series with modality CT (found {modalities}); using the largest one.")
    chosen = max(ct, key=lambda s: s.num_slices)
    if len(series) > 1:
        warnings.append(f"{folder}: {len(series)} series found; using {chosen.label()} "
                        "(choose another with --series UID).")
    return chosen, warnings


def read_dicom_folder(folder: Path, series_uid: str | None = None, recursive: bool = True) -> LoadedVolume:
    """Read one series of a DICOM folder with SimpleITK's ImageSeriesReader (GDCM)."""
    chosen, warnings = choose_series(list_dicom_series(folder, recursive), series_uid, folder)
    warnings += validate_dicom_series(chosen.files, str(folder))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(chosen.files))
    with _quiet_itk():
        try:
            image = reader.Execute()
        except RuntimeError as exc:
            raise InputError(f"{folder}: the DICOM series {chosen.label()} could not be read "
                             f"({_itk_reason(exc)}).") from None
    if image.GetDimension() == 3 and image.GetSize()[2] != chosen.num_slices:
        raise InputError(f"{folder}: the series {chosen.label()} gave {image.GetSize()[2]} slices from "
                         f"{chosen.num_slices} files; it is not a single stack of axial slices.")
    return LoadedVolume(image, str(folder), warnings, dicom_dir=chosen.directory, series_uid=chosen.uid)
