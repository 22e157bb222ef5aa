"""Where each slice lies along the organs' extent (z_norm, the input of FiLM), as a strategy.

- :class:`AutoZ` (``"auto"``, the default): the extent estimated without labels by a first pass
  of the network with FiLM off (:mod:`segmatecore.inference.zpass`); its per-organ ranges also
  gate the masks (:mod:`segmatecore.inference.gate`);
- :class:`VolumeZ` (``"volume"``): z over the whole volume;
- :class:`NoZ` (``"none"``): FiLM off;
- :class:`GroundTruthZ`: a given extent, such as the reference contours' (the research
  evaluation); it runs the same path as the others.

A strategy's :meth:`~ZStrategy.plan` looks at one volume and returns a :class:`ZPlan`.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from segmatecore.choices import Z_NORM_MODES
from segmatecore.data.organs import OrganSet
from segmatecore.inference.zpass import ZExtent, ZPassConfig, estimate_extent, volume_z_norm

# presence(t, trained channels) -> [len(t), len(channels)] first-pass probabilities
FirstPass = Callable[[np.ndarray, Sequence[int]], np.ndarray]


@dataclass
class ZPlan:
    """What a strategy decided for one volume: the z of each slice, and the extent it came from."""

    mode: str
    num_slices: int
    extent: ZExtent | None = None
    warnings: list[str] = field(default_factory=list)

    def z(self, t: np.ndarray) -> np.ndarray | None:
        """z_norm of slices ``t`` (None: FiLM off)."""
        if self.mode == "none":
            return None
        if self.extent is not None and self.extent.found:
            return self.extent.z_norm(t)
        return volume_z_norm(t, self.num_slices)

    def report(self, skipped_outside: bool = False) -> dict[str, Any]:
        """The result's ``z_range``: mode, first and last slice of the extent, slices the first pass ran."""
        out: dict[str, Any] = {"mode": self.mode, "first": None, "last": None, "num_slices": self.num_slices}
        if self.mode == "volume" or (self.extent is not None and not self.extent.found):
            out.update(first=0, last=self.num_slices - 1, mode="volume")
        elif self.extent is not None:
            out.update(first=self.extent.first, last=self.extent.last)
            if self.mode == "auto":
                out.update(slices_run=self.extent.slices_run, skipped_outside=bool(skipped_outside))
        return out


class ZStrategy(ABC):
    """How to find z_norm for a volume."""

    mode = ""
    needs_first_pass = False

    @abstractmethod
    def plan(self, num_slices: int, slice_mm: float, meta: dict[str, Any], first_pass: FirstPass | None) -> ZPlan:
        """The plan for a volume of ``num_slices`` slices ``slice_mm`` apart, for a model of metadata ``meta``."""


class VolumeZ(ZStrategy):
    mode = "volume"

    def plan(self, num_slices, slice_mm, meta, first_pass=None) -> ZPlan:
        return ZPlan("volume", num_slices)


class NoZ(ZStrategy):
    mode = "none"

    def plan(self, num_slices, slice_mm, meta, first_pass=None) -> ZPlan:
        return ZPlan("none", num_slices)


@dataclass(frozen=True)
class GroundTruthZ(ZStrategy):
    """z from a known extent: ``first`` and ``last`` canonical (inferior to superior) slice."""

    first: int
    last: int
    mode = "ground_truth"

    def plan(self, num_slices, slice_mm, meta, first_pass=None) -> ZPlan:
        if not 0 <= self.first <= self.last < num_slices:
            raise ValueError(f"Ground-truth extent {self.first}..{self.last} is outside the volume's "
                             f"{num_slices} slices.")
        return ZPlan("ground_truth", num_slices, ZExtent(self.first, self.last, num_slices, found=True))


@dataclass(frozen=True)
class AutoZ(ZStrategy):
    """The label-free extent of the model's extent organs, from a first pass with FiLM off."""

    config: ZPassConfig = ZPassConfig()
    mode = "auto"
    needs_first_pass = True

    def plan(self, num_slices, slice_mm, meta, first_pass=None) -> ZPlan:
        if first_pass is None:
            raise ValueError("z 'auto' needs the network's first pass.")
        trained_keys = trained_organs(meta)
        channels = list(OrganSet.of(meta))
        trained = [channels.index(k) for k in trained_keys]
        extent_keys = [k for k in meta["z_norm"].get("extent_organs", trained_keys) if k in trained_keys]
        extent = estimate_extent(lambda t: first_pass(t, trained), num_slices, slice_mm, self.config,
                                 [trained_keys.index(k) for k in extent_keys] or None)
        warnings = [] if extent.found else ["z_norm: the first pass found no organ; z runs over the whole volume "
                                            "instead."]
        return ZPlan("auto", num_slices, extent, warnings)


def trained_organs(meta: dict[str, Any]) -> list[str]:
    """The organs a model was trained on, in its channel order."""
    return list(meta.get("trained_organs") or OrganSet.of(meta))


def z_strategy(z: str | ZStrategy, z_pass: ZPassConfig | None = None) -> ZStrategy:
    """A strategy from its name (auto, volume, none) or itself; ``z_pass`` configures auto."""
    if isinstance(z, ZStrategy):
        return z
    if z == "auto":
        return AutoZ(z_pass or ZPassConfig())
    if z == "volume":
        return VolumeZ()
    if z == "none":
        return NoZ()
    raise ValueError(f"Unknown z_norm {z!r}; use {', '.join(Z_NORM_MODES)}, or a GroundTruthZ(first, last).")
