"""Child of the soak test: ``python -m support.soak_child RUNS K J I`` holds a real MRML scene with a
K x J x I CT volume node and runs ``SegMateLogic.process`` RUNS times, as a user would: even runs update
the same output segmentation node, odd runs create a new one that is then deleted. It prints, as one
JSON line, what each run left in memory (after garbage collection) and in the scene.

SegMateSlicer must be on PYTHONPATH beside Testing.
"""
from __future__ import annotations

import gc
import json
import sys
import time

import numpy as np
import psutil
import slicer
import torch
import vtk

from SegMateLib.logic import SegMateLogic
from SegMateLib.segments import ensureConverterRules
from support.intensity_model import IntensityModel, organ_blocks_ct


def soak(runs: int, shape: tuple[int, int, int]) -> list[dict]:
    """The runs; returns what each one left in memory and in the scene."""
    torch.set_num_threads(1)
    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene
    ensureConverterRules()
    ijk_to_ras = np.array([[-0.8, 0, 0, 200.0], [0, -0.8, 0, 180.0], [0, 0, 2.0, -90.0], [0, 0, 0, 1]])
    volume = slicer.util.addVolumeFromArray(organ_blocks_ct(shape), ijk_to_ras, name="CT")
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    study = sh.CreateStudyItem(sh.CreateSubjectItem(sh.GetSceneItemID(), "Patient"), "Study")
    sh.CreateItem(study, volume)
    model = IntensityModel(input_size=128)
    logic = SegMateLogic()
    reused = None
    records = []
    process = psutil.Process()
    for n in range(runs):
        t0 = time.monotonic()
        if n % 2 == 0:
            run = logic.process(volume, reused, model=model, device="cpu")
            reused = run.segmentationNode
        else:
            run = logic.process(volume, None, model=model, device="cpu")
            created = run.segmentationNode
            assert created is not reused
            delete(scene, sh, created)
        organs = list(run.segmentIds)
        del run
        gc.collect()
        segmentation = reused.GetSegmentation()
        records.append({
            "rss_bytes": process.memory_info().rss,
            "seconds": time.monotonic() - t0,
            "nodes": scene.GetNumberOfNodes(),
            "node_ids": sorted(scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())),
            "subject_hierarchy_items": subject_hierarchy(sh),
            "output_segments": [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())],
            "organs": organs,
        })
    return records


def delete(scene, sh, node) -> None:
    """Delete a node as Slicer's Data module does: its subject hierarchy item, then it and its display nodes.

    (In the full application the subject hierarchy logic removes the item; a bare slicer-core scene
    does not, so the test does it, and then checks that nothing else was left.)
    """
    display = [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())]
    assert sh.RemoveItem(sh.GetItemByDataNode(node), False, False)
    scene.RemoveNode(node)
    for displayNode in display:
        scene.RemoveNode(displayNode)


def subject_hierarchy(sh) -> list[list]:
    """Every subject hierarchy item below the scene: name, level and data node ID, in order."""
    ids = vtk.vtkIdList()
    sh.GetItemChildren(sh.GetSceneItemID(), ids, True)
    items = []
    for n in range(ids.GetNumberOfIds()):
        item = ids.GetId(n)
        node = sh.GetItemDataNode(item)
        items.append([sh.GetItemName(item), sh.GetItemLevel(item), node.GetID() if node else None])
    return items


if __name__ == "__main__":
    print(json.dumps(soak(int(sys.argv[1]), tuple(int(n) for n in sys.argv[2:5]))))
