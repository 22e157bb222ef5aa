"""``segmate fit-presence --model M --data OUT... -o M2``: refit the presence head the z pass reads.

See :mod:`segmatecore.train.presence_fit` for why; the demonstration model's recipe ends with it.
"""
from __future__ import annotations

import json
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("fit-presence", help="refit the per-slice presence head on frozen features (z pass)",
                       description="Runs the model with FiLM off over the training slices, then fits each "
                                   "organ's presence logistic regression; the rest of the model is unchanged.")
    p.add_argument("--model", required=True, help="the trained .safetensors model")
    p.add_argument("--data", nargs="+", required=True, help="prepared dataset folder(s) (segmate prepare)")
    p.add_argument("--split", default="train", help="slices to fit on (default %(default)s)")
    p.add_argument("--val-split", default="val", help="slices to report accuracy on ('' for none; default %(default)s)")
    p.add_argument("--every", type=int, default=2, help="use every N-th slice (default %(default)s)")
    p.add_argument("--provenance", default=None,
                   help="JSON file merged into the model's provenance metadata (e.g. the recipe's stages)")
    p.add_argument("-o", "--output", required=True, help="the refitted model (may be --model itself)")
    p.set_defaults(func=run)


def run(args) -> int:
    import torch
    from safetensors import safe_open

    from segmatecore.models.checkpoint import load_model, save_model
    from segmatecore.train.presence_fit import collect_features, fit_presence_head, presence_accuracy

    if args.every < 1:
        raise ValueError("--every must be at least 1.")
    extra = json.loads(Path(args.provenance).read_text(encoding="utf-8")) if args.provenance else {}
    with safe_open(str(args.model), framework="pt") as fh:
        dtype = fh.get_tensor(next(iter(fh.keys()))).dtype
    fast = load_model(args.model).eval()  # re-parameterised: the same features, faster
    model = load_model(args.model, reparameterize=False)
    train = collect_features(fast, args.data, args.split, every=args.every)
    val = collect_features(fast, args.data, args.val_split) if args.val_split else None
    linear = model.presence_head[-1]
    before = presence_accuracy(linear, val) if val is not None else {}
    report = fit_presence_head(linear, train)
    after = presence_accuracy(linear, val) if val is not None else {}
    for key, r in report.items():
        line = (f"{key:13s} {r['present']:5d} present / {r['absent']:5d} absent slices; "
                f"train accuracy {r['accuracy_before']:.3f} -> {r['accuracy_after']:.3f}")
        if key in after:
            line += f"; {args.val_split} {before[key]:.3f} -> {after[key]:.3f}"
        print(line)
    meta = model.metadata
    meta.setdefault("provenance", {}).update(extra)
    meta["provenance"]["presence_head"] = {
        "command": args.command_line, "split": args.split,
        "every": args.every, "organs": report, "val_split": args.val_split or None,
        "val_accuracy_before": before, "val_accuracy_after": after}
    save_model(model, args.output, meta, dtype=dtype if dtype == torch.float16 else None)
    print(f"wrote {args.output}")
    return 0
