"""A prepared dataset whose validation split is copies of one synthetic case, for calibration tests."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from segmatecore.data.prepare import prepare


def prepare_validation_copies(root: Path, ct: np.ndarray, labels: np.ndarray, label_map: dict[str, int],
                              spacing: tuple[float, float, float], copies: int = 3) -> Path:
    """Write ``copies`` identical NIfTI pairs and prepare them, all in the ``val`` split; return the data folder."""
    (root / "src" / "images").mkdir(parents=True)
    (root / "src" / "labels").mkdir()
    for n in range(copies):
        for array, folder in ((ct, "images"), (labels, "labels")):
            image = sitk.GetImageFromArray(array)
            image.SetSpacing(spacing)
            sitk.WriteImage(image, str(root / "src" / folder / f"case{n:02d}.nii.gz"))
    (root / "src" / "label_map.json").write_text(json.dumps(label_map))
    prepare("nifti-pairs", root / "src", root / "data", workers=1, fractions=(0.0, 1.0, 0.0), progress=False)
    return root / "data"
