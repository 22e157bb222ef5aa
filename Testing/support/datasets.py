"""Small synthetic datasets on disk, for the prepare, dataset, training and calibration tests."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from segmatecore.data.prepare import prepare


def nifti_pairs_dataset(root: Path, cases: int = 4, shape_zyx=(16, 40, 48), seed: int = 0) -> Path:
    """A small synthetic nifti-pairs dataset: body, spinal cord, esophagus and a left kidney."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for n in range(cases):
        z, y, x = shape_zyx
        ct = np.full(shape_zyx, -1000, dtype=np.int16)
        ct[:, 6:36, 6:42] = rng.integers(-50, 50, size=(z, 30, 36))
        lab = np.zeros(shape_zyx, dtype=np.uint8)
        lab[2 + n % 2:13, 28:33, 22:27] = 1          # spinal cord (posterior, central)
        lab[4:15, 18:22, 23:27] = 2                  # esophagus
        lab[3:8, 20:27, 33:39] = 3                   # left kidney (LPS +x = patient left)
        ct[lab == 1] = 40
        ct[lab == 2] = 10
        ct[lab == 3] = 150
        for array, folder in ((ct, "images"), (lab, "labels")):
            image = sitk.GetImageFromArray(array)
            image.SetSpacing((2.0, 2.0, 3.0))
            sitk.WriteImage(image, str(root / folder / f"case{n:02d}.nii.gz"))
    (root / "label_map.json").write_text(json.dumps({"spinal_cord": 1, "esophagus": [2], "left_kidney": 3}))
    return root


def prepared_pairs_dataset(root: Path, pairs: list[tuple[np.ndarray, np.ndarray]], label_map: dict[str, int],
                           fractions: tuple[float, float, float], spacing=(1.0, 1.0, 1.0), direction=None) -> Path:
    """Write each (CT, labels) [k, j, i] array pair as NIfTI files ``caseNN`` under ``root/src``, with this
    spacing (and direction), and prepare them into ``root/data`` split by ``fractions``; return the data folder."""
    (root / "src" / "images").mkdir(parents=True)
    (root / "src" / "labels").mkdir()
    for n, (ct, labels) in enumerate(pairs):
        for array, folder in ((ct, "images"), (labels, "labels")):
            image = sitk.GetImageFromArray(array)
            image.SetSpacing(spacing)
            if direction is not None:
                image.SetDirection(direction)
            sitk.WriteImage(image, str(root / "src" / folder / f"case{n:02d}.nii.gz"))
    (root / "src" / "label_map.json").write_text(json.dumps(label_map))
    prepare("nifti-pairs", root / "src", root / "data", workers=1, fractions=fractions, progress=False)
    return root / "data"


def validation_copies_dataset(root: Path, ct: np.ndarray, labels: np.ndarray, label_map: dict[str, int],
                              spacing: tuple[float, float, float], copies: int = 3) -> Path:
    """``copies`` identical cases, all in the ``val`` split; return the data folder."""
    return prepared_pairs_dataset(root, [(ct, labels)] * copies, label_map, (0.0, 1.0, 0.0), spacing)
