"""``segmate info BACKBONE_OR_MODEL_FILE``: parameters, GMACs per slice and metadata."""
from __future__ import annotations

import json
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("info", help="parameters and GMACs per slice of a backbone or model file")
    p.add_argument("target", help="a backbone (efficientnetv2_m, mambaout_tiny, fastvit_t12) or a .safetensors model")
    p.add_argument("--size", type=int, default=512, help="slice size for the GMAC count (default 512)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=run)


def run(args) -> int:
    from segmatecore.models.checkpoint import load_model
    from segmatecore.models.cost import count_parameters, gmacs_per_slice
    from segmatecore.models import create_model

    if Path(args.target).suffix == ".safetensors" or Path(args.target).is_file():
        model = load_model(args.target)
        meta = model.metadata
    else:
        model = create_model(args.target).eval()
        meta = None
    info = {"backbone": model.backbone, "params_m": round(count_parameters(model) / 1e6, 3),
            "gmacs_per_slice": round(gmacs_per_slice(model, args.size), 3), "size": args.size}
    if args.json:
        print(json.dumps({**info, "metadata": meta}, indent=2))
        return 0
    print(f"backbone        {info['backbone']}")
    print(f"parameters      {info['params_m']:.2f} M")
    print(f"GMACs / slice   {info['gmacs_per_slice']:.2f} at {args.size} x {args.size} (SliceFusion + FiLM included)")
    if meta:
        print(f"organs          {', '.join(meta['organs'])}")
        print(f"trained organs  {', '.join(meta.get('trained_organs', meta['organs']))}")
        print(f"input size      {meta['preprocessing']['input_size']}")
        print(f"HU window       {meta['preprocessing']['hu_window']}")
        print(f"z_norm          {meta['z_norm']}")
        thresholds = meta.get("mask_thresholds") or {}
        print("mask thresholds " + (", ".join(f"{k} {v:.2f}" for k, v in thresholds.items()) + "; others 0.50"
                                    if thresholds else "0.50 for every organ (not calibrated)"))
        smoothing = {k: v for k, v in (meta.get("z_smoothing_mm") or {}).items() if v}
        print("z smoothing     " + (", ".join(f"{k} {v:g} mm" for k, v in smoothing.items()) + "; others none"
                                    if smoothing else "none"))
        print(f"provenance      {json.dumps(meta['provenance'])}")
    return 0
