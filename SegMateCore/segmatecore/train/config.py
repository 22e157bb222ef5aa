"""What a training run is told (:class:`TrainConfig`, filled by ``segmate train`` and ``segmate finetune``),
and where it runs: the device and, under ``torchrun``, the process group.

Under ``torchrun`` the process group comes from the environment (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT), so the same command runs on one CPU, one GPU, several GPUs or several nodes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist


@dataclass
class TrainConfig:
    data: list[str]
    backbone: str = "fastvit_t12"
    organs: list[str] | None = None        # the model's organs in channel order (None: those the data annotate)
    extent_organs: list[str] | None = None  # define z_norm's organ extent (None: see choose_extent_organs)
    run_dir: str = "runs/segmate"
    output: str | None = None
    input_size: int = 512
    batch_size: int = 32
    epochs: int = 100
    samples_per_epoch: int | None = None   # None: every training slice once per epoch
    max_steps: int | None = None
    max_minutes: float | None = None
    lr: float = 2e-4
    weight_decay: float = 1e-4
    schedule: str = "plateau"              # "plateau" (train) or "cosine" (finetune)
    plateau_factor: float = 0.5
    plateau_patience: int = 3
    freeze_encoder_epochs: int = 0
    deep_supervision: bool = True
    pretrained: bool = False
    init_model: str | None = None          # finetune: start from these weights
    augment: str = "paper"
    balance_power: float = 1.0
    empty_share: float = 0.1
    workers: int = 4
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    dtype: str = "fp32"                    # of the final model file
    val_max_slices: int | None = None      # per validation case, centred on its organs (None: all)
    val_split: str = "val"                 # "train" only for overfit checks
    log_every: int = 20
    checkpoint_every: int = 500
    resume: bool = False
    provenance: dict[str, Any] = field(default_factory=dict)


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: torch.device) -> Dist:
    """Join the process group that torchrun describes in the environment (no-op when alone)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def pick_device(name: str) -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")
