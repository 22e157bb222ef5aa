"""SegMateNet's layer widths: constructor configuration, recorded in a model file's metadata.

The defaults are the paper's. A file without widths in its metadata was made with them.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

LEVELS = 4  # encoder feature levels (strides 4, 8, 16, 32), hence skips, up-convolutions and blocks


@dataclass(frozen=True)
class SegMateWidths:
    """Channel widths of the parts after the encoder.

    ``align``: the 1x1 convolutions aligning the encoder's levels, finest first.
    ``decoder``: the up-convolutions, deepest first. ``blocks``: the main-path decoder blocks,
    deepest first (the last one feeds the heads). ``aspp``: the ASPP and FiLM width.
    """

    align: tuple[int, ...] = (40, 64, 128, 176)
    decoder: tuple[int, ...] = (160, 88, 48, 24)
    blocks: tuple[int, ...] = (160, 88, 48, 32)
    aspp: int = 256

    def __post_init__(self) -> None:
        for name in ("align", "decoder", "blocks"):
            value = getattr(self, name)
            if not (isinstance(value, (tuple, list)) and len(value) == LEVELS and all(_positive(v) for v in value)):
                raise ValueError(f"widths: {name} must be {LEVELS} positive integers, got {value!r}.")
            object.__setattr__(self, name, tuple(value))
        if not _positive(self.aspp):
            raise ValueError(f"widths: aspp must be a positive integer, got {self.aspp!r}.")

    @property
    def head(self) -> int:
        """Channels the mask, boundary and presence heads read."""
        return self.blocks[-1]

    def to_metadata(self) -> dict[str, Any]:
        """JSON-ready form, as stored in a model file."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_metadata(cls, value: Mapping[str, Any] | None) -> "SegMateWidths":
        """The widths a file records; the paper's for a file that records none."""
        if value is None:
            return cls()
        if not isinstance(value, Mapping) or set(value) - {"align", "decoder", "blocks", "aspp"}:
            raise ValueError(f"widths {value!r} must be an object with align, decoder, blocks and aspp.")
        return cls(**value)


def _positive(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0
