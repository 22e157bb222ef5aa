"""The parent's side of the row protocol (:mod:`segmatecore.bench.worker`): write a row's job, run
it in a fresh process (in this one with ``--quick``), read its result, and set its outputs against
its fp32 reference row's (Dice per organ)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

from segmatecore.bench.configs import DICE_BAR, Config
from segmatecore.bench.inputs import BenchSetup
from segmatecore.bench.worker import run_worker


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks; 1.0 when both are empty."""
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def _run_in_this_process(job_path: Path, env: dict[str, str]) -> None:
    """``--quick``: run a row here (no fresh interpreter to import torch into), restoring what it changes."""
    saved_env, saved_threads = dict(os.environ), torch.get_num_threads()
    os.environ.update(env)
    try:
        run_worker(job_path)
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        torch.set_num_threads(saved_threads)


def row_folder(workdir: Path, name: str) -> Path:
    """The folder of one row's job, result and outputs, named after the row."""
    outdir = Path(workdir) / "rows" / name.replace(" ", "_").replace(":", "").replace(",", "")[:80]
    outdir.mkdir(parents=True, exist_ok=True)
    return outdir


def read_result(outdir: Path) -> dict[str, Any]:
    """The row a worker wrote into ``outdir``, which the Dice check reads the outputs from."""
    row = json.loads((outdir / "result.json").read_text())
    row["outdir"] = str(outdir)
    return row


def run_config(config: Config, setup: BenchSetup, device: str, batch_size: int, network_slices: int,
               quick: bool, threads: int | None, timeout: float, isolate: bool = True) -> dict[str, Any]:
    """Measure one row: in a fresh process (``isolate``), else in this one."""
    outdir = row_folder(setup.workdir, config.name)
    job = {"config": asdict(config), "device": device, "ct": str(setup.ct), "outdir": str(outdir),
           "model": str(setup.models.get(config.model_key or config.backbone, "")), "batch_size": batch_size,
           "network_slices": network_slices, "quick": quick, "threads": threads}
    job_path = outdir / "job.json"
    job_path.write_text(json.dumps(job))
    env = {**os.environ, "SEGMATE_HOME": str(setup.workdir / "home")}
    if not isolate:
        _run_in_this_process(job_path, env)
        return read_result(outdir)
    proc = subprocess.run([sys.executable, "-m", "segmatecore.bench.worker", "--worker", str(job_path)], env=env,
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark row {config.name!r} failed:\n{proc.stderr[-3000:]}")
    return read_result(outdir)


def compare_with_references(rows: list[dict[str, Any]]) -> None:
    """Per-organ Dice of each row's output against its fp32 reference row (network masks or labelmaps),
    for the organs of the row's model in its channel order."""
    from segmatecore.models.checkpoint import read_metadata

    by_name = {r["name"]: r for r in rows}
    for row in rows:
        ref = by_name.get(row.get("reference") or "")
        if ref is None:
            continue
        job = json.loads((Path(row["outdir"]) / "job.json").read_text(encoding="utf-8"))
        organs = read_metadata(job["model"])["organs"]
        if row["scope"] == "network":
            a = np.unpackbits(np.load(Path(row["outdir"]) / "masks.npy"), axis=-1).astype(bool)
            b = np.unpackbits(np.load(Path(ref["outdir"]) / "masks.npy"), axis=-1).astype(bool)
            scores = {k: dice(a[:, i], b[:, i]) for i, k in enumerate(organs)}
        else:
            # Arrays, not views: a view does not keep its image alive.
            a = sitk.GetArrayFromImage(sitk.ReadImage(str(Path(row["outdir"]) / "labels.nii.gz")))
            b = sitk.GetArrayFromImage(sitk.ReadImage(str(Path(ref["outdir"]) / "labels.nii.gz")))
            scores = {k: dice(a == i + 1, b == i + 1) for i, k in enumerate(organs)}
        row["dice_vs_fp32"] = {k: round(v, 4) for k, v in scores.items()}
        row["dice_min"] = round(min(scores.values()), 4)
        row["agrees_with_fp32"] = row["dice_min"] >= DICE_BAR
