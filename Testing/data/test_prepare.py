"""`segmate prepare`: canonical arrays, presence, extents, annotated organs and splits match the masks."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from segmatecore.cli.main import main
from segmatecore.data.geometry import to_canonical
from segmatecore.data.organs import OrganSet, PAPER_ORGANS
from segmatecore.data.prepare import assign_splits, decode_labels, load_index, prepare

PAPER = OrganSet(PAPER_ORGANS)  # the organs of a model made with the defaults

KEYS = list(PAPER_ORGANS)


def canonical_array(path: Path) -> np.ndarray:
    image = sitk.ReadImage(str(path))  # kept alive while the view is copied
    return np.array(to_canonical(image)[0])


def canonical_mask(path: Path, values=None) -> np.ndarray:
    array = canonical_array(path)
    return array != 0 if values is None else np.isin(array, values)


def check_case(root: Path, record: dict, truth: dict[str, np.ndarray]) -> None:
    """labels, presence and extent of a prepared case against independently read masks; bit k of the
    labels is the dataset's organ k (dataset.json's ``organs``)."""
    keys = load_index(root)["organs"]
    labels = decode_labels(np.load(root / "cases" / record["id"] / "labels.npy"), len(keys))
    presence = np.load(root / "cases" / record["id"] / "presence.npy")
    assert presence.shape[1] == len(keys)
    assert sorted(record["annotated"]) == sorted(truth)
    union = np.zeros(labels.shape[3], dtype=bool)
    for k, key in enumerate(keys):
        if key in truth:
            np.testing.assert_array_equal(labels[k], truth[key])
            slices = truth[key].any(axis=(0, 1))
            np.testing.assert_array_equal(presence[:, k], slices)
            union |= slices
        else:
            assert not labels[k].any() and not presence[:, k].any()
    hit = np.flatnonzero(union)
    assert record["extent"] == ([int(hit[0]), int(hit[-1])] if hit.size else None)


@pytest.fixture(scope="module")
def openkbp_subset(shared_data, tmp_path_factory):
    """Four real OpenKBP cases: two train, a QC-flagged train case and a validation case."""
    src = tmp_path_factory.mktemp("openkbp_src")
    for name in ("train_pt_2", "train_pt_4", "train_pt_89", "validation_pt_215"):
        (src / name).symlink_to(shared_data / "openkbp" / name)
    (src / "qc_flags.json").symlink_to(shared_data / "openkbp" / "qc_flags.json")
    out = tmp_path_factory.mktemp("openkbp_prepared")
    assert main(["prepare", "openkbp", str(src), "-o", str(out), "--workers", "1"]) == 0
    return src, out, load_index(out)


OPENKBP_MASKS = {"spinal_cord": "SpinalCord", "esophagus": "Esophagus", "brainstem": "Brainstem",
                 "left_parotid": "LeftParotid", "right_parotid": "RightParotid", "larynx": "Larynx",
                 "mandible": "Mandible"}


def openkbp_truth(case_dir: Path, leave_out=()) -> dict[str, np.ndarray]:
    return {key: canonical_mask(case_dir / "masks" / f"{name}.nii.gz") for key, name in OPENKBP_MASKS.items()
            if (case_dir / "masks" / f"{name}.nii.gz").is_file() and key not in leave_out}


def test_openkbp_reads_all_seven_structures(openkbp_subset):
    """The dataset's organs are the seven clinical structures, in the organ table's order; a case
    annotates exactly the structures it has a mask for (train_pt_2 has no larynx contour)."""
    _, _, index = openkbp_subset
    assert index["organs"] == ["spinal_cord", "esophagus", "brainstem", "left_parotid", "right_parotid", "larynx",
                               "mandible"]
    records = {r["id"]: r for r in index["cases"]}
    assert "larynx" not in records["train_pt_2"]["annotated"] and "larynx" in records["train_pt_4"]["annotated"]
    assert not any(Path(r["image"]).is_absolute() for r in index["cases"]) and not Path(index["source"]).is_absolute()


def test_openkbp_extents_and_presence_match_the_masks(openkbp_subset):
    src, out, index = openkbp_subset
    records = {r["id"]: r for r in index["cases"]}
    for case in ("train_pt_2", "train_pt_4"):
        check_case(out, records[case], openkbp_truth(src / case))
        image = np.load(out / "cases" / case / "image.npy", mmap_mode="r")
        assert image.dtype == np.int16
        np.testing.assert_array_equal(image, canonical_array(src / case / "ct.nii.gz"))


def test_openkbp_quality_flags_leave_contours_unannotated(openkbp_subset):
    src, out, index = openkbp_subset
    records = {r["id"]: r for r in index["cases"]}
    assert "spinal_cord" not in records["validation_pt_215"]["annotated"]  # broken cord contour
    check_case(out, records["validation_pt_215"], openkbp_truth(src / "validation_pt_215", leave_out=["spinal_cord"]))
    assert records["train_pt_89"]["annotated"] == ["brainstem"]  # cord and esophagus mostly outside the body
    check_case(out, records["train_pt_89"], openkbp_truth(src / "train_pt_89", leave_out=["spinal_cord", "esophagus"]))


def test_openkbp_keeps_the_challenge_split(openkbp_subset):
    _, _, index = openkbp_subset
    assert index["splits"]["test"] == ["validation_pt_215"]
    assert sorted(index["splits"]["train"] + index["splits"]["val"]) == ["train_pt_2", "train_pt_4", "train_pt_89"]


def test_totalseg_example_labels_are_the_merged_masks(shared_data, tmp_path):
    src = shared_data / "totalseg_example"
    index = prepare("totalsegmentator", src, tmp_path, workers=1, all_train=True, progress=False)
    records = {r["id"]: r for r in index["cases"]}
    masks = src / "example_seg_fast"
    truth = {}
    for key, names in (("left_lung", ["lung_upper_lobe_left", "lung_lower_lobe_left"]),
                       ("right_lung", ["lung_upper_lobe_right", "lung_middle_lobe_right", "lung_lower_lobe_right"]),
                       ("spinal_cord", ["spinal_cord"]), ("esophagus", ["esophagus"]), ("liver", ["liver"]),
                       ("left_kidney", ["kidney_left"]), ("right_kidney", ["kidney_right"]), ("aorta", ["aorta"]),
                       ("trachea", ["trachea"])):
        truth[key] = np.logical_or.reduce([canonical_mask(masks / f"{n}.nii.gz") for n in names])
    check_case(tmp_path, records["example_ct_sm"], truth)
    assert records["example_ct_sm"]["voxels"]["esophagus"] == 0  # annotated, outside the field of view
    # The full CT's multilabel file, decoded with TotalSegmentator's v2 class indices.
    multilabel = src / "example_seg_fast_force_split.nii.gz"
    index_of = {"left_lung": [10, 11], "right_lung": [12, 13, 14], "spinal_cord": [79], "esophagus": [15],
                "liver": [5], "left_kidney": [3], "right_kidney": [2], "aorta": [52], "trachea": [16]}
    check_case(tmp_path, records["example_ct"], {k: canonical_mask(multilabel, v) for k, v in index_of.items()})
    assert index["splits"]["train"] == ["example_ct", "example_ct_sm"]
    assert all("model output" in r["notes"][0] for r in records.values())


def test_nifti_pairs_and_patient_level_splits_are_reproducible(tmp_path, nifti_pairs):
    src = nifti_pairs(tmp_path / "src", cases=6)
    a = prepare("nifti-pairs", src, tmp_path / "a", workers=1, seed=3, progress=False)
    b = prepare("nifti-pairs", src, tmp_path / "b", workers=1, seed=3, progress=False)
    assert a["splits"] == b["splits"]
    assert sorted(sum(a["splits"].values(), [])) == [f"case{n:02d}" for n in range(6)]
    assert a["splits"]["val"] and a["splits"]["train"]
    record = a["cases"][0]
    assert record["annotated"] == ["spinal_cord", "esophagus", "left_kidney"]
    labels = canonical_mask(src / "labels" / "case00.nii.gz", [3])
    check_case(tmp_path / "a", record, {"spinal_cord": canonical_mask(src / "labels" / "case00.nii.gz", [1]),
                                        "esophagus": canonical_mask(src / "labels" / "case00.nii.gz", [2]),
                                        "left_kidney": labels})
    # the patient's left kidney lies toward low canonical i (i increases toward the patient's right)
    assert np.flatnonzero(labels.any(axis=(1, 2))).mean() < labels.shape[0] / 2


def test_cases_of_one_patient_share_a_split():
    records = [{"id": f"{p}_{v}", "patient": p, "source_split": None} for p in "abcdefghij" for v in (1, 2)]
    splits = assign_splits(records, seed=1, fractions=(0.6, 0.2, 0.2))
    where = {case: split for split, cases in splits.items() for case in cases}
    assert all(where[f"{p}_1"] == where[f"{p}_2"] for p in "abcdefghij")
    assert {len(v) for v in splits.values()} == {12, 4}


def test_missing_label_map_is_a_clear_error(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(FileNotFoundError, match="label_map.json"):
        prepare("nifti-pairs", tmp_path, tmp_path / "out", progress=False)
