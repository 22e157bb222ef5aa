"""Golden outputs of the bundled model: record its labelmaps, or compare them with a recording.

Four CTs (both bundled samples and two OpenKBP validation cases from ../shared/data), three z
strategies (auto, volume, ground truth: the extent of the reference contours) and TTA off and
on: 24 labelmaps. A refactoring of the inference path must reproduce them voxel for voxel on the
same machine (floating-point results differ between CPUs, so recordings are not portable).

    python tools/golden_outputs.py record runs/golden/before
    python tools/golden_outputs.py compare runs/golden/before runs/golden/after

``record`` runs the segmatecore found on the Python path: run it with PYTHONPATH pointing at an
older checkout's SegMateCore to record that revision.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
SAMPLES = ROOT / "Resources" / "SampleData"
# name -> (CT, reference labelmap, labels whose slices make the ground-truth extent or None for all)
CASES = {
    "sample_openkbp_pt_201": (SAMPLES / "openkbp_validation_pt_201_ct.nii.gz",
                              SHARED / "openkbp" / "validation_pt_201" / "labels.nii.gz", None),
    "sample_totalsegmentator": (SAMPLES / "totalsegmentator_example_ct.nii.gz",
                                SHARED / "totalseg_example" / "example_seg.nii.gz", (15, 79)),  # esophagus, cord
    "openkbp_pt_202": (SHARED / "openkbp" / "validation_pt_202" / "ct.nii.gz",
                       SHARED / "openkbp" / "validation_pt_202" / "labels.nii.gz", None),
    "openkbp_pt_203": (SHARED / "openkbp" / "validation_pt_203" / "ct.nii.gz",
                       SHARED / "openkbp" / "validation_pt_203" / "labels.nii.gz", None),
}
Z_MODES = ("auto", "volume", "ground_truth")


def _to_canonical():
    """segmatecore's to_canonical, from the layered package or the flat one before it."""
    try:
        from segmatecore.data.geometry import to_canonical
    except ImportError:  # the flat layout before the subpackages
        from segmatecore.geometry import to_canonical
    return to_canonical


def ground_truth_extent(reference: Path, labels: tuple[int, ...] | None) -> tuple[int, int]:
    """First and last canonical (inferior to superior) slice holding any of ``labels``."""
    array, _ = _to_canonical()(sitk.ReadImage(str(reference)))
    hit = np.isin(array, labels) if labels else array > 0
    slices = np.flatnonzero(hit.any(axis=(0, 1)))
    return int(slices[0]), int(slices[-1])


def _segmenter():
    """A function (image, z mode, extent, tta) -> labelmap for the segmatecore on the path."""
    try:
        from segmatecore.inference.predictor import SegMatePredictor
        from segmatecore.inference.zstrategy import GroundTruthZ
    except ImportError:
        return _segmenter_flat()
    predictor = SegMatePredictor(device="cpu")

    def run(image, mode, extent, tta):
        z = GroundTruthZ(*extent) if mode == "ground_truth" else mode
        return predictor.segment(image, z=z, tta=tta).labelmap
    return run


def _segmenter_flat():
    """The same for the flat layout before the predictor (segmatecore.segment and GroundTruthZNorm)."""
    import segmatecore
    from segmatecore.catalogue import resolve_model
    from segmatecore.checkpoint import load_model
    from segmatecore.evaluate import GroundTruthZNorm
    to_canonical = _to_canonical()
    net = load_model(resolve_model(None))

    def run(image, mode, extent, tta):
        if mode != "ground_truth":
            return segmatecore.segment(image, device="cpu", z_norm=mode, tta=tta).labelmap
        depth = to_canonical(image)[0].shape[2]
        return segmatecore.segment(image, model=GroundTruthZNorm(net, extent, depth), device="cpu",
                                   z_norm="volume", tta=tta).labelmap
    return run


def record(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    run = _segmenter()
    manifest = {}
    for name, (ct, reference, labels) in CASES.items():
        image = sitk.ReadImage(str(ct))
        extent = ground_truth_extent(reference, labels)
        for mode in Z_MODES:
            for tta in (False, True):
                key = f"{name}__z_{mode}__tta_{'on' if tta else 'off'}"
                labelmap = run(image, mode, extent, tta)
                sitk.WriteImage(labelmap, str(out / f"{key}.nii.gz"), useCompression=True)
                array = sitk.GetArrayViewFromImage(labelmap)
                manifest[key] = {"sha256": hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest(),
                                 "extent": list(extent), "voxels": {str(v): int(c) for v, c in
                                                                    zip(*np.unique(array, return_counts=True))}}
                print(key, manifest[key]["sha256"][:12], flush=True)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")


def compare(before: Path, after: Path) -> int:
    a = json.loads((before / "manifest.json").read_text())
    b = json.loads((after / "manifest.json").read_text())
    differing = 0
    for key in a:
        if key not in b:
            print(f"{key}: missing in {after}")
            differing += 1
            continue
        if a[key]["sha256"] == b[key]["sha256"]:
            print(f"{key}: identical")
            continue
        differing += 1
        x = sitk.GetArrayFromImage(sitk.ReadImage(str(before / f"{key}.nii.gz")))
        y = sitk.GetArrayFromImage(sitk.ReadImage(str(after / f"{key}.nii.gz")))
        print(f"{key}: {int((x != y).sum())} voxels differ of {x.size}")
    print(f"{len(a) - differing} of {len(a)} identical")
    return 1 if differing else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("record").add_argument("out", type=Path)
    cmp = sub.add_parser("compare")
    cmp.add_argument("before", type=Path)
    cmp.add_argument("after", type=Path)
    args = parser.parse_args(argv)
    if args.command == "record":
        record(args.out)
        return 0
    return compare(args.before, args.after)


if __name__ == "__main__":
    sys.exit(main())
