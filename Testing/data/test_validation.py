"""Input checks: every row of the table in docs/reliability.md, accepted, warned or refused, with its message."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import psutil
import pytest
import SimpleITK as sitk

from segmatecore.data.io import load_volume
from segmatecore.data.validation import (
    MAX_VOXELS,
    InputError,
    validate_dicom_series,
    validate_geometry,
    validate_header,
    validate_intensities,
    validate_volume,
)


def ct_array(shape=(6, 24, 20), dtype=np.int16) -> np.ndarray:
    """A [z, y, x] volume that looks like CT: air around a 40 HU body with a 700 HU bone."""
    a = np.full(shape, -1000, dtype=np.float32)
    z, y, x = shape
    a[:, y // 4: 3 * y // 4, x // 4: 3 * x // 4] = 40
    a[:, y // 2, x // 2] = 700
    return a.astype(dtype)


def ct_image(shape=(6, 24, 20), dtype=np.int16, spacing=(0.8, 0.8, 2.0), direction=None) -> sitk.Image:
    image = sitk.GetImageFromArray(ct_array(shape, dtype))
    image.SetSpacing(spacing)
    if direction is not None:
        image.SetDirection(direction)
    return image


def rotation(axis, degrees) -> tuple[float, ...]:
    return tuple(sitk.VersorTransform(tuple(float(a) for a in axis), math.radians(degrees)).GetMatrix())


# ---- dimensions and components -------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.int16, np.int32, np.float32, np.float64])
def test_3d_scalar_ct_is_accepted_without_warnings(dtype):
    assert validate_volume(ct_image(dtype=dtype), "ct") == []


def test_2d_image_is_refused(tmp_path):
    path = tmp_path / "slice.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(ct_array()[0]), str(path))
    with pytest.raises(InputError, match=r"found a 2D image of size \(20, 24\); SegMate needs a 3D CT volume"):
        load_volume(path)


def test_4d_image_is_refused(tmp_path):
    path = tmp_path / "dynamic.nii.gz"
    sitk.WriteImage(sitk.JoinSeries([ct_image(), ct_image()]), str(path))
    with pytest.raises(InputError, match="found a 4D image of size .*extract one time point"):
        load_volume(path)


def test_rgb_image_is_refused():
    rgb = sitk.Compose([ct_image(dtype=np.uint8)] * 3)
    with pytest.raises(InputError, match="found 3 components per voxel .*needs a scalar CT volume"):
        validate_volume(rgb, "photo")


def test_complex_image_is_refused():
    image = sitk.RealAndImaginaryToComplex(ct_image(dtype=np.float32), ct_image(dtype=np.float32))
    with pytest.raises(InputError, match="found complex voxels"):
        validate_volume(image, "kspace")


def test_empty_volume_is_refused():
    with pytest.raises(InputError, match=r"the volume is empty \(size \(4, 4, 0\)\)"):
        validate_volume(sitk.Image([4, 4, 0], sitk.sitkInt16), "empty")


# ---- spacing ------------------------------------------------------------------------------------

@pytest.mark.parametrize("spacing", [(0.0, 1.0, 1.0), (1.0, -2.0, 1.0), (1.0, 1.0, float("nan"))])
def test_non_positive_spacing_is_refused(spacing):
    with pytest.raises(InputError, match="must be positive and finite"):
        validate_geometry(3, 1, (8, 8, 8), spacing, np.eye(3).ravel(), "bad")


def test_non_positive_spacing_in_a_file_header_is_refused_before_reading(tmp_path):
    header = tmp_path / "zero.mhd"
    header.write_text("ObjectType = Image\nNDims = 3\nDimSize = 8 8 8\nElementSpacing = 1 0 1\n"
                      "ElementType = MET_SHORT\nElementDataFile = zero.raw\n")
    (tmp_path / "zero.raw").write_bytes(np.zeros(512, np.int16).tobytes())
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(header))
    try:
        reader.ReadImageInformation()
    except RuntimeError:  # ITK itself may already refuse the header
        return
    with pytest.raises(InputError, match="must be positive and finite"):
        validate_header(reader, str(header))


@pytest.mark.parametrize("spacing", [(0.0008, 0.0008, 0.002), (0.8, 0.8, 250.0)])
def test_absurd_spacing_is_refused(spacing):
    with pytest.raises(InputError, match=r"outside 0.01-100 mm, so the header is wrong \(metres instead of mm\?\)"):
        validate_volume(ct_image(spacing=spacing), "metres")


@pytest.mark.parametrize("spacing", [(5.0, 5.0, 2.5), (0.8, 0.8, 12.0), (0.1, 0.1, 1.0)])
def test_spacing_outside_ct_range_is_warned(spacing):
    warnings = validate_volume(ct_image(spacing=spacing), "odd")
    assert len(warnings) == 1 and "outside what CT scanners produce (0.2-3 mm in-plane, 0.2-10 mm" in warnings[0]


def test_in_plane_and_slice_spacing_are_judged_in_the_canonical_frame():
    # A sagittal acquisition: image axis k runs left-right, so its 12 mm is "in-plane" for the axial slices.
    sagittal = (0, 0, 1, 1, 0, 0, 0, 1, 0)
    warnings = validate_volume(ct_image(spacing=(0.8, 0.8, 5.0), direction=sagittal), "sagittal")
    assert "5 x 0.8 mm in-plane and 0.8 mm between slices" in warnings[0]


# ---- directions -------------------------------------------------------------------------------

@pytest.mark.parametrize("direction", [
    (1, 0, 0, 0, 1, 0, 0, 0, 1),                      # LPS
    (-1, 0, 0, 0, -1, 0, 0, 0, 1),                    # RAS
    (1, 0, 0, 0, 1, 0, 0, 0, -1),                     # flipped slice axis
    rotation((0, 0, 1), 12.0),                        # in-plane rotation below the warning threshold
])
def test_canonical_and_slightly_oblique_directions_are_accepted(direction):
    assert validate_volume(ct_image(direction=direction), "ok") == []


def test_oblique_direction_is_warned_with_its_angle():
    warnings = validate_volume(ct_image(direction=rotation((1, 1, 0), 30.0)), "oblique")
    assert len(warnings) == 1
    assert "the volume is oblique: its axes are up to 30.0 degrees from the patient axes" in warnings[0]
    assert "closest canonical orientation without resampling" in warnings[0]


def test_gantry_tilt_kept_as_a_sheared_direction_is_warned():
    tilt = math.radians(25.0)  # slice axis leaning toward anterior; in-plane axes unchanged
    direction = (1, 0, 0, 0, 1, -math.sin(tilt), 0, 0, math.cos(tilt))
    warnings = validate_volume(ct_image(direction=direction), "tilted")
    assert "sheared by 25.0 degrees (a gantry tilt kept as a sheared grid)" in warnings[0]


def test_degenerate_direction_is_refused():
    with pytest.raises(InputError, match="is degenerate"):
        validate_geometry(3, 1, (8, 8, 8), (1, 1, 1), (1, 0, 0, 1, 0, 0, 0, 0, 1), "flat")
    with pytest.raises(InputError, match=r"columns have lengths \[2.0, 1.0, 1.0\], not 1"):
        validate_geometry(3, 1, (8, 8, 8), (1, 1, 1), (2, 0, 0, 0, 1, 0, 0, 0, 1), "scaled")


# ---- extreme sizes ----------------------------------------------------------------------------

def test_one_slice_is_accepted_with_a_warning():
    warnings = validate_volume(ct_image(shape=(1, 24, 20)), "single")
    assert warnings == ["single: only 1 axial slice; the network reads each slice with its neighbours above and "
                        "below (repeating the edge slice), so results on so few slices are less reliable than on "
                        "a full scan."]


def test_2000_slices_are_accepted():
    assert validate_geometry(3, 1, (512, 512, 2000), (0.8, 0.8, 0.5), np.eye(3).ravel(), "long") == []
    assert validate_volume(ct_image(shape=(2000, 16, 16), spacing=(0.8, 0.8, 0.5)), "long") == []


def test_2048_square_slices_are_accepted():
    assert validate_geometry(3, 1, (2048, 2048, 300), (0.25, 0.25, 1.0), np.eye(3).ravel(), "fine") == []
    assert validate_volume(ct_image(shape=(3, 2048, 2048), spacing=(0.25, 0.25, 1.0)), "fine") == []


def test_too_many_voxels_are_refused_from_the_header_without_reading_them(tmp_path):
    header = tmp_path / "huge.mhd"
    header.write_text("ObjectType = Image\nNDims = 3\nDimSize = 2048 2048 2000\nElementSpacing = 0.25 0.25 0.5\n"
                      "ElementType = MET_SHORT\nElementDataFile = huge.raw\n")
    (tmp_path / "huge.raw").write_bytes(b"\0" * 1024)
    rss = psutil.Process().memory_info().rss
    with pytest.raises(InputError, match=r"2048 x 2048 x 2000 is 8,388,608,000 voxels, more than SegMate segments "
                                         r"in one piece \(2,147,483,648"):
        load_volume(header)
    assert psutil.Process().memory_info().rss - rss < 100e6
    assert MAX_VOXELS == 2**31


# ---- intensities ------------------------------------------------------------------------------

def test_mr_like_intensities_are_warned():
    mr = sitk.GetImageFromArray(np.linspace(0, 1500, 6 * 24 * 20, dtype=np.float32).reshape(6, 24, 20))
    warnings = validate_volume(mr, "mr")
    assert warnings == ["mr: intensities range 0 to 1500, which does not look like CT in Hounsfield units (air is "
                        "about -1000 HU, soft tissue 0-100 HU). If this is CT stored with an offset (e.g. +1024), "
                        "subtract it first; on other modalities (MR, PET) results are meaningless."]


def test_ct_without_its_rescale_intercept_is_warned():
    raw = sitk.GetImageFromArray((ct_array().astype(np.int32) + 1024).astype(np.uint16))
    assert "intensities range 24 to 1724" in validate_volume(raw, "raw")[0]


def test_blank_volume_is_warned():
    blank = sitk.GetImageFromArray(np.full((4, 8, 8), -1000, np.int16))
    assert validate_volume(blank, "blank") == ["blank: every voxel is -1000; the volume is blank, so there is "
                                               "nothing to segment."]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_infinite_voxels_are_refused_with_their_count(bad):
    a = ct_array(dtype=np.float32)
    a[2, 3, 4:7] = bad
    with pytest.raises(InputError, match="3 voxels are NaN or infinite; fix or mask them"):
        validate_volume(sitk.GetImageFromArray(a), "nan")


def test_intensity_check_reads_a_large_volume_without_copying_it():
    big = sitk.Image([512, 512, 400], sitk.sitkFloat32)  # 400 MB of float32 (zeros)
    big[256, 256, 200] = -1000.0
    rss = psutil.Process().memory_info().rss
    validate_intensities(big, "big")
    assert psutil.Process().memory_info().rss - rss < 150e6


# ---- DICOM series -------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def write_dicom_series(write_ct_series):
    """``write_dicom_series(folder, positions, orientation=..., size=(8, 8), modality="CT", series_uid=...,
    first_instance=1)``: one CT-like slice per position; returns the file names in the given order."""
    def write(folder: Path, positions, orientation=(1, 0, 0, 0, 1, 0), size=(8, 8), modality="CT",
              series_uid="1.2.826.0.1.3680043.8.498.1", first_instance=1) -> list[str]:
        slices = [sitk.GetImageFromArray(ct_array((1, size[1], size[0]))) for _ in positions]
        return write_ct_series(folder, slices, positions, orientation=orientation, modality=modality,
                               series_uid=series_uid, first_instance=first_instance)
    return write


def series_files(folder: Path) -> list[str]:
    return list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))


def test_complete_dicom_series_is_accepted(tmp_path, write_dicom_series):
    write_dicom_series(tmp_path, [(0, 0, 2.0 * k) for k in range(6)])
    assert validate_dicom_series(series_files(tmp_path), "ct") == []
    loaded = load_volume(tmp_path)
    assert loaded.image.GetSize() == (8, 8, 6) and loaded.warnings == []


def test_dicom_series_with_a_missing_slice_is_refused(tmp_path, write_dicom_series):
    write_dicom_series(tmp_path, [(0, 0, 2.0 * k) for k in (0, 1, 2, 4, 5, 6)])
    message = ("1 gap in the slice positions (e.g. 4.00 mm between slices 3 and 4 where the series steps 2.00 mm): "
               "slices are missing")
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate_dicom_series(series_files(tmp_path), "gap")
    with pytest.raises(InputError, match="slices are missing"):
        load_volume(tmp_path)


def test_slightly_uneven_dicom_spacing_is_warned(tmp_path, write_dicom_series):
    write_dicom_series(tmp_path, [(0, 0, z) for z in (0.0, 2.0, 4.3, 6.0, 8.0, 10.0)])
    warnings = validate_dicom_series(series_files(tmp_path), "uneven")
    assert warnings == ["uneven: uneven slice spacing (steps from 1.70 to 2.30 mm); read as an evenly spaced stack, "
                        "slices sit up to 0.30 mm from their recorded positions."]


def test_strongly_uneven_dicom_spacing_is_refused(tmp_path, write_dicom_series):
    # 3 mm slices, then 2 mm ones: no gap, but an even stack would put slices more than a half step off.
    write_dicom_series(tmp_path, [(0, 0, z) for z in (0, 3, 6, 9, 11, 13, 15, 17, 19, 21, 23)])
    with pytest.raises(InputError, match=r"slices would sit up to 2.10 mm from their recorded positions \(more than "
                                         r"half the 2.00 mm slice step\): the spacing is too uneven"):
        validate_dicom_series(series_files(tmp_path), "variable")


def test_dicom_series_with_two_slices_at_one_position_is_refused(tmp_path, write_dicom_series):
    write_dicom_series(tmp_path, [(0, 0, z) for z in (0, 2, 4, 4, 6)])
    with pytest.raises(InputError, match=r"lie at the same position \(0.0, 0.0, 4.0\) mm; the series holds more "
                                         r"than one volume"):
        validate_dicom_series(series_files(tmp_path), "phases")


def test_dicom_files_out_of_slice_order_are_refused(tmp_path, write_dicom_series):
    names = write_dicom_series(tmp_path, [(0, 0, z) for z in (0, 4, 2, 6)])
    with pytest.raises(InputError, match="the files are not in slice order"):
        validate_dicom_series(names, "shuffled")


def test_gantry_tilted_dicom_series_is_accepted_with_the_displacement_it_causes(tmp_path, write_dicom_series):
    tilt = math.radians(20.0)
    positions = [(0.0, 2.0 * k * math.sin(tilt), 2.0 * k * math.cos(tilt)) for k in range(6)]
    write_dicom_series(tmp_path, positions)
    names = series_files(tmp_path)
    warnings = validate_dicom_series(names, "tilted")
    assert len(warnings) == 1 and warnings[0].startswith("tilted: gantry tilt of 20.0 degrees; SimpleITK stacks")
    # The displacement in the message is the real one: SimpleITK's stack against the scanner's positions.
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(names)
    image = reader.Execute()
    actual = max(np.linalg.norm(np.subtract(image.TransformIndexToPhysicalPoint((0, 0, k)), positions[k]))
                 for k in range(6))
    assert f"up to {actual:.2f} mm from the scanner's positions" in warnings[0]
    assert load_volume(tmp_path).warnings == [warnings[0].replace("tilted", str(tmp_path), 1)]


def test_dicom_series_mixing_orientations_is_refused(tmp_path, write_dicom_series):
    names = write_dicom_series(tmp_path, [(0, 0, z) for z in (0, 2, 4)])
    names += write_dicom_series(tmp_path, [(0, 0, 6)], orientation=(1, 0, 0, 0, 0, -1), first_instance=4)
    with pytest.raises(InputError, match="the series mixes slice orientations; .*localizer"):
        validate_dicom_series(names, "mixed")


def test_dicom_series_mixing_slice_sizes_is_refused(tmp_path, write_dicom_series):
    names = write_dicom_series(tmp_path, [(0, 0, z) for z in (0, 2, 4)])
    names += write_dicom_series(tmp_path, [(0, 0, 6)], size=(16, 8), first_instance=4)
    with pytest.raises(InputError, match="the series mixes slice sizes 16x8, 8x8"):
        validate_dicom_series(names, "mixed")


def test_dicom_slice_without_position_is_refused(tmp_path, write_dicom_series):
    import pydicom

    names = write_dicom_series(tmp_path, [(0, 0, 2.0 * k) for k in range(4)])
    dataset = pydicom.dcmread(names[2])
    del dataset.ImagePositionPatient
    dataset.save_as(names[2])
    with pytest.raises(InputError, match=r"slice0003.dcm has no valid Image Position/Orientation \(Patient\); "
                                         "SegMate cannot place its slice"):
        validate_dicom_series(names, "unplaced")


def test_dicom_series_with_broken_orientation_is_refused(tmp_path, write_dicom_series):
    import pydicom

    names = write_dicom_series(tmp_path, [(0, 0, 2.0 * k) for k in range(3)])
    for name in names:  # row and column both along x: no slice normal
        dataset = pydicom.dcmread(name)
        dataset.ImageOrientationPatient = [1, 0, 0, 1, 0, 0]
        dataset.save_as(name)
    with pytest.raises(InputError, match="does not give two perpendicular unit vectors"):
        validate_dicom_series(names, "broken")


def test_non_ct_dicom_series_is_warned(tmp_path, write_dicom_series):
    write_dicom_series(tmp_path, [(0, 0, 2.0 * k) for k in range(4)], modality="MR")
    assert validate_dicom_series(series_files(tmp_path), "mr") == [
        "mr: the DICOM modality is MR, not CT; SegMate is trained on CT and results on other modalities are "
        "meaningless."]


def test_folder_with_mixed_series_uses_the_largest_ct_series_and_says_so(tmp_path, write_dicom_series):
    write_dicom_series(tmp_path / "ct", [(0, 0, 2.0 * k) for k in range(6)], series_uid="1.2.826.0.1.3680043.8.498.10")
    write_dicom_series(tmp_path / "ct_small", [(0, 0, 2.0 * k) for k in range(3)],
                       series_uid="1.2.826.0.1.3680043.8.498.11")
    write_dicom_series(tmp_path / "mr", [(0, 0, 2.0 * k) for k in range(9)], modality="MR",
                       series_uid="1.2.826.0.1.3680043.8.498.12")
    loaded = load_volume(tmp_path)
    assert loaded.series_uid == "1.2.826.0.1.3680043.8.498.10" and loaded.image.GetSize()[2] == 6
    assert any("3 series found; using 1.2.826.0.1.3680043.8.498.10 [CT, 6 files]" in w for w in loaded.warnings)
    chosen = load_volume(tmp_path, series_uid="1.2.826.0.1.3680043.8.498.11")
    assert chosen.image.GetSize()[2] == 3


def test_real_dicom_series_pass(shared_data):
    for folder in (shared_data / "totalseg_example" / "example_ct_dicom", shared_data / "dcmqi_ct3slice" / "ct-3slice"):
        assert validate_dicom_series(series_files(folder), folder.name) == []


def test_real_ct_volumes_pass_without_refusal(shared_data):
    image = sitk.ReadImage(str(shared_data / "totalseg_example" / "example_ct.nii.gz"))
    assert validate_volume(image, "example_ct") == []
    kbp = sitk.ReadImage(str(shared_data / "openkbp" / "train_pt_100" / "ct.nii.gz"))
    assert [w for w in validate_volume(kbp, "kbp") if "spacing" not in w] == []
