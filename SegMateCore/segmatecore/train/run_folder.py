"""The run folder (``--run-dir``) of a training run, and the provenance its model files record.

Layout::

    checkpoint.pt        last state (model, optimiser, scheduler, scaler, sampler position); written atomically
    best.safetensors     weights with the best validation Dice so far (fp32, full metadata)
    last.safetensors     weights at the last validation (to continue with segmate finetune)
    history.json         per-validation losses and Dice
    tb/                  TensorBoard logs

Every file is replaced atomically (:mod:`segmatecore.data.atomic`), so a run stopped at any
moment resumes from a whole checkpoint.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import torch

from segmatecore.data.atomic import atomic_path, write_text_atomic

CHECKPOINT = "checkpoint.pt"
BEST = "best.safetensors"
LAST = "last.safetensors"
HISTORY = "history.json"
TENSORBOARD = "tb"


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write a training state (``torch.save``) atomically."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path, device: torch.device | str = "cpu", mmap: bool = False) -> dict[str, Any]:
    """A training state written by :func:`save_checkpoint` (tensors only, no pickled code).

    ``mmap`` maps the file instead of reading it, for a caller that needs a few fields only.
    """
    return torch.load(path, map_location=device, weights_only=True, mmap=mmap)


def checkpoint_organs(path: Path) -> list[str]:
    """The organs of a checkpoint's model, read memory-mapped: the weights stay on disk."""
    state = load_checkpoint(path, mmap=True)
    return state.get("organs") or state["config"].get("organs")


def write_history(history: list[dict[str, Any]], path: Path) -> None:
    """The per-validation history as JSON, written atomically."""
    write_text_atomic(path, json.dumps(history, indent=1))


def git_commit() -> dict[str, Any]:
    """The commit of the code that trained the model (read-only git queries)."""
    root = Path(__file__).resolve().parents[3]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=30).stdout.strip()
        return {"commit": commit or None, "uncommitted_changes": bool(dirty)}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "uncommitted_changes": None}


def portable_path(path: str | Path) -> str:
    """A path for model metadata: relative to the working folder when inside it, else its name alone,
    so that no metadata holds an absolute path of the machine that trained the model."""
    path = Path(path).resolve()
    try:
        return path.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return path.name
