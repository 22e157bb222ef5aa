"""``segment()``: a CT volume in, a labelmap on the input's exact grid out.

Slices stream through the network in batches: for each batch the 2.5D stacks are built from the
canonical (RAS+) view of the input, windowed, resized to the model's input size, run, turned into
probabilities, resized back to the input's in-plane size, thresholded and written as uint8 labels.
Only one batch of probabilities exists at any time, never the volume's 512 x 512 x N x 9 floats.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import SimpleITK as sitk
import torch
from torch import nn

from segmatecore.choices import PRECISIONS, Z_NORM_MODES
from segmatecore.data.geometry import from_canonical, to_canonical
from segmatecore.models.intended_use import intended_use
from segmatecore.data.io import LoadedVolume, load_volume
from segmatecore.runtime.feature_cache import DEFAULT_MAX_MB, FeatureCache
from segmatecore.models import Encoded, SegMateOutput
from segmatecore.runtime.optimize import DEFAULT, RUNTIMES, bf16_warning, prepare_for_inference
from segmatecore.data.organs import OrganSet, organ
from segmatecore.inference.postprocess import (clean_organs, labels_on_grid, labels_on_grid_from_logits, laterality_warnings, mask_thresholds,
                          postprocess_options, presence_gate_enabled, volumes_ml, z_smoothing_mm)
from segmatecore.data.preprocess import Preprocessing, normalize_hu, resize_slices, stack_25d
from segmatecore.inference.result import SegmentationCancelled, SegmentationResult
from segmatecore.inference.zpass import ZExtent, ZPassConfig, estimate_extent, volume_z_norm
from segmatecore.inference.zsmoothing import ZSmoother, sigmas_in_slices

log = logging.getLogger(__name__)

# Hand freed heap back to the OS every this many batches: glibc otherwise keeps the per-batch
# buffers (tens of MB each at 512 x 512) in a fragmented heap that grew by 1.2 GB over 1,000 slices.
TRIM_EVERY_BATCHES = 8
# On the CPU a larger batch is no faster, and at 512 x 512 FastViT-T12 needs about 430 MB for 4
# slices against 180 MB for 2 (docs/inference.md), so the CPU default stays small.
DEFAULT_BATCH = {"cuda": 16, "mps": 8, "cpu": 2}
# Devices on which every network call runs a full batch (the last slice repeated): see _Pipeline._fixed_rows.
FIXED_BATCH_DEVICES = ("cuda",)
ProgressCallback = Callable[[str, int, int], None]
# Receives (slice indices, [B, C, nx, ny] probabilities on the input's canonical grid, presence-gated)
# before the z smoothing and the thresholds; segmate calibrate fits both from them.
ProbabilitySink = Callable[[np.ndarray, torch.Tensor], None]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` (CUDA, then MPS, then CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``; clear errors otherwise."""
    if isinstance(device, torch.device):
        return device
    name = str(device).strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError("Device 'mps' was requested but Apple's MPS is not available here; use --device cpu.")
        return torch.device("mps")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(f"Device {name!r} was requested but no CUDA GPU is usable by this PyTorch; "
                             "use --device cpu or install a CUDA build of PyTorch.")
        index = name.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise ValueError(f"Device {name!r} does not exist: {torch.cuda.device_count()} CUDA device(s), "
                             f"cuda:0 to cuda:{torch.cuda.device_count() - 1}.")
        return torch.device(name)
    raise ValueError(f"Unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps.")


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """fp16 autocast on CUDA for ``auto``; bf16 when asked; otherwise full fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"Unknown precision {precision!r}; use {', '.join(PRECISIONS)}.")
    if precision == "bf16":
        return torch.bfloat16
    if precision == "auto" and device.type == "cuda":
        return torch.float16
    return None


def load_segmentation_model(model: str | os.PathLike | nn.Module | None) -> tuple[nn.Module, dict[str, Any]]:
    """The network to run and its ``model_info``: from a module, a .safetensors path, a catalogue id or None."""
    if isinstance(model, nn.Module):
        meta = getattr(model, "metadata", None)
        if not isinstance(meta, dict) or "preprocessing" not in meta or "organs" not in meta:
            raise ValueError("A model passed as a module needs a .metadata dict with 'organs' and 'preprocessing' "
                             "(as segmatecore.load_model sets it).")
        return model, _model_info(meta, None)
    from segmatecore.models.checkpoint import load_model

    if model is not None and Path(model).is_file():
        path = Path(model)
        entry = _catalogue_entry_of_file(path)
    else:
        from segmatecore.hub.catalogue import catalogue_entries, default_model_id, resolve_model

        path = Path(resolve_model(model))
        model_id = str(model) if model is not None else default_model_id()
        entry = next((e for e in catalogue_entries() if e["id"] == model_id), None)
    loaded = load_model(path, device="cpu")
    return loaded, _model_info(loaded.metadata, path, entry)


def ready_for_inference(net: nn.Module, device: torch.device, precision: str, owned: bool,
                        runtime: str = "torch") -> nn.Module:
    """Apply the benchmark-kept speed-ups (optimize.DEFAULT) to a SegMate network, once, for ``runtime``.

    A network the caller passed in (``owned`` False) is prepared on a copy, so their module is
    never folded under them; one prepared already (``segmate bench``, a second call, a network
    OpenVINO compiled) runs as is.
    """
    return prepare_for_inference(net, device, precision, optimizations=DEFAULT.with_(runtime=runtime),
                                 copy_model=not owned)[0]


# What load_segmentation_model() knows about a model from its file and the catalogue and segment()
# cannot know when it is given a prepared network (see add_model_facts).
MODEL_FILE_FACTS = ("id", "version", "path", "provenance", "backbone", "input_size", "intended_use", "clinical_use")


def add_model_facts(result: SegmentationResult, info: dict[str, Any]) -> SegmentationResult:
    """Give a result the model facts of ``load_segmentation_model``'s ``info`` (id, version, intended
    use...), for callers that prepare the network once and pass it to segment() for many cases
    (segmate predict, the Slicer worker): every output then says which model made it."""
    result.model_info.update({key: info[key] for key in MODEL_FILE_FACTS if key in info})
    return result


def _catalogue_entry_of_file(path: Path) -> dict[str, Any] | None:
    """The catalogue entry a model file is named after (a catalogue model's file is <id>.safetensors)."""
    from segmatecore.hub.catalogue import CatalogueError, catalogue_entries

    try:
        return next((e for e in catalogue_entries() if e["id"] == path.stem), None)
    except CatalogueError:
        return None


def _model_info(meta: dict[str, Any], path: Path | None, entry: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the outputs say about the model: catalogue id and version when known, else from its
    metadata; its intended use and whether it is for clinical use (:mod:`segmatecore.models.intended_use`)."""
    provenance = meta.get("provenance", {}) or {}
    entry = entry or {}
    return {"backbone": meta.get("backbone"),
            "id": entry.get("id") or meta.get("id") or provenance.get("id") or (path.stem if path else None),
            "version": entry.get("version") or meta.get("version") or provenance.get("version"),
            **intended_use(meta, entry),
            "input_size": list(meta["preprocessing"]["input_size"]), "provenance": provenance,
            "path": str(path) if path else None}


def _is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or (isinstance(exc, RuntimeError) and "out of memory" in str(exc))


@dataclass
class BatchRunner:
    """Runs a per-batch function over slice indices with SegMate's device policy.

    On an out-of-memory error it halves the batch and retries; at batch 1 on a GPU it moves the
    model to the CPU and carries on, each time with a warning. ``cancel`` is checked between batches.
    """

    model: nn.Module
    device: torch.device
    batch_size: int
    precision: str = "auto"
    cancel: Any = None
    progress: ProgressCallback | None = None
    warnings: list[str] = field(default_factory=list)

    def autocast(self) -> contextlib.AbstractContextManager:
        dtype = autocast_dtype(self.device, self.precision)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def check_cancel(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise SegmentationCancelled("Segmentation cancelled; no output was written.")

    def run(self, stage: str, t_all: np.ndarray, step: Callable[[np.ndarray], None], scale: int = 1) -> None:
        """Call ``step(t_batch)`` over ``t_all`` in batches of ``scale`` x the batch size, with
        progress, cancel and OOM fallback."""
        done, total, batches = 0, len(t_all), 0
        if self.progress:
            self.progress(stage, 0, total)
        while done < total:
            self.check_cancel()
            batch = t_all[done:done + self.batch_size * scale]
            try:
                step(batch)
            except Exception as exc:  # noqa: BLE001 - only out-of-memory errors are handled here
                if not _is_out_of_memory(exc):
                    raise
                self._recover_from_oom(exc)
                continue
            done += len(batch)
            batches += 1
            if batches % TRIM_EVERY_BATCHES == 0:
                release_freed_memory()
            if self.progress:
                self.progress(stage, done, total)

    def _recover_from_oom(self, exc: BaseException) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        if self.batch_size > 1:
            self.batch_size = max(1, self.batch_size // 2)
            self.warnings.append(f"out of memory on {self.device}; batch size lowered to {self.batch_size}.")
        elif self.device.type != "cpu":
            self.warnings.append(f"out of memory on {self.device} even with batch size 1; continuing on the CPU "
                                 "(slower).")
            self.device = torch.device("cpu")
            self.model.to(self.device)
            if self.precision == "auto":
                self.precision = "fp32"
        else:
            raise MemoryError(f"Out of memory on the CPU even with batch size 1 ({exc}); close other programs "
                              "or use a smaller model input size.") from exc
        log.warning(self.warnings[-1])


class _Pipeline:
    """The per-batch work of one segment() call, with its timings.

    With ``mirror`` (the channel permutation of a left/right flip), every batch also runs flipped
    and the two are averaged: test-time augmentation, twice the network time.
    With a ``cache`` and a network that has ``encode``/``decode`` (SegMateNet), slices the first
    pass encoded are only decoded again in the main pass (:mod:`segmatecore.runtime.feature_cache`).
    """

    def __init__(self, canonical: np.ndarray, pre: Preprocessing, runner: BatchRunner,
                 mirror: list[int] | None = None, cache: FeatureCache | None = None):
        self.canonical = canonical
        self.pre = pre
        self.runner = runner
        self.mirror = mirror
        model = runner.model
        self.splits = callable(getattr(model, "encode", None)) and callable(getattr(model, "decode", None))
        self.cache = cache if self.splits else None
        self.timings = {"preprocess": 0.0, "network": 0.0, "resample": 0.0}

    def _sync(self) -> None:
        if self.runner.device.type == "cuda":
            torch.cuda.synchronize(self.runner.device)

    def _input(self, t: np.ndarray) -> torch.Tensor:
        start = time.perf_counter()
        stacks = normalize_hu(stack_25d(self.canonical, t), self.pre)
        x = resize_slices(torch.from_numpy(stacks).to(self.runner.device), self.pre.input_size)
        self._sync()
        self.timings["preprocess"] += time.perf_counter() - start
        return x

    def _views(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [x] if self.mirror is None else [x, x.flip(-2)]

    def _combine(self, outputs: list[SegMateOutput]) -> SegMateOutput:
        return outputs[0] if len(outputs) == 1 else _average_with_mirror(outputs[0], outputs[1], self.mirror)

    def forward(self, t: np.ndarray, z_norm: np.ndarray | None, remember: bool = False,
                outputs: tuple[str, ...] = ("seg", "presence")) -> SegMateOutput:
        """The network's output for slices ``t``. ``remember``: keep their encodings for a later
        call (the first pass); otherwise encodings kept earlier are used once and released.
        ``outputs``: the heads a SegMateNet computes here, with or without the cache (a plain module
        computes all of them)."""
        z = None if z_norm is None else torch.from_numpy(np.asarray(z_norm, dtype=np.float32)).to(self.runner.device)
        if self.cache is None:
            x = self._input(t)
            start = time.perf_counter()
            with self.runner.autocast():
                if self.splits:  # only the heads asked for
                    out = self._decode([self._encode(view) for view in self._views(x)], z, outputs)
                else:
                    out = self._combine([self._whole(view, z) for view in self._views(x)])
        else:
            cached = [self.cache.get(i) for i in t]
            missing = np.asarray([i for i, c in zip(t, cached) if c is None], dtype=np.int64)
            x = self._input(missing) if missing.size else None
            start = time.perf_counter()
            with self.runner.autocast():
                fresh = [self._encode(view) for view in self._views(x)] if x is not None else []
                if remember and fresh:
                    self.cache.put(missing, fresh)
                out = self._decode(self._assemble(cached, fresh), z, outputs)
            if not remember:
                self.cache.release(t)
        self._sync()
        self.timings["network"] += time.perf_counter() - start
        return out

    def _decode(self, encoded: list[Encoded], z: torch.Tensor | None, outputs: tuple[str, ...]) -> SegMateOutput:
        """Decode in batches of the batch size: a main-pass batch may be twice that (see
        _main_pass_scale), so that its slices to encode fill one; the decoder's memory stays one batch's."""
        count, size = encoded[0].context.shape[0], self.runner.batch_size
        parts = []
        for a in range(0, count, size):
            rows = min(size, count - a)
            full = self._fixed_rows(rows)
            z_part = None if z is None else _pad_rows(z[a:a + size], full)
            parts.append(_first_rows(self._combine([self.runner.model.decode(_pad_encoded(view.rows(a, a + size), full),
                                                                             z_part, outputs)
                                                    for view in encoded]), rows))
        return parts[0] if len(parts) == 1 else _cat_outputs(parts)

    def _fixed_rows(self, rows: int) -> int:
        """How many slices a network call on ``rows`` slices runs: on a CUDA GPU always the batch size.

        A GPU prepares its convolution kernels once per batch shape in a process: on an H100 each
        new shape (the z pass's last, shorter batch, its one-slice refinement) cost 1.7-1.8 s of a
        12 s first run, against 0.1-0.2 s for a batch of 16. Repeating the last slice up to the batch
        size costs milliseconds there. A CPU has no such cost and would pay for the extra slices.
        """
        return max(rows, self.runner.batch_size) if self.runner.device.type in FIXED_BATCH_DEVICES else rows

    def _encode(self, x: torch.Tensor) -> Encoded:
        rows = x.shape[0]
        return self.runner.model.encode(_pad_rows(x, self._fixed_rows(rows))).rows(0, rows)

    def _whole(self, x: torch.Tensor, z: torch.Tensor | None) -> SegMateOutput:
        """A module without encode/decode, run on the whole batch."""
        rows = x.shape[0]
        full = self._fixed_rows(rows)
        return _first_rows(self.runner.model(_pad_rows(x, full), None if z is None else _pad_rows(z, full)), rows)

    def _assemble(self, cached: list[tuple[Encoded, ...] | None], fresh: list[Encoded]) -> list[Encoded]:
        """Each view's encodings in slice order, from the cache where kept and from ``fresh`` otherwise."""
        if all(c is None for c in cached):
            return fresh
        views = []
        for v in range(len(cached[0] if cached[0] is not None else fresh)):
            parts, row = [], 0
            for item in cached:
                if item is None:
                    parts.append(fresh[v].rows(row, row + 1))
                    row += 1
                else:
                    parts.append(item[v].to(self.runner.device))
            views.append(Encoded.cat(parts))
        return views


def _pad_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    """``x`` with its last row repeated up to ``rows`` rows (itself when it has them)."""
    extra = rows - x.shape[0]
    return x if extra <= 0 else torch.cat([x, x[-1:].expand(extra, *x.shape[1:])])


def _pad_encoded(encoded: Encoded, rows: int) -> Encoded:
    """:func:`_pad_rows` for every tensor of an encoded batch."""
    return Encoded(tuple(_pad_rows(s, rows) for s in encoded.skips), _pad_rows(encoded.context, rows), encoded.size)


def _first_rows(out: SegMateOutput, rows: int) -> SegMateOutput:
    """The outputs of the first ``rows`` slices of a (possibly padded) batch, as views."""
    def first(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t[:rows]
    return SegMateOutput(first(out.seg), first(out.boundary), first(out.presence), tuple(t[:rows] for t in out.deep))


def _cat_outputs(parts: list[SegMateOutput]) -> SegMateOutput:
    def cat(values: list[torch.Tensor | None]) -> torch.Tensor | None:
        return None if values[0] is None else torch.cat(values)
    return SegMateOutput(cat([p.seg for p in parts]), cat([p.boundary for p in parts]),
                         cat([p.presence for p in parts]), ())


def _average_with_mirror(out: SegMateOutput, flipped: SegMateOutput, mirror: list[int]) -> SegMateOutput:
    """Average a batch's masks and presence with those of its left/right mirror image (flipped back,
    left and right organs swapped), as probabilities; the masks go back as logits. Inference reads
    nothing else, so the boundary and deep outputs are the unflipped pass's."""
    index = torch.tensor(mirror, device=out.presence.device)
    seg = None
    if out.seg is not None:  # the first pass reads presence only
        mirrored = torch.sigmoid(flipped.seg.float().flip(-2).index_select(1, index))
        seg = torch.logit((torch.sigmoid(out.seg.float()) + mirrored) / 2, eps=1e-6)
    presence = (out.presence.float() + flipped.presence.float().index_select(1, index)) / 2
    return SegMateOutput(seg, out.boundary, presence, out.deep)


def choose_organs(organs: list[str] | None, meta: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The organ keys to segment in the model's channel order (default: its trained organs), and warnings."""
    model_organs = OrganSet.of(meta)
    trained = list(meta.get("trained_organs") or model_organs)
    if organs is None:
        return [k for k in model_organs if k in trained], []
    organs = [organs] if isinstance(organs, str) else list(organs)
    if not organs:
        raise ValueError(f"No organs asked for; give at least one of the model's organs: {', '.join(model_organs)}.")
    model_organs.check_subset(organs)
    warnings = [f"the model was not trained on {k}; its {organ(k).name} output is not meaningful."
                for k in organs if k not in trained]
    return [k for k in model_organs if k in organs], warnings


def _segment(image_or_path: sitk.Image | str | os.PathLike | LoadedVolume, model: str | os.PathLike | nn.Module | None = None,
            organs: list[str] | None = None, device: str | torch.device = "auto",
            progress: ProgressCallback | None = None, cancel: Any = None, *, z_norm: str = "auto",
            batch_size: int | None = None, precision: str = "auto", postprocess: Mapping[str, Any] | None = None,
            series_uid: str | None = None, skip_outside_extent: bool = False,
            z_pass: ZPassConfig | None = None, probability_sink: ProbabilitySink | None = None,
            tta: bool = False, feature_cache_mb: float = DEFAULT_MAX_MB, runtime: str = "torch") -> SegmentationResult:
    """Segment the organs of a CT volume; the labelmap has exactly the input's geometry.

    ``z_norm``: ``auto`` estimates the organ extent with a first pass (FiLM off, presence head;
    see :mod:`segmatecore.inference.zpass`), ``volume`` spreads z over the whole volume, ``none`` turns FiLM off.
    ``skip_outside_extent`` (auto only) leaves slices outside the estimated extent as background
    without running them. With ``auto``, the same first pass also gates each organ: its mask is kept
    only on the slices where the pass found it, and an organ it never found is left empty with a
    warning; ``postprocess={"presence_gate": False}`` turns that off. Each organ's mask is its
    probability, smoothed along z by the model's ``z_smoothing_mm`` (none when absent), above the
    model's calibrated threshold (0.5 when none); ``postprocess={"thresholds": {organ: value},
    "z_smoothing_mm": {organ: mm}}`` overrides them. ``tta`` also runs every slice mirrored left to
    right and averages the two (test-time augmentation; twice the network time, both passes).
    ``feature_cache_mb``: memory the first pass may use to keep its slices' encoder outputs for
    the main pass, which then only decodes them (:mod:`segmatecore.runtime.feature_cache`; 0 encodes them
    again). ``runtime``: ``torch`` (eager PyTorch), ``openvino`` (on the CPU, the network compiled by
    OpenVINO; converted once per model and cached, :mod:`segmatecore.runtime.openvino`) or ``auto``
    (OpenVINO where installed); a GPU always runs PyTorch. ``cancel`` is any object with
    ``is_set()`` (a threading.Event); when set, SegmentationCancelled is raised between batches and
    nothing is written.
    """
    t_start = time.perf_counter()
    if z_norm not in Z_NORM_MODES:
        raise ValueError(f"Unknown z_norm {z_norm!r}; use auto, volume or none.")
    autocast_dtype(torch.device("cpu"), precision)  # validates the name before any work
    if batch_size is not None and int(batch_size) < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    if feature_cache_mb < 0:
        raise ValueError(f"feature_cache_mb must be 0 (off) or more, got {feature_cache_mb}.")
    if runtime not in RUNTIMES:
        raise ValueError(f"Unknown runtime {runtime!r}; use {', '.join(RUNTIMES)}.")
    timings: dict[str, float] = {}

    loaded = load_volume(image_or_path, series_uid=series_uid)
    image, warnings = loaded.image, list(loaded.warnings)
    timings["read"] = loaded.read_seconds

    net, info = load_segmentation_model(model)
    meta = net.metadata
    keys, organ_warnings = choose_organs(organs, meta)
    warnings += organ_warnings
    options = postprocess_options(keys, postprocess)
    thresholds = mask_thresholds(keys, meta, postprocess)
    smoothing = z_smoothing_mm(keys, meta, postprocess)
    pre = Preprocessing.from_metadata(meta)
    dev = resolve_device(device)
    net = ready_for_inference(net, dev, precision, owned=not isinstance(model, nn.Module), runtime=runtime)
    slower = bf16_warning(dev, precision)
    if slower:
        warnings.append(slower)
    runner = BatchRunner(net, dev, int(batch_size or DEFAULT_BATCH.get(dev.type, 4)), precision, cancel, progress)
    runner.check_cancel()

    canonical, frame = to_canonical(image)
    nx, ny, nz = canonical.shape
    sigmas = sigmas_in_slices(smoothing, frame.spacing[2])
    model_organs = OrganSet.of(meta)
    model_channels = list(model_organs)
    cache = FeatureCache(int(feature_cache_mb * 2**20)) if z_norm == "auto" and feature_cache_mb > 0 else None
    pipeline = _Pipeline(canonical, pre, runner, model_organs.lateral_swap() if tta else None, cache)

    with torch.inference_mode():
        t0 = time.perf_counter()
        extent = None
        gate: dict[int, tuple[int, int] | None] = {}  # output column -> slices its organ may occupy
        if z_norm == "auto":
            trained_keys = list(meta.get("trained_organs") or model_channels)
            trained = [model_channels.index(k) for k in trained_keys]
            extent_keys = [k for k in meta["z_norm"].get("extent_organs", trained_keys) if k in trained_keys]
            extent = _estimate_extent(pipeline, runner, trained, nz, frame.spacing[2], z_pass or ZPassConfig(),
                                      [trained_keys.index(k) for k in extent_keys] or None)
            if not extent.found:
                warnings.append("z_norm: the first pass found no organ; z runs over the whole volume instead.")
            elif presence_gate_enabled(postprocess):
                ranges = dict(zip(trained, extent.organ_ranges))
                gate = {i: ranges[model_channels.index(k)] for i, k in enumerate(keys)
                        if model_channels.index(k) in ranges}
                warnings += [f"the first pass found no {organ(keys[i]).name} in this CT, so it is left empty "
                             "(presence gate; to keep the network's mask use --no-presence-gate, or untick "
                             "'Drop organs the first pass does not find' in Slicer)"
                             for i, r in gate.items() if r is None]
        timings["z_pass"] = time.perf_counter() - t0
        for k in pipeline.timings:
            pipeline.timings[k] = 0.0

        labels_zxy = np.zeros((nz, nx, ny), dtype=np.uint8)
        channels = torch.tensor([model_channels.index(k) for k in keys], dtype=torch.long)
        labels = {k: model_organs.label(k) for k in keys}
        label_values = torch.tensor(list(labels.values()), dtype=torch.uint8)
        threshold_values = torch.tensor(thresholds, dtype=torch.float32)
        t_run = np.arange(nz)
        if skip_outside_extent and extent is not None and extent.found:
            t_run = t_run[extent.contains(t_run)]
        if pipeline.cache is not None:
            pipeline.cache.keep_only(t_run)

        def z_values(t: np.ndarray) -> np.ndarray | None:
            if z_norm == "none":
                return None
            if extent is not None and extent.found:
                return extent.z_norm(t)
            return volume_z_norm(t, nz)

        def write_labels(t: np.ndarray, probabilities: torch.Tensor) -> None:
            labels_zxy[t] = labels_on_grid(probabilities, (nx, ny), label_values, threshold_values).cpu().numpy()

        # Smoothing along z commutes with the in-plane resize, so it runs on the smaller network grid.
        smoother = ZSmoother(sigmas, write_labels) if any(sigmas) else None

        def step(t: np.ndarray) -> None:
            seg = pipeline.forward(t, z_values(t)).seg
            start = time.perf_counter()
            size = runner.batch_size  # a main-pass batch may be twice that (feature cache): resample in parts
            for a in range(0, len(t), size):
                resample(t[a:a + size], seg[a:a + size])
            pipeline.timings["resample"] += time.perf_counter() - start

        def resample(t: np.ndarray, seg: torch.Tensor) -> None:
            logits = seg[:, channels.to(seg.device)]
            keep = _gate_mask(gate, t, len(keys)).to(logits.device) if gate else None
            if probability_sink is None and smoother is None:  # the usual case: no probability is needed
                labels_zxy[t] = labels_on_grid_from_logits(logits, (nx, ny), label_values, threshold_values,
                                                           keep).cpu().numpy()
                return
            probabilities = torch.sigmoid(logits.float())
            if keep is not None:
                probabilities = probabilities * keep[:, :, None, None]
            if probability_sink is not None:
                probability_sink(t, resize_slices(probabilities, (nx, ny)))
            if smoother is None:
                write_labels(t, probabilities)
            else:
                try:
                    smoother(t, probabilities)
                except Exception as exc:  # noqa: BLE001 - only out-of-memory errors are changed
                    if not _is_out_of_memory(exc):
                        raise
                    # The smoother has taken slices it can no longer hand over: retrying this batch
                    # smaller (the runner's answer to an out-of-memory error) would leave them empty.
                    raise MemoryError(f"Out of memory while writing the slices smoothed along z ({exc}); run "
                                      "again with a smaller batch size, or without z smoothing "
                                      "(--z-smoothing ORGAN=0).") from exc

        runner.run("network", t_run, step, scale=_main_pass_scale(pipeline.cache, t_run))
        if smoother is not None:
            start = time.perf_counter()
            smoother.finish()
            pipeline.timings["resample"] += time.perf_counter() - start
    timings.update(pipeline.timings)
    warnings += runner.warnings

    runner.check_cancel()
    release_freed_memory()  # the network's buffers and the emptied feature cache, before the post-processing's own
    t0 = time.perf_counter()
    if progress:
        progress("postprocess", 0, 1)
    canonical_labels = labels_zxy.transpose(1, 2, 0)
    clean_organs(canonical_labels, options, labels)
    volumes = volumes_ml(labels_zxy, labels, frame.spacing)
    timings["postprocess"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    labelmap = from_canonical(canonical_labels, frame, image)
    del labels_zxy, canonical_labels
    timings["resample"] += time.perf_counter() - t0
    t0 = time.perf_counter()
    warnings += laterality_warnings(labelmap, image, labels)
    timings["postprocess"] += time.perf_counter() - t0
    if progress:
        progress("postprocess", 1, 1)
    runner.check_cancel()

    z_range = {"mode": z_norm, "first": None, "last": None, "num_slices": nz}
    if z_norm == "volume" or (extent is not None and not extent.found):
        z_range.update(first=0, last=nz - 1, mode="volume")
    elif extent is not None:
        z_range.update(first=extent.first, last=extent.last, slices_run=extent.slices_run,
                       skipped_outside=bool(skip_outside_extent))
    info = {**info, "device": str(runner.device), "precision": precision, "batch_size": runner.batch_size,
            "runtime": getattr(net, "runtime", "torch"),
            "tta": bool(tta),
            "feature_cache": pipeline.cache.summary() if pipeline.cache is not None else None,
            "mask_thresholds": dict(zip(keys, thresholds)), "z_smoothing_mm": dict(zip(keys, smoothing))}
    timings["total"] = time.perf_counter() - t_start + (loaded.read_seconds if loaded is image_or_path else 0.0)
    return SegmentationResult(labelmap=labelmap, organs=keys, labels=labels, volumes_ml=volumes, timings=timings, z_range=z_range,
                              warnings=warnings, model_info=info, source=loaded.source,
                              dicom_dir=str(loaded.dicom_dir) if loaded.dicom_dir else None)


@functools.wraps(_segment)
def segment(*args: Any, **kwargs: Any) -> SegmentationResult:
    try:
        return _segment(*args, **kwargs)
    finally:
        release_freed_memory()


def release_freed_memory() -> None:
    """Hand freed heap back to the OS after a run (glibc keeps it otherwise).

    Without this, 30 runs in one process (Slicer, batch) grew RSS from 1.5 to 7.4 GiB although
    nothing leaked; with it, by 3 %.
    """
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, Windows, musl)
        pass


def _main_pass_scale(cache: FeatureCache | None, t_run: np.ndarray) -> int:
    """2 when the cache holds about half the slices or more: each main-pass batch then still
    encodes a full batch (bf16 on a CPU runs one slice at a time at half the speed of two), and
    decodes it in two; 1 otherwise."""
    if cache is None or not cache.entries:
        return 1
    uncached = sum(cache.get(t) is None for t in t_run)
    return 2 if 2 * uncached <= 1.2 * len(t_run) else 1


def _gate_mask(gate: dict[int, tuple[int, int] | None], t: np.ndarray, columns: int) -> torch.Tensor:
    """[len(t), columns] float: 0 where the first pass put the column's organ outside slice t."""
    keep = np.ones((len(t), columns), dtype=np.float32)
    for column, allowed in gate.items():
        keep[:, column] = 0.0 if allowed is None else ((t >= allowed[0]) & (t <= allowed[1]))
    return torch.from_numpy(keep)


def _estimate_extent(pipeline: _Pipeline, runner: BatchRunner, trained_channels: list[int], num_slices: int,
                     slice_mm: float, config: ZPassConfig, extent_columns: list[int] | None = None) -> ZExtent:
    """The label-free organ extent: a first pass with FiLM off, read from the presence head.

    ``extent_columns`` index ``trained_channels``: the organs whose extent z_norm spans."""
    channels = torch.tensor(trained_channels, dtype=torch.long)

    def presence(t: np.ndarray) -> np.ndarray:
        out = np.zeros((len(t), len(trained_channels)), dtype=np.float32)
        position = {int(v): i for i, v in enumerate(t)}

        def step(batch: np.ndarray) -> None:
            result = pipeline.forward(batch, None, remember=True, outputs=("presence",))
            values = torch.sigmoid(result.presence[:, channels.to(result.presence.device)].float()).cpu().numpy()
            out[[position[int(v)] for v in batch]] = values

        runner.run("z_pass", np.asarray(t), step)
        return out

    return estimate_extent(presence, num_slices, slice_mm, config, extent_columns)
