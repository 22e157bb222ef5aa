"""NIfTI labelmap output."""
from __future__ import annotations

import os
from pathlib import Path

import SimpleITK as sitk

from segmatecore.data.atomic import atomic_path
from segmatecore.export.common import check_labelmap


def write_labels_nifti(labelmap: sitk.Image, path: str | os.PathLike) -> Path:
    """uint8 NIfTI labelmap (value k+1 = organ channel k, 0 = background), compressed.

    NIfTI keeps its geometry in single precision, so the stored origin and directions can differ
    from the input's by float32 rounding (below a micrometre); the .seg.nrrd keeps full precision.
    """
    labelmap = check_labelmap(labelmap)
    with atomic_path(path) as tmp:
        sitk.WriteImage(labelmap, str(tmp), useCompression=True)
    return Path(path)
