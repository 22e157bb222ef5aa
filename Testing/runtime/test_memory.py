"""Bounded memory (slow): a 1,000-slice 512 x 512 CT through segment() peaks under 3 GB.

The segmentation runs in a child process (``python -m support.memory_child CT.nii NETWORK``) read
from a NIfTI file, as the command line does; the test samples the child's resident memory with
psutil every 10 ms and also reads the kernel's own peak (ru_maxrss) when the child ends. Two
networks: the intensity test network at the paper's 512 x 512 input (every organ present, so
post-processing has work to do) and a real FastViT-T12 SegMateNet at the demonstration model's
128 x 128 input. Run with ``make test-slow``; the figures are printed and go in docs/reliability.md.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import SimpleITK as sitk

pytestmark = pytest.mark.slow

LIMIT_BYTES = 3_000_000_000  # 3 GB
SHAPE = (1000, 512, 512)  # slices, rows, columns
SAMPLE_SECONDS = 0.01


@pytest.fixture(scope="module")
def ct_file(tmp_path_factory, organ_blocks_ct) -> Path:
    path = tmp_path_factory.mktemp("memory") / "ct1000.nii"
    image = sitk.GetImageFromArray(organ_blocks_ct(SHAPE))
    image.SetSpacing((0.8, 0.8, 1.0))
    sitk.WriteImage(image, str(path))
    return path


def run_monitored(args: list[str], env: dict[str, str]) -> dict:
    """Run a child Python, sampling its resident memory (and its children's); return its JSON and the peaks."""
    child = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=env)
    monitor = psutil.Process(child.pid)
    sampled_peak, samples, start = 0, 0, time.monotonic()
    while child.poll() is None:
        try:
            rss = monitor.memory_info().rss + sum(c.memory_info().rss for c in monitor.children(recursive=True))
        except psutil.NoSuchProcess:
            break
        sampled_peak, samples = max(sampled_peak, rss), samples + 1
        time.sleep(SAMPLE_SECONDS)
    out, err = child.communicate()
    assert child.returncode == 0, err[-3000:]
    report = json.loads(out.strip().splitlines()[-1])
    report.update(sampled_peak_bytes=sampled_peak, samples=samples, wall_seconds=time.monotonic() - start)
    return report


@pytest.mark.parametrize("network", ["intensity-512", "fastvit_t12-128"])
def test_1000_slices_of_512x512_stay_under_3_gb(ct_file, network, capsys, support_env):
    report = run_monitored(["-m", "support.memory_child", str(ct_file), network], support_env)
    peak = max(report["sampled_peak_bytes"], report["maxrss_bytes"])
    with capsys.disabled():
        print(f"\n[memory] {network}: 512 x 512 x 1000 int16 NIfTI -> segment(): peak RSS "
              f"{report['maxrss_bytes'] / 1e9:.2f} GB (kernel ru_maxrss), {report['sampled_peak_bytes'] / 1e9:.2f}"
              f" GB (psutil, {report['samples']} samples every {SAMPLE_SECONDS * 1000:.0f} ms); after imports and "
              f"model {report['baseline_bytes'] / 1e9:.2f} GB; {report['wall_seconds']:.0f} s wall; "
              f"timings {json.dumps({k: round(v, 1) for k, v in report['timings'].items()})}")
    assert report["organs"], "nothing was segmented"
    assert report["size"] == [SHAPE[2], SHAPE[1], SHAPE[0]]
    if network.startswith("intensity"):
        assert all(v > 0 for v in report["volumes_ml"].values()), report["volumes_ml"]
    assert peak < LIMIT_BYTES, f"peak {peak / 1e9:.2f} GB >= 3 GB"
