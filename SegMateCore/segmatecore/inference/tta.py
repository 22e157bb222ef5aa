"""Mirror test-time augmentation: every slice also runs flipped left to right, and the two agree.

:class:`MirroredNetwork` wraps a :class:`~segmatecore.runtime.network.Network`. Its encodings are
:class:`Views` (the slice and its mirror image), so the feature cache keeps both; decoding averages
the masks and presence of the two as probabilities, after flipping the mirror image back and
swapping left and right organs. Twice the network time, in both passes.
"""
from __future__ import annotations

from typing import Any, Collection

import torch

from segmatecore.models import SegMateOutput


class Views(tuple):
    """The encodings of one batch seen several ways, with the methods the feature cache uses."""

    def select(self, index: int) -> "Views":
        return Views(view.select(index) for view in self)

    def rows(self, start: int, stop: int) -> "Views":
        return Views(view.rows(start, stop) for view in self)

    def to(self, device: torch.device) -> "Views":
        return Views(view.to(device) for view in self)

    @staticmethod
    def cat(parts: "list[Views]") -> "Views":
        return Views(type(views[0]).cat(list(views)) for views in zip(*parts))

    @property
    def nbytes(self) -> int:
        return sum(view.nbytes for view in self)


def average_with_mirror(out: SegMateOutput, flipped: SegMateOutput, mirror: list[int]) -> SegMateOutput:
    """A batch's masks and presence averaged with its mirror image's (flipped back, left and right
    organs swapped) as probabilities, returned as logits. Inference reads nothing else, so the
    boundary and deep outputs are the unflipped pass's."""
    index = torch.tensor(mirror, device=out.presence.device)

    def mean_logit(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.logit((torch.sigmoid(a.float()) + torch.sigmoid(b.float())) / 2, eps=1e-6)

    seg = None
    if out.seg is not None:  # the first pass reads presence only
        seg = mean_logit(out.seg, flipped.seg.flip(-2).index_select(1, index))
    presence = mean_logit(out.presence, flipped.presence.index_select(1, index))
    return SegMateOutput(seg, out.boundary, presence, out.deep)


class MirroredNetwork:
    """``network`` run on each batch and on its mirror image; ``mirror`` is the channel
    permutation that swaps left and right organs."""

    def __init__(self, network: Any, mirror: list[int]):
        self.network = network
        self.mirror = mirror

    def encode(self, x: torch.Tensor) -> Views:
        return Views((self.network.encode(x), self.network.encode(x.flip(-2))))

    def decode(self, views: Views, z: torch.Tensor | None, outputs: Collection[str]) -> SegMateOutput:
        out, flipped = (self.network.decode(view, z, outputs) for view in views)
        return average_with_mirror(out, flipped, self.mirror)
