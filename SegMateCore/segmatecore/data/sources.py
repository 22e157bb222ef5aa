"""Where the cases of each public dataset are, and how their labels map onto SegMate's known structures.

Each reader returns :class:`CaseSource` records; nothing is loaded here. A reader lists, per
case, the organs the case *annotates*: an organ absent from that list is unknown for the case
(partial labels), never a negative.
"""
from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from segmatecore.data.organs import known_keys, known_organs

KINDS = ("totalsegmentator", "segthor", "amos22", "openkbp", "nifti-pairs")


@dataclass(frozen=True)
class LabelSource:
    """Voxels of one organ: ``path`` where the value is in ``values`` (None: any non-zero value)."""

    path: str
    values: tuple[int, ...] | None = None


@dataclass
class CaseSource:
    case_id: str
    patient_id: str
    image: str
    labels: dict[str, list[LabelSource]]  # organ key -> label sources (their union)
    source_split: str | None = None      # "train" or "test" where the dataset fixes it
    notes: list[str] = field(default_factory=list)

    @property
    def annotated(self) -> list[str]:
        return [k for k in known_keys() if k in self.labels]


def _nii(folder: Path, stem: str) -> Path | None:
    for ext in (".nii.gz", ".nii", ".nrrd", ".mha"):
        if (folder / f"{stem}{ext}").is_file():
            return folder / f"{stem}{ext}"
    return None


def _require_dir(src: Path, what: str) -> Path:
    if not src.is_dir():
        raise FileNotFoundError(f"{src} is not a folder; expected {what}.")
    return src


def totalsegmentator_cases(src: Path) -> list[CaseSource]:
    """TotalSegmentator v2: ``<case>/ct.nii.gz`` and ``<case>/segmentations/<structure>.nii.gz``.

    Lobes are merged into lungs (organ table). Every v2 case carries every structure's mask file,
    empty where the organ is outside the field of view, so every mapped organ is annotated. The
    official split in ``meta.csv`` (column ``split``: train/val/test) is kept when present.
    TotalSegmentator's own test reference files (``class_map_total.json`` + ``example_ct*.nii.gz``)
    are recognised too.
    """
    _require_dir(src, "a TotalSegmentator v2 folder (<case>/ct.nii.gz + <case>/segmentations/)")
    if (src / "class_map_total.json").is_file() and (src / "example_ct_sm.nii.gz").is_file():
        return totalseg_reference_cases(src)
    official = _totalseg_meta_splits(src / "meta.csv")
    cases = []
    for case_dir in sorted(p for p in src.iterdir() if p.is_dir()):
        image, seg_dir = _nii(case_dir, "ct"), case_dir / "segmentations"
        if image is None or not seg_dir.is_dir():
            continue
        labels = {}
        for o in _totalsegmentator_organs():
            paths = [_nii(seg_dir, name) for name in o.totalsegmentator]
            if all(p is not None for p in paths):
                labels[o.key] = [LabelSource(str(p)) for p in paths]
        split = official.get(case_dir.name)
        cases.append(CaseSource(case_dir.name, case_dir.name, str(image), labels,
                                source_split={"val": "train"}.get(split, split)))
    if not cases:
        raise FileNotFoundError(f"No TotalSegmentator cases (<case>/ct.nii.gz + segmentations/) in {src}.")
    return cases


def _totalseg_meta_splits(meta_csv: Path) -> dict[str, str]:
    if not meta_csv.is_file():
        return {}
    text = meta_csv.read_text(encoding="utf-8")
    dialect = csv.Sniffer().sniff(text.splitlines()[0], delimiters=";,")
    return {row["image_id"]: row["split"] for row in csv.DictReader(text.splitlines(), dialect=dialect)
            if row.get("image_id") and row.get("split")}


def _totalsegmentator_organs():
    return [o for o in known_organs() if o.totalsegmentator]


def totalseg_reference_cases(src: Path) -> list[CaseSource]:
    """TotalSegmentator's test reference files: two views of one patient, masks are model output.

    ``example_ct_sm`` with the per-structure ``example_seg_fast/`` masks, and ``example_ct`` with
    the multilabel ``example_seg_fast_force_split`` (decoded with ``class_map_total.json``).
    """
    note = "labels are TotalSegmentator (--fast) model output, not manual ground truth"
    cases = []
    masks = src / "example_seg_fast"
    if masks.is_dir():
        labels = {}
        for o in _totalsegmentator_organs():
            paths = [_nii(masks, n) for n in o.totalsegmentator]
            if all(p is not None for p in paths):
                labels[o.key] = [LabelSource(str(p)) for p in paths]
        cases.append(CaseSource("example_ct_sm", "totalseg_example", str(src / "example_ct_sm.nii.gz"), labels,
                                notes=[note]))
    multilabel = src / "example_seg_fast_force_split.nii.gz"
    if multilabel.is_file() and (src / "example_ct.nii.gz").is_file():
        class_map = json.loads((src / "class_map_total.json").read_text(encoding="utf-8"))["total"]
        index = {name: int(v) for v, name in class_map.items()}
        labels = {o.key: [LabelSource(str(multilabel), tuple(index[n] for n in o.totalsegmentator))]
                  for o in _totalsegmentator_organs() if all(n in index for n in o.totalsegmentator)}
        cases.append(CaseSource("example_ct", "totalseg_example", str(src / "example_ct.nii.gz"), labels,
                                notes=[note]))
    return cases


def segthor_cases(src: Path) -> list[CaseSource]:
    """SegTHOR training data: ``Patient_NN/Patient_NN.nii.gz`` + ``GT.nii.gz``.

    Labels: 1 esophagus, 2 heart (not a SegMate organ), 3 trachea, 4 aorta (the official text
    swaps 1 and 2; the masks are as listed here).
    """
    mapping = {"esophagus": (1,), "trachea": (3,), "aorta": (4,)}
    _require_dir(src, "the SegTHOR train folder (Patient_NN/Patient_NN.nii.gz + GT.nii.gz)")
    cases = []
    for case_dir in sorted(p for p in src.rglob("Patient_*") if p.is_dir()):
        image, gt = _nii(case_dir, case_dir.name), _nii(case_dir, "GT")
        if image is None or gt is None:
            continue
        cases.append(CaseSource(case_dir.name, case_dir.name, str(image),
                                {k: [LabelSource(str(gt), v)] for k, v in mapping.items()}))
    if not cases:
        raise FileNotFoundError(f"No SegTHOR cases (Patient_NN/Patient_NN.nii.gz + GT.nii.gz) under {src}.")
    return cases


def amos22_cases(src: Path) -> list[CaseSource]:
    """AMOS22: ``imagesTr|imagesVa/amos_NNNN.nii.gz`` + ``labelsTr|labelsVa``; CT only (id < 500).

    Labels: 2 right kidney, 3 left kidney, 5 esophagus, 6 liver, 8 aorta. Tr cases train, Va cases
    are the held-out test set.
    """
    mapping = {"right_kidney": (2,), "left_kidney": (3,), "esophagus": (5,), "liver": (6,), "aorta": (8,)}
    _require_dir(src, "the AMOS22 folder (imagesTr/, labelsTr/, imagesVa/, labelsVa/)")
    cases = []
    for part, split in (("Tr", "train"), ("Va", "test")):
        images, labels = src / f"images{part}", src / f"labels{part}"
        if not images.is_dir():
            continue
        for image in sorted(images.glob("amos_*.nii*")):
            stem = image.name.split(".")[0]
            label = _nii(labels, stem)
            if label is None or int(stem.split("_")[1]) >= 500:
                continue
            cases.append(CaseSource(stem, stem, str(image), {k: [LabelSource(str(label), v)] for k, v in mapping.items()},
                                    source_split=split))
    if not cases:
        raise FileNotFoundError(f"No AMOS22 CT cases (imagesTr/amos_NNNN.nii.gz with labelsTr/, id < 500) in {src}.")
    return cases


def openkbp_structures() -> dict[str, str]:
    """Organ key -> OpenKBP mask name (``masks/<name>.nii.gz``), from the organ table."""
    return {o.key: o.openkbp for o in known_organs() if o.openkbp}


def openkbp_cases(src: Path) -> list[CaseSource]:
    """OpenKBP converted to NIfTI: ``<split>_pt_N/ct.nii.gz`` + ``masks/<Structure>.nii.gz``.

    All seven clinical structures are read (spinal cord, esophagus, larynx, brainstem, left and
    right parotid, mandible); a structure without a mask file is unannotated for that case. The
    challenge split is kept: ``train_pt_*`` train, ``validation_pt_*`` (and ``test_pt_*``) are
    held out. Contours that ``qc_flags.json`` says to exclude are left unannotated; those it only
    flags for a look ("check") are kept.
    """
    _require_dir(src, "the converted OpenKBP folder (<split>_pt_N/ct.nii.gz + masks/)")
    excluded = _openkbp_exclusions(src / "qc_flags.json")
    cases = []
    for case_dir in sorted(p for p in src.iterdir() if p.is_dir() and re.match(r"(train|validation|test)_pt_\d+$", p.name)):
        image = _nii(case_dir, "ct")
        if image is None:
            continue
        labels, notes = {}, []
        for key, structure in openkbp_structures().items():
            mask = _nii(case_dir / "masks", structure)
            if mask is None:
                continue
            if key in excluded.get(case_dir.name, ()):
                notes.append(f"{key} excluded by qc_flags.json")
                continue
            labels[key] = [LabelSource(str(mask))]
        split = "train" if case_dir.name.startswith("train") else "test"
        cases.append(CaseSource(case_dir.name, case_dir.name, str(image), labels, source_split=split, notes=notes))
    if not cases:
        raise FileNotFoundError(f"No OpenKBP cases (train_pt_N/ct.nii.gz) in {src}.")
    return cases


def _openkbp_exclusions(path: Path) -> dict[str, set[str]]:
    """Organs per case whose quality flag ends in "exclude"."""
    if not path.is_file():
        return {}
    flags = json.loads(path.read_text(encoding="utf-8"))
    out: dict[str, set[str]] = {}
    for case, messages in flags.items():
        for message in messages:
            if message.rstrip().endswith("exclude"):
                out.setdefault(case, set()).update(k for k in known_keys() if message.startswith(k))
    return out


def nifti_pairs_cases(src: Path) -> list[CaseSource]:
    """``images/<case>.nii.gz`` + ``labels/<case>.nii.gz`` + ``label_map.json``.

    ``label_map.json`` maps SegMate organ keys to a label value or a list of values, e.g.
    ``{"liver": 1, "left_kidney": [2]}``; organs it does not name are unannotated.
    """
    _require_dir(src, "a folder with images/, labels/ and label_map.json")
    map_path = src / "label_map.json"
    if not map_path.is_file():
        raise FileNotFoundError(f"{map_path} is missing: write a JSON object mapping organ keys "
                                f"({', '.join(known_keys())}) to label values.")
    raw = json.loads(map_path.read_text(encoding="utf-8"))
    unknown = [k for k in raw if k not in known_keys()]
    if unknown:
        raise ValueError(f"{map_path}: unknown organ keys {unknown}; use {', '.join(known_keys())}.")
    mapping = {k: tuple(v if isinstance(v, list) else [v]) for k, v in raw.items()}
    cases = []
    for image in sorted((src / "images").glob("*.nii*")):
        stem = image.name.split(".")[0]
        label = _nii(src / "labels", stem)
        if label is None:
            raise FileNotFoundError(f"{image} has no label file labels/{stem}.nii.gz.")
        cases.append(CaseSource(stem, stem, str(image), {k: [LabelSource(str(label), v)] for k, v in mapping.items()}))
    if not cases:
        raise FileNotFoundError(f"No images in {src / 'images'}.")
    return cases


READERS = {"totalsegmentator": totalsegmentator_cases, "segthor": segthor_cases, "amos22": amos22_cases,
           "openkbp": openkbp_cases, "nifti-pairs": nifti_pairs_cases}


def find_cases(kind: str, src: str | Path) -> list[CaseSource]:
    if kind not in READERS:
        raise ValueError(f"Unknown dataset kind {kind!r}; use one of {', '.join(KINDS)}.")
    return READERS[kind](Path(src))
