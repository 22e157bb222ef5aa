"""The organ table (Resources/organs.json): keys in channel order, names, colours, codes, TG-263."""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from .resources import resource_path


@dataclass(frozen=True)
class Organ:
    """One output channel: label value ``channel + 1`` in every labelmap SegMate writes."""

    channel: int
    key: str
    name: str
    tg263: str
    color: tuple[int, int, int]
    type: dict[str, str]
    modifier: dict[str, str] | None
    side: str | None
    totalsegmentator: tuple[str, ...]

    @property
    def label(self) -> int:
        return self.channel + 1

    @property
    def display_name(self) -> str:
        """Standard name, capitalised ("Left lung"), never laterality alone."""
        return self.name[:1].upper() + self.name[1:]

    @property
    def color_float(self) -> tuple[float, float, float]:
        return tuple(c / 255.0 for c in self.color)  # type: ignore[return-value]


@lru_cache(maxsize=1)
def organ_table() -> dict[str, Any]:
    return json.loads(resource_path("organs.json").read_text(encoding="utf-8"))


@lru_cache(maxsize=1)
def organs() -> tuple[Organ, ...]:
    """All organs in channel order."""
    return tuple(Organ(channel=i, key=o["key"], name=o["name"], tg263=o["tg263"], color=tuple(o["color"]),
                       type=o["type"], modifier=o["modifier"], side=o["side"],
                       totalsegmentator=tuple(o["totalsegmentator"]))
                 for i, o in enumerate(organ_table()["organs"]))


def organ_keys() -> list[str]:
    return [o.key for o in organs()]


def organ(key: str) -> Organ:
    for o in organs():
        if o.key == key:
            return o
    raise KeyError(f"Unknown organ {key!r}; known organs: {', '.join(organ_keys())}")


def category() -> dict[str, str]:
    return organ_table()["category"]


def lateral_swap(keys: list[str] | None = None) -> list[int]:
    """Channel permutation of ``keys`` (default: the organ table) that exchanges every left organ with
    its right counterpart: what a left/right flip of the image does to the organs."""
    keys = list(organ_keys() if keys is None else keys)

    def mirror(key: str) -> str:
        for side, other in (("left_", "right_"), ("right_", "left_")):
            if key.startswith(side):
                return other + key[len(side):]
        return key

    missing = [mirror(k) for k in keys if mirror(k) not in keys]
    if missing:
        raise ValueError(f"a left/right flip needs both sides of each paired organ; missing: {', '.join(missing)}.")
    return [keys.index(mirror(k)) for k in keys]
