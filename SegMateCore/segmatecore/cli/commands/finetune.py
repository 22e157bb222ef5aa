"""``segmate finetune --model M --data OUT``: adapt a model to a new dataset (spec: SegTHOR, AMOS22).

Paper recipe: 25 epochs, encoder frozen for the first 5, lr 5e-6 with cosine decay.
"""
from __future__ import annotations

from segmatecore.cli.commands.train import add_common, config_from_args


def register(sub) -> None:
    p = sub.add_parser("finetune", help="fine-tune a SegMate model (encoder frozen for the first epochs)")
    p.add_argument("--model", required=True, help="the .safetensors model to start from")
    p.add_argument("--freeze-encoder-epochs", type=int, default=5, help="(default %(default)s)")
    add_common(p, defaults={"run_dir": "runs/finetune", "epochs": 25, "lr": 5e-6,
                            "organs": "those of --model; other organs start from scratch, shared ones keep "
                                      "what --model learnt"})
    p.set_defaults(func=run)


def run(args) -> int:
    from segmatecore.models.checkpoint import read_metadata
    from segmatecore.train.trainer import train

    backbone = read_metadata(args.model)["backbone"]
    cfg = config_from_args(args, backbone=backbone, init_model=args.model, schedule="cosine",
                           freeze_encoder_epochs=args.freeze_encoder_epochs)
    result = train(cfg)
    print(f"{result['steps']} steps; best validation Dice {result['best']['dice']:.4f}; run folder {cfg.run_dir}"
          + (f"; model {result['output']}" if result["output"] else ""))
    return 0
