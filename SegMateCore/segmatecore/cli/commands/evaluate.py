"""``segmate evaluate --model M --data OUT [--split test] -o DIR``: Dice, HD95, IoU, precision, recall."""
from __future__ import annotations

import json
from pathlib import Path

from segmatecore.data.atomic import write_text_atomic
from segmatecore.cli.commands import add_device_option, add_organs_option


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="score a model on a prepared split (CSV, Markdown summary, box plot)")
    p.add_argument("--model", required=True, help="a SegMate .safetensors model")
    p.add_argument("--data", nargs="+", required=True, help="prepared dataset folder(s) (segmate prepare)")
    p.add_argument("--split", default="test", help="train, val or test (default %(default)s)")
    p.add_argument("-o", "--output", required=True, help="folder for metrics.csv, summary.md, summary.json, catalogue_metrics.json, boxplot.png")
    add_organs_option(p, "score only these organs of the model, comma-separated (default: every organ it was "
                         "trained on)")
    add_device_option(p)
    p.add_argument("--ground-truth-z", action="store_true",
                   help="also run with z_norm from the ground-truth organ extent, for comparison")
    p.add_argument("--tta", action="store_true",
                   help="segment with mirror test-time augmentation (as segmate predict --tta), to measure it")
    p.add_argument("--record-in-model", action="store_true",
                   help="store the label-free results in the model file's metadata (provenance.metrics.held_out)")
    p.set_defaults(func=run)


def run(args) -> int:
    from tqdm import tqdm

    from segmatecore.evaluation.evaluate import evaluate

    if args.tta and args.record_in_model:
        raise ValueError("--record-in-model stores the accuracy of the default settings; run it without --tta.")
    bar = tqdm(unit="case", desc="evaluate")

    def progress(done: int, total: int, case: str) -> None:
        bar.total = total
        bar.n = done
        bar.set_postfix_str(case)
        bar.refresh()

    summary = evaluate(args.model, args.data, args.output, split=args.split, device=args.device,
                       ground_truth_z=args.ground_truth_z, organs=args.organs, progress=progress, tta=args.tta)
    bar.close()
    for mode, organs in summary["modes"].items():
        for key, m in organs.items():
            d, h = m["dice"], m["hd95_mm"]
            print(f"{mode:15s} {key:13s} n={d['n']:3d} Dice {d.get('mean', float('nan')):.3f} "
                  f"(median {d.get('median', float('nan')):.3f})  HD95 {h.get('mean', float('nan')):.1f} mm")
    from segmatecore.evaluation.evaluate import catalogue_metrics

    if "label_free" in summary["modes"]:
        metrics = catalogue_metrics(summary, args.command_line)
        write_text_atomic(Path(args.output, "catalogue_metrics.json"), json.dumps(metrics, indent=1) + "\n")
    print(f"wrote {args.output}/metrics.csv, summary.md, summary.json, catalogue_metrics.json, boxplot.png")
    if args.record_in_model:
        from segmatecore.evaluation.evaluate import record_in_model

        record_in_model(args.model, summary, args.command_line)
        print(f"recorded the held-out metrics in {args.model}")
    return 0
