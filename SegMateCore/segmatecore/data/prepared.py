"""Prepared cases (``segmate prepare``'s output): their CT, masks, presence and extents, memory-mapped.

Training, evaluation and calibration read them the same way.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from segmatecore.data.prepare import load_index


@dataclass
class PreparedCase:
    """One prepared case; arrays are opened memory-mapped on first use (also in each worker).

    ``organs`` are its dataset's organs: bit k of ``labels`` is ``organs[k]``.
    """

    root: Path
    record: dict[str, Any]
    organs: tuple[str, ...]

    @property
    def id(self) -> str:
        return self.record["id"]

    @property
    def depth(self) -> int:
        return int(self.record["shape"][2])

    def annotated_mask(self, keys: Sequence[str]) -> np.ndarray:
        """float [len(keys)]: 1 where the case annotates the organ."""
        return np.array([k in self.record["annotated"] for k in keys], dtype=np.float32)

    def masks(self, keys: Sequence[str], bits: np.ndarray | None = None) -> np.ndarray:
        """bool [len(keys), ...] from the bit mask (default: the whole case); organs the dataset
        does not have are all False."""
        bits = np.asarray(self.labels if bits is None else bits)
        return np.stack([(bits >> self.organs.index(k)) & 1 if k in self.organs else np.zeros(bits.shape, np.uint16)
                         for k in keys]).astype(bool)

    def presence_of(self, keys: Sequence[str]) -> np.ndarray:
        """bool [slices, len(keys)]: the organ has a voxel in the slice."""
        presence = np.asarray(self.presence)
        return np.stack([presence[:, self.organs.index(k)] if k in self.organs else np.zeros(self.depth, bool)
                         for k in keys], axis=1)

    def extent(self, extent_organs: Sequence[str]) -> tuple[int, int] | None:
        """First and last slice with any of ``extent_organs``; None when the case does not annotate
        all of them (its extent is unknown), the whole volume when none of them is in the scan."""
        if not all(k in self.record["annotated"] for k in extent_organs):
            return None
        spans = [self.record.get("organ_slices", {}).get(k) for k in extent_organs]
        spans = [s for s in spans if s]
        if not spans:
            return 0, self.depth - 1
        return min(s[0] for s in spans), max(s[1] for s in spans)

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
        return {"root": self.root, "record": self.record, "organs": self.organs}


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
            cases.append(PreparedCase(Path(index["root"]), records[case_id], tuple(index["organs"])))
    return cases
