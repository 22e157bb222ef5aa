"""Atomic writes: a file is either the previous one or the complete new one, and no temporary file stays behind."""
from __future__ import annotations

import os

import numpy as np
import pytest
import SimpleITK as sitk

from segmatecore.data.atomic import atomic_path, write_bytes_atomic, write_text_atomic


def test_a_write_replaces_the_file_and_leaves_nothing_else(tmp_path):
    target = tmp_path / "sub" / "report.json"
    assert write_text_atomic(target, "old\n") == target
    write_text_atomic(target, "new\n")
    assert target.read_text() == "new\n"
    assert os.listdir(target.parent) == ["report.json"]


@pytest.mark.parametrize("failure", [OSError("No space left on device"), KeyboardInterrupt()])
def test_a_failure_mid_write_keeps_the_old_file_and_leaves_no_temporary_file(tmp_path, failure):
    target = write_bytes_atomic(tmp_path / "model.safetensors", b"old weights")
    with pytest.raises(type(failure)):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half of the new")
            raise failure
    assert target.read_bytes() == b"old weights"
    assert os.listdir(tmp_path) == ["model.safetensors"]


def test_a_failure_before_anything_was_written_creates_no_file(tmp_path):
    with pytest.raises(ValueError):
        with atomic_path(tmp_path / "labels.nii.gz"):
            raise ValueError("refused")
    assert os.listdir(tmp_path) == []


def test_the_temporary_path_is_hidden_and_keeps_the_extensions_writers_choose_formats_by(tmp_path):
    image = sitk.GetImageFromArray(np.arange(24, dtype=np.uint8).reshape(2, 3, 4))
    with atomic_path(tmp_path / "labels.nii.gz") as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".") and tmp.name.endswith(".nii.gz")
        sitk.WriteImage(image, str(tmp), useCompression=True)
    back = sitk.ReadImage(str(tmp_path / "labels.nii.gz"))
    assert np.array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))
    assert os.listdir(tmp_path) == ["labels.nii.gz"]


def test_a_folder_is_replaced_whole_or_not_at_all(tmp_path):
    case = tmp_path / "case_001"
    with atomic_path(case) as tmp:
        tmp.mkdir()
        (tmp / "image.npy").write_bytes(b"1")
    with pytest.raises(RuntimeError):
        with atomic_path(case) as tmp:
            tmp.mkdir()
            (tmp / "image.npy").write_bytes(b"2")
            raise RuntimeError("interrupted")
    assert (case / "image.npy").read_bytes() == b"1"
    assert os.listdir(tmp_path) == ["case_001"]
