"""2.5D training samples from prepared folders, with organ-relative z_norm and class balancing.

A sample is slice t of a case: the (t-1, t, t+1) stack through the same ``normalize_hu``,
``stack_25d`` and ``resize_slices`` that inference uses, the 9 organ masks of slice t, which of
the 9 organs the case annotates, the per-slice presence and z_norm = (t - first) / (last - first)
clipped to [0, 1], where first/last are the case's first and last slice with any organ.

Augmentation (kornia) is deterministic per (seed, epoch, index), whatever the worker count.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ..organs import lateral_swap, organ_keys
from ..preprocess import Preprocessing, normalize_hu, resize_slices, stack_25d
from .prepare import load_index

AUGMENT_LEVELS = ("none", "light", "paper")


def z_norm_for(t: np.ndarray | int, extent: Sequence[int] | None, depth: int) -> np.ndarray:
    """Organ-relative z in [0, 1] (spec); the whole volume when the case has no organ at all."""
    first, last = extent if extent else (0, depth - 1)
    return np.clip((np.asarray(t, dtype=np.float32) - first) / max(last - first, 1), 0.0, 1.0)


@dataclass
class PreparedCase:
    """One prepared case; arrays are opened memory-mapped on first use (also in each worker)."""

    root: Path
    record: dict[str, Any]

    @property
    def id(self) -> str:
        return self.record["id"]

    @property
    def depth(self) -> int:
        return int(self.record["shape"][2])

    def annotated_mask(self) -> np.ndarray:
        return np.array([k in self.record["annotated"] for k in organ_keys()], dtype=np.float32)

    def _open(self, name: str) -> np.ndarray:
        cache = self.__dict__.setdefault("_arrays", {})
        if name not in cache:
            cache[name] = np.load(self.root / "cases" / self.id / f"{name}.npy", mmap_mode="r")
        return cache[name]

    @property
    def image(self) -> np.ndarray:
        return self._open("image")

    @property
    def labels(self) -> np.ndarray:
        return self._open("labels")

    @property
    def presence(self) -> np.ndarray:
        return self._open("presence")

    def __getstate__(self):  # memory maps are reopened in worker processes
        return {"root": self.root, "record": self.record}


def load_cases(data_dirs: Sequence[str | Path], split: str) -> list[PreparedCase]:
    """The cases of ``split`` in every prepared folder (ids must be unique across folders)."""
    cases, seen = [], set()
    for d in data_dirs:
        index = load_index(d)
        if split not in index["splits"]:
            raise ValueError(f"{d}: no split {split!r}; splits are {', '.join(index['splits'])}.")
        records = {r["id"]: r for r in index["cases"]}
        for case_id in index["splits"][split]:
            if case_id in seen:
                raise ValueError(f"case id {case_id} appears in more than one prepared folder.")
            seen.add(case_id)
            cases.append(PreparedCase(Path(index["root"]), records[case_id]))
    return cases


class Augmenter:
    """Paper-style augmentation with kornia; a left/right flip also swaps left/right organ channels.

    In the canonical slice, rows run toward the patient's right, so a left/right flip reverses
    dim -2. Padding is air (-1 after normalisation), not mid-grey.
    """

    def __init__(self, level: str = "paper"):
        import warnings

        import kornia.augmentation as K

        warnings.filterwarnings("ignore", message="Default grid_sample and affine_grid behavior")

        if level not in AUGMENT_LEVELS:
            raise ValueError(f"augmentation level {level!r}; use one of {', '.join(AUGMENT_LEVELS)}.")
        self.level = level
        self.swap = lateral_swap()
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
        if flip:
            image, target = image.flip(-2), target.flip(-2)[self.swap]
        shifted, mask = self.geometric(image[None] + 1.0, target[None])  # zero padding == air
        image = shifted[0] - 1.0
        image = self.intensity(((image + 1.0) / 2.0)[None])[0] * 2.0 - 1.0
        return image.clamp(-1.5, 1.5), (mask[0] > 0.5).float()


class SliceDataset(Dataset):
    """Every axial slice of the given cases as a 2.5D sample."""

    def __init__(self, cases: Sequence[PreparedCase], pre: Preprocessing, augment: str = "none", seed: int = 0,
                 flip_probability: float = 0.5):
        if not cases:
            raise ValueError("no cases for this split; check the prepared dataset's splits.")
        self.cases = list(cases)
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
        """bool [items, 9]: organ present in the slice (only ever true for annotated organs)."""
        return np.concatenate([np.asarray(case.presence) for case in self.cases])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        c, t = (int(v) for v in self.items[index])
        case = self.cases[c]
        stack = stack_25d(case.image, [t])  # [1, 3, X, Y] int16
        image = torch.from_numpy(normalize_hu(stack, self.pre))
        image = resize_slices(image, self.pre.input_size, mode="bilinear")[0]
        bits = np.asarray(case.labels[:, :, t])
        target = torch.from_numpy(np.stack([(bits >> k) & 1 for k in range(len(organ_keys()))]).astype(np.float32))
        target = resize_slices(target[None], self.pre.input_size, mode="nearest")[0]
        if self.augment_level != "none":
            rng = np.random.default_rng([self.seed, self.epoch, index])
            if self.augmenter is None:
                self.augmenter = Augmenter(self.augment_level)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(rng.integers(2**62)))
                image, target = self.augmenter(image, target, flip=bool(rng.random() < self.flip_probability))
        annotated = torch.from_numpy(case.annotated_mask())
        return {"image": image.float(), "target": target, "annotated": annotated,
                "presence": (target.amax(dim=(1, 2)) > 0).float() * annotated,
                "z_norm": torch.tensor(float(z_norm_for(t, case.record["extent"], case.depth))),
                "case": torch.tensor(c), "slice": torch.tensor(t)}


def balanced_weights(presence: np.ndarray, annotated: np.ndarray, power: float = 1.0,
                     empty_share: float = 0.1) -> np.ndarray:
    """Sampling weight per slice so that every organ gets a similar share of samples.

    Organ k's slices share ``N_k ** (1 - power)`` of the mass (power 1: equal per organ, 0: by
    frequency); slices without any annotated organ get ``empty_share`` of all samples.
    ``presence`` is bool [items, 9], ``annotated`` bool [items, 9].
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
