"""CT series written slice by slice with SimpleITK, as a scanner stores them, for the DICOM input tests."""
from __future__ import annotations

from pathlib import Path

import SimpleITK as sitk


def write_ct_series(folder: Path, slices: list[sitk.Image], positions, *, orientation=(1, 0, 0, 0, 1, 0),
                    pixel_spacing=(0.8, 0.8), modality: str = "CT", series_uid: str = "1.2.826.0.1.3680043.8.498.1",
                    study_uid: str = "1.2.826.0.1.3680043.8.498.2", first_instance: int = 1,
                    prefix: str = "slice") -> list[str]:
    """Write slice i at ``positions[i]`` (mm, LPS) as instance ``first_instance + i``, in
    ``<prefix><instance:04d>.dcm``; returns the file names in the given order."""
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    names = []
    for i, (image, position) in enumerate(zip(slices, positions)):
        number = first_instance + i
        tags = {"0008|0060": modality, "0020|000e": series_uid, "0020|000d": study_uid,
                "0020|0032": "\\".join(f"{v:.4f}" for v in position),
                "0020|0037": "\\".join(f"{v:.6f}" for v in orientation), "0020|0013": str(number),
                "0008|0018": f"{series_uid}.{number}", "0028|0030": "\\".join(str(v) for v in pixel_spacing),
                "0008|0016": "1.2.840.10008.5.1.4.1.1.2", "0028|1052": "0", "0028|1053": "1"}
        for key, value in tags.items():
            image.SetMetaData(key, value)
        name = str(folder / f"{prefix}{number:04d}.dcm")
        writer.SetFileName(name)
        writer.Execute(image)
        names.append(name)
    return names
