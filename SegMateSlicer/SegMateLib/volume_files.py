"""Volumes between Slicer and the worker process: voxels in an NRRD file, geometry in the message.

A NRRD file stores spacing and directions as decimal text, which can move the last bit of a
double (about 1e-16); SegMate's promise is geometry identical with ``==``. So the voxels travel in
the file and the exact geometry travels in the JSON message (Python writes floats that read back
bit for bit), and the reader puts the message's geometry on the image it read.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any


def geometryOf(image) -> dict[str, Any]:
    """Size, spacing, origin and direction of a SimpleITK image, as JSON-ready lists of Python numbers."""
    return {"size": [int(v) for v in image.GetSize()], "spacing": [float(v) for v in image.GetSpacing()],
            "origin": [float(v) for v in image.GetOrigin()], "direction": [float(v) for v in image.GetDirection()]}


def writeVolume(image, path: Path) -> dict[str, Any]:
    """Write the image's voxels to ``path`` (uncompressed: written and read in a fraction of a second);
    return the geometry to send with it."""
    import SimpleITK as sitk

    sitk.WriteImage(image, str(path), useCompression=False)
    return geometryOf(image)


def readVolume(path: Path, geometry: dict[str, Any]):
    """Read a volume written by ``writeVolume`` and give it exactly the geometry sent with it."""
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))
    if list(image.GetSize()) != list(geometry["size"]):
        raise ValueError(f"{Path(path).name} holds a {list(image.GetSize())} volume but the message says "
                         f"{list(geometry['size'])}; the file was changed or cut short.")
    image.SetSpacing([float(v) for v in geometry["spacing"]])
    image.SetOrigin([float(v) for v in geometry["origin"]])
    image.SetDirection([float(v) for v in geometry["direction"]])
    return image
