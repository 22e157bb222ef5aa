"""To and from SegMate's slice convention: the closest canonical RAS+ orientation.

In the canonical array ``a[i, j, k]``, i increases toward the patient's right, j toward anterior
and k toward superior, so an axial slice is ``a[:, :, k]`` (as nibabel's ``as_closest_canonical``).
Only axis permutations and flips are applied, never resampling, and the way back copies the
input's geometry onto the result, so size, spacing, origin and direction survive exactly.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import SimpleITK as sitk

# LPS (ITK physical space) to RAS: negate x and y.
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


@dataclass(frozen=True)
class CanonicalFrame:
    """How an image's array was permuted and flipped into the canonical layout.

    ``axes[c]`` is the image index axis (0=i, 1=j, 2=k in ITK order) that became canonical
    axis c; ``flips[c]`` tells whether it was reversed. ``spacing`` is in canonical order.
    """

    axes: tuple[int, int, int]
    flips: tuple[bool, bool, bool]
    size: tuple[int, int, int]
    spacing: tuple[float, float, float]

    @property
    def canonical_shape(self) -> tuple[int, int, int]:
        return tuple(self.size[a] for a in self.axes)  # type: ignore[return-value]


def closest_canonical_axes(direction: np.ndarray) -> tuple[tuple[int, int, int], tuple[bool, bool, bool]]:
    """For an ITK (LPS) direction matrix, the image axis nearest to R, A and S, and its sign.

    Greedy assignment on the largest absolute cosine, as nibabel's ``io_orientation`` does, so
    that oblique and gantry-tilted volumes map to their closest canonical orientation.
    """
    ras = _LPS_TO_RAS @ np.asarray(direction, dtype=float).reshape(3, 3)  # rows: R, A, S; cols: i, j, k
    axes = [-1, -1, -1]
    flips = [False, False, False]
    work = np.abs(ras).copy()
    for _ in range(3):
        world, axis = np.unravel_index(np.argmax(work), work.shape)
        axes[world] = int(axis)
        flips[world] = bool(ras[world, axis] < 0)
        work[world, :] = -1
        work[:, axis] = -1
    return tuple(axes), tuple(flips)  # type: ignore[return-value]


def canonical_frame(image: sitk.Image) -> CanonicalFrame:
    if image.GetDimension() != 3:
        raise ValueError(f"Expected a 3D image, got {image.GetDimension()}D.")
    axes, flips = closest_canonical_axes(np.array(image.GetDirection()))
    spacing = image.GetSpacing()
    return CanonicalFrame(axes, flips, tuple(image.GetSize()), tuple(float(spacing[a]) for a in axes))


def to_canonical_array(array_zyx: np.ndarray, frame: CanonicalFrame) -> np.ndarray:
    """A SimpleITK-ordered array [k, j, i] -> the canonical [R, A, S] view (no copy if possible)."""
    xyz = np.transpose(array_zyx, (2, 1, 0))
    out = np.transpose(xyz, frame.axes)
    flip_axes = tuple(c for c in range(3) if frame.flips[c])
    return np.flip(out, axis=flip_axes) if flip_axes else out


def from_canonical_array(canonical: np.ndarray, frame: CanonicalFrame) -> np.ndarray:
    """Exact inverse of :func:`to_canonical_array`: canonical [R, A, S] -> SimpleITK [k, j, i]."""
    flip_axes = tuple(c for c in range(3) if frame.flips[c])
    out = np.flip(canonical, axis=flip_axes) if flip_axes else canonical
    xyz = np.transpose(out, np.argsort(frame.axes))
    return np.ascontiguousarray(np.transpose(xyz, (2, 1, 0)))


class _ImageBuffer:
    """Exposes an image's voxel buffer to numpy while keeping the image alive.

    ``sitk.GetArrayViewFromImage`` does not reference the image, so a view outliving a temporary
    image (``to_canonical(sitk.ReadImage(path))``) would read freed memory; an array made from
    this object has it as its base, and so keeps the image.
    """

    def __init__(self, image: sitk.Image):
        self.image = image
        self.__array_interface__ = sitk.GetArrayViewFromImage(image).__array_interface__


def to_canonical(image: sitk.Image) -> tuple[np.ndarray, CanonicalFrame]:
    """The image's voxels in the canonical layout (a read-only view, no copy), and the frame to undo it."""
    frame = canonical_frame(image)
    return to_canonical_array(np.asarray(_ImageBuffer(image)), frame), frame


def from_canonical(canonical: np.ndarray, frame: CanonicalFrame, reference: sitk.Image) -> sitk.Image:
    """Put a canonical array back into an image with exactly ``reference``'s geometry."""
    if tuple(canonical.shape[:3]) != frame.canonical_shape:
        raise ValueError(f"Canonical array shape {canonical.shape} does not match {frame.canonical_shape}.")
    image = sitk.GetImageFromArray(from_canonical_array(canonical, frame))
    image.CopyInformation(reference)
    return image


# SimpleITK (LPS) direction of a canonical [R, A, S] array: i toward the patient's right (-x),
# j toward anterior (-y), k toward superior (+z).
CANONICAL_DIRECTION = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)


def canonical_image(hu: np.ndarray, spacing: Sequence[float]) -> sitk.Image:
    """A prepared case's canonical HU array as a CT image that maps back onto the same array."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(np.asarray(hu), (2, 1, 0))))
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetDirection(CANONICAL_DIRECTION)
    return image
