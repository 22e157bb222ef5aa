"""Import checkpoints saved by the SegMate research code into SegMateNet's layout.

The research state dict names SliceFusion ``fusion.net.*`` and the network ``model.*``; it holds
three SE blocks that its forward never uses (``skip_dec2_4``, ``skip_dec1_3``, ``skip_dec1_4``),
which are dropped here. Checkpoints are read with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Mapping

import torch

from segmatecore.models.checkpoint import check_state_dict, default_metadata, save_model
from segmatecore.models.factory import create_model

UNUSED_RESEARCH_BLOCKS = ("skip_dec2_4", "skip_dec1_3", "skip_dec1_4")

_RENAMES: list[tuple[str, str]] = [
    (r"^fusion\.net\.0\.", "slice_fusion.conv."),
    (r"^fusion\.net\.1\.", "slice_fusion.bn."),
    (r"^fusion\.net\.3\.", "slice_fusion.proj."),
    (r"^model\.encoder\.", "encoder.model."),
    (r"^model\.align_e([2-5])\.align_conv\.", lambda m: f"align.{int(m.group(1)) - 2}.0."),
    (r"^model\.align_e([2-5])\.bn\.", lambda m: f"align.{int(m.group(1)) - 2}.1."),
    (r"^model\.aspp\.atrous_block(1|6|12|18)\.", lambda m: f"aspp.branches.{'1 6 12 18'.split().index(m.group(1))}.0."),
    (r"^model\.aspp\.bn(1|6|12|18)\.", lambda m: f"aspp.branches.{'1 6 12 18'.split().index(m.group(1))}.1."),
    (r"^model\.aspp\.conv_1x1_output\.", "aspp.project.0."),
    (r"^model\.aspp\.bn_output\.", "aspp.project.1."),
    (r"^model\.film\.position_encoder\.mlp\.", "film.mlp."),
    (r"^model\.film\.position_encoder\.gamma_head\.", "film.gamma."),
    (r"^model\.film\.position_encoder\.beta_head\.", "film.beta."),
    (r"^model\.up([1-4])\.", lambda m: f"decoder.up.{4 - int(m.group(1))}."),
    (r"^model\.dec([1-4])\.", lambda m: f"decoder.blocks.{4 - int(m.group(1))}."),
    (r"^model\.skip_dec3_4\.", "decoder.nested.0."),
    (r"^model\.skip_dec2_3\.", "decoder.nested.1."),
    (r"^model\.skip_dec1_2\.", "decoder.nested.2."),
    (r"^model\.segmentation_head\.", "seg_head."),
    (r"^model\.boundary_head\.", "boundary_head."),
    (r"^model\.presence_head\.3\.", "presence_head.3."),
    (r"^model\.deep_head([1-3])\.", lambda m: f"deep_heads.{int(m.group(1)) - 1}."),
]
_BLOCK_INNER = [
    (r"\.attention\.ca\.fc([12])\.", r".attention.channel.fc\1."),
    (r"\.attention\.sa\.conv1\.", ".attention.spatial.conv."),
]


def research_key_to_segmate(key: str) -> str | None:
    """Our parameter name for one research key, or None for keys that are dropped."""
    if key.startswith("module."):
        key = key[len("module."):]
    if any(key.startswith(f"model.{b}.") for b in UNUSED_RESEARCH_BLOCKS):
        return None
    for pattern, repl in _RENAMES:
        new, n = re.subn(pattern, repl, key)
        if n:
            if new.startswith("decoder."):
                for p, r in _BLOCK_INNER:
                    new = re.sub(p, r, new)
            return new
    raise KeyError(f"Unrecognised research checkpoint key {key!r}: is this a SegMate research checkpoint?")


def convert_research_state_dict(state: Mapping[str, torch.Tensor], keep_deep_heads: bool = True
                                ) -> dict[str, torch.Tensor]:
    """Rename a research state dict to SegMateNet names; drop the unused blocks."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        new = research_key_to_segmate(key)
        if new is None or (not keep_deep_heads and new.startswith("deep_heads.")):
            continue
        out[new] = value
    return out


def load_research_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a research .pth (bare state dict or {'model_state_dict': ...}) without unpickling code."""
    try:
        obj = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError...
        raise ValueError(f"Cannot read {path} as a research checkpoint with weights_only=True: {exc}") from exc
    if isinstance(obj, Mapping) and "model_state_dict" in obj:
        obj = obj["model_state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors.")
    return dict(obj)


def import_research_checkpoint(checkpoint: str | Path, backbone: str, output: str | Path, *,
                               input_size: int = 512, hu_window: tuple[float, float] = (-1000.0, 400.0),
                               keep_deep_heads: bool = False) -> Path:
    """Convert a research .pth into a SegMate safetensors model with provenance metadata."""
    checkpoint = Path(checkpoint)
    state = convert_research_state_dict(load_research_checkpoint(checkpoint), keep_deep_heads=keep_deep_heads)
    model = create_model(backbone, deep_supervision=keep_deep_heads)
    check_state_dict(model, state, str(checkpoint))
    model.load_state_dict(state)
    meta = default_metadata(backbone)
    meta["preprocessing"].update(input_size=[input_size, input_size], hu_window=list(hu_window))
    meta["z_norm"] = {"mode": "organ_extent"}
    meta["provenance"] = {
        "source": "research-import",
        "research_checkpoint": checkpoint.name,
        "research_checkpoint_sha256": hashlib.sha256(checkpoint.read_bytes()).hexdigest(),
        "dropped_blocks": list(UNUSED_RESEARCH_BLOCKS),
        "notes": "Weights from the SegMate research code; its training z_norm came from ground truth.",
    }
    return save_model(model, output, meta)
