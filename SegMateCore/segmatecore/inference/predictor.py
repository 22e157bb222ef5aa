"""The predictor: a model prepared once for a device, precision and runtime, then run on many CTs.

In the style of nnU-Net's predictor::

    predictor = SegMatePredictor("segmate_hn_fastvit_t12", device="cpu")
    for path in cohort:
        result = predictor.segment(path, z="auto", tta=False)

``segmate predict``, ``segmate evaluate``, calibration and the Slicer worker all hold one.
A run streams slices through the network in batches: only one batch of probabilities exists at
a time, never the volume's. The labelmap has exactly the input's geometry.
"""
from __future__ import annotations

import os
import time
from typing import Any, Mapping

import numpy as np
import SimpleITK as sitk
import torch
from torch import nn

from segmatecore.choices import RUNTIMES
from segmatecore.data.geometry import from_canonical, to_canonical
from segmatecore.data.io import LoadedVolume, load_volume
from segmatecore.data.organs import OrganSet, organ
from segmatecore.data.preprocess import Preprocessing
from segmatecore.hub.loading import load_with_facts
from segmatecore.inference.batches import SliceInputs
from segmatecore.inference.gate import PresenceGate
from segmatecore.inference.labels import LabelWriter
from segmatecore.inference.passes import NetworkPasses
from segmatecore.inference.postprocess import (clean_organs, laterality_warnings, mask_thresholds, postprocess_options,
                                               presence_gate_enabled, volumes_ml, z_smoothing_mm)
from segmatecore.inference.result import SegmentationResult
from segmatecore.inference.runner import BatchRunner, ProgressCallback
from segmatecore.inference.zpass import ZPassConfig
from segmatecore.inference.zsmoothing import sigmas_in_slices
from segmatecore.inference.zstrategy import ZPlan, ZStrategy, trained_organs, z_strategy
from segmatecore.runtime.devices import COMPUTE_PRECISIONS, check_precision, default_batch_size, release_freed_memory, resolve_device
from segmatecore.runtime.feature_cache import DEFAULT_MAX_MB, FeatureCache
from segmatecore.runtime.network import prepare_network
from segmatecore.runtime.optimize import bf16_warning
from segmatecore.runtime.precision import resolve_precision

ImageInput = sitk.Image | str | os.PathLike | LoadedVolume


def choose_organs(organs: list[str] | str | None, meta: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The organ keys to segment in the model's channel order (default: its trained organs), and warnings."""
    model_organs = OrganSet.of(meta)
    trained = trained_organs(meta)
    if organs is None:
        return [k for k in model_organs if k in trained], []
    organs = [organs] if isinstance(organs, str) else list(organs)
    if not organs:
        raise ValueError(f"No organs asked for; give at least one of the model's organs: {', '.join(model_organs)}.")
    model_organs.check_subset(organs)
    warnings = [f"the model was not trained on {k}; its {organ(k).name} output is not meaningful."
                for k in organs if k not in trained]
    return [k for k in model_organs if k in organs], warnings


class SegMatePredictor:
    """A segmentation model ready to run.

    ``model``: a catalogue id, a .safetensors file, a loaded module (prepared on a copy, so the
    caller's module is never changed) or None for the default model. ``precision``: ``auto`` (the
    fastest precision the model's record allows here, :mod:`segmatecore.runtime.precision`), ``fp32``
    or ``bf16``. ``runtime``: ``torch``,
    ``openvino`` (CPU) or ``auto`` (OpenVINO where installed). ``feature_cache_mb``: memory the
    first pass may use to keep its encodings for the main pass (0: encode again).
    """

    def __init__(self, model: str | os.PathLike | nn.Module | None = None, *, device: str | torch.device = "auto",
                 precision: str = "auto", runtime: str = "torch", batch_size: int | None = None,
                 feature_cache_mb: float = DEFAULT_MAX_MB):
        check_precision(precision, COMPUTE_PRECISIONS)
        if runtime not in RUNTIMES:
            raise ValueError(f"Unknown runtime {runtime!r}; use {', '.join(RUNTIMES)}.")
        if batch_size is not None and int(batch_size) < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
        if feature_cache_mb < 0:
            raise ValueError(f"feature_cache_mb must be 0 (off) or more, got {feature_cache_mb}.")
        self.device = resolve_device(device)
        self.precision = precision
        net, self.model_info = load_with_facts(model)
        self.metadata: dict[str, Any] = net.metadata
        self.compute_precision = resolve_precision(precision, self.device, self.metadata)
        self.network = prepare_network(net, self.device, self.compute_precision, runtime,
                                       copy=isinstance(model, nn.Module))
        self.batch_size = int(batch_size or default_batch_size(self.device))
        self.feature_cache_mb = float(feature_cache_mb)
        slower = bf16_warning(self.device, precision)
        self.notices = [*self.network.notices, *([slower] if slower else [])]

    @property
    def organs(self) -> OrganSet:
        return OrganSet.of(self.metadata)

    def segment(self, image: ImageInput, *, organs: list[str] | str | None = None, z: str | ZStrategy = "auto",
                tta: bool = False, postprocess: Mapping[str, Any] | None = None, skip_outside_extent: bool = False,
                z_pass: ZPassConfig | None = None, series_uid: str | None = None,
                progress: ProgressCallback | None = None, cancel: Any = None) -> SegmentationResult:
        """Segment the organs of a CT; the labelmap has exactly the input's geometry.

        ``z``: a :mod:`~segmatecore.inference.zstrategy` (``auto``, ``volume``, ``none`` or a
        GroundTruthZ). With ``auto`` the first pass also gates each organ (see
        :mod:`~segmatecore.inference.gate`; ``postprocess={"presence_gate": False}`` turns it off),
        and ``skip_outside_extent`` leaves slices outside the extent as background without running
        them. ``postprocess={"thresholds": {organ: p}, "z_smoothing_mm": {organ: mm}}`` overrides
        the model's calibrated values. ``tta`` also runs every slice mirrored and averages the two.
        ``cancel``: any object with ``is_set()``; when set, SegmentationCancelled is raised between
        batches and nothing is returned.
        """
        try:
            return self._segment(image, organs, z_strategy(z, z_pass), tta, postprocess, skip_outside_extent,
                                 series_uid, progress, cancel)
        finally:
            release_freed_memory()

    def _segment(self, image, organs, strategy, tta, postprocess, skip_outside_extent, series_uid, progress,
                 cancel) -> SegmentationResult:
        t_start = time.perf_counter()
        loaded = load_volume(image, series_uid=series_uid)
        keys, warnings = choose_organs(organs, self.metadata)
        warnings = [*loaded.warnings, *self.notices, *warnings]
        thresholds = mask_thresholds(keys, self.metadata, postprocess)
        smoothing = z_smoothing_mm(keys, self.metadata, postprocess)
        run = _VolumeRun(self, loaded.image, strategy, tta, progress, cancel)
        run.runner.check_cancel()
        plan, gate = run.plan(keys, postprocess)
        warnings += plan.warnings + (gate.warnings(keys) if gate else [])
        writer = LabelWriter(run.canonical.shape, [self.organs.label(k) for k in keys], thresholds,
                             sigmas_in_slices(smoothing, run.frame.spacing[2]))
        run.main_pass(keys, plan, gate, writer, skip_outside_extent)
        labelmap, volumes, more = run.finish(writer, keys, postprocess, loaded.image, progress)
        info = {**self.model_info, "device": str(run.runner.network.device), "precision": self.precision,
                "compute_precision": run.runner.network.precision,
                "batch_size": run.runner.batch_size, "runtime": self.network.runtime, "tta": bool(tta),
                "feature_cache": run.passes.cache.summary() if run.passes.cache is not None else None,
                "mask_thresholds": dict(zip(keys, thresholds)), "z_smoothing_mm": dict(zip(keys, smoothing))}
        timings = {"read": loaded.read_seconds, **run.timings}
        timings["total"] = time.perf_counter() - t_start + (loaded.read_seconds if loaded is image else 0.0)
        return SegmentationResult(labelmap=labelmap, organs=keys, labels={k: self.organs.label(k) for k in keys},
                                  volumes_ml=volumes, timings=timings,
                                  z_range=plan.report(skip_outside_extent and plan.mode == "auto"),
                                  warnings=warnings + run.runner.warnings + more, model_info=info,
                                  source=loaded.source, dicom_dir=str(loaded.dicom_dir) if loaded.dicom_dir else None)

    def stream(self, image: ImageInput, consumer: Any, *, organs: list[str] | None = None,
               z: str | ZStrategy = "auto", tta: bool = False, postprocess: Mapping[str, Any] | None = None) -> ZPlan:
        """Run the passes of :meth:`segment` and hand each main-pass batch to ``consumer(t, logits,
        keep)`` (:mod:`segmatecore.inference.labels`) instead of writing labels; returns the z plan."""
        try:
            keys, _ = choose_organs(organs, self.metadata)
            run = _VolumeRun(self, load_volume(image).image, z_strategy(z), tta, None, None)
            plan, gate = run.plan(keys, postprocess)
            run.main_pass(keys, plan, gate, consumer, False)
            return plan
        finally:
            release_freed_memory()


class _VolumeRun:
    """The state of one volume's run: its canonical array, the passes and the timings."""

    def __init__(self, predictor: SegMatePredictor, image: sitk.Image, strategy: ZStrategy, tta: bool,
                 progress: ProgressCallback | None, cancel: Any):
        self.predictor = predictor
        self.strategy = strategy
        self.canonical, self.frame = to_canonical(image)
        network = predictor.network
        self.runner = BatchRunner(network, predictor.batch_size, cancel, progress)
        self.inputs = SliceInputs(self.canonical, Preprocessing.from_metadata(predictor.metadata), network.device)
        use_cache = strategy.needs_first_pass and predictor.feature_cache_mb > 0
        self.cache = FeatureCache(int(predictor.feature_cache_mb * 2**20)) if use_cache else None
        mirror = predictor.organs.lateral_swap() if tta else None
        self.passes = NetworkPasses(network, self.inputs, self.runner, mirror, self.cache)
        self.timings: dict[str, float] = {}

    def plan(self, keys: list[str], postprocess: Mapping[str, Any] | None) -> tuple[ZPlan, PresenceGate | None]:
        """The z plan (running the first pass when the strategy needs it) and the presence gate."""
        start = time.perf_counter()
        with torch.inference_mode():
            first_pass = self.passes.presence if self.strategy.needs_first_pass else None
            plan = self.strategy.plan(self.canonical.shape[2], self.frame.spacing[2], self.predictor.metadata,
                                      first_pass)
        gate = None
        if plan.mode == "auto" and plan.extent is not None and plan.extent.found and presence_gate_enabled(postprocess):
            gate = PresenceGate.from_extent(plan.extent, keys, self.predictor.metadata)
        self.timings["z_pass"] = time.perf_counter() - start
        self.inputs.seconds = self.passes.network_seconds = 0.0
        return plan, gate

    def main_pass(self, keys: list[str], plan: ZPlan, gate: PresenceGate | None, consumer: Any,
                  skip_outside_extent: bool) -> None:
        """Every slice (or those inside the extent) through the network, each batch to ``consumer``."""
        channels = torch.tensor([list(self.predictor.organs).index(k) for k in keys], dtype=torch.long)
        t_run = np.arange(self.canonical.shape[2])
        if skip_outside_extent and plan.mode == "auto" and plan.extent is not None and plan.extent.found:
            t_run = t_run[plan.extent.contains(t_run)]
        if self.cache is not None:
            self.cache.keep_only(t_run)
        resample = 0.0

        def step(t: np.ndarray) -> None:
            nonlocal resample
            seg = self.passes.outputs(t, plan.z(t)).seg
            start, size = time.perf_counter(), self.runner.batch_size
            for a in range(0, len(t), size):  # a main-pass batch may be twice the batch size: resample in parts
                part = seg[a:a + size]
                consumer(t[a:a + size], part[:, channels.to(part.device)], gate.mask(t[a:a + size]) if gate else None)
            resample += time.perf_counter() - start

        with torch.inference_mode():
            self.runner.run("network", t_run, step, scale=self.passes.main_pass_scale(t_run))
            start = time.perf_counter()
            self.labels = consumer.finish()
            resample += time.perf_counter() - start
        self.timings.update(preprocess=self.inputs.seconds, network=self.passes.network_seconds, resample=resample)

    def finish(self, writer: LabelWriter, keys: list[str], postprocess: Mapping[str, Any] | None,
               image: sitk.Image, progress: ProgressCallback | None) -> tuple[sitk.Image, dict[str, float], list[str]]:
        """Clean-up of the labels, their volumes, the labelmap on the input's grid, laterality warnings."""
        self.runner.check_cancel()
        release_freed_memory()  # the network's buffers and the emptied feature cache, before the clean-up's own
        legend = {k: self.predictor.organs.label(k) for k in keys}
        start = time.perf_counter()
        if progress:
            progress("postprocess", 0, 1)
        clean_organs(self.labels, postprocess_options(keys, postprocess), legend)
        volumes = volumes_ml(writer.labels_zxy, legend, self.frame.spacing)
        self.timings["postprocess"] = time.perf_counter() - start
        start = time.perf_counter()
        labelmap = from_canonical(self.labels, self.frame, image)
        self.labels = None
        self.timings["resample"] += time.perf_counter() - start
        start = time.perf_counter()
        warnings = laterality_warnings(labelmap, image, legend)
        self.timings["postprocess"] += time.perf_counter() - start
        if progress:
            progress("postprocess", 1, 1)
        self.runner.check_cancel()
        return labelmap, volumes, warnings


def segment(image: ImageInput, model: str | os.PathLike | nn.Module | None = None,
            organs: list[str] | str | None = None, device: str | torch.device = "auto",
            progress: ProgressCallback | None = None, cancel: Any = None, *, z_norm: str | ZStrategy = "auto",
            batch_size: int | None = None, precision: str = "auto", postprocess: Mapping[str, Any] | None = None,
            series_uid: str | None = None, skip_outside_extent: bool = False, z_pass: ZPassConfig | None = None,
            tta: bool = False, feature_cache_mb: float = DEFAULT_MAX_MB, runtime: str = "torch") -> SegmentationResult:
    """Segment one CT with a predictor made for it: see :class:`SegMatePredictor` and its ``segment``.

    For many CTs, make one :class:`SegMatePredictor` and call its ``segment``: the model is then
    loaded and prepared once.
    """
    predictor = SegMatePredictor(model, device=device, precision=precision, runtime=runtime, batch_size=batch_size,
                                 feature_cache_mb=feature_cache_mb)
    return predictor.segment(image, organs=organs, z=z_norm, tta=tta, postprocess=postprocess,
                             skip_outside_extent=skip_outside_extent, z_pass=z_pass, series_uid=series_uid,
                             progress=progress, cancel=cancel)
