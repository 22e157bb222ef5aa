"""``segmate prepare``: turn a public dataset into memory-mappable canonical arrays, once.

Layout of the output folder::

    dataset.json              the dataset's organs, cases, organs each annotates, extents, splits, seed
    cases/<id>/image.npy      int16 HU, canonical [R, A, S] (axial slice = [:, :, k])
    cases/<id>/labels.npy     uint16 bit mask, same shape: bit k set = the dataset's organ k (organs overlap)
    cases/<id>/presence.npy   bool [slices, organs]: the dataset's organ k has a voxel in slice t

The dataset's organs (``dataset.json["organs"]``) are those its source can annotate, in the organ
table's order; a model trained on it maps them onto its own channels by key. Organs a case does not
annotate have no bits and no presence; ``dataset.json`` says which organs each case annotates so
that training treats the others as unknown.
"""
from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from segmatecore.data.atomic import atomic_path, write_text_atomic
from segmatecore.data.geometry import to_canonical
from segmatecore.data.organs import known_keys
from segmatecore.data.sources import CaseSource, LabelSource, find_cases

log = logging.getLogger(__name__)

FORMAT = "segmate-prepared-v1"
LABEL_DTYPE = np.uint16
MAX_ORGANS = 16  # bits of LABEL_DTYPE


def dataset_organs(cases: list[CaseSource]) -> list[str]:
    """The organs any of the cases annotates, in the organ table's order: the dataset's bit order."""
    keys = [k for k in known_keys() if any(k in c.labels for c in cases)]
    if len(keys) > MAX_ORGANS:
        raise ValueError(f"a prepared dataset holds at most {MAX_ORGANS} organs; these cases annotate {len(keys)}.")
    return keys


def decode_labels(bits: np.ndarray, channels: int) -> np.ndarray:
    """uint16 bit mask [...] -> bool [channels, ...]."""
    bits = np.asarray(bits)
    return np.stack([(bits >> k) & 1 for k in range(channels)]).astype(bool)


def _read(path: str) -> sitk.Image:
    image = sitk.ReadImage(path)
    if image.GetDimension() != 3:
        raise ValueError(f"{path} is {image.GetDimension()}D; a 3D volume is needed.")
    return image


def _same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    return (a.GetSize() == b.GetSize() and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-3)
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-4)
            and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-2))


def convert_case(case: CaseSource, out_dir: Path, keys: list[str], dataset_dir: Path | None = None) -> dict[str, Any]:
    """Write one case's arrays (atomically, via a temporary folder) and return its record.

    ``keys`` are the dataset's organs: bit k of the labels is organ ``keys[k]``. The record names
    the image relative to ``dataset_dir`` (never an absolute path of this machine).
    """
    image = _read(case.image)
    canonical, frame = to_canonical(image)
    hu = np.clip(canonical, np.iinfo(np.int16).min, np.iinfo(np.int16).max).astype(np.int16)
    bits = np.zeros(hu.shape, dtype=LABEL_DTYPE)
    cache: dict[str, np.ndarray] = {}
    for key in case.annotated:
        channel = keys.index(key)
        for src in case.labels[key]:
            if src.path not in cache:
                label = _read(src.path)
                if label.GetSize() != image.GetSize():
                    raise ValueError(f"{src.path} has size {label.GetSize()} but its CT {case.image} has "
                                     f"{image.GetSize()}; labels must be on the CT grid.")
                if not _same_grid(label, image):
                    log.warning("%s: label geometry differs slightly from the CT; using the CT grid", src.path)
                    label.CopyInformation(image)
                cache[src.path] = np.array(to_canonical(label)[0])  # a copy: the view dies with the image
            values = cache[src.path]
            mask = values != 0 if src.values is None else np.isin(values, src.values)
            bits |= (mask.astype(LABEL_DTYPE) << channel)
    presence = np.zeros((hu.shape[2], len(keys)), dtype=bool)
    per_slice = decode_labels(bits, len(keys)).any(axis=(1, 2))  # [organs, Z]
    presence[:] = per_slice.T
    any_slice = np.flatnonzero(presence.any(axis=1))
    extent = [int(any_slice[0]), int(any_slice[-1])] if any_slice.size else None
    case_dir = out_dir / "cases" / case.case_id
    with atomic_path(case_dir) as tmp:
        tmp.mkdir()
        np.save(tmp / "image.npy", hu)
        np.save(tmp / "labels.npy", bits)
        np.save(tmp / "presence.npy", presence)
        shutil.rmtree(case_dir, ignore_errors=True)  # a folder replaces only a missing or empty one
    return {
        "id": case.case_id, "patient": case.patient_id,
        "image": os.path.relpath(case.image, dataset_dir) if dataset_dir is not None else Path(case.image).name,
        "shape": [int(s) for s in hu.shape], "spacing": [float(s) for s in frame.spacing],
        "annotated": case.annotated, "extent": extent,
        "organ_slices": {k: [int(np.flatnonzero(presence[:, c])[0]), int(np.flatnonzero(presence[:, c])[-1])]
                         for c, k in enumerate(keys) if presence[:, c].any()},
        "voxels": {k: int(((bits >> c) & 1).sum()) for c, k in enumerate(keys) if k in case.annotated},
        "source_split": case.source_split, "notes": case.notes,
    }


def _convert_worker(job: tuple[dict[str, Any], str, list[str], str]) -> dict[str, Any]:
    case_dict, out_dir, keys, src = job
    labels = {k: [LabelSource(**s) for s in v] for k, v in case_dict["labels"].items()}
    case = CaseSource(**{**case_dict, "labels": labels})
    try:
        return convert_case(case, Path(out_dir), keys, Path(src))
    except Exception as exc:  # reported per case; the run goes on with the others
        return {"id": case.case_id, "error": f"{type(exc).__name__}: {exc}"}


def assign_splits(records: list[dict[str, Any]], seed: int, fractions: tuple[float, float, float],
                  all_train: bool = False) -> dict[str, list[str]]:
    """Patient-level train/val/test splits, reproducible from ``seed``.

    Cases whose dataset fixes a held-out split (``source_split == "test"``) stay in test; cases
    fixed as training data are divided into train and val only. The rest are divided by
    ``fractions`` (train, val, test). All cases of a patient share one split.
    """
    splits: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    by_patient: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_patient.setdefault(r["patient"], []).append(r)
    rng = np.random.default_rng(seed)
    groups: dict[str | None, list[str]] = {}
    for patient in sorted(by_patient):
        fixed = {r["source_split"] for r in by_patient[patient]}
        groups.setdefault(fixed.pop() if len(fixed) == 1 else None, []).append(patient)
    for fixed, patients in groups.items():
        patients = list(rng.permutation(patients))
        if all_train:
            chosen = {"train": patients}
        elif fixed == "test":
            chosen = {"test": patients}
        else:
            f_train, f_val, f_test = fractions
            if fixed == "train":
                f_train, f_val, f_test = f_train + f_test, f_val, 0.0
            n = len(patients)
            n_val = int(round(n * f_val / (f_train + f_val + f_test)))
            n_test = int(round(n * f_test / (f_train + f_val + f_test)))
            if n >= 3 and f_val > 0:
                n_val = max(n_val, 1)
            chosen = {"val": patients[:n_val], "test": patients[n_val:n_val + n_test],
                      "train": patients[n_val + n_test:]}
        for split, members in chosen.items():
            splits[split] += [r["id"] for p in members for r in by_patient[p]]
    return {k: sorted(v) for k, v in splits.items()}


def prepare(kind: str, src: str | Path, out: str | Path, *, workers: int | None = None, seed: int = 0,
            fractions: tuple[float, float, float] = (0.75, 0.15, 0.10), all_train: bool = False,
            only: list[str] | None = None, progress: bool = True) -> dict[str, Any]:
    """Prepare dataset ``src`` of ``kind`` into ``out``; cases already written are kept (written once).

    ``only`` restricts the preparation to these case ids (e.g. a one-case overfit check).
    """
    out = Path(out)
    cases = find_cases(kind, src)
    if only:
        unknown = sorted(set(only) - {c.case_id for c in cases})
        if unknown:
            raise ValueError(f"no case {', '.join(unknown)} in {src}.")
        cases = [c for c in cases if c.case_id in only]
    (out / "cases").mkdir(parents=True, exist_ok=True)
    index_path = out / "dataset.json"
    keys = dataset_organs(cases)
    previous = {}
    if index_path.is_file():
        old = json.loads(index_path.read_text(encoding="utf-8"))
        if old.get("organs") == keys:  # cases written for another organ list are written again
            previous = {r["id"]: r for r in old.get("cases", [])
                        if (out / "cases" / r["id"] / "presence.npy").is_file()}
    todo = [c for c in cases if c.case_id not in previous]
    records = [previous[c.case_id] for c in cases if c.case_id in previous]
    workers = max(1, min(workers or os.cpu_count() or 1, len(todo) or 1))
    jobs = [({**asdict(c)}, str(out), keys, str(src)) for c in todo]
    started = time.time()
    failures = []
    if todo:
        with mp.get_context("spawn").Pool(workers) if workers > 1 else _InlinePool() as pool:
            bar = tqdm(pool.imap_unordered(_convert_worker, jobs), total=len(jobs), desc=f"prepare {kind}",
                       unit="case", disable=not progress)
            for record in bar:
                (failures if "error" in record else records).append(record)
    for f in failures:
        log.error("case %s failed: %s", f["id"], f["error"])
    records.sort(key=lambda r: r["id"])
    usable = [r for r in records if r["annotated"]]
    for r in records:
        if not r["annotated"]:
            log.warning("case %s annotates none of the SegMate organs; left out of the splits", r["id"])
    index = {
        "format": FORMAT, "kind": kind, "source": Path(src).name, "organs": keys,
        "seed": seed, "fractions": list(fractions), "all_train": all_train,
        "splits": assign_splits(usable, seed, fractions, all_train),
        "cases": records, "failures": failures,
        "seconds": round(time.time() - started, 1),
    }
    write_text_atomic(index_path, json.dumps(index, indent=1))
    return index


class _InlinePool:
    """One-process stand-in for multiprocessing.Pool (no spawn cost for a single worker)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    @staticmethod
    def imap_unordered(func, jobs):
        return map(func, jobs)


def load_index(data_dir: str | Path) -> dict[str, Any]:
    """The ``dataset.json`` of a prepared folder, with a clear error if it is not one."""
    path = Path(data_dir) / "dataset.json"
    if not path.is_file():
        raise FileNotFoundError(f"{data_dir} is not a prepared dataset (no dataset.json); "
                                "run `segmate prepare KIND SRC -o OUT` first.")
    index = json.loads(path.read_text(encoding="utf-8"))
    if index.get("format") != FORMAT:
        raise ValueError(f"{path} has format {index.get('format')!r}; expected {FORMAT!r}. Prepare the data again.")
    index["root"] = str(Path(data_dir).resolve())
    return index
