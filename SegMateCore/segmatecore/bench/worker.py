"""The process that measures one row: ``python -m segmatecore.bench.worker --worker JOB.json``.

Each row runs in a fresh interpreter so that peak memory figures do not mix. The protocol: the
parent writes ``job.json`` (the :class:`~segmatecore.bench.configs.Config`, the CT, the model file,
the output folder) and this process writes ``result.json`` beside it; network-alone rows also leave
their masks (``masks.npy``) and end-to-end rows their labels (``labels.nii.gz``) in the folder for
the Dice check (:mod:`segmatecore.bench.jobs`).
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

from segmatecore.bench.configs import SEED, Config
from segmatecore.bench.memory import PeakMemory, kernel_peak_mb, machine_cpu_seconds, steal_percent
from segmatecore.runtime.optimize import Optimizations


def _grad_context(mode: str):
    return torch.inference_mode() if mode == "inference_mode" else torch.no_grad()


def _network_worker(job: dict[str, Any], config: Config, device: torch.device) -> dict[str, Any]:
    from segmatecore.models.checkpoint import load_model
    from segmatecore.data.geometry import to_canonical
    from segmatecore.runtime.optimize import compute_dtype, prepare_for_inference
    from segmatecore.data.preprocess import Preprocessing, normalize_hu, resize_slices, stack_25d
    from segmatecore.inference.zpass import volume_z_norm

    opts = Optimizations(**config.optimizations)
    image = sitk.ReadImage(job["ct"])
    canonical, _ = to_canonical(image)  # a view into image's buffer: image must stay alive while it is used
    depth = canonical.shape[2]
    t_all = np.linspace(0, depth - 1, job["network_slices"]).round().astype(int)
    row: dict[str, Any] = {}
    with PeakMemory() as memory:
        t0 = time.perf_counter()
        model = load_model(job["model"], device="cpu", reparameterize=False)
        pre = Preprocessing.from_metadata(model.metadata)
        net, autocast = prepare_for_inference(model, device, config.precision, optimizations=opts, copy_model=False)
        row["s_prepare"] = time.perf_counter() - t0
        batch = job["batch_size"]
        masks, elapsed, cpu = [], 0.0, 0.0
        with _grad_context(config.grad_mode), torch.autocast(device.type, dtype=autocast or torch.float32,
                                                             enabled=autocast is not None):
            for i in range(-batch, len(t_all), batch):  # the first batch warms up and is not timed
                t = t_all[max(i, 0):max(i, 0) + batch]
                x = resize_slices(torch.from_numpy(normalize_hu(stack_25d(canonical, t), pre)), pre.input_size)
                x, z = x.to(device), torch.from_numpy(volume_z_norm(t, depth)).to(device)
                _sync(device)
                start, cpu_start = time.perf_counter(), time.process_time()
                out = net(x, z)
                _sync(device)
                if i >= 0:
                    elapsed += time.perf_counter() - start
                    cpu += time.process_time() - cpu_start
                    masks.append((out.seg.float() > 0).cpu().numpy())
    np.save(Path(job["outdir"]) / "masks.npy", np.packbits(np.concatenate(masks), axis=-1))
    row.update(s_network=elapsed / len(t_all) * depth, s_per_slice=elapsed / len(t_all), slices_timed=len(t_all),
               cpu_s_network=cpu / len(t_all) * depth,
               peak_rss_mb=memory.peak_mb, peak_private_mb=memory.peak_private_mb, dtype=str(compute_dtype(device, config.precision, opts)).split(".")[-1],
               runtime=type(net).__name__)
    return row


def _end_to_end_worker(job: dict[str, Any], config: Config, device: torch.device) -> dict[str, Any]:
    from segmatecore.models.checkpoint import load_model
    from segmatecore.export.outputs import write_outputs
    from segmatecore.inference.predictor import segment
    from segmatecore.runtime.optimize import compute_dtype, prepare_for_inference

    opts = Optimizations(**config.optimizations)
    with PeakMemory() as memory:
        t0, cpu0 = time.perf_counter(), time.process_time()
        # as segment() does with a model file: only the prepared network stays (OpenVINO's replaces the module)
        net, _ = prepare_for_inference(load_model(job["model"], device="cpu", reparameterize=opts.reparameterize),
                                       device, config.precision, optimizations=opts, copy_model=False)
        s_prepare = time.perf_counter() - t0
        result = segment(job["ct"], model=net, device=str(device), precision=config.precision,
                         batch_size=job["batch_size"], skip_outside_extent=config.skip_outside_extent,
                         feature_cache_mb=config.feature_cache_mb)
        write_outputs(result, job["outdir"], formats=("nifti",))
        total, cpu_total = time.perf_counter() - t0, time.process_time() - cpu0
    timings = {k: round(v, 3) for k, v in result.timings.items()}
    return {"s_per_volume": total, "s_network": result.timings["network"], "s_prepare": s_prepare,
            "cpu_s_per_volume": cpu_total,
            "timings": timings, "z_range": result.z_range, "peak_rss_mb": memory.peak_mb,
            "feature_cache": result.model_info.get("feature_cache"),
            "peak_private_mb": memory.peak_private_mb,
            "dtype": str(compute_dtype(device, config.precision, opts)).split(".")[-1], "runtime": type(net).__name__}


def _peer_worker(job: dict[str, Any], config: Config, device: torch.device) -> dict[str, Any]:
    """A peer on the whole CT, from reading the CT to the written labels (random weights, fixed seed)."""
    from segmatecore.export.nifti import write_labels_nifti
    from segmatecore.bench.peers import peer_spec

    spec = peer_spec(config.peer)
    torch.manual_seed(SEED)
    with PeakMemory() as memory:
        t0, cpu0 = time.perf_counter(), time.process_time()
        image = sitk.ReadImage(job["ct"])
        read = time.perf_counter() - t0
        network = spec.build(spec.in_channels, spec.classes).to(device)
        result = spec.run(image, network, quick=job["quick"], batch_size=job["batch_size"],
                          autocast=_peer_autocast(device))
        t1 = time.perf_counter()
        write_labels_nifti(result.labelmap, Path(job["outdir"]) / "labels.nii.gz")
        total, cpu_total = time.perf_counter() - t0, time.process_time() - cpu0
    timings = {"read": read, **result.timings, "write": time.perf_counter() - t1, "total": total}
    return {"s_per_volume": total, "s_network": result.timings["network"], "patches": result.patches,
            "cpu_s_per_volume": cpu_total,
            "peer_grid": list(result.grid), "timings": {k: round(v, 3) for k, v in timings.items()},
            "peak_rss_mb": memory.peak_mb, "peak_private_mb": memory.peak_private_mb,
            "dtype": str(_peer_autocast(device) or torch.float32).split(".")[-1], "runtime": type(network).__name__}


def _peer_autocast(device: torch.device) -> torch.dtype | None:
    """The peers' precision, nnU-Net's own: fp16 autocast on a CUDA GPU, fp32 elsewhere."""
    return torch.float16 if device.type == "cuda" else None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_worker(job_path: str | os.PathLike) -> int:
    """Run one configuration (in this fresh process) and write its measurements beside the job file."""
    job = json.loads(Path(job_path).read_text())
    config = Config(**job["config"])
    device = torch.device(job["device"])
    threads = config.optimizations.get("threads") or job.get("threads")
    if threads:
        torch.set_num_threads(int(threads))
    load_before, cpu_before = os.getloadavg(), machine_cpu_seconds()
    worker = {"network": _network_worker, "end_to_end": _end_to_end_worker}[config.scope] \
        if config.kind == "segmate" else _peer_worker
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    row = worker(job, config, device)
    row["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    row["kernel_peak_rss_mb"] = kernel_peak_mb()
    row["threads"] = torch.get_num_threads()
    row["load_before_after"] = [round(load_before[0], 2), round(os.getloadavg()[0], 2)]
    row["cpu_steal_pct"] = steal_percent(cpu_before, machine_cpu_seconds())
    Path(job_path).with_name("result.json").write_text(json.dumps(row, default=str))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        sys.exit(run_worker(sys.argv[2]))
    sys.exit("usage: python -m segmatecore.bench.worker --worker JOB.json (use `segmate bench` instead)")
