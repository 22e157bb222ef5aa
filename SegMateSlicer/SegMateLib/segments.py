"""Writing SegMate's organs into a segmentation node, on the main thread, in one modification.

Each organ becomes one segment with its standard name, recommended colour and SNOMED-CT
terminology. All organs of one run share one labelmap layer (they never overlap), so a whole
CT costs one cropped uint8 image. Segments that SegMate made earlier are recognised by their
terminology and replaced in place (same ID, same position in the list); every other segment,
and the user's edits to it, are left untouched. The write is all or nothing: if any step fails,
the node is put back exactly as it was (segments, their order, display properties, transform).
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import slicer

from .terminology import organKeyForTerminology, segmentName, terminologyEntry
from .volume_image import checkSameGrid, ijkToRasMatrix, orientedLabelImage

_SEGMENT_TAGS = ("SOURCE_TAG", "THRESHOLD_TAG", "Z_SMOOTHING_TAG")


def __getattr__(name: str):
    """The segment tag names, defined in segmatecore.inference.result, imported only when asked for: this
    module loads when Slicer starts, before PyTorch (which segmatecore needs) may be installed."""
    if name in _SEGMENT_TAGS:
        from segmatecore.inference import result

        return getattr(result, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_CONVERTER_RULES = ("vtkBinaryLabelmapToClosedSurfaceConversionRule", "vtkClosedSurfaceToBinaryLabelmapConversionRule",
                    "vtkClosedSurfaceToFractionalLabelmapConversionRule",
                    "vtkFractionalLabelmapToClosedSurfaceConversionRule")


def ensureConverterRules() -> None:
    """Register the segmentation representation converters if nothing did yet.

    The Segmentations module registers them when Slicer starts; a bare MRML scene (slicer-core,
    scripts) has none and could not even create an empty binary labelmap without them.
    """
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    if factory.GetConverterRules():
        return
    for name in _CONVERTER_RULES:
        factory.RegisterConverterRule(getattr(slicer, name)())


def binaryLabelmapName() -> str:
    return slicer.vtkSegmentationConverter.GetSegmentationBinaryLabelmapRepresentationName()


def segMateSegmentIds(segmentationNode) -> dict[str, list[str]]:
    """Organ key -> IDs of the segments whose terminology is that organ's, in list order."""
    found: dict[str, list[str]] = {}
    segmentation = segmentationNode.GetSegmentation()
    for index in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(index)
        key = organKeyForTerminology(segment.GetTerminology())
        if key is not None:
            found.setdefault(key, []).append(segmentation.GetNthSegmentID(index))
    return found


def _newSegment(organ, labelValue: int, naming: str, layer, tags: dict[str, str] | None = None):
    segment = slicer.vtkSegment()
    segment.SetName(segmentName(organ, naming))
    segment.SetColor(*organ.color_float)
    segment.SetTerminology(terminologyEntry(organ))
    for tag, value in (tags or {}).items():
        segment.SetTag(tag, value)
    segment.AddRepresentation(binaryLabelmapName(), layer)
    segment.SetLabelValue(labelValue)
    return segment


def _segmentIdAfter(segmentation, segmentId: str) -> str:
    """The ID of the segment that follows ``segmentId`` ("" if it is the last one)."""
    index = segmentation.GetSegmentIndex(segmentId)
    return segmentation.GetNthSegmentID(index + 1) if index + 1 < segmentation.GetNumberOfSegments() else ""


def _checkTransforms(segmentationNode, volumeNode) -> None:
    """Refuse to mix two transforms: segments already placed under another transform would move."""
    if segmentationNode.GetTransformNodeID() == volumeNode.GetTransformNodeID():
        return
    if segmentationNode.GetSegmentation().GetNumberOfSegments():
        raise ValueError(f"{segmentationNode.GetName()} is under a different transform than {volumeNode.GetName()}; "
                         "choose 'Create new segmentation' or put both under the same transform first.")


class _NodeBackup:
    """What a write may change on a segmentation node, copied first so that a failed write can be undone."""

    def __init__(self, segmentationNode):
        self.node = segmentationNode
        self.segmentation = slicer.vtkSegmentation()
        self.segmentation.DeepCopy(segmentationNode.GetSegmentation())
        displayNode = segmentationNode.GetDisplayNode()
        self.displayNodeId = displayNode.GetID() if displayNode is not None else None
        self.display = None
        if displayNode is not None:
            self.display = slicer.vtkMRMLSegmentationDisplayNode()
            self.display.CopyContent(displayNode)
        self.transformNodeId = segmentationNode.GetTransformNodeID()
        self.referenceRole = segmentationNode.GetReferenceImageGeometryReferenceRole()
        self.referenceNodeId = segmentationNode.GetNodeReferenceID(self.referenceRole)

    def restore(self) -> None:
        node = self.node
        with slicer.util.NodeModify(node):
            node.GetSegmentation().DeepCopy(self.segmentation)
            displayNode = node.GetDisplayNode()
            if displayNode is not None and displayNode.GetID() != self.displayNodeId and node.GetScene() is not None:
                node.GetScene().RemoveNode(displayNode)  # made by the failed write
            elif displayNode is not None and self.display is not None:
                displayNode.CopyContent(self.display)
            if node.GetTransformNodeID() != self.transformNodeId:
                node.SetAndObserveTransformNodeID(self.transformNodeId)
            node.SetNodeReferenceID(self.referenceRole, self.referenceNodeId)


def writeOrganSegments(segmentationNode, volumeNode, labelmap: sitk.Image, legend, naming: str = "slicer",
                       tags: dict[str, dict[str, str]] | None = None) -> dict[str, str]:
    """Write the organs of a SegMate labelmap as segments; return organ key -> segment ID.

    ``legend`` maps organ keys to their label values in ``labelmap`` (``SegmentationResult.labels``:
    the value of an organ depends on the model that made the labelmap).

    ``tags`` (organ key -> {tag: value}, from ``SegmentationResult.segment_tags()``: source, threshold,
    z smoothing) are set on each organ's segment.

    The labelmap must be on the volume's voxel grid (``segmatecore.segment`` guarantees it for an
    image made by ``imageFromVolumeNode``). Organs absent from the labelmap still get a segment, empty.
    """
    from segmatecore.data.organs import organ

    checkSameGrid(labelmap, volumeNode)
    _checkTransforms(segmentationNode, volumeNode)  # every refusal comes before the first change
    ensureConverterRules()
    organList = [(organ(key), int(value)) for key, value in legend.items()]
    labels = sitk.GetArrayViewFromImage(labelmap)
    layer = orientedLabelImage(np.asarray(labels), ijkToRasMatrix(volumeNode), [value for _, value in organList])
    segmentation = segmentationNode.GetSegmentation()
    existing = segMateSegmentIds(segmentationNode)
    written: dict[str, str] = {}
    backup = _NodeBackup(segmentationNode)
    try:
        with slicer.util.NodeModify(segmentationNode):
            if segmentationNode.GetDisplayNode() is None:
                segmentationNode.CreateDefaultDisplayNodes()
            if segmentationNode.GetTransformNodeID() != volumeNode.GetTransformNodeID():
                segmentationNode.SetAndObserveTransformNodeID(volumeNode.GetTransformNodeID())
            segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
            segmentationNode.SetNodeReferenceID(segmentationNode.GetReferenceImageGeometryReferenceRole(),
                                                volumeNode.GetID())
            for item, value in organList:
                segment = _newSegment(item, value, naming, layer, (tags or {}).get(item.key))
                previous = existing.get(item.key)
                if previous:
                    segmentId = previous[0]
                    insertBefore = _segmentIdAfter(segmentation, segmentId)
                    segmentation.RemoveSegment(segmentId)
                else:
                    segmentId = segmentation.GenerateUniqueSegmentID(item.key)
                    insertBefore = ""
                if not segmentation.AddSegment(segment, segmentId, insertBefore):
                    raise RuntimeError(f"Slicer refused to add the {item.display_name} segment to "
                                       f"{segmentationNode.GetName()}; the segmentation was left as it was.")
                written[item.key] = segmentId
    except BaseException:
        backup.restore()
        raise
    return written


def placeInVolumeStudy(segmentationNode, volumeNode) -> None:
    """Put the segmentation in the subject hierarchy under the volume's parent (its study).

    That is where DICOM SEG and RTSTRUCT export (SlicerRT) look for the referenced series.
    """
    scene = volumeNode.GetScene()
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    volumeItem = shNode.GetItemByDataNode(volumeNode)
    if not volumeItem:
        return
    parentItem = shNode.GetItemParent(volumeItem)
    segmentationItem = shNode.GetItemByDataNode(segmentationNode)
    if not segmentationItem:
        shNode.CreateItem(parentItem, segmentationNode)
    elif shNode.GetItemParent(segmentationItem) != parentItem:
        shNode.SetItemParent(segmentationItem, parentItem)
