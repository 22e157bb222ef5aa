"""Volume nodes to SimpleITK images and back, and labelmaps to segment images, with exact geometry.

Slicer keeps a volume's geometry in its IJK-to-RAS matrix (any direction, oblique included);
SimpleITK keeps spacing, origin and a direction matrix in LPS. The two differ only by the sign of
the first two world axes, so the conversion is exact: no resampling, the voxels are copied as they
are ([k, j, i] arrays, i fastest, in both VTK and SimpleITK memory order).
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import slicer
import vtk
from vtk.util import numpy_support

# RAS <-> LPS: negate the first two world axes (the matrix is its own inverse).
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


def _checkScalarVolume(volumeNode) -> None:
    if volumeNode is None:
        raise ValueError("No input volume: select a CT volume.")
    if not volumeNode.IsA("vtkMRMLScalarVolumeNode") or volumeNode.IsA("vtkMRMLLabelMapVolumeNode"):
        raise ValueError(f"{volumeNode.GetName()} is a {volumeNode.GetClassName()}; SegMate needs a scalar CT volume "
                         "(not a labelmap, vector or tensor volume).")
    imageData = volumeNode.GetImageData()
    if imageData is None or imageData.GetPointData().GetScalars() is None:
        raise ValueError(f"{volumeNode.GetName()} has no voxels loaded.")
    if imageData.GetNumberOfScalarComponents() != 1:
        raise ValueError(f"{volumeNode.GetName()} has {imageData.GetNumberOfScalarComponents()} components per voxel; "
                         "SegMate needs a scalar CT volume in Hounsfield units.")


def ijkToRasMatrix(volumeNode) -> np.ndarray:
    """The volume's 4x4 IJK-to-RAS matrix (spacing, directions and origin) as a numpy array."""
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def imageFromVolumeNode(volumeNode) -> sitk.Image:
    """A SimpleITK copy of a scalar volume node with its exact geometry, independent of the scene.

    The copy can be handed to a worker thread: the node can change or disappear meanwhile.
    """
    _checkScalarVolume(volumeNode)
    imageData = volumeNode.GetImageData()
    dims = imageData.GetDimensions()
    voxels = numpy_support.vtk_to_numpy(imageData.GetPointData().GetScalars()).reshape(dims[::-1])
    image = sitk.GetImageFromArray(np.array(voxels, copy=True))
    directions = np.zeros((3, 3))
    volumeNode.GetIJKToRASDirections(directions)
    origin = np.array(volumeNode.GetOrigin())
    image.SetSpacing([float(s) for s in volumeNode.GetSpacing()])
    image.SetOrigin([float(v) for v in RAS_TO_LPS @ origin])
    image.SetDirection([float(v) for v in (RAS_TO_LPS @ directions).ravel()])
    return image


def ijkToRasFromImage(image: sitk.Image) -> np.ndarray:
    """The 4x4 IJK-to-RAS matrix of a SimpleITK image (LPS geometry turned into Slicer's RAS)."""
    direction = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    matrix = np.eye(4)
    matrix[:3, :3] = RAS_TO_LPS @ direction @ np.diag(image.GetSpacing())
    matrix[:3, 3] = RAS_TO_LPS @ np.array(image.GetOrigin(), dtype=float)
    return matrix


def _vtkMatrix(array: np.ndarray) -> vtk.vtkMatrix4x4:
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r, c]))
    return matrix


def volumeNodeFromImage(image: sitk.Image, name: str, scene=None):
    """Add a scalar volume node with the image's voxels and exact geometry to the scene (batch input)."""
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"{name}: SegMate needs a scalar 3D volume, got a {image.GetDimension()}D image with "
                         f"{image.GetNumberOfComponentsPerPixel()} component(s).")
    scene = scene or slicer.mrmlScene
    voxels = sitk.GetArrayFromImage(image)
    imageData = vtk.vtkImageData()
    imageData.SetDimensions(*image.GetSize())
    imageData.AllocateScalars(numpy_support.get_vtk_array_type(voxels.dtype), 1)
    numpy_support.vtk_to_numpy(imageData.GetPointData().GetScalars())[:] = voxels.ravel()
    volumeNode = slicer.vtkMRMLScalarVolumeNode()
    volumeNode.SetName(name)
    volumeNode.SetIJKToRASMatrix(_vtkMatrix(ijkToRasFromImage(image)))
    volumeNode.SetAndObserveImageData(imageData)
    scene.AddNode(volumeNode)
    return volumeNode


def checkSameGrid(labels: sitk.Image, volumeNode) -> None:
    """Refuse a labelmap that is not on the volume's voxel grid (it would land in the wrong place)."""
    dims = tuple(volumeNode.GetImageData().GetDimensions())
    if tuple(labels.GetSize()) != dims:
        raise ValueError(f"The labelmap has size {labels.GetSize()} but {volumeNode.GetName()} has {dims}; "
                         "it was not computed on this volume.")


def orientedLabelImage(labels: np.ndarray, ijkToRas: np.ndarray, values) -> "slicer.vtkOrientedImageData":
    """A ``vtkOrientedImageData`` with the voxels of ``labels`` ([k, j, i]) whose value is in ``values``.

    Cropped to the bounding box of those voxels (the extent keeps the volume's voxel indices, the
    geometry is the volume's), so a small organ costs little memory; empty if none is present.
    """
    mask = np.isin(labels, list(values))
    image = slicer.vtkOrientedImageData()
    image.SetImageToWorldMatrix(_vtkMatrix(ijkToRas))
    if not mask.any():
        image.SetExtent(0, -1, 0, -1, 0, -1)
        image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
        return image
    k, j, i = (np.flatnonzero(mask.any(axis=axes)) for axes in ((1, 2), (0, 2), (0, 1)))
    box = (slice(k[0], k[-1] + 1), slice(j[0], j[-1] + 1), slice(i[0], i[-1] + 1))
    cropped = np.where(mask[box], labels[box], 0).astype(np.uint8)
    image.SetExtent(int(i[0]), int(i[-1]), int(j[0]), int(j[-1]), int(k[0]), int(k[-1]))
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = cropped.ravel()
    return image
