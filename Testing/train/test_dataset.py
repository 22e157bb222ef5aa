"""2.5D training samples: the inference preprocessing, organ-relative z_norm, balanced sampling,
deterministic augmentation, and a left/right flip that keeps left organs on the patient's left."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from segmatecore.data.organs import PAPER_ORGANS, lateral_swap
from segmatecore.data.preprocess import Preprocessing, normalize_hu, resize_slices, stack_25d
from segmatecore.train.dataset import (Augmenter, BalancedSampler, SliceDataset, balanced_weights, load_cases,
                                       z_norm_for)
from segmatecore.data.prepare import prepare

KEYS = list(PAPER_ORGANS)
PRE = Preprocessing(input_size=(64, 64))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, nifti_pairs):
    root = tmp_path_factory.mktemp("ds")
    src = nifti_pairs(root / "src", cases=4)
    prepare("nifti-pairs", src, root / "out", workers=1, all_train=True, progress=False)
    return root / "out"


def test_sample_uses_the_inference_preprocessing(prepared):
    cases = load_cases([prepared], "train")
    ds = SliceDataset(cases, PRE, KEYS)
    c, t = 1, 7
    index = int(np.flatnonzero((ds.items[:, 0] == c) & (ds.items[:, 1] == t))[0])
    sample = ds[index]
    expected = resize_slices(torch.from_numpy(normalize_hu(stack_25d(cases[c].image, [t]), PRE)), (64, 64))[0]
    assert torch.equal(sample["image"], expected)
    first, last = cases[c].record["extent"]
    assert sample["z_norm"].item() == pytest.approx((t - first) / (last - first))
    assert sample["annotated"].tolist() == [float(k in ("spinal_cord", "esophagus", "left_kidney")) for k in KEYS]
    assert sample["presence"][KEYS.index("spinal_cord")] == 1
    assert sample["target"].shape == (9, 64, 64) and set(sample["target"].unique().tolist()) <= {0.0, 1.0}


def test_z_norm_is_organ_relative_and_clipped():
    assert z_norm_for([0, 2, 6, 10, 15], (2, 10), 16).tolist() == [0.0, 0.0, 0.5, 1.0, 1.0]
    assert z_norm_for(3, None, 7) == pytest.approx(0.5)


def test_flip_keeps_left_organs_on_the_patients_left():
    """Canonical rows run toward the patient's right: a left organ lives at low row indices."""
    size = 64
    image = torch.full((3, size, size), -1.0)
    target = torch.zeros(9, size, size)
    left, right = KEYS.index("left_kidney"), KEYS.index("right_kidney")
    target[left, 8:20, 24:40] = 1   # patient's left half
    image[:, 8:20, 24:40] = 0.6     # bright: it is the kidney on the left
    target[right, 44:56, 24:40] = 1
    image[:, 44:56, 24:40] = 0.2
    augment = Augmenter(KEYS, "light")
    for seed in range(8):
        torch.manual_seed(seed)
        out_image, out_target = augment(image, target, flip=True)
        rows = torch.arange(size, dtype=torch.float32)[:, None]
        left_row = (out_target[left] * rows).sum() / out_target[left].sum()
        right_row = (out_target[right] * rows).sum() / out_target[right].sum()
        assert left_row < size / 2 < right_row
        # the mirrored patient: the brighter kidney (formerly left) is now on the patient's right
        bright = (out_image[1] > 0.45).float()
        assert (bright * rows).sum() / bright.sum() > size / 2
    assert lateral_swap(PAPER_ORGANS)[left] == right and lateral_swap(PAPER_ORGANS)[KEYS.index("left_lung")] == KEYS.index("right_lung")
    assert lateral_swap(PAPER_ORGANS)[KEYS.index("spinal_cord")] == KEYS.index("spinal_cord")


def test_augmentation_is_deterministic_per_seed_and_epoch(prepared):
    cases = load_cases([prepared], "train")
    a = SliceDataset(cases, PRE, KEYS, augment="light", seed=5)
    b = SliceDataset(cases, PRE, KEYS, augment="light", seed=5)
    for i in (3, 20):
        assert torch.equal(a[i]["image"], b[i]["image"]) and torch.equal(a[i]["target"], b[i]["target"])
    b.set_epoch(1)
    assert not torch.equal(a[20]["image"], b[20]["image"])


def test_worker_processes_give_the_same_batches(prepared):
    cases = load_cases([prepared], "train")
    ds = SliceDataset(cases, PRE, KEYS, augment="light", seed=2)
    sampler = BalancedSampler(np.full(len(ds), 1.0 / len(ds)), 8, seed=2)
    batches = [next(iter(DataLoader(ds, batch_size=4, sampler=sampler, num_workers=n,
                                    multiprocessing_context="spawn" if n else None))) for n in (0, 1)]
    assert torch.equal(batches[0]["image"], batches[1]["image"])
    assert torch.equal(batches[0]["slice"], batches[1]["slice"])


def test_balanced_sampling_gives_organs_equal_shares():
    presence = np.zeros((1000, 9), dtype=bool)
    presence[:800, 2] = True     # a frequent organ
    presence[800:820, 4] = True  # a rare one
    weights = balanced_weights(presence, None, power=1.0, empty_share=0.1)
    assert weights.sum() == pytest.approx(1.0)
    assert (weights * presence[:, 2]).sum() == pytest.approx((weights * presence[:, 4]).sum())
    assert weights[~presence.any(axis=1)].sum() == pytest.approx(0.1)
    natural = balanced_weights(presence, None, power=0.0, empty_share=0.1)
    assert (natural * presence[:, 2]).sum() / (natural * presence[:, 4]).sum() == pytest.approx(40.0)


def test_sampler_is_reproducible_and_splits_across_ranks():
    weights = np.linspace(1, 2, 50)
    one = list(BalancedSampler(weights, 40, seed=1))
    assert one == list(BalancedSampler(weights, 40, seed=1))
    ranks = [list(BalancedSampler(weights, 40, seed=1, rank=r, world_size=2)) for r in (0, 1)]
    assert sorted(ranks[0] + ranks[1]) == sorted(one)
    resumed = BalancedSampler(weights, 40, seed=1)
    resumed.start = 10
    assert list(resumed) == one[10:]


# ---------------------------------------------------------------------------------------- organ sets
HEAD_NECK = ["spinal_cord", "brainstem", "left_parotid", "right_parotid", "mandible"]


def test_targets_follow_the_models_organ_order_not_the_datasets(prepared):
    """The same case read for two models with other organ sets and orders: each target channel is
    the organ the model names there, and organs the dataset lacks are unannotated."""
    cases = load_cases([prepared], "train")
    paper = SliceDataset(cases, PRE, KEYS)
    other_order = ["left_kidney", "brainstem", "spinal_cord"]
    other = SliceDataset(cases, PRE, other_order, extent_organs=["spinal_cord"])
    index = int(np.flatnonzero((paper.items[:, 0] == 1) & (paper.items[:, 1] == 7))[0])
    a, b = paper[index], other[index]
    for channel, key in enumerate(other_order):
        if key in KEYS:
            assert torch.equal(b["target"][channel], a["target"][KEYS.index(key)]), key
    assert b["annotated"].tolist() == [1.0, 0.0, 1.0]  # the prepared cases have no brainstem contours
    assert b["target"][1].sum() == 0 and b["presence"][1] == 0


def test_flip_swaps_parotids_in_a_head_and_neck_set():
    size = 32
    target = torch.zeros(len(HEAD_NECK), size, size)
    left, right = HEAD_NECK.index("left_parotid"), HEAD_NECK.index("right_parotid")
    target[left, 4:10, 10:20] = 1
    target[right, 22:28, 10:20] = 1
    _, flipped = Augmenter(HEAD_NECK, "light")(torch.zeros(3, size, size), target, flip=True)
    rows = torch.arange(size, dtype=torch.float32)[:, None]
    assert (flipped[left] * rows).sum() / flipped[left].sum() < size / 2 < (flipped[right] * rows).sum() / flipped[right].sum()
    assert lateral_swap(HEAD_NECK) == [0, 1, 3, 2, 4]


def test_an_organ_set_with_half_a_pair_is_never_flipped():
    size = 32
    target = torch.zeros(2, size, size)
    target[0, 4:10, 10:20] = 1  # a left parotid without its right counterpart
    image = torch.rand(3, size, size)
    out_image, out_target = Augmenter(["left_parotid", "mandible"], "none")(image, target, flip=True)
    assert torch.equal(out_target, target) and torch.equal(out_image, image)
    augmenter = Augmenter(["left_parotid", "mandible"], "light")
    assert augmenter.swap is None


def test_z_norm_is_unknown_for_a_case_without_an_extent_organ(prepared):
    """A case that does not annotate an extent organ would get a shorter, wrong extent: its slices
    get z_norm NaN (FiLM off for them), while cases that annotate every extent organ get the extent
    of those organs alone."""
    cases = load_cases([prepared], "train")
    ds = SliceDataset(cases, PRE, KEYS, extent_organs=["spinal_cord", "liver"])  # nobody annotates the liver
    assert all(np.isnan(ds[i]["z_norm"].item()) for i in (0, 5, 40))
    ds = SliceDataset(cases, PRE, KEYS, extent_organs=["spinal_cord"])
    record = cases[1].record
    first, last = record["organ_slices"]["spinal_cord"]
    index = int(np.flatnonzero((ds.items[:, 0] == 1) & (ds.items[:, 1] == 7))[0])
    assert ds[index]["z_norm"].item() == pytest.approx(np.clip((7 - first) / max(last - first, 1), 0, 1))
