"""SegMate weight files: safetensors tensors plus JSON metadata in the safetensors header.

Nothing here ever unpickles: a file is refused unless it parses as safetensors, carries our
metadata, and its tensors fit the architecture the metadata names.
"""
from __future__ import annotations

import json
import math
import struct
from copy import deepcopy
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from segmatecore.data.atomic import atomic_path
from segmatecore.models import SegMateNet, SegMateWidths, backbone_spec, create_model
from segmatecore.data.organs import PAPER_ORGANS, known_keys
from segmatecore.choices import MAX_Z_SMOOTHING_MM

FORMAT_VERSION = 1
ARCHITECTURE = "SegMateNet"
METADATA_KEY = "segmate"
REQUIRED_KEYS = ("format_version", "architecture", "backbone", "organs", "preprocessing", "z_norm",
                 "provenance")
PREPROCESSING_KEYS = ("hu_window", "normalize", "input_size", "slice_convention")


class CheckpointError(ValueError):
    """A weight file that SegMate refuses to load; the message says why and what to do."""


def default_metadata(backbone: str, **overrides: Any) -> dict[str, Any]:
    """Metadata for a model trained with the paper's defaults (its nine organs and widths); override
    what differs.

    ``trained_organs`` follows ``organs`` unless it is given too.
    """
    meta: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "architecture": ARCHITECTURE,
        "backbone": backbone_spec(backbone).timm_name,
        "deep_supervision": False,
        "reparameterized": False,
        "widths": SegMateWidths().to_metadata(),
        "organs": list(PAPER_ORGANS),
        "preprocessing": {
            "hu_window": [-1000.0, 400.0],
            "normalize": {"mean": 0.5, "std": 0.5},
            "input_size": [512, 512],
            "slice_convention": "RAS+ closest canonical; axial slice = array[:, :, k]; 2.5D (k-1, k, k+1) edge-replicated",
        },
        "z_norm": {"mode": "organ_extent"},
        "provenance": {"source": "untrained"},
    }
    meta.update(overrides)
    meta.setdefault("trained_organs", list(meta["organs"]))
    return meta


def validate_metadata(meta: Any, where: str = "metadata") -> dict[str, Any]:
    """Check the metadata describes an architecture we can build; raise CheckpointError if not."""
    if not isinstance(meta, dict):
        raise CheckpointError(f"{where}: SegMate metadata must be a JSON object.")
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise CheckpointError(f"{where}: SegMate metadata lacks {', '.join(missing)}. "
                              "Save weights with segmatecore.save_model or segmate import-research.")
    if meta["architecture"] != ARCHITECTURE:
        raise CheckpointError(f"{where}: unknown architecture {meta['architecture']!r}; expected {ARCHITECTURE!r}.")
    if meta["format_version"] != FORMAT_VERSION:
        raise CheckpointError(f"{where}: format version {meta['format_version']!r} is not supported "
                              f"(this SegMate reads version {FORMAT_VERSION}); update SegMate.")
    try:
        backbone_spec(str(meta["backbone"]))
    except ValueError as exc:
        raise CheckpointError(f"{where}: {exc}") from None
    try:
        SegMateWidths.from_metadata(meta.get("widths"))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{where}: {exc}") from None
    organs, trained = meta["organs"], meta.get("trained_organs", [])
    for name, keys in (("organs", organs), ("trained_organs", trained)):
        if not isinstance(keys, list) or not all(isinstance(o, str) for o in keys) or len(set(keys)) != len(keys):
            raise CheckpointError(f"{where}: '{name}' must be a list of distinct organ keys.")
    if not organs:
        raise CheckpointError(f"{where}: 'organs' must be a non-empty list of organ keys.")
    unknown = [o for o in organs + trained if o not in known_keys()]
    if unknown:
        raise CheckpointError(f"{where}: unknown organ keys {unknown}; known: {known_keys()}.")
    untrained = [o for o in trained if o not in organs]
    if untrained:
        raise CheckpointError(f"{where}: trained_organs {untrained} are not among the model's organs {organs}.")
    pre = meta["preprocessing"]
    if not isinstance(pre, dict) or any(k not in pre for k in PREPROCESSING_KEYS):
        raise CheckpointError(f"{where}: 'preprocessing' must give {', '.join(PREPROCESSING_KEYS)}.")
    size = pre["input_size"]
    if (not isinstance(size, list) or len(size) != 2 or not all(isinstance(s, int) and s > 0 and s % 32 == 0
                                                              for s in size)):
        raise CheckpointError(f"{where}: input_size {size!r} must be two positive multiples of 32.")
    window, norm = pre["hu_window"], pre["normalize"]
    if not (isinstance(window, list) and len(window) == 2 and all(_is_number(v) for v in window)
            and window[0] < window[1]):
        raise CheckpointError(f"{where}: hu_window {window!r} must be [low, high] with low < high.")
    if not (isinstance(norm, dict) and _is_number(norm.get("mean")) and _is_number(norm.get("std"))
            and norm["std"] > 0):
        raise CheckpointError(f"{where}: normalize {norm!r} must be {{\"mean\": number, \"std\": number > 0}}.")
    if not isinstance(meta["z_norm"], dict) or meta["z_norm"].get("mode") not in ("organ_extent", "volume", "none"):
        raise CheckpointError(f"{where}: z_norm mode must be organ_extent, volume or none.")
    extent = meta["z_norm"].get("extent_organs", organs)
    if not (isinstance(extent, list) and extent and all(k in organs for k in extent)):
        raise CheckpointError(f"{where}: z_norm extent_organs {extent!r} must be a non-empty list of the model's organs.")
    thresholds = meta.get("mask_thresholds", {})
    if not (isinstance(thresholds, dict) and all(k in organs and _is_number(v) and 0 < v < 1
                                                 for k, v in thresholds.items())):
        raise CheckpointError(f"{where}: mask_thresholds {thresholds!r} must map organs of the model to "
                              "numbers strictly between 0 and 1.")
    smoothing = meta.get("z_smoothing_mm", {})
    if not (isinstance(smoothing, dict) and all(k in organs and _is_number(v) and 0 <= v <= MAX_Z_SMOOTHING_MM
                                                for k, v in smoothing.items())):
        raise CheckpointError(f"{where}: z_smoothing_mm {smoothing!r} must map organs of the model to "
                              f"millimetres between 0 and {MAX_Z_SMOOTHING_MM:g}.")
    return meta


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _read_header(path: Path) -> dict[str, Any]:
    """Parse the safetensors header ourselves first, so the error names the real problem."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(9)
        if len(head) < 9:
            raise CheckpointError(f"{path} is not a safetensors file (only {size} bytes).")
        if head[8:9] != b"{":  # a safetensors header is JSON right after its 8-byte length
            if head[:2] == b"PK" or head[:1] == b"\x80":
                raise CheckpointError(f"{path} looks like a pickled PyTorch checkpoint (.pth), which SegMate never "
                                      "loads. Convert it with: segmate import-research CKPT.pth --backbone NAME "
                                      "-o OUT.safetensors")
            raise CheckpointError(f"{path} is not a safetensors file. SegMate models are .safetensors files "
                                  "from the model catalogue or segmatecore.save_model.")
        (n,) = struct.unpack("<Q", head[:8])
        if n > size - 8 or n > 100_000_000:
            raise CheckpointError(f"{path} is not a safetensors file, or it is truncated (header claims "
                                  f"{n} bytes, file has {size}). Download or copy it again.")
        fh.seek(8)
        raw = fh.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"{path} is not a safetensors file (its header is not JSON).") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} is not a safetensors file (its header is not a JSON object).")
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    for key, entry in tensors.items():
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int and o >= 0 for o in offsets)):
            raise CheckpointError(f"{path} is not a safetensors file (tensor {key[:80]!r} has no valid data_offsets).")
    metadata = header.get("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(f"{path} is not a safetensors file (its __metadata__ is not a map of strings).")
    end = max((v["data_offsets"][1] for v in tensors.values()), default=0)
    if 8 + n + end > size:
        raise CheckpointError(f"{path} is truncated: {size} bytes, tensors need {8 + n + end}. Download or copy it again.")
    return header


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The validated SegMate metadata of a weight file, without loading its tensors."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Model file {path} does not exist.")
    header = _read_header(path)
    raw = (header.get("__metadata__") or {}).get(METADATA_KEY)
    if raw is None:
        raise CheckpointError(f"{path} has no SegMate metadata: it is a safetensors file, but not a SegMate model. "
                              "Research checkpoints are converted with segmate import-research.")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError:
        raise CheckpointError(f"{path}: the SegMate metadata is not valid JSON.") from None
    return validate_metadata(meta, str(path))


def model_from_metadata(meta: dict[str, Any]) -> SegMateNet:
    """An untrained SegMateNet with the architecture the metadata describes, carrying that metadata.

    A file without widths was made with the paper's.
    """
    try:
        model = create_model(meta["backbone"], deep_supervision=bool(meta.get("deep_supervision", False)),
                             num_classes=len(meta["organs"]), widths=SegMateWidths.from_metadata(meta.get("widths")),
                             metadata=meta)
    except ValueError as exc:
        raise CheckpointError(f"cannot build the model the metadata describes: {exc}") from None
    if meta.get("reparameterized"):
        model.reparameterize()
    return model


def check_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Refuse tensors whose names or shapes do not fit ``model``, listing the first few."""
    expected = model.state_dict()
    problems = []
    for k in expected:
        if k not in state:
            problems.append(f"missing {k}")
        elif tuple(state[k].shape) != tuple(expected[k].shape):
            problems.append(f"{k} has shape {tuple(state[k].shape)}, expected {tuple(expected[k].shape)}")
    problems += [f"unexpected {k}" for k in state if k not in expected]
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise CheckpointError(f"{where}: the tensors do not fit a {model.backbone} SegMateNet with "
                              f"{model.num_classes} organs ({len(problems)} problems): {shown}.")


def load_model(path: str | Path, device: str | torch.device = "cpu", reparameterize: bool = True) -> SegMateNet:
    """Load a SegMate safetensors model in eval mode, with ``.metadata``.

    FastViT branches are re-parameterised for inference unless ``reparameterize=False``.
    """
    path = Path(path)
    meta = read_metadata(path)
    model = model_from_metadata(meta)
    try:
        state = load_file(str(path), device="cpu")
    except SafetensorError as exc:
        raise CheckpointError(f"{path} could not be read as safetensors: {exc}") from None
    check_state_dict(model, state, str(path))
    expected = model.state_dict()  # once: building it per tensor made loading quadratic
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})
    model.eval()
    if reparameterize:
        model.reparameterize()
    return model.to(device)


def save_model(model: SegMateNet, path: str | Path, metadata: dict[str, Any] | None = None,
               dtype: torch.dtype | None = None) -> Path:
    """Write ``model`` with ``metadata`` (defaults filled in) atomically to ``path``.

    ``dtype=torch.float16`` stores floating tensors in half precision (they load back as float32).
    """
    path = Path(path)
    meta = default_metadata(model.backbone)
    meta.update(deepcopy(metadata or model.metadata or {}))
    meta.update(architecture=ARCHITECTURE, format_version=FORMAT_VERSION,
                backbone=backbone_spec(model.backbone).timm_name,
                deep_supervision=bool(len(model.deep_heads)), reparameterized=model.is_reparameterized,
                widths=model.widths.to_metadata())
    if len(meta["organs"]) != model.num_classes:
        raise CheckpointError(f"metadata lists {len(meta['organs'])} organs but the model predicts {model.num_classes}.")
    validate_metadata(meta)
    state = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().cpu().contiguous()
             for k, v in model.state_dict().items()}
    return _write_atomically(state, meta, path)


def update_metadata(path: str | Path, update: Callable[[dict[str, Any]], None],
                    output: str | Path | None = None) -> dict[str, Any]:
    """Rewrite a model file's metadata (``update`` changes it in place); the tensors are copied as
    stored, same names, dtypes and values. Written atomically to ``output`` (default: ``path``)."""
    path = Path(path)
    meta = read_metadata(path)
    update(meta)
    validate_metadata(meta, str(output or path))
    try:
        state = load_file(str(path), device="cpu")
    except SafetensorError as exc:
        raise CheckpointError(f"{path} could not be read as safetensors: {exc}") from None
    _write_atomically(state, meta, Path(output or path))
    return meta


def _write_atomically(state: dict[str, torch.Tensor], meta: dict[str, Any], path: Path) -> Path:
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={METADATA_KEY: json.dumps(meta, sort_keys=True)})
    return path
