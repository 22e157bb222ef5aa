"""Soak (slow): 30 consecutive segmentations through the Slicer logic in one process, with slicer-core.

A child process (``python Testing/test_soak.py``) holds a real MRML scene with an 80-slice 512 x 512
CT volume node and runs ``SegMateLogic.process`` 30 times: even runs update the same output
segmentation node, odd runs create a new one that is then deleted, as a user would. After each
run it records its resident memory (after garbage collection) and the scene's nodes and subject
hierarchy items. Memory may not grow more than 10 % over the first run, and no node may be left
behind. Run with ``make test-slow``; the figures are printed and go in docs/reliability.md.
"""
from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

TESTING = Path(__file__).resolve().parent
RUNS = 30
GROWTH_LIMIT = 0.10
SHAPE = (80, 512, 512)


def test_30_segmentations_without_memory_growth_or_leaked_nodes(capsys):
    start = time.monotonic()
    child = subprocess.run([sys.executable, __file__], capture_output=True, text=True, timeout=3000,
                           env={**os.environ, "PYTHONPATH": str(TESTING)})
    assert child.returncode == 0, child.stderr[-3000:]
    runs = json.loads(child.stdout.strip().splitlines()[-1])
    rss = [r["rss_bytes"] for r in runs]
    growth = max(rss[1:]) / rss[0] - 1.0
    with capsys.disabled():
        print(f"\n[soak] {RUNS} runs of SegMateLogic.process on {SHAPE[2]} x {SHAPE[1]} x {SHAPE[0]}: RSS after run 1 "
              f"{rss[0] / 2**20:.0f} MiB, after run {RUNS} {rss[-1] / 2**20:.0f} MiB, largest "
              f"{max(rss) / 2**20:.0f} MiB (growth {100 * growth:+.1f} %); nodes in the scene after each run "
              f"{sorted({r['nodes'] for r in runs})}; seconds per run {min(r['seconds'] for r in runs):.1f}-"
              f"{max(r['seconds'] for r in runs):.1f}; {time.monotonic() - start:.0f} s wall")
    assert len(runs) == RUNS
    assert growth <= GROWTH_LIMIT, [round(v / 2**20) for v in rss]
    first = runs[0]
    for n, run in enumerate(runs):
        assert run["node_ids"] == first["node_ids"], f"run {n + 1} left nodes behind or lost some"
        assert run["subject_hierarchy_items"] == first["subject_hierarchy_items"], f"run {n + 1}"
        assert run["output_segments"] == first["output_segments"], f"run {n + 1} changed the reused node's segments"
        assert run["organs"] == first["organs"] and len(run["organs"]) == 9


def soak() -> list[dict]:
    """In the child: the 30 runs; returns what each one left in memory and in the scene."""
    import numpy as np
    import psutil
    import slicer
    import torch

    sys.path.insert(0, str(TESTING.parent / "SegMateSlicer"))
    from intensity_model import IntensityModel
    from SegMateLib.logic import SegMateLogic
    from SegMateLib.segments import ensureConverterRules
    from test_memory import synthetic_ct

    torch.set_num_threads(1)
    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene
    ensureConverterRules()
    ijk_to_ras = np.array([[-0.8, 0, 0, 200.0], [0, -0.8, 0, 180.0], [0, 0, 2.0, -90.0], [0, 0, 0, 1]])
    volume = slicer.util.addVolumeFromArray(synthetic_ct(SHAPE), ijk_to_ras, name="CT")
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    study = sh.CreateStudyItem(sh.CreateSubjectItem(sh.GetSceneItemID(), "Patient"), "Study")
    sh.CreateItem(study, volume)
    model = IntensityModel(input_size=128)
    logic = SegMateLogic()
    reused = None
    records = []
    process = psutil.Process()
    for n in range(RUNS):
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
    import vtk

    ids = vtk.vtkIdList()
    sh.GetItemChildren(sh.GetSceneItemID(), ids, True)
    items = []
    for n in range(ids.GetNumberOfIds()):
        item = ids.GetId(n)
        node = sh.GetItemDataNode(item)
        items.append([sh.GetItemName(item), sh.GetItemLevel(item), node.GetID() if node else None])
    return items


if __name__ == "__main__":
    print(json.dumps(soak()))
