"""The structures SegMate knows (Resources/organs.json) and the organ sets that models predict.

The table is the one place for names, colours, SNOMED-CT codes, TG-263 names and dataset mask
names. It fixes no channels: a model names its own organs in channel order (its metadata's
``organs``), and an :class:`OrganSet` turns that list into channels and label values. Channel k
of a model is label value k + 1 in every labelmap made with it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Iterable, Iterator, Sequence

from segmatecore.resources import resource_path

#: The paper's nine organs, in the paper's channel order (thorax and abdomen, TotalSegmentator).
PAPER_ORGANS = ("left_lung", "right_lung", "spinal_cord", "esophagus", "liver", "left_kidney", "right_kidney",
                "aorta", "trachea")


@dataclass(frozen=True)
class Organ:
    """One known structure: how it is named, coded and drawn, whatever model predicts it."""

    key: str
    name: str
    tg263: str
    color: tuple[int, int, int]
    type: dict[str, str]
    modifier: dict[str, str] | None
    side: str | None
    totalsegmentator: tuple[str, ...]
    openkbp: str | None

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
def known_organs() -> tuple[Organ, ...]:
    """Every structure of the table, in table order."""
    return tuple(Organ(key=o["key"], name=o["name"], tg263=o["tg263"], color=tuple(o["color"]), type=o["type"],
                       modifier=o["modifier"], side=o["side"], totalsegmentator=tuple(o["totalsegmentator"]),
                       openkbp=o.get("openkbp"))
                 for o in organ_table()["organs"])


def known_keys() -> list[str]:
    return [o.key for o in known_organs()]


def organ(key: str) -> Organ:
    for o in known_organs():
        if o.key == key:
            return o
    raise KeyError(f"Unknown organ {key!r}; known organs: {', '.join(known_keys())}")


def category() -> dict[str, str]:
    return organ_table()["category"]


#: How segments are named: the organ's standard name ("Left lung") or its AAPM TG-263 name ("Lung_L").
NAMINGS = ("standard", "tg263")


def segment_name(o: Organ, naming: str = "standard") -> str:
    """An organ's segment name in ``naming`` (see :data:`NAMINGS`); the one rule that ``segmate
    predict``, the export functions and the Slicer module all name segments by."""
    if naming == "standard":
        return o.display_name
    if naming == "tg263":
        return o.tg263
    raise ValueError(f"Unknown segment naming {naming!r}; use one of {', '.join(NAMINGS)}.")


def mirror_key(key: str) -> str:
    """The key of the same structure on the other side ("left_parotid" -> "right_parotid")."""
    for side, other in (("left_", "right_"), ("right_", "left_")):
        if key.startswith(side):
            return other + key[len(side):]
    return key


class OrganSet(Sequence[str]):
    """The organs of a model (or a prepared dataset) in channel order.

    ``channel(key)`` is the output channel, ``label(key)`` its value in labelmaps (channel + 1).
    """

    def __init__(self, keys: Iterable[str]):
        keys = tuple(keys)
        if not keys:
            raise ValueError("an organ set needs at least one organ.")
        unknown = [k for k in keys if k not in known_keys()]
        if unknown:
            raise ValueError(f"Unknown organ(s) {', '.join(unknown)}; known organs: {', '.join(known_keys())}.")
        if len(set(keys)) != len(keys):
            raise ValueError(f"an organ set lists each organ once; got {', '.join(keys)}.")
        self.keys = keys

    @classmethod
    def of(cls, model_or_meta: Any) -> "OrganSet":
        """The organ set of a loaded model (its ``.metadata``) or of a metadata dict."""
        meta = getattr(model_or_meta, "metadata", model_or_meta)
        return cls(meta["organs"])

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index):  # type: ignore[override]
        return self.keys[index]

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys)

    def __contains__(self, key: object) -> bool:
        return key in self.keys

    def __eq__(self, other: object) -> bool:
        return isinstance(other, OrganSet) and other.keys == self.keys

    def __hash__(self) -> int:
        return hash(self.keys)

    def __repr__(self) -> str:
        return f"OrganSet({list(self.keys)!r})"

    def channel(self, key: str) -> int:
        if key not in self.keys:
            raise KeyError(f"{key!r} is not among this model's organs ({', '.join(self.keys)}).")
        return self.keys.index(key)

    def label(self, key: str) -> int:
        return self.channel(key) + 1

    def labels(self) -> dict[str, int]:
        """The labelmap legend: organ key -> label value."""
        return {k: i + 1 for i, k in enumerate(self.keys)}

    @property
    def organs(self) -> tuple[Organ, ...]:
        return tuple(organ(k) for k in self.keys)

    def lateral_swap(self) -> list[int]:
        """Channel permutation that exchanges every left organ with its right counterpart: what a
        left/right flip of the image does to the organs."""
        missing = [mirror_key(k) for k in self.keys if mirror_key(k) not in self.keys]
        if missing:
            raise ValueError(f"a left/right flip needs both sides of each paired organ; missing: {', '.join(missing)}.")
        return [self.keys.index(mirror_key(k)) for k in self.keys]

    def check_subset(self, keys: Sequence[str], what: str = "organ") -> None:
        """Raise a ValueError naming the keys that are not organs of this set."""
        unknown = [k for k in keys if k not in self.keys]
        if unknown:
            raise ValueError(f"Unknown {what}(s) {', '.join(unknown)} for this model; its organs are: "
                             f"{', '.join(self.keys)}.")


def lateral_swap(keys: Sequence[str]) -> list[int]:
    """Channel permutation of ``keys`` that exchanges left and right organs (see OrganSet)."""
    return OrganSet(keys).lateral_swap()
