"""The training loop behind ``segmate train`` and ``segmate finetune``.

One process per device (see :mod:`segmatecore.train.config`); rank 0 validates, logs and writes
the run folder's files (:mod:`segmatecore.train.run_folder`).
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from segmatecore.data.organs import OrganSet
from segmatecore.data.prepare import load_index
from segmatecore.data.preprocess import Preprocessing
from segmatecore.models import SegMateNet, create_model
from segmatecore.models.checkpoint import default_metadata, load_model, read_metadata, save_model
from segmatecore.train.config import TrainConfig, pick_device, setup_distributed
from segmatecore.train.dataset import BalancedSampler, SliceDataset, balanced_weights, load_cases
from segmatecore.train.losses import LossWeights, SegMateLoss
from segmatecore.train.model_init import choose_extent_organs, data_organs, trained_organs, warm_start
from segmatecore.train.run_folder import (BEST, CHECKPOINT, HISTORY, LAST, TENSORBOARD, checkpoint_organs, git_commit,
                                          load_checkpoint, portable_path, save_checkpoint, write_history)
from segmatecore.train.validation import validate

log = logging.getLogger("segmate.train")


def _set_encoder_trainable(model: SegMateNet, trainable: bool) -> None:
    for p in model.encoder.parameters():
        p.requires_grad_(trainable)


class Trainer:
    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.device = pick_device(cfg.device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.dist = setup_distributed(self.device)
        self.run_dir = Path(cfg.run_dir)
        self.pre = Preprocessing(input_size=(cfg.input_size, cfg.input_size))
        if cfg.input_size % 32:
            raise ValueError(f"--input-size {cfg.input_size} must be a multiple of 32.")
        self.indexes = [load_index(d) for d in cfg.data]
        self.train_cases = load_cases(cfg.data, "train")
        self.val_cases = [c for d in cfg.data if load_index(d)["splits"].get(cfg.val_split)
                          for c in load_cases([d], cfg.val_split)]
        if not self.val_cases:
            raise ValueError("the prepared data have no validation cases; prepare with a val fraction > 0 "
                             "(segmate prepare ... --fractions 0.8 0.1 0.1).")
        self.organs = list(OrganSet(cfg.organs or self._initial_organs() or data_organs(self.indexes)))
        self.organs_trained = trained_organs(self.train_cases, self.organs)
        if not self.organs_trained:
            raise ValueError(f"the training cases annotate none of the organs {', '.join(self.organs)}.")
        self.extent_organs = list(cfg.extent_organs or choose_extent_organs(self.train_cases, self.organs_trained))
        OrganSet(self.organs).check_subset(self.extent_organs, "extent organ")
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        self.model = self._build_model().to(self.device)
        self.loss_fn = SegMateLoss(self.organs, LossWeights()).to(self.device)
        self.dataset = SliceDataset(self.train_cases, self.pre, self.organs, augment=cfg.augment, seed=cfg.seed,
                                    extent_organs=self.extent_organs)
        presence = self.dataset.presence_matrix()
        weights = balanced_weights(presence, None, power=cfg.balance_power, empty_share=cfg.empty_share)
        samples = cfg.samples_per_epoch or len(self.dataset)
        self.sampler = BalancedSampler(weights, samples, seed=cfg.seed, rank=self.dist.rank,
                                       world_size=self.dist.world_size)
        self.steps_per_epoch = max(1, self.sampler.num_samples // self.dist.world_size // cfg.batch_size)
        self.optimizer = torch.optim.AdamW([p for p in self.model.parameters()], lr=cfg.lr,
                                           weight_decay=cfg.weight_decay)
        if cfg.schedule == "plateau":
            self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(self.optimizer, mode="min",
                                                                        factor=cfg.plateau_factor,
                                                                        patience=cfg.plateau_patience)
        elif cfg.schedule == "cosine":
            total = cfg.max_steps or cfg.epochs * self.steps_per_epoch
            self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=max(total, 1))
        else:
            raise ValueError(f"unknown schedule {cfg.schedule!r}; use plateau or cosine.")
        self.use_amp = cfg.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.epoch, self.step, self.epoch_step = 0, 0, 0
        self.best = {"dice": -1.0, "epoch": None, "step": None}
        self.history: list[dict[str, Any]] = []
        self.started = time.time()
        self.ddp_model: torch.nn.Module = self.model
        self.writer = None

    def _initial_organs(self) -> list[str] | None:
        """A resumed run keeps the organs of its checkpoint; a fine-tune those of the model it starts from."""
        checkpoint = Path(self.cfg.run_dir) / CHECKPOINT
        if self.cfg.resume and checkpoint.is_file():
            return checkpoint_organs(checkpoint)  # load_state reads the weights once, later
        if not self.cfg.init_model:
            return None
        return list(read_metadata(self.cfg.init_model)["organs"])

    def _build_model(self) -> SegMateNet:
        cfg = self.cfg
        model = create_model(cfg.backbone, deep_supervision=cfg.deep_supervision, pretrained=cfg.pretrained,
                             num_classes=len(self.organs))
        if cfg.init_model:
            source = load_model(cfg.init_model, reparameterize=False)
            if source.backbone != model.backbone:
                raise ValueError(f"{cfg.init_model} is a {source.backbone} model; use --backbone {source.backbone}.")
            fresh = warm_start(model, self.organs, source, list(source.metadata["organs"]))
            if fresh:
                log.info("organs new to %s start from scratch: %s", cfg.init_model, ", ".join(fresh))
        return model

    def _wrap(self) -> None:
        if self.dist.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp_model = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        else:
            self.ddp_model = self.model

    # -------------------------------------------------------------------------- state
    def state(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "epoch": self.epoch, "step": self.step, "epoch_step": self.epoch_step, "best": self.best,
                "history": self.history, "config": asdict(self.cfg), "organs": self.organs}

    def load_state(self, path: Path) -> None:
        state = load_checkpoint(path, self.device)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step, self.epoch_step = state["epoch"], state["step"], state["epoch_step"]
        self.best, self.history = state["best"], state["history"]
        log.info("resumed from %s at epoch %d, step %d", path, self.epoch, self.step)

    def metadata(self, metrics: dict[str, Any] | None = None) -> dict[str, Any]:
        cfg = self.cfg
        data = [{"path": portable_path(i["root"]), "kind": i["kind"], "source": Path(i["source"]).name, "seed": i["seed"],
                 "splits": {k: v for k, v in i["splits"].items()},
                 "notes": sorted({n for r in i["cases"] for n in r.get("notes", [])})} for i in self.indexes]
        provenance = {
            "source": "segmate train" if not cfg.init_model else "segmate finetune",
            "data": data,
            "train_cases": len(self.train_cases), "val_cases": len(self.val_cases), "val_split": cfg.val_split,
            "recipe": {
                "optimizer": "AdamW", "lr": cfg.lr, "weight_decay": cfg.weight_decay, "schedule": cfg.schedule,
                "plateau": {"factor": cfg.plateau_factor, "patience": cfg.plateau_patience, "on": "val loss"}
                if cfg.schedule == "plateau" else None,
                "freeze_encoder_epochs": cfg.freeze_encoder_epochs,
                "init_model": portable_path(cfg.init_model) if cfg.init_model else None,
                "batch_size": cfg.batch_size, "world_size": self.dist.world_size, "epochs": cfg.epochs,
                "samples_per_epoch": self.sampler.num_samples, "max_steps": cfg.max_steps,
                "max_minutes": cfg.max_minutes, "steps_done": self.step, "input_size": cfg.input_size,
                "augment": cfg.augment, "lr_flip_swaps_left_right_channels": True,
                "balance_power": cfg.balance_power, "empty_share": cfg.empty_share,
                "deep_supervision": cfg.deep_supervision, "pretrained_encoder": cfg.pretrained,
                "amp": self.use_amp, "seed": cfg.seed, "loss": LossWeights().to_metadata(self.organs),
                "z_norm": "extent of the extent organs from ground truth: (t - first) / max(last - first, 1), "
                          "clipped; FiLM off for cases that do not annotate every extent organ",
            },
            "code": {"segmatecore": __import__("segmatecore").__version__, **git_commit(),
                     "torch": torch.__version__, "device": str(self.device)},
            "selection": "best validation Dice (3D, input size, ground-truth z_norm)",
            "metrics": metrics or {},
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        provenance.update(cfg.provenance)
        return default_metadata(self.model.backbone, organs=self.organs, trained_organs=self.organs_trained,
                                z_norm={"mode": "organ_extent", "extent_organs": self.extent_organs},
                                preprocessing={**default_metadata(self.model.backbone)["preprocessing"],
                                               **self.pre.to_metadata()},
                                provenance=provenance)

    def _inference_copy(self) -> SegMateNet:
        """The trained weights without the deep-supervision heads (they only serve training)."""
        model = create_model(self.model.backbone, deep_supervision=False, num_classes=len(self.organs))
        state = {k: v for k, v in self.model.state_dict().items() if not k.startswith("deep_heads.")}
        model.load_state_dict(state)
        return model.eval()

    # -------------------------------------------------------------------------- loop
    def _out_of_budget(self) -> bool:
        cfg = self.cfg
        if cfg.max_steps is not None and self.step >= cfg.max_steps:
            return True
        return cfg.max_minutes is not None and (time.time() - self.started) / 60 >= cfg.max_minutes

    def _loader(self) -> DataLoader:
        self.sampler.set_epoch(self.epoch)
        self.dataset.set_epoch(self.epoch)
        generator = torch.Generator().manual_seed(self.cfg.seed + self.epoch)
        return DataLoader(self.dataset, batch_size=self.cfg.batch_size, sampler=self.sampler, drop_last=True,
                          num_workers=self.cfg.workers, persistent_workers=False, generator=generator,
                          worker_init_fn=_worker_init, pin_memory=self.device.type == "cuda",
                          multiprocessing_context="spawn" if self.cfg.workers else None)

    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        if self.dist.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(self.run_dir / TENSORBOARD))
        ckpt = self.run_dir / CHECKPOINT
        if cfg.resume and ckpt.is_file():
            self.load_state(ckpt)
        elif cfg.resume:
            log.info("no checkpoint in %s; starting from scratch", self.run_dir)
        self._wrap()
        log.info("training %s on %d train / %d val cases (%d slices), %d steps per epoch, device %s, world %d",
                 self.model.backbone, len(self.train_cases), len(self.val_cases), len(self.dataset),
                 self.steps_per_epoch, self.device, self.dist.world_size)
        stopped = False
        while self.epoch < cfg.epochs and not stopped:
            frozen = self.epoch < cfg.freeze_encoder_epochs
            if frozen != getattr(self, "_frozen", False):
                _set_encoder_trainable(self.model, not frozen)
                self._frozen = frozen
                self._wrap()  # DDP must see which parameters train
            self.model.train()
            self.sampler.start = self.epoch_step * cfg.batch_size
            window, tick = [], time.time()
            for batch in self._loader():
                batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
                with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.use_amp):
                    out = self.ddp_model(batch["image"], batch["z_norm"])
                loss, terms = self.loss_fn(out, batch["target"], batch["annotated"], batch["presence"])
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
                if cfg.schedule == "cosine":
                    self.scheduler.step()
                self.step += 1
                self.epoch_step += 1
                window.append(terms)
                if self.dist.main and self.step % cfg.log_every == 0:
                    self._log_train(window, time.time() - tick)
                    window, tick = [], time.time()
                if self.dist.main and cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                    save_checkpoint(self.state(), ckpt)
                if self._out_of_budget():
                    stopped = True
                    break
            if not stopped:
                self.epoch += 1
                self.epoch_step = 0
            self._end_of_epoch(ckpt, final=stopped or self.epoch >= cfg.epochs)
        result = self._finish()
        if self.writer:
            self.writer.close()
        return result

    def _log_train(self, window: list[dict[str, float]], seconds: float) -> None:
        mean = {k: float(np.mean([w[k] for w in window])) for k in window[0]}
        lr = self.optimizer.param_groups[0]["lr"]
        for k, v in mean.items():
            self.writer.add_scalar(f"train/{k}", v, self.step)
        self.writer.add_scalar("train/lr", lr, self.step)
        log.info("epoch %d step %d loss %.4f (dice %.3f ce %.3f) lr %.2e %.2f s/step", self.epoch, self.step,
                 mean["total"], mean["dice"], mean["ce"], lr, seconds / len(window))

    def _end_of_epoch(self, ckpt: Path, final: bool) -> None:
        cfg = self.cfg
        val_loss = torch.zeros(1, device=self.device)
        if self.dist.main:
            tick = time.time()
            val = validate(self.model, self.val_cases, self.pre, self.loss_fn, self.device, cfg.batch_size,
                           self.use_amp, cfg.val_max_slices, organs=self.organs, extent_organs=self.extent_organs)
            val_loss[0] = val["loss"]
            entry = {"epoch": self.epoch, "step": self.step, "val_loss": val["loss"], "val_dice": val["dice"],
                     "val_dice_per_organ": val["dice_per_organ"], "lr": self.optimizer.param_groups[0]["lr"],
                     "minutes": round((time.time() - self.started) / 60, 2)}
            self.history.append(entry)
            self.writer.add_scalar("val/loss", val["loss"], self.step)
            self.writer.add_scalar("val/dice", val["dice"], self.step)
            for k, v in val["dice_per_organ"].items():
                self.writer.add_scalar(f"val/dice_{k}", v, self.step)
            log.info("validation at step %d: loss %.4f, Dice %.4f %s (%.0f s)", self.step, val["loss"], val["dice"],
                     {k: round(v, 3) for k, v in val["dice_per_organ"].items()}, time.time() - tick)
            if val["dice"] > self.best["dice"]:
                self.best = {"dice": val["dice"], "dice_per_organ": val["dice_per_organ"], "loss": val["loss"],
                             "epoch": self.epoch, "step": self.step}
                save_model(self._inference_copy(), self.run_dir / BEST,
                           self.metadata({"validation": self.best}))
            save_model(self._inference_copy(), self.run_dir / LAST, self.metadata({"validation": entry}))
            write_history(self.history, self.run_dir / HISTORY)
        if self.dist.world_size > 1:
            dist.broadcast(val_loss, src=0)
        if self.cfg.schedule == "plateau":
            self.scheduler.step(float(val_loss[0]))
        if self.dist.main:
            save_checkpoint(self.state(), ckpt)

    def _finish(self) -> dict[str, Any]:
        cfg = self.cfg
        result = {"steps": self.step, "epochs": self.epoch, "best": self.best, "history": self.history,
                  "output": None}
        if self.dist.main and cfg.output:
            best = load_model(self.run_dir / BEST, reparameterize=False)
            meta = self.metadata({"validation": self.best, "history": self.history})
            dtype = {"fp16": torch.float16, "fp32": None}[cfg.dtype]
            result["output"] = str(save_model(best, cfg.output, meta, dtype=dtype))
            log.info("final model (best validation Dice %.4f at step %s) written to %s", self.best["dice"],
                     self.best["step"], cfg.output)
        if self.dist.world_size > 1:
            dist.barrier()
        return result


def _worker_init(worker_id: int) -> None:
    torch.set_num_threads(1)


def train(cfg: TrainConfig) -> dict[str, Any]:
    return Trainer(cfg).run()
