"""Shared fixtures: paths to the real data beside the repository and small deterministic models."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
sys.path.insert(0, str(Path(__file__).resolve().parent))

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = SHARED / "data"
    if not path.is_dir():
        pytest.fail(f"The real test data are expected in {path} (shared/ beside the repository).")
    return path


@pytest.fixture
def scene():
    """A fresh real MRML scene (slicer-core) assigned to slicer.mrmlScene, cleared afterwards."""
    import slicer

    sys.path.insert(0, str(REPO / "SegMateSlicer"))
    from SegMateLib.segments import ensureConverterRules

    mrml = slicer.vtkMRMLScene()
    slicer.mrmlScene = mrml
    ensureConverterRules()
    yield mrml
    mrml.Clear(1)


@pytest.fixture(scope="module")
def one_torch_thread():
    """For modules of tiny tensors: one thread avoids waking a second one for each small operation."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
