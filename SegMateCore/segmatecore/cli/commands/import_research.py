"""``segmate import-research CKPT.pth --backbone NAME -o OUT.safetensors``."""
from __future__ import annotations

import hashlib
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("import-research", help="convert a research-code checkpoint (.pth) to a SegMate model")
    p.add_argument("checkpoint", type=Path, help="the research .pth (state dict or {'model_state_dict': ...})")
    p.add_argument("--backbone", required=True, help="efficientnetv2_m, mambaout_tiny or fastvit_t12")
    p.add_argument("-o", "--output", type=Path, required=True, help="the .safetensors file to write")
    p.add_argument("--input-size", type=int, default=512, help="in-plane size the weights were trained at")
    p.add_argument("--hu-window", type=float, nargs=2, default=(-1000.0, 400.0), metavar=("LOW", "HIGH"),
                   help="HU window used in training (research code: -1000 400; paper: -1000 2000)")
    p.add_argument("--keep-deep-heads", action="store_true", help="keep the deep-supervision heads (for further training)")
    p.set_defaults(func=run)


def run(args) -> int:
    from segmatecore.models.research import import_research_checkpoint

    path = import_research_checkpoint(args.checkpoint, args.backbone, args.output, input_size=args.input_size,
                                      hu_window=tuple(args.hu_window), keep_deep_heads=args.keep_deep_heads)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, sha256 {digest})")
    return 0
