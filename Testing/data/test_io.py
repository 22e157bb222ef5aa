"""Reading inputs: every supported format gives the same voxels and geometry, bad files one clear line."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from segmatecore.data.io import case_name, list_dicom_series, load_volume
from segmatecore.data.validation import InputError


def small_ct(shape=(5, 12, 10), dtype=np.int16) -> sitk.Image:
    """[z, y, x] air around a soft-tissue body with a bone voxel, on an oblique-free LPS grid."""
    a = np.full(shape, -1000, dtype=np.int16)
    a[:, 3:9, 2:8] = 40
    a[2, 6, 5] = 900
    image = sitk.GetImageFromArray(a.astype(dtype))
    image.SetSpacing((0.75, 0.8, 2.5))
    image.SetOrigin((-12.5, 30.25, -101.0))
    image.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))
    return image


def same_geometry(a: sitk.Image, b: sitk.Image, atol: float = 0.0) -> bool:
    return (a.GetSize() == b.GetSize()
            and np.allclose(a.GetSpacing(), b.GetSpacing(), rtol=0, atol=atol + 1e-12)
            and np.allclose(a.GetOrigin(), b.GetOrigin(), rtol=0, atol=atol + 1e-12)
            and np.allclose(a.GetDirection(), b.GetDirection(), rtol=0, atol=atol + 1e-12))


@pytest.fixture(scope="session")
def write_ct_slices(write_ct_series):
    """``write_ct_slices(folder, count, series_uid, modality="CT")``: a DICOM series of the small CT, one file
    per slice, 2 mm apart."""
    def write(folder: Path, count: int, series_uid: str, modality: str = "CT") -> None:
        volume = small_ct((count, 12, 10))
        write_ct_series(folder, [volume[:, :, k] for k in range(count)], [(0, 0, 2.0 * k) for k in range(count)],
                        pixel_spacing=(0.8, 0.75), modality=modality, series_uid=series_uid,
                        study_uid="1.2.826.0.1.3680043.8.498.77", prefix=f"{series_uid[-2:]}_")
    return write


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"])
@pytest.mark.parametrize("dtype", [np.int16, np.float32])
def test_every_file_format_reads_back_the_same_voxels_and_geometry(tmp_path, suffix, dtype):
    image = small_ct(dtype=dtype)
    path = tmp_path / f"case{suffix}"
    sitk.WriteImage(image, str(path))
    loaded = load_volume(path)
    # NIfTI stores its geometry in float32, the others in full precision.
    assert same_geometry(loaded.image, image, atol=1e-4 if ".nii" in suffix else 0.0)
    assert np.array_equal(sitk.GetArrayViewFromImage(loaded.image), sitk.GetArrayViewFromImage(image))
    assert loaded.source == str(path) and loaded.dicom_dir is None and loaded.warnings == []


def test_real_dicom_series_folder_reads_in_the_physical_space_of_its_reference(shared_data):
    folder = shared_data / "totalseg_example" / "example_ct_dicom"
    loaded = load_volume(folder)
    assert loaded.image.GetSize() == (512, 512, 20)
    assert loaded.image.GetSpacing() == pytest.approx((0.9765625, 0.9765625, 2.0))
    assert loaded.dicom_dir == folder and loaded.warnings == []
    # TotalSegmentator's labels for this series were written by nibabel (y flipped): same physical space.
    reference = sitk.ReadImage(str(shared_data / "totalseg_example" / "example_seg_dicom.nii.gz"))
    corner = loaded.image.TransformIndexToPhysicalPoint((0, 0, 0))
    ref_index = reference.TransformPhysicalPointToContinuousIndex(corner)
    assert np.allclose(ref_index, (0, 511, 0), atol=1e-2)


def test_a_single_dicom_file_reads_its_whole_series(shared_data):
    folder = shared_data / "totalseg_example" / "example_ct_dicom"
    one_file = sorted(folder.iterdir())[7]
    assert load_volume(one_file).image.GetSize() == (512, 512, 20)


def test_several_series_in_one_folder_choose_the_largest_ct_or_the_uid_asked(tmp_path, write_ct_slices):
    write_ct_slices(tmp_path, 4, "1.2.826.0.1.3680043.8.498.31")
    write_ct_slices(tmp_path, 6, "1.2.826.0.1.3680043.8.498.32")
    write_ct_slices(tmp_path, 9, "1.2.826.0.1.3680043.8.498.33", modality="MR")
    assert sorted(s.num_slices for s in list_dicom_series(tmp_path)) == [4, 6, 9]
    default = load_volume(tmp_path)
    assert default.series_uid == "1.2.826.0.1.3680043.8.498.32" and default.image.GetSize()[2] == 6
    assert any("3 series found" in w and "--series" in w for w in default.warnings)
    chosen = load_volume(tmp_path, series_uid="1.2.826.0.1.3680043.8.498.31")
    assert chosen.image.GetSize()[2] == 4
    with pytest.raises(InputError) as err:
        load_volume(tmp_path, series_uid="9.9.9")
    assert "no series with UID 9.9.9" in str(err.value) and "1.2.826.0.1.3680043.8.498.33 [MR, 9 files]" in str(err.value)


def one_line_error(path, **kwargs) -> str:
    with pytest.raises(InputError) as err:
        load_volume(path, **kwargs)
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    return message


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_empty_and_truncated_files_are_refused_in_one_line(tmp_path, suffix):
    full = tmp_path / f"full{suffix}"
    sitk.WriteImage(small_ct((20, 40, 40)), str(full), useCompression=suffix == ".nrrd")
    empty = tmp_path / f"empty{suffix}"
    empty.write_bytes(b"")
    assert "the file is empty (0 bytes)" in one_line_error(empty)
    truncated = tmp_path / f"truncated{suffix}"
    truncated.write_bytes(full.read_bytes()[: full.stat().st_size * 2 // 3])
    assert "truncated" in one_line_error(truncated)


def test_unreadable_missing_and_dicom_less_inputs_are_refused_in_one_line(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    assert "not a readable image" in one_line_error(notes)
    assert "no such file or folder" in one_line_error(tmp_path / "missing.nii.gz")
    folder = tmp_path / "exports"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "readme.txt").write_text("no DICOM here")
    assert "no DICOM series found in this folder or its sub-folders" in one_line_error(folder)
    image = tmp_path / "ct.nii.gz"
    sitk.WriteImage(small_ct(), str(image))
    assert "the input is not DICOM" in one_line_error(image, series_uid="1.2.3")


@pytest.mark.parametrize("name, expected", [("case_001.nii.gz", "case_001"), ("ct.NII", "ct"), ("a.seg.nrrd", "a"),
                                            ("scan.mha", "scan"), ("DICOM_folder", "DICOM_folder"),
                                            ("1.2.840.113619", "1.2.840.113619")])
def test_case_name_strips_only_image_suffixes(name, expected):
    assert case_name(Path("/data") / name) == expected
