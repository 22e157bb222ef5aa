"""``segmate evaluate``: per case and organ accuracy of a model on a prepared split.

Every volume goes through one :class:`~segmatecore.inference.predictor.SegMatePredictor`, the same
path as ``segmate predict``, with the label-free z_norm. Optionally a second run takes z from the
ground-truth organ extent (:class:`~segmatecore.inference.zstrategy.GroundTruthZ`, what the
research code did), on the same path, to show how much the label-free estimate costs.
Only organs that a case annotates, and that the model was trained on, are scored.
"""
from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from segmatecore.data.atomic import atomic_path, write_text_atomic
from segmatecore.data.geometry import canonical_image, to_canonical
from segmatecore.data.organs import OrganSet
from segmatecore.data.prepared import load_cases
from segmatecore.evaluation.metrics import organ_metrics
from segmatecore.inference.predictor import SegMatePredictor
from segmatecore.inference.zstrategy import GroundTruthZ
from segmatecore.models.checkpoint import update_metadata

METRICS = ("dice", "hd95_mm", "iou", "precision", "recall", "volume_error_pct")
MODES = {"label_free": "z_norm estimated without labels (as segmate predict)",
         "ground_truth_z": "z_norm from the ground-truth organ extent (research evaluation)"}


def evaluate(model: str | Path | torch.nn.Module, data_dirs: Sequence[str | Path], out_dir: str | Path,
             split: str = "test", device: str = "auto", ground_truth_z: bool = False,
             organs: Sequence[str] | None = None,
             progress: Callable[[int, int, str], None] | None = None, tta: bool = False) -> dict[str, Any]:
    """Score ``model`` on ``split``; writes metrics.csv, summary.md, summary.json and boxplot.png.

    ``tta``: segment as ``segment(..., tta=True)`` does (mirrored and averaged), to measure what it buys.
    """
    predictor = SegMatePredictor(model, device=device)  # prepared once, not per case
    meta = predictor.metadata
    trained = list(meta.get("trained_organs") or meta["organs"])
    if organs is not None:
        OrganSet.of(meta).check_subset(list(organs))
    wanted = [k for k in meta["organs"] if k in trained and (organs is None or k in organs)]
    extent_organs = [k for k in meta["z_norm"].get("extent_organs", meta["organs"]) if k in trained]
    cases = load_cases(data_dirs, split)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    seconds = []
    for n, case in enumerate(cases):
        scored = [k for k in wanted if k in case.record["annotated"]]
        if progress:
            progress(n, len(cases), case.id)
        if not scored:
            continue
        spacing = case.record["spacing"]
        image = canonical_image(case.image, spacing)
        truth = dict(zip(scored, case.masks(scored)))
        runs: list[tuple[str, str | GroundTruthZ]] = [("label_free", "auto")]
        extent = case.extent(extent_organs)
        if ground_truth_z and extent:
            runs.append(("ground_truth_z", GroundTruthZ(*extent)))
        for mode, z in runs:
            tick = time.perf_counter()
            result = predictor.segment(image, organs=scored, z=z, tta=tta)
            seconds.append(time.perf_counter() - tick)
            labels = np.array(to_canonical(result.labelmap)[0])  # a copy: the view dies with the image
            for key in scored:
                metrics = organ_metrics(labels == result.labels[key], truth[key], spacing)
                rows.append({"case": case.id, "organ": key, "mode": mode, **metrics,
                             "z_first": result.z_range.get("first"), "z_last": result.z_range.get("last"),
                             "truth_first": case.record["organ_slices"].get(key, [None, None])[0],
                             "truth_last": case.record["organ_slices"].get(key, [None, None])[1]})
    if not rows:
        raise ValueError(f"nothing to score: no case of split {split!r} annotates an organ the model was "
                         f"trained on ({', '.join(trained)}).")
    summary = summarise(rows)
    summary.update(model=str(model) if isinstance(model, (str, Path)) else meta.get("backbone"),
                   data=[str(d) for d in data_dirs], split=split, cases=len({r["case"] for r in rows}),
                   seconds_per_volume=round(float(np.mean(seconds)), 2), device=device, tta=bool(tta))
    write_csv(rows, out / "metrics.csv")
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=1))
    write_text_atomic(out / "summary.md", markdown_summary(summary))
    boxplot(rows, out / "boxplot.png")
    return summary


def record_in_model(model_path: str | Path, summary: dict[str, Any], command: str) -> dict[str, Any]:
    """Store the label-free results in the model file's provenance (``metrics.held_out``).

    The file is rewritten atomically with its tensors unchanged (same dtype).
    """
    held_out = {"data": summary["data"], "split": summary["split"], "cases": summary["cases"], "command": command,
                "z_norm": "label-free (segment() default)",
                "organs": {k: {m: v[m].get("mean") for m in METRICS} | {"dice_median": v["dice"].get("median"),
                                                                          "hd95_median_mm": v["hd95_mm"].get("median"),
                                                                          "n": v["dice"]["n"]}
                           for k, v in summary["modes"]["label_free"].items()}}
    update_metadata(model_path, lambda meta: meta["provenance"].setdefault("metrics", {}).update(held_out=held_out))
    return held_out


def catalogue_metrics(summary: dict[str, Any], command: str) -> dict[str, Any]:
    """The label-free results in the model catalogue's form (``segmate models entry --metrics``):
    mean Dice to 3 decimals, mean HD95 to 0.1 mm and the number of cases per organ."""
    organs = summary["modes"]["label_free"]
    return {"dataset": f"split {summary['split']!r} of {', '.join(summary['data'])}", "cases": summary["cases"],
            "command": command,
            "organs": {k: {"dice": round(v["dice"]["mean"], 3), "hd95_mm": round(v["hd95_mm"]["mean"], 1),
                           "cases": v["dice"]["n"]}
                       for k, v in organs.items() if v["dice"].get("n")}}


def _stats(values: list[float]) -> dict[str, float | int]:
    v = np.array([x for x in values if not math.isnan(x)], dtype=float)
    if not v.size:
        return {"n": 0}
    return {"n": int(v.size), "mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
            "median": float(np.median(v)), "min": float(v.min()), "max": float(v.max())}


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per mode and organ: n, mean, sd, median, min and max of each metric (NaN left out)."""
    out: dict[str, Any] = {"modes": {}}
    for mode in dict.fromkeys(r["mode"] for r in rows):
        per_organ = {}
        for key in dict.fromkeys(r["organ"] for r in rows if r["mode"] == mode):
            sel = [r for r in rows if r["mode"] == mode and r["organ"] == key]
            per_organ[key] = {m: _stats([r.get(m, math.nan) for r in sel]) for m in METRICS}
        out["modes"][mode] = per_organ
    return out


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """One row per (case, organ, mode), written atomically; NaN (no surface) as an empty cell."""
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (f"{v:.6f}" if isinstance(v, float) and not math.isnan(v) else
                                 ("" if isinstance(v, float) else v)) for k, v in r.items()})


def markdown_summary(summary: dict[str, Any]) -> str:
    lines = [f"# SegMate evaluation: {summary['model']}", "",
             f"Split `{summary['split']}` of {', '.join(summary['data'])}: {summary['cases']} cases, "
             f"{summary['seconds_per_volume']} s per volume on {summary['device']}"
             + (", with mirror test-time augmentation." if summary.get("tta") else "."), ""]
    for mode, organs in summary["modes"].items():
        lines += [f"## {MODES[mode]}", "",
                  "| organ | n | Dice mean ± sd | Dice median | HD95 mm mean ± sd | HD95 median | IoU | precision "
                  "| recall | volume error % |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for key, m in organs.items():
            def f(name: str, digits: int = 3) -> str:
                s = m[name]
                return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}" if s["n"] else "–"
            def med(name: str, digits: int = 3) -> str:
                return f"{m[name]['median']:.{digits}f}" if m[name]["n"] else "–"
            lines.append(f"| {key} | {m['dice']['n']} | {f('dice')} | {med('dice')} | {f('hd95_mm', 1)} | "
                         f"{med('hd95_mm', 1)} | {med('iou')} | {med('precision')} | {med('recall')} | "
                         f"{med('volume_error_pct', 1)} |")
        lines.append("")
    lines.append("Dice, IoU, precision and recall are 3D, on the CT grid; HD95 is the 95th percentile of the "
                 "symmetric surface distances in mm with the voxel spacing; volume error is "
                 "(predicted - contoured volume) / contoured volume. Medians for IoU, precision, recall, volume error.")
    return "\n".join(lines) + "\n"


def boxplot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = list(dict.fromkeys(r["mode"] for r in rows))
    organs = list(dict.fromkeys(r["organ"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(4 + 1.6 * len(organs) * len(modes), 4.2))
    for ax, metric, label in ((axes[0], "dice", "Dice"), (axes[1], "hd95_mm", "HD95 (mm)")):
        data, names = [], []
        for key in organs:
            for mode in modes:
                values = [r[metric] for r in rows if r["organ"] == key and r["mode"] == mode
                          and not math.isnan(r[metric])]
                data.append(values or [math.nan])
                names.append(key if len(modes) == 1 else f"{key}\n{mode.replace('_', ' ')}")
        ax.boxplot(data, showmeans=True)
        ax.set_xticks(range(1, len(names) + 1), names, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
