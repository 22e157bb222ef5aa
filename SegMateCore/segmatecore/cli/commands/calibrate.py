"""``segmate calibrate --model M --data OUT... -o M2``: per-organ mask thresholds and z smoothing from
validation cases.

See :mod:`segmatecore.train.calibrate`; the demonstration model's recipe ends with it.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from segmatecore.choices import MAX_Z_SMOOTHING_MM
from segmatecore.cli.commands import add_device_option


def register(sub) -> None:
    p = sub.add_parser("calibrate", help="fit each organ's mask threshold and z smoothing on validation cases",
                       description="Segments every case of the validation split as segmate predict does and "
                                   "stores, per organ, the probability threshold and the smoothing along z with "
                                   "the best mean Dice in the model's metadata. Never calibrate on the cases you "
                                   "report accuracy on.")
    p.add_argument("--model", required=True, help="the trained .safetensors model")
    p.add_argument("--data", nargs="+", required=True, help="prepared dataset folder(s) (segmate prepare)")
    p.add_argument("--split", default="val", help="cases to calibrate on (default %(default)s)")
    p.add_argument("--min-cases", type=int, default=None,
                   help="organs annotated in fewer cases keep 0.5 and no smoothing (default 3)")
    p.add_argument("--z-smoothing-mm", type=float, nargs="+", default=None, metavar="MM",
                   help="Gaussian sigmas along z to try with every threshold (default 0 2 4 6 8; 0 = thresholds only)")
    p.add_argument("--provenance", default=None,
                   help="JSON file merged into the model's provenance metadata (e.g. the recipe's stages)")
    p.add_argument("--precision-agreement", choices=("bf16", "fp16", "none"), default="bf16",
                   help="also measure how far the masks in this precision are from fp32's (per-organ Dice) and "
                        "record it, so that precision auto may use it where it is faster (bf16 on CPUs with "
                        "AMX, fp16 on CUDA GPUs; fp16 needs --device cuda). Default %(default)s")
    p.add_argument("--agreement-only", action="store_true",
                   help="only measure and record the precision agreement; keep the thresholds and smoothing")
    add_device_option(p)
    p.add_argument("-o", "--output", required=True, help="the calibrated model (may be --model itself)")
    p.set_defaults(func=run)


def run(args) -> int:
    from segmatecore.models.checkpoint import load_model, update_metadata
    from segmatecore.train.calibrate import (DEFAULT_SMOOTHING_MM, MIN_CASES, calibrate_masks,
                                             measure_precision_agreement)

    if args.split in ("test",):
        print("warning: calibrating on the 'test' split makes the accuracy you report on it optimistic.",
              file=sys.stderr)
    smoothing = DEFAULT_SMOOTHING_MM if args.z_smoothing_mm is None else args.z_smoothing_mm
    if not all(0.0 <= mm <= MAX_Z_SMOOTHING_MM for mm in smoothing):
        raise ValueError(f"--z-smoothing-mm values must lie between 0 and {MAX_Z_SMOOTHING_MM:g} mm.")
    extra = json.loads(Path(args.provenance).read_text(encoding="utf-8")) if args.provenance else {}
    if args.agreement_only and args.precision_agreement == "none":
        raise ValueError("--agreement-only needs --precision-agreement bf16 or fp16.")
    report = {} if args.agreement_only else calibrate_masks(load_model(args.model), args.data, args.split,
                                                            smoothing_mm=smoothing,
                                                            min_cases=args.min_cases or MIN_CASES, device=args.device)
    for key, r in report.items():
        note = "" if r["calibrated"] else f" (only {r['cases']} case(s): kept at 0.5, no smoothing)"
        print(f"{key:13s} {r['cases']:3d} cases; threshold {r['threshold']:.2f}, z smoothing "
              f"{r['z_smoothing_mm']:g} mm: mean Dice {r['dice_at_0.5']:.3f} at 0.50 -> "
              f"{r['dice_at_threshold']:.3f}{note}")

    def record(meta: dict) -> None:
        if not args.agreement_only:
            meta["mask_thresholds"] = {k: r["threshold"] for k, r in report.items() if r["calibrated"]}
            meta["z_smoothing_mm"] = {k: r["z_smoothing_mm"] for k, r in report.items() if r["calibrated"]}
            meta.setdefault("provenance", {})["mask_thresholds"] = {"command": args.command_line, "split": args.split,
                                                                    "organs": report}
        meta.setdefault("provenance", {}).update(extra)

    update_metadata(args.model, record, output=args.output)  # the weights are copied as stored
    if args.precision_agreement != "none":
        agreement = measure_precision_agreement(args.output, args.data, args.split, args.precision_agreement,
                                                args.device)
        print(f"{args.precision_agreement} against fp32: lowest per-organ Dice {agreement['min_dice']:.4f} over "
              f"{agreement['cases']} case(s): precision auto {'may' if agreement['agrees'] else 'will not'} use it")

        def record_agreement(meta: dict) -> None:
            meta.setdefault("precision_agreement", {})[args.precision_agreement] = {
                **agreement, "command": args.command_line}

        update_metadata(args.output, record_agreement)
    print(f"wrote {args.output}")
    return 0
