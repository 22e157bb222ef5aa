"""2.5D training samples from prepared folders, with organ-relative z_norm and class balancing.

A sample is slice t of a case: the (t-1, t, t+1) stack through the same ``normalize_hu``,
``stack_25d`` and ``resize_slices`` that inference uses, the masks of the model's organs in slice
t (in the model's channel order, whatever the dataset's bit order), which of them the case
annotates, the per-slice presence and z_norm = (t - first) / (last - first) clipped to [0, 1],
where first/last are the case's first and last slice with any of the model's *extent organs*.

Partial labels and z_norm: a case that lacks the contour of an extent organ has a shorter
extent than the same anatomy with that contour, so its z_norm would be wrong. Such a case's
slices get z_norm NaN, which switches FiLM off for them alone (see ``models.blocks.FiLM``); they
still train every other part of the network.

Augmentation (kornia) is deterministic per (seed, epoch, index), whatever the worker count.
"""
from __future__ import annotations

import math
import warnings
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from segmatecore.data.organs import OrganSet
from segmatecore.data.preprocess import Preprocessing, normalize_hu, resize_slices, stack_25d
from segmatecore.data.prepared import PreparedCase, load_cases  # noqa: F401 - training reads prepared cases

AUGMENT_LEVELS = ("none", "light", "paper")


def z_norm_for(t: np.ndarray | int, extent: Sequence[int] | None, depth: int) -> np.ndarray:
    """Organ-relative z in [0, 1] (spec); the whole volume when the case has no organ at all."""
    first, last = extent if extent else (0, depth - 1)
    return np.clip((np.asarray(t, dtype=np.float32) - first) / max(last - first, 1), 0.0, 1.0)


class Augmenter:
    """Paper-style augmentation with kornia; a left/right flip also swaps left/right organ channels.

    In the canonical slice, rows run toward the patient's right, so a left/right flip reverses
    dim -2. Padding is air (-1 after normalisation), not mid-grey.
    """

    def __init__(self, organs: Sequence[str], level: str = "paper"):
        import kornia.augmentation as K  # the train extra

        warnings.filterwarnings("ignore", message="Default grid_sample and affine_grid behavior")

        if level not in AUGMENT_LEVELS:
            raise ValueError(f"augmentation level {level!r}; use one of {', '.join(AUGMENT_LEVELS)}.")
        self.level = level
        try:
            self.swap: list[int] | None = OrganSet(organs).lateral_swap()
        except ValueError:  # a paired organ without its other side: a flip would mislabel it, so never flip
            self.swap = None
        geometric = [K.RandomAffine(degrees=15.0, translate=(0.1, 0.1), scale=(0.85, 1.15), shear=10.0, p=0.7)]
        if level == "paper":
            geometric += [K.RandomElasticTransform(kernel_size=(31, 31), sigma=(8.0, 8.0), alpha=(0.5, 0.5), p=0.2)]  # kornia's grid distortion has no mask support
        self.geometric = K.AugmentationSequential(*geometric, data_keys=["input", "mask"])
        self.intensity = K.AugmentationSequential(K.RandomBrightness((0.9, 1.1), clip_output=False, p=0.5),
                                                  K.RandomContrast((0.9, 1.1), clip_output=False, p=0.5),
                                                  K.RandomGaussianNoise(std=0.02, p=0.3))

    def __call__(self, image: torch.Tensor, target: torch.Tensor, flip: bool) -> tuple[torch.Tensor, torch.Tensor]:
        if self.level == "none":
            return image, target
        if flip and self.swap is not None:
            image, target = image.flip(-2), target.flip(-2)[self.swap]
        shifted, mask = self.geometric(image[None] + 1.0, target[None])  # zero padding == air
        image = shifted[0] - 1.0
        image = self.intensity(((image + 1.0) / 2.0)[None])[0] * 2.0 - 1.0
        return image.clamp(-1.5, 1.5), (mask[0] > 0.5).float()


class SliceDataset(Dataset):
    """Every axial slice of the given cases as a 2.5D sample, for a model predicting ``organs``.

    ``extent_organs`` define each case's organ extent for z_norm; None: every organ of ``organs``
    that the case annotates (so no case's extent is unknown).
    """

    def __init__(self, cases: Sequence[PreparedCase], pre: Preprocessing, organs: Sequence[str],
                 augment: str = "none", seed: int = 0, flip_probability: float = 0.5,
                 extent_organs: Sequence[str] | None = None):
        if not cases:
            raise ValueError("no cases for this split; check the prepared dataset's splits.")
        self.organs = tuple(OrganSet(organs))
        self.cases = list(cases)
        if extent_organs is None:
            self.extents = [case.extent([k for k in self.organs if k in case.record["annotated"]])
                            for case in self.cases]
        else:
            OrganSet(self.organs).check_subset(list(extent_organs), "extent organ")
            self.extents = [case.extent(list(extent_organs)) for case in self.cases]
        self.pre = pre
        self.augment_level = augment
        self.augmenter: Augmenter | None = None  # built lazily, in the worker that uses it
        self.seed = seed
        self.epoch = 0
        self.flip_probability = flip_probability if augment != "none" else 0.0
        self.items = np.array([(c, t) for c, case in enumerate(self.cases) for t in range(case.depth)], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.items)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def presence_matrix(self) -> np.ndarray:
        """bool [items, organs]: organ present in the slice (only ever true for annotated organs)."""
        return np.concatenate([case.presence_of(self.organs) for case in self.cases])

    def z_norm(self, c: int, t: int) -> float:
        """The sample's z_norm, NaN where the case's organ extent is unknown."""
        extent = self.extents[c]
        return float("nan") if extent is None else float(z_norm_for(t, extent, self.cases[c].depth))

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        c, t = (int(v) for v in self.items[index])
        case = self.cases[c]
        stack = stack_25d(case.image, [t])  # [1, 3, X, Y] int16
        image = torch.from_numpy(normalize_hu(stack, self.pre))
        image = resize_slices(image, self.pre.input_size, mode="bilinear")[0]
        target = torch.from_numpy(case.masks(self.organs, case.labels[:, :, t]).astype(np.float32))
        target = resize_slices(target[None], self.pre.input_size, mode="nearest")[0]
        if self.augment_level != "none":
            rng = np.random.default_rng([self.seed, self.epoch, index])
            if self.augmenter is None:
                self.augmenter = Augmenter(self.organs, self.augment_level)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(rng.integers(2**62)))
                image, target = self.augmenter(image, target, flip=bool(rng.random() < self.flip_probability))
        annotated = torch.from_numpy(case.annotated_mask(self.organs))
        return {"image": image.float(), "target": target, "annotated": annotated,
                "presence": (target.amax(dim=(1, 2)) > 0).float() * annotated,
                "z_norm": torch.tensor(self.z_norm(c, t)),
                "case": torch.tensor(c), "slice": torch.tensor(t)}


def balanced_weights(presence: np.ndarray, annotated: np.ndarray, power: float = 1.0,
                     empty_share: float = 0.1) -> np.ndarray:
    """Sampling weight per slice so that every organ gets a similar share of samples.

    Organ k's slices share ``N_k ** (1 - power)`` of the mass (power 1: equal per organ, 0: by
    frequency); slices without any annotated organ get ``empty_share`` of all samples.
    ``presence`` is bool [items, organs], ``annotated`` bool [items, organs].
    """
    counts = presence.sum(axis=0).astype(np.float64)
    organ_mass = np.where(counts > 0, counts ** (1.0 - power), 0.0)
    per_slice = np.where(counts > 0, organ_mass / np.maximum(counts, 1), 0.0)
    weights = (presence * per_slice).sum(axis=1)
    empty = ~presence.any(axis=1)
    if weights.sum() > 0:
        weights = weights / weights.sum() * (1.0 - empty_share)
    if empty.any():
        weights[empty] = empty_share / empty.sum()
    return weights / weights.sum()


class BalancedSampler(Sampler[int]):
    """Weighted sampling with replacement, split across DDP ranks, reproducible per (seed, epoch)."""

    def __init__(self, weights: np.ndarray, num_samples: int, seed: int = 0, rank: int = 0, world_size: int = 1):
        self.weights = torch.as_tensor(weights, dtype=torch.float64)
        self.num_samples = int(math.ceil(num_samples / world_size)) * world_size
        self.seed, self.rank, self.world_size, self.epoch = seed, rank, world_size, 0
        self.start = 0  # position to resume from within the epoch (this rank's samples)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples // self.world_size - self.start

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        picks = torch.multinomial(self.weights, self.num_samples, replacement=True, generator=generator)
        return iter(picks[self.rank::self.world_size][self.start:].tolist())
