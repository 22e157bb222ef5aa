"""Soak (slow): 30 consecutive segmentations through the Slicer logic in one process, with slicer-core.

A child process (``python -m support.soak_child RUNS K J I``) holds a real MRML scene with an
80-slice 512 x 512 CT volume node and runs ``SegMateLogic.process`` 30 times: even runs update the same output
segmentation node, odd runs create a new one that is then deleted, as a user would. After each
run it records its resident memory (after garbage collection) and the scene's nodes and subject
hierarchy items. Memory may not grow more than 10 % over the first run, and no node may be left
behind. Run with ``make test-slow``; the figures are printed and go in docs/reliability.md.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slow

RUNS = 30
GROWTH_LIMIT = 0.10
SHAPE = (80, 512, 512)


def test_30_segmentations_without_memory_growth_or_leaked_nodes(capsys, support_env):
    start = time.monotonic()
    child = subprocess.run([sys.executable, "-m", "support.soak_child", str(RUNS), *map(str, SHAPE)],
                           capture_output=True, text=True, timeout=3000, env=support_env)
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
