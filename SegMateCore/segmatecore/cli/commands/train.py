"""``segmate train --data OUT --backbone B``: train SegMate with the paper's recipe (defaults).

Several GPUs or nodes: ``torchrun --nproc_per_node N -m segmatecore.cli.main train ...`` (see docs/training.md).
"""
from __future__ import annotations

import json
from pathlib import Path

from segmatecore.cli.commands import add_device_option, add_organs_option


def add_common(p, *, defaults: dict) -> None:
    """Options shared by ``train`` and ``finetune``; ``defaults`` holds the values that differ."""
    p.add_argument("--data", nargs="+", required=True, help="prepared dataset folder(s) (segmate prepare)")
    add_organs_option(p, "the model's organs in channel order, comma-separated (default: " + defaults["organs"] + ")")
    add_organs_option(p, "organs whose extent defines z_norm, comma-separated (default: the organs annotated in at "
                         "least 90%% of the training cases)", flag="--extent-organs")
    p.add_argument("--run-dir", default=defaults["run_dir"], help="checkpoints, logs and TensorBoard (default %(default)s)")
    p.add_argument("-o", "--output", default=None, help="final model file (.safetensors), the best validation weights")
    p.add_argument("--input-size", type=int, default=512, help="in-plane size, a multiple of 32 (paper: 512)")
    p.add_argument("--batch-size", type=int, default=32, help="per process (paper: 32)")
    p.add_argument("--epochs", type=int, default=defaults["epochs"], help="(default %(default)s)")
    p.add_argument("--samples-per-epoch", type=int, default=None,
                   help="slices drawn per epoch (default: the number of training slices)")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many optimiser steps")
    p.add_argument("--max-minutes", type=float, default=None, help="stop after this much wall time")
    p.add_argument("--lr", type=float, default=defaults["lr"], help="(default %(default)s)")
    p.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay (default %(default)s)")
    p.add_argument("--augment", choices=("none", "light", "paper"), default="paper",
                   help="paper: flips with left/right channel swap, affine, elastic, intensity; light: no elastic")
    p.add_argument("--balance-power", type=float, default=1.0,
                   help="class-balanced sampling: 1 equal share per organ, 0 natural frequency (default 1)")
    p.add_argument("--no-deep-supervision", action="store_true", help="train without the deep-supervision heads")
    p.add_argument("--workers", type=int, default=4, help="data-loading processes per training process")
    p.add_argument("--seed", type=int, default=0)
    add_device_option(p)
    p.add_argument("--no-amp", action="store_true", help="fp32 on CUDA (AMP fp16 is the default there)")
    p.add_argument("--dtype", choices=("fp32", "fp16"), default="fp32", help="precision of the final model file")
    p.add_argument("--val-max-slices", type=int, default=None, help="validate on at most N slices per case")
    p.add_argument("--val-split", default="val", help="split to validate on (train: overfit checks only)")
    p.add_argument("--log-every", type=int, default=20, help="steps between log lines")
    p.add_argument("--checkpoint-every", type=int, default=500, help="steps between checkpoints (also every epoch)")
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/checkpoint.pt")
    p.add_argument("--provenance", default=None,
                   help="JSON file merged into the model's provenance metadata (e.g. data licences)")


def register(sub) -> None:
    p = sub.add_parser("train", help="train a SegMate model on prepared data")
    p.add_argument("--backbone", required=True, help="fastvit_t12, mambaout_tiny or efficientnetv2_m")
    p.add_argument("--pretrained", action="store_true",
                   help="start from timm's ImageNet encoder weights, as the paper (downloads them once)")
    add_common(p, defaults={"run_dir": "runs/segmate", "epochs": 100, "lr": 2e-4,
                            "organs": "the organs the prepared data hold"})
    p.set_defaults(func=run)


def config_from_args(args, **extra):
    from segmatecore.train.config import TrainConfig

    provenance = json.loads(Path(args.provenance).read_text(encoding="utf-8")) if args.provenance else {}
    return TrainConfig(
        data=args.data, organs=args.organs, extent_organs=args.extent_organs, run_dir=args.run_dir, output=args.output, input_size=args.input_size,
        batch_size=args.batch_size, epochs=args.epochs, samples_per_epoch=args.samples_per_epoch,
        max_steps=args.max_steps, max_minutes=args.max_minutes, lr=args.lr, weight_decay=args.weight_decay,
        augment=args.augment, balance_power=args.balance_power, deep_supervision=not args.no_deep_supervision,
        workers=args.workers, seed=args.seed, device=args.device, amp=not args.no_amp, dtype=args.dtype,
        val_max_slices=args.val_max_slices, val_split=args.val_split, log_every=args.log_every, checkpoint_every=args.checkpoint_every,
        resume=args.resume, provenance=provenance, **extra)


def run(args) -> int:
    from segmatecore.train.trainer import train

    cfg = config_from_args(args, backbone=args.backbone, pretrained=args.pretrained)
    result = train(cfg)
    print(f"{result['steps']} steps; best validation Dice {result['best']['dice']:.4f} at step "
          f"{result['best']['step']}; run folder {cfg.run_dir}" + (f"; model {result['output']}" if result["output"] else ""))
    return 0
