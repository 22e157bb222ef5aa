"""``segmate bench``: seconds and peak memory per CT volume, per backbone and per optimisation, and the
peers (:mod:`segmatecore.bench.peers`: a 3D nnU-Net and three lightweight networks built from their
papers, LightMedSeg, HRMedSeg and Light-UNETR) on the same CT, all in one run.

The CT is the bundled TotalSegmentator sample resampled with SimpleITK to 512 x 512 x 162 over
its own physical extent. Each configuration runs in a fresh Python process, so peak memory
figures do not mix (``--quick``, whose figures mean nothing, runs them in this process); a thread samples the resident set size with psutil (and the kernel's own
high-water mark is kept beside it); on CUDA ``torch.cuda.max_memory_allocated`` is reported too.

Two kinds of rows:

- ``network``: the network alone on ``network_slices`` slices spread over the volume, after one
  warm-up batch; ``s_network`` is the per-slice time times the volume's slice count. These rows
  switch the optimisations of :mod:`segmatecore.runtime.optimize` on one at a time.
- ``end_to_end``: the product path, timed from reading the model file to the written labels:
  ``load_model``, ``prepare_for_inference``, ``segment`` (read, preprocess, z_norm pass, network,
  back to the grid, post-processing) and ``export.write_outputs``. ``s_network`` is the network
  time inside ``segment``.

Every peer segments the whole CT the way it runs in practice (the 3D ones by sliding-window patches
at their training size on a 1.5 mm grid, HRMedSeg slice by slice at 1024 x 1024) with random
weights: the rows measure cost, not accuracy. Each row carries its parameters and GMACs per volume,
and every row is set against SegMate's default end-to-end rows of the same run
(:func:`add_segmate_ratios`).

After the rows, the machine's own matrix-multiply peak is measured at each thread count the rows
used (:mod:`segmatecore.bench.compute_peak`), and every row whose network seconds cover the whole volume
(the network-alone rows and the peers) gets its compute floor (its GMACs at that peak) and the share
of the peak it reached: how close to the hardware's limit it runs.

The models are random (fixed seed): weights do not change cost. So that the Dice check against
fp32 means something, their batch-norm statistics are re-estimated on CT slices and their output
biases centred (:func:`benchmark_model`); an untouched random network predicts the same value at
every pixel, which any precision reproduces.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import SimpleITK as sitk
import torch

from segmatecore.choices import BENCH_BACKBONES
from segmatecore.runtime.feature_cache import DEFAULT_MAX_MB
from segmatecore.runtime.optimize import DEFAULT, NONE, Optimizations, cpu_description
from segmatecore.bench.peers.nnunet import NNUNET_MODEL

log = logging.getLogger(__name__)

BENCH_SIZE = (512, 512, 162)
QUICK_SIZE = (64, 64, 12)
BACKBONES = BENCH_BACKBONES
SEED = 0
DICE_BAR = 0.99
NETWORK_SLICES = 16
QUICK_NETWORK_SLICES = 4
SAMPLE_CT = ("SampleData", "totalsegmentator_example_ct.nii.gz")
PEER_MODEL = NNUNET_MODEL   # the peer the "against the 3D nnU-Net" table divides by
SCOPES = ("network", "end_to_end")
ROW_FIELDS = ("name", "model", "kind", "device", "dtype", "params_m", "gmacs_per_slice", "gmacs_per_volume",
              "s_per_volume", "s_network", "peak_rss_mb", "peak_gpu_mb", "optimisations")


# ------------------------------------------------------------------------------------------- configurations

@dataclass
class Config:
    """One row of the benchmark: what runs and how."""

    name: str
    kind: str                      # "segmate" or "peer"
    scope: str                     # "network" or "end_to_end"
    backbone: str | None = None
    precision: str = "auto"
    grad_mode: str = "inference_mode"
    optimizations: dict[str, Any] = field(default_factory=DEFAULT.as_dict)
    skip_outside_extent: bool = False
    feature_cache_mb: float = DEFAULT_MAX_MB  # 0: the main pass encodes the first pass's slices again
    reference: str | None = None   # the fp32 row whose outputs this one must agree with
    model_key: str | None = None   # which benchmark model file runs (default: ``backbone``'s random one)
    peer: str | None = None        # the peer's key in :data:`segmatecore.bench.peers.PEERS`


def _opts(o: Optimizations) -> dict[str, Any]:
    return o.as_dict()


def segmate_configs(backbone: str, openvino: bool, precision: str = "auto", threads: int | None = None
                    ) -> list[Config]:
    """The optimisation ladder (network alone) and the product path (end to end) for one backbone.

    Every row runs with ``threads`` (None: PyTorch's and OpenVINO's defaults, one per core) but
    one, which runs the bf16 network with one thread (two when ``threads`` is 1) to show the
    effect of the thread count.
    """
    from segmatecore.models.encoder import backbone_spec

    none, default = NONE.with_(threads=threads), DEFAULT.with_(threads=threads)
    other_threads = 2 if threads == 1 else 1
    ladder: list[tuple[str, Optimizations, str, str]] = [("baseline fp32 eager (no_grad)", none, "fp32", "no_grad"),
                                                         ("+ inference_mode", none, "fp32", "inference_mode")]
    step = none
    if backbone_spec(backbone).reparameterizable:
        step = step.with_(reparameterize=True)
        ladder.append(("+ reparameterize", step, "fp32", "inference_mode"))
    step = step.with_(fold_batchnorm=True)
    ladder.append(("+ fold batchnorm", step, "fp32", "inference_mode"))
    step = step.with_(fuse_convolutions=True)
    ladder.append(("+ fuse convolutions", step, "fp32", "inference_mode"))
    step = step.with_(channels_last=True)
    ladder.append(("+ channels_last", step, "fp32", "inference_mode"))
    step = step.with_(bf16=True)
    ladder.append(("+ bf16", step, "bf16", "inference_mode"))
    ladder.append((f"+ bf16, {other_threads} thread{'s' if other_threads > 1 else ''}",
                   step.with_(threads=other_threads), "bf16", "inference_mode"))
    if openvino:
        ladder.append(("openvino fp32", step.with_(runtime="openvino"), "fp32", "inference_mode"))
        ladder.append(("openvino bf16", step.with_(runtime="openvino"), "bf16", "inference_mode"))
    reference = f"{backbone} network: {ladder[0][0]}"
    configs = [Config(f"{backbone} network: {label}", "segmate", "network", backbone, prec, grad, _opts(o),
                      reference=None if i == 0 else reference)
               for i, (label, o, prec, grad) in enumerate(ladder)]
    return configs + end_to_end_configs(backbone, backbone, precision, default, openvino=openvino)


def end_to_end_configs(label: str, backbone: str, precision: str, optimizations: Optimizations,
                       model_key: str | None = None, openvino: bool = False) -> list[Config]:
    """The product path four ways: fp32 (the reference), fp32 without the feature cache, bf16, and
    ``precision`` with skip_outside_extent; with ``openvino``, also the OpenVINO runtime in fp32 (the
    fast precision on a CPU without AMX) and bf16 (with AMX)."""
    reference = f"{label} end_to_end: default fp32"
    opts = _opts(optimizations)
    extra = [Config(f"{label} end_to_end: openvino {dtype}", "segmate", "end_to_end", backbone, dtype,
                    optimizations=_opts(optimizations.with_(runtime="openvino")), reference=reference,
                    model_key=model_key) for dtype in ("fp32", "bf16")] if openvino else []
    return [Config(reference, "segmate", "end_to_end", backbone, "fp32", optimizations=opts, model_key=model_key),
            Config(f"{label} end_to_end: default fp32, no feature cache", "segmate", "end_to_end", backbone, "fp32",
                   optimizations=opts, feature_cache_mb=0, reference=reference, model_key=model_key),
            Config(f"{label} end_to_end: default bf16", "segmate", "end_to_end", backbone, "bf16",
                   optimizations=opts, reference=reference, model_key=model_key),
            Config(f"{label} end_to_end: default {precision}, skip_outside_extent", "segmate", "end_to_end",
                   backbone, precision, optimizations=opts, skip_outside_extent=True, reference=reference,
                   model_key=model_key)] + extra


BUNDLED = "bundled"


def bundled_configs(model_id: str, backbone: str, precision: str = "auto", threads: int | None = None,
                    openvino: bool = False) -> list[Config]:
    """The product's default job: the bundled trained model, at its own input size, end to end.

    The random rows measure the paper's configuration (input 512) with 30 % of every organ's pixels
    positive, a worst case for post-processing; these rows show what a user of the default model
    waits for on the same CT, with the post-processing of real, compact organ masks.
    """
    return end_to_end_configs(model_id, backbone, precision, DEFAULT.with_(threads=threads), model_key=BUNDLED,
                              openvino=openvino)


def peer_configs(peers: Sequence[str], device: str = "cpu", quick: bool = False) -> list[Config]:
    """One end-to-end row per peer, run as it runs on ``device``: fp16 autocast on a GPU (as nnU-Net
    does), fp32 on a CPU."""
    from segmatecore.bench.peers import peer_spec

    gpu = torch.device(device).type == "cuda"
    configs = []
    for key in peers:
        spec = peer_spec(key)
        if key == NNUNET_MODEL:
            how = "fp16 autocast (as nnU-Net runs on a GPU)" if gpu else "fp32 (as nnU-Net runs on a CPU)"
        else:
            how = f"{'fp16 autocast' if gpu else 'fp32'}, {spec.how(quick)}"
        configs.append(Config(f"{key} end_to_end: {how}", "peer", "end_to_end", precision="auto" if gpu else "fp32",
                              optimizations={}, peer=key))
    return configs


# ------------------------------------------------------------------------------------------- inputs

def recorded_ct_path(path: Path) -> str:
    """The CT's path as the results record it: never an absolute path of the machine that ran them.

    Results are committed and shared, so a bundled resource is named ``Resources/...``, a file below
    the working folder by its relative path, and any other file by its name alone.
    """
    from segmatecore.resources import resources_dir

    path = Path(path).resolve()
    for root, prefix in ((resources_dir().resolve(), Path("Resources")), (Path.cwd().resolve(), Path())):
        if path.is_relative_to(root):
            return (prefix / path.relative_to(root)).as_posix()
    return path.name


def sample_ct_path() -> Path:
    """The bundled TotalSegmentator example CT (the shared data copy when the bundle is absent)."""
    from segmatecore.resources import resource_path

    bundled = resource_path(*SAMPLE_CT)
    if bundled.is_file():
        return bundled
    shared = Path(__file__).resolve().parents[4] / "shared" / "data" / "totalseg_example" / "example_ct.nii.gz"
    if shared.is_file():
        return shared
    raise FileNotFoundError(f"The benchmark CT {bundled} is missing; pass --ct PATH to a CT volume.")


def resample_to_size(image: sitk.Image, size: Sequence[int]) -> sitk.Image:
    """``image`` over the same physical extent on a ``size`` grid (linear, int16), as CTs are stored."""
    size = [int(s) for s in size]
    spacing = [n * s / m for n, s, m in zip(image.GetSize(), image.GetSpacing(), size)]
    # keep the extent: the first voxel centre moves by half the change of spacing
    direction = np.array(image.GetDirection()).reshape(3, 3)
    shift = direction @ ((np.array(spacing) - np.array(image.GetSpacing())) / 2)
    origin = (np.array(image.GetOrigin()) + shift).tolist()
    out = sitk.Resample(image, size, sitk.Transform(), sitk.sitkLinear, origin, spacing, image.GetDirection(),
                        -1024.0, sitk.sitkFloat32)
    return sitk.Cast(sitk.Round(out), sitk.sitkInt16)


def calibration_slices(image: sitk.Image, input_size: Sequence[int], count: int = 8) -> torch.Tensor:
    """Normalised 2.5D stacks of ``count`` slices spread over ``image``, at the model's input size."""
    from segmatecore.data.geometry import to_canonical
    from segmatecore.data.preprocess import Preprocessing, normalize_hu, resize_slices, stack_25d

    canonical, _ = to_canonical(image)
    pre = Preprocessing(input_size=tuple(int(v) for v in input_size))
    t = np.linspace(0, canonical.shape[2] - 1, count).round().astype(int)
    return resize_slices(torch.from_numpy(normalize_hu(stack_25d(canonical, t), pre)), pre.input_size)


@torch.no_grad()
def benchmark_model(backbone: str, calibration: torch.Tensor, seed: int = SEED, positive_fraction: float = 0.3):
    """A fixed-seed random SegMateNet whose outputs vary over the image like a trained model's.

    Batch-norm statistics are re-estimated on CT slices (the network is otherwise a constant
    function of position), then each organ's logit bias is set so that ``positive_fraction`` of
    the calibration pixels are positive and the presence biases so that half the slices are.
    """
    from segmatecore.models.checkpoint import default_metadata
    from segmatecore.models import create_model

    size = list(calibration.shape[-2:])
    meta = default_metadata(backbone, provenance={"source": "segmate bench", "seed": seed,
                                                  "note": "random weights, batch-norm statistics from CT"})
    meta["preprocessing"]["input_size"] = size
    torch.manual_seed(seed)
    model = create_model(backbone, metadata=meta)
    batchnorms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for bn in batchnorms:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the calibration batches
    model.train()
    z = torch.linspace(0, 1, len(calibration))
    for i in range(0, len(calibration), 4):
        model(calibration[i:i + 4], z[i:i + 4])
    model.eval()
    out = model(calibration, z)
    logits = out.seg.transpose(0, 1).reshape(model.num_classes, -1)
    model.seg_head.bias -= torch.quantile(logits[:, ::97].float(), 1 - positive_fraction, dim=1)
    model.presence_head[-1].bias -= out.presence.median(dim=0).values
    return model


# ------------------------------------------------------------------------------------------- measuring

class PeakMemory:
    """Peak resident set size of this process, sampled by a thread (psutil) every ``interval`` seconds."""

    def __init__(self, interval: float = 0.01):
        import psutil

        self._process = psutil.Process()
        self.interval = interval
        self.peak = self.peak_private = 0
        self._read()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _read(self) -> None:
        info = self._process.memory_info()
        self.peak = max(self.peak, info.rss)
        # rss minus file-backed pages (shared libraries): the memory the process itself allocated
        self.peak_private = max(self.peak_private, info.rss - getattr(info, "shared", 0))

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._read()
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._read()

    @property
    def peak_mb(self) -> float:
        return self.peak / 2**20

    @property
    def peak_private_mb(self) -> float:
        return self.peak_private / 2**20


def _kernel_peak_mb() -> float:
    """The kernel's high-water mark of this process's resident set.

    On Linux, VmHWM of /proc/self/status: ru_maxrss is no use in a worker, because Linux carries
    the parent's high-water mark over fork and exec (every row of one run reported the orchestrating
    process's 1,633 MB, whatever the row used). Elsewhere ru_maxrss (bytes on macOS).
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks; 1.0 when both are empty."""
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


# ------------------------------------------------------------------------------------------- workers

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
    from segmatecore.inference.engine import segment
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


def machine_cpu_seconds() -> tuple[float, float] | None:
    """(all, stolen) CPU seconds of the whole machine so far, from Linux's /proc/stat; None elsewhere.

    Stolen time is what the hypervisor gave this virtual machine's CPUs to other guests: a row can
    run twice as slow with no load inside the VM (seen here: up to 54 % of the two vCPUs stolen for
    an hour), so each row records the share stolen while it ran.
    """
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu" or len(fields) < 9:
        return None
    ticks = [int(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    return sum(ticks) / hz, ticks[7] / hz


def steal_percent(before: tuple[float, float] | None, after: tuple[float, float] | None) -> float | None:
    """Share of all CPU time between two :func:`machine_cpu_seconds` readings that was stolen."""
    if before is None or after is None or after[0] <= before[0]:
        return None
    return round(100.0 * (after[1] - before[1]) / (after[0] - before[0]), 1)


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
    row["kernel_peak_rss_mb"] = _kernel_peak_mb()
    row["threads"] = torch.get_num_threads()
    row["load_before_after"] = [round(load_before[0], 2), round(os.getloadavg()[0], 2)]
    row["cpu_steal_pct"] = steal_percent(cpu_before, machine_cpu_seconds())
    Path(job_path).with_name("result.json").write_text(json.dumps(row, default=str))
    return 0


# ------------------------------------------------------------------------------------------- the run

@dataclass
class BenchSetup:
    """Files shared by all rows: the CT, one model file per backbone, the output folder."""

    workdir: Path
    ct: Path
    models: dict[str, Path]
    costs: dict[str, dict[str, float]]
    depth: int


def prepare_inputs(workdir: Path, backbones: Sequence[str], size: Sequence[int], ct_source: Path,
                   input_size: int) -> BenchSetup:
    """Write the resampled CT and a benchmark model per backbone; count parameters and MACs."""
    from segmatecore.models.checkpoint import save_model
    from segmatecore.models.cost import count_parameters, gmacs_per_slice

    image = resample_to_size(sitk.ReadImage(str(ct_source)), size)
    ct = workdir / "ct.nii.gz"
    sitk.WriteImage(image, str(ct))
    calibration = calibration_slices(image, (input_size, input_size))
    models, costs = {}, {}
    for backbone in backbones:
        model = benchmark_model(backbone, calibration)
        models[backbone] = save_model(model, workdir / f"{backbone}.safetensors")
        costs[backbone] = {"params_m": count_parameters(model) / 1e6,
                           "gmacs_per_slice": gmacs_per_slice(model, input_size)}
    return BenchSetup(workdir, ct, models, costs, int(size[2]))


def add_bundled_model(setup: BenchSetup) -> tuple[str, str]:
    """Register the catalogue's default (bundled, trained) model with ``setup``; returns (id, backbone).

    The file is used where it is installed (its SHA-256 is checked by resolve_model), not copied.
    """
    from segmatecore.hub.catalogue import default_model_id, resolve_model
    from segmatecore.models.checkpoint import load_model
    from segmatecore.models.cost import count_parameters, gmacs_per_slice

    model_id = default_model_id()
    path = resolve_model(model_id)
    model = load_model(path, reparameterize=False)
    input_size = int(model.metadata["preprocessing"]["input_size"][0])
    setup.models[BUNDLED] = path
    setup.costs[BUNDLED] = {"params_m": count_parameters(model) / 1e6,
                            "gmacs_per_slice": gmacs_per_slice(model, input_size), "input_size": input_size}
    return model_id, model.metadata["backbone"]


def peer_costs(key: str, quick: bool, calls: int, depth: int) -> dict[str, float]:
    """Parameters and MACs of a peer that made ``calls`` network calls (patches, or batches of one
    slice each) on a CT of ``depth`` slices (torch.utils.flop_counter; large inputs on the meta
    device, nothing computed)."""
    from segmatecore.bench.peers import peer_spec

    spec = peer_spec(key)
    cost = spec.benchmark_cost(quick)
    return {"params_m": cost.params_m, "gmacs_per_slice": cost.gmacs * calls / depth,
            "gmacs_per_volume": cost.gmacs * calls, "gmacs_per_call": cost.gmacs,
            "network_input": list(spec.network_input(quick)[1:])}


def _run_in_this_process(job_path: Path, env: dict[str, str]) -> None:
    """``--quick``: run a row here (no fresh interpreter to import torch into), restoring what it changes."""
    saved_env, saved_threads = dict(os.environ), torch.get_num_threads()
    os.environ.update(env)
    try:
        run_worker(job_path)
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        torch.set_num_threads(saved_threads)


def _run_config(config: Config, setup: BenchSetup, device: str, batch_size: int, network_slices: int,
                quick: bool, threads: int | None, timeout: float, isolate: bool = True) -> dict[str, Any]:
    outdir = setup.workdir / "rows" / config.name.replace(" ", "_").replace(":", "").replace(",", "")[:80]
    outdir.mkdir(parents=True, exist_ok=True)
    job = {"config": asdict(config), "device": device, "ct": str(setup.ct), "outdir": str(outdir),
           "model": str(setup.models.get(config.model_key or config.backbone, "")), "batch_size": batch_size,
           "network_slices": network_slices, "quick": quick, "threads": threads}
    job_path = outdir / "job.json"
    job_path.write_text(json.dumps(job))
    env = {**os.environ, "SEGMATE_HOME": str(setup.workdir / "home")}
    if not isolate:
        _run_in_this_process(job_path, env)
        row = json.loads((outdir / "result.json").read_text())
        row["outdir"] = str(outdir)
        return row
    proc = subprocess.run([sys.executable, "-m", "segmatecore.bench.runner", "--worker", str(job_path)], env=env,
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark row {config.name!r} failed:\n{proc.stderr[-3000:]}")
    row = json.loads((outdir / "result.json").read_text())
    row["outdir"] = str(outdir)
    return row


def _compare(rows: list[dict[str, Any]]) -> None:
    """Per-organ Dice of each row's output against its fp32 reference row (network masks or labelmaps),
    for the organs of the row's model in its channel order."""
    from segmatecore.models.checkpoint import read_metadata

    by_name = {r["name"]: r for r in rows}
    for row in rows:
        ref = by_name.get(row.get("reference") or "")
        if ref is None:
            continue
        job = json.loads((Path(row["outdir"]) / "job.json").read_text(encoding="utf-8"))
        organs = read_metadata(job["model"])["organs"]
        if row["scope"] == "network":
            a = np.unpackbits(np.load(Path(row["outdir"]) / "masks.npy"), axis=-1).astype(bool)
            b = np.unpackbits(np.load(Path(ref["outdir"]) / "masks.npy"), axis=-1).astype(bool)
            scores = {k: dice(a[:, i], b[:, i]) for i, k in enumerate(organs)}
        else:
            # Arrays, not views: a view does not keep its image alive.
            a = sitk.GetArrayFromImage(sitk.ReadImage(str(Path(row["outdir"]) / "labels.nii.gz")))
            b = sitk.GetArrayFromImage(sitk.ReadImage(str(Path(ref["outdir"]) / "labels.nii.gz")))
            scores = {k: dice(a == i + 1, b == i + 1) for i, k in enumerate(organs)}
        row["dice_vs_fp32"] = {k: round(v, 4) for k, v in scores.items()}
        row["dice_min"] = round(min(scores.values()), 4)
        row["agrees_with_fp32"] = row["dice_min"] >= DICE_BAR


def add_compute_floors(rows: list[dict[str, Any]], depth: int, device: str, quick: bool,
                       peaks: Callable[[int], dict[str, float]] | None = None) -> dict[str, dict[str, float]]:
    """Measure this machine's matrix-multiply peak at each thread count the rows ran with, and give
    every row whose network seconds cover the whole volume (the network-alone rows and the peers) its
    ``compute_floor_s`` (its GMACs at that peak) and ``pct_of_peak`` (floor / network seconds).

    Returns ``{threads: {dtype: GMAC/s}}`` for the results' machine block. ``peaks(threads)`` stands
    in for the measurement in tests. On a GPU nothing is measured: a network of a few milliseconds
    per slice there is bound by kernel launches and memory, not by arithmetic (and its fp32
    convolutions run in TF32), so a matrix-multiply floor would say nothing about it.
    """
    from segmatecore.bench.compute_peak import compute_floor_s, machine_peaks

    if torch.device(device).type != "cpu":
        return {}
    measure = peaks or (lambda threads: machine_peaks(threads, quick=quick))
    measured: dict[str, dict[str, float]] = {}
    for row in rows:
        if not (row["scope"] == "network" or row.get("kind") == "peer") or not row.get("s_network"):
            continue
        threads = int(row.get("threads") or torch.get_num_threads())
        if str(threads) not in measured:
            measured[str(threads)] = measure(threads)
        peak = measured[str(threads)].get(row["dtype"])
        if not peak:
            continue
        row["compute_floor_s"] = compute_floor_s(row["gmacs_per_slice"], depth, peak)
        row["pct_of_peak"] = round(100.0 * row["compute_floor_s"] / row["s_network"], 1)
    return measured


def machine_description() -> dict[str, Any]:
    import psutil

    return {"cpu": cpu_description(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "openvino": _openvino_version(), "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "load_average_1_5_15": [round(v, 2) for v in os.getloadavg()]}


def _openvino_version() -> str | None:
    from segmatecore.runtime import openvino as openvino_runtime

    if not openvino_runtime.available():
        return None
    import openvino

    return openvino.__version__


def run_benchmark(*, quick: bool = False, backbones: Sequence[str] = BACKBONES, precision: str = "auto",
                  device: str = "cpu", peers: Sequence[str] | None = None, ct: str | os.PathLike | None = None,
                  workdir: str | os.PathLike | None = None, batch_size: int | None = None, network_slices: int | None = None,
                  threads: int | None = None, timeout: float = 3600.0, scopes: Sequence[str] = SCOPES,
                  bundled: bool = True, openvino: bool = True,
                  report: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run every configuration and return ``{"machine", "ct", "rows"}`` (rows as documented in ROW_FIELDS).

    ``peers``: the peers' keys (:data:`segmatecore.bench.peers.PEERS`; None: all of them, empty: none),
    measured with the end-to-end rows. ``openvino`` False leaves out the OpenVINO rows even where OpenVINO is installed (its conversion
    of a large backbone takes minutes). ``batch_size`` None: segment()'s own default for the device
    (2 on the CPU), so that the rows measure what users run.
    """
    from segmatecore.runtime import openvino as openvino_runtime
    from segmatecore.inference.engine import DEFAULT_BATCH, resolve_device
    from segmatecore.models.encoder import backbone_spec

    backbones = [backbone_spec(b).key for b in backbones]
    batch_size = batch_size or DEFAULT_BATCH.get(resolve_device(device).type, 4)
    size = QUICK_SIZE if quick else BENCH_SIZE
    input_size = 64 if quick else 512
    network_slices = network_slices or (QUICK_NETWORK_SLICES if quick else NETWORK_SLICES)
    if quick and threads is None:
        threads = 1  # tiny tensors: thread start-up and barriers would dominate, worst on a busy machine
    from segmatecore.bench.peers import PEERS

    peers = list(PEERS) if peers is None else list(dict.fromkeys(peers))
    source = Path(ct) if ct else sample_ct_path()
    context = contextlib.nullcontext(workdir) if workdir else tempfile.TemporaryDirectory(prefix="segmate-bench-")
    with context as folder:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        machine = machine_description()
        setup = prepare_inputs(folder, backbones, size, source, input_size)
        openvino = openvino and openvino_runtime.available()
        configs = [c for b in backbones for c in segmate_configs(b, openvino, precision, threads)
                   if c.scope in scopes]
        bundled_name = None
        if bundled and "end_to_end" in scopes:
            model_id, bundled_backbone = add_bundled_model(setup)
            bundled_name = f"{model_id} (input {setup.costs[BUNDLED]['input_size']})"
            configs += bundled_configs(model_id, bundled_backbone, precision, threads, openvino)
        if "end_to_end" in scopes:
            configs += peer_configs(peers, device, quick)
        rows = []
        for config in configs:
            measured = _run_config(config, setup, device, batch_size, network_slices, quick, threads, timeout,
                                   isolate=not quick)
            if config.kind == "peer":
                costs = peer_costs(config.peer, quick, measured["patches"], setup.depth)
                model = config.peer
            elif config.model_key == BUNDLED:
                costs, model = setup.costs[BUNDLED], bundled_name
            else:
                costs, model = setup.costs[config.backbone], config.backbone
            if config.kind == "segmate":
                # the paper's per-volume convention: the network once on every slice of the volume
                costs = {**costs, "gmacs_per_volume": costs["gmacs_per_slice"] * setup.depth}
            row = {"name": config.name, "model": model, "kind": config.kind, "device": device, "scope": config.scope,
                   "precision": config.precision, "grad_mode": config.grad_mode,
                   "optimisations": config.optimizations, "skip_outside_extent": config.skip_outside_extent,
                   "feature_cache_mb": config.feature_cache_mb,
                   "reference": config.reference, **costs, "s_per_volume": None, "peak_gpu_mb": None, **measured}
            rows.append(row)
            if report:
                report(row)
        _compare(rows)
        add_segmate_ratios(rows)
        for row in rows:
            row.pop("outdir", None)
            for key in ("params_m", "gmacs_per_slice", "gmacs_per_volume", "gmacs_per_call", "s_per_volume", "s_network", "s_per_slice", "s_prepare",
                        "cpu_s_network", "cpu_s_per_volume", "peak_rss_mb", "peak_private_mb", "kernel_peak_rss_mb",
                        "peak_gpu_mb"):
                if isinstance(row.get(key), float):
                    row[key] = round(row[key], 3)
        machine["matmul_gmacs_per_s"] = add_compute_floors(rows, setup.depth, device, quick)
        machine["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    return {"machine": machine, "ct": {"source": recorded_ct_path(source), "size": list(size), "quick": quick},
            "batch_size": batch_size, "rows": rows}


def profile_network(backbone: str, *, precision: str = "auto", runtime: str = "auto", input_size: int = 512,
                    batch_size: int = 4, top: int = 15, ct: str | os.PathLike | None = None) -> str:
    """Where the network's time goes, as a text table: OpenVINO's per-layer counters grouped by layer
    type and execution kernel, or torch.profiler's operator table for the eager path (the heads
    inference computes: masks and presence)."""
    from segmatecore.runtime import openvino as openvino_runtime
    from segmatecore.runtime.optimize import compute_dtype, prepare_for_inference

    image = sitk.ReadImage(str(ct or sample_ct_path()))
    slices = calibration_slices(image, (input_size, input_size), count=8)
    model = benchmark_model(backbone, slices)
    opts = DEFAULT.with_(runtime=runtime)
    if runtime != "torch" and openvino_runtime.available():
        net, autocast = openvino_runtime.compile_network(model, compute_dtype(torch.device("cpu"), precision, opts),
                                                         opts, perf_counters=True), None
    else:
        net, autocast = prepare_for_inference(model, torch.device("cpu"), precision, optimizations=opts,
                                              copy_model=False)
    x, z = slices[:batch_size], torch.full((batch_size,), 0.5)
    if isinstance(net, openvino_runtime.OpenVINONetwork):
        encoder, decoder = (graph.create_infer_request() for graph in (net.encoder_graph, net.decoder_graph))

        def infer() -> None:
            decoder.infer([*encoder.infer([x.numpy()]).to_tuple(), z.numpy()])

        infer()
        start = time.perf_counter()
        infer()
        wall = time.perf_counter() - start
        groups: dict[tuple[str, str], list[float]] = {}
        for info in [*encoder.profiling_info, *decoder.profiling_info]:
            entry = groups.setdefault((info.node_type, info.exec_type), [0.0, 0])
            entry[0] += info.real_time.total_seconds()
            entry[1] += 1
        total = sum(v[0] for v in groups.values())
        lines = [f"OpenVINO {net.precision}, batch {batch_size}, {input_size}x{input_size}: {wall:.3f} s wall, "
                 f"{total:.3f} s summed over layers", "| layer type | kernel | layers | s | share |",
                 "|---|---|---|---|---|"]
        for (kind, kernel), (seconds, count) in sorted(groups.items(), key=lambda kv: -kv[1][0])[:top]:
            lines.append(f"| {kind} | {kernel} | {count} | {seconds:.3f} | {seconds / total:.0%} |")
        return "\n".join(lines)
    from torch.profiler import ProfilerActivity, profile

    def forward() -> None:
        """What segment() runs per main-pass batch: masks and presence, not the boundary head."""
        if callable(getattr(net, "encode", None)):
            net.decode(net.encode(x), z, outputs=("seg", "presence"))
        else:
            net(x, z)

    with torch.inference_mode(), torch.autocast("cpu", dtype=autocast or torch.float32, enabled=autocast is not None):
        forward()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            forward()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top)


def complete_rows(result: dict[str, Any]) -> None:
    """Give the rows of a run saved before ``kind``, ``gmacs_per_volume`` and ``vs_segmate`` existed
    those fields, from that run alone (ratios never mix runs)."""
    depth = result["ct"]["size"][2]
    for row in result["rows"]:
        row.setdefault("kind", row_kind(row))
        if row.get("gmacs_per_volume") is None and row.get("gmacs_per_slice") is not None:
            row["gmacs_per_volume"] = row["gmacs_per_slice"] * depth
    if not any("vs_segmate" in row for row in result["rows"]):
        add_segmate_ratios(result["rows"])


def merge(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Several runs' results as one (rows concatenated; each row keeps its own load figures and its
    ratios to the SegMate rows of its own run)."""
    if not results:
        raise ValueError("No benchmark results to merge.")
    for result in results:
        complete_rows(result)
    merged = dict(results[0])
    merged["rows"] = [row for r in results for row in r["rows"]]
    merged["runs"] = [{"machine": r["machine"], "ct": r["ct"], "rows": len(r["rows"])} for r in results]
    return merged


def row_kind(row: dict[str, Any]) -> str:
    """"segmate" or "peer" (results saved before rows carried ``kind`` had one peer, nnU-Net)."""
    return row.get("kind") or ("peer" if row["model"] == PEER_MODEL else "segmate")


def row_seconds(row: dict[str, Any]) -> float | None:
    """Seconds per volume: end to end for an end-to-end row, the network's for a network-alone row."""
    return row["s_per_volume"] if row["scope"] == "end_to_end" else row["s_network"]


def row_cpu_seconds(row: dict[str, Any]) -> float | None:
    return row.get("cpu_s_per_volume") if row["scope"] == "end_to_end" else row.get("cpu_s_network")


def segmate_references(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """SegMate's default end-to-end row of each SegMate model in the run (its fp32 Dice reference)."""
    return [r for r in rows if row_kind(r) == "segmate" and r["scope"] == "end_to_end"
            and r.get("reference") is None and r.get("s_per_volume")]


def _ratio(mine: float | None, reference: float | None) -> float | None:
    return round(mine / reference, 2) if mine and reference else None


def add_segmate_ratios(rows: list[dict[str, Any]]) -> None:
    """Give every row ``vs_segmate``: for each of SegMate's default end-to-end rows of the same run
    (:func:`segmate_references`), the row's wall seconds, CPU seconds, peak RSS and private memory
    divided by that row's (above 1: the row is that many times slower or heavier than SegMate)."""
    references = segmate_references(rows)
    if not references:
        return
    for row in rows:
        row["vs_segmate"] = {ref["model"]: {"wall": _ratio(row_seconds(row), ref["s_per_volume"]),
                                            "cpu": _ratio(row_cpu_seconds(row), ref.get("cpu_s_per_volume")),
                                            "rss": _ratio(row["peak_rss_mb"], ref["peak_rss_mb"]),
                                            "private": _ratio(row.get("peak_private_mb"), ref.get("peak_private_mb"))}
                             for ref in references}


def _marker(row: dict[str, Any]) -> tuple[str, bool]:
    """(marker, filled): peers triangles, SegMate end to end filled circles, network alone hollow squares."""
    if row_kind(row) == "peer":
        return "^", True
    return ("o", True) if row["scope"] == "end_to_end" else ("s", False)


def plot(results: dict[str, Any], path: str | os.PathLike) -> Path:
    """Two panels for every row of the run, SegMate's and the peers': seconds per volume against peak
    memory, and GMACs per volume against seconds (network-alone rows: network seconds, hollow)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (memory_ax, compute_ax) = plt.subplots(1, 2, figsize=(15, 6.5))
    colours: dict[str, str] = {}
    for row in results["rows"]:
        seconds = row_seconds(row)
        if not seconds:
            continue
        colour = colours.setdefault(row["model"], f"C{len(colours) % 10}")
        marker, filled = _marker(row)
        label = row["name"].split(": ", 1)[-1] if row_kind(row) == "segmate" else row["model"]
        points = [(memory_ax, row["peak_rss_mb"], seconds)]
        if row.get("gmacs_per_volume"):
            points.append((compute_ax, row["gmacs_per_volume"], seconds))
        for ax, x, y in points:
            ax.scatter(x, y, s=70 if filled else 30, marker=marker, color=colour if filled else "none",
                       edgecolors=colour)
            ax.annotate(label, (x, y), fontsize=6, xytext=(3, 2), textcoords="offset points")
    for model, colour in colours.items():
        memory_ax.scatter([], [], color=colour, label=model)
    memory_ax.scatter([], [], color="grey", marker="o", label="SegMate end to end (s per volume)")
    memory_ax.scatter([], [], color="none", edgecolors="grey", marker="s", label="SegMate network alone")
    memory_ax.scatter([], [], color="grey", marker="^", label="peer end to end (random weights)")
    memory_ax.set_xlabel("peak resident memory (MB)")
    compute_ax.set_xlabel("GMACs per volume (torch.utils.flop_counter)")
    for ax in (memory_ax, compute_ax):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_ylabel("seconds per volume")
        ax.grid(True, which="both", alpha=0.3)
    size = results["ct"]["size"]
    fig.suptitle(f"SegMate and its peers, CT {size[0]} x {size[1]} x {size[2]}\n{results['machine']['cpu']}",
                 fontsize=9)
    memory_ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _num(value: float | None, digits: int = 1) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _gmacs(value: float | None) -> str:
    """GMACs per volume: whole GMACs from 100 up (thousands separated), else one decimal."""
    if value is None:
        return ""
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def peer_table(results: dict[str, Any]) -> str:
    """Every end-to-end row against the nnU-Net peer of the same run, as a markdown table ("" without a peer).

    Where the time went (segment()'s own timings: first pass + main pass of the network, resampling,
    post-processing) and how many times faster (wall and CPU seconds) and lighter than the peer each
    row was: ratios within one run, so that the machine's speed on the day cancels out.
    """
    rows = [r for r in results["rows"] if r["scope"] == "end_to_end"]
    peer = next((r for r in rows if r["model"] == PEER_MODEL), None)
    if peer is None:
        return ""

    def ratio(mine: float | None, theirs: float | None) -> str:
        return f"{theirs / mine:.1f}x" if mine and theirs else ""

    out = ["| configuration | s / volume | CPU s | z pass + network s | resample s | post-process s | peak RSS MB "
           "| private MB | vs 3D nnU-Net: faster (wall) | faster (CPU s) | less RSS | Dice vs fp32 (min) | CPU stolen % |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        t = r.get("timings") or {}
        network = (f"{t['z_pass']:.1f} + {t['network']:.1f}" if "z_pass" in t and "network" in t
                   else _num(t.get("network", r["s_network"])))
        mine = r is not peer
        dice = "reference" if row_kind(r) == "segmate" and r.get("reference") is None else _num(r.get("dice_min"), 4)
        out.append(f"| {r['model']}: {r['name'].split(': ', 1)[-1]} | {_num(r['s_per_volume'])} | {_num(r.get('cpu_s_per_volume'))} "
                   f"| {network} | {_num(t.get('resample'))} | {_num(t.get('postprocess'))} "
                   f"| {_num(r['peak_rss_mb'], 0)} | {_num(r.get('peak_private_mb'), 0)} "
                   f"| {ratio(r['s_per_volume'], peer['s_per_volume']) if mine else ''} "
                   f"| {ratio(r.get('cpu_s_per_volume'), peer.get('cpu_s_per_volume')) if mine else ''} "
                   f"| {ratio(r['peak_rss_mb'], peer['peak_rss_mb']) if mine else ''} "
                   f"| {dice} | {_num(r.get('cpu_steal_pct'), 0)} |")
    return "\n".join(out) + "\n"


def ranking_table(results: dict[str, Any]) -> str:
    """Every row of the run, fastest first, as a markdown table: SegMate's rows and the peers', their
    seconds (wall and CPU), memory, parameters and GMACs per volume, and each set against SegMate's
    default end-to-end rows of the same run (row / SegMate: wall s, CPU s, peak RSS)."""
    rows = sorted((r for r in results["rows"] if row_seconds(r)), key=row_seconds)
    references = list(dict.fromkeys(r["model"] for r in segmate_references(results["rows"])))
    header = ["rank", "configuration", "kind", "s / volume", "CPU s", "peak RSS MB", "private MB", "params M",
              "GMACs / volume"] + [f"x {model}: s / CPU s / RSS" for model in references]
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for rank, r in enumerate(rows, 1):
        kind = "peer (random weights)" if row_kind(r) == "peer" else \
            "SegMate" + (", network alone" if r["scope"] == "network" else "")
        cells = [str(rank), f"{r['model']}: {r['name'].split(': ', 1)[-1]}", kind, _num(row_seconds(r)),
                 _num(row_cpu_seconds(r)), _num(r["peak_rss_mb"], 0), _num(r.get("peak_private_mb"), 0),
                 _num(r.get("params_m"), 2), _gmacs(r.get("gmacs_per_volume"))]
        for model in references:
            ratio = (r.get("vs_segmate") or {}).get(model)
            cells.append(" / ".join(_num(ratio.get(k), 2) for k in ("wall", "cpu", "rss")) if ratio else "")
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def accuracy_table(results: dict[str, Any]) -> str:
    """Published accuracy of the run's peers and of SegMate, as a markdown table: the papers' own
    figures on their own data, with trained weights. Nothing in it was measured by the run."""
    from segmatecore.hub.catalogue import catalogue_entry, default_model_id
    from segmatecore.bench.peers import PEERS, SEGMATE_PAPER_ACCURACY

    lines = ["| network | dataset | task | Dice % (published) | source |", "|---|---|---|---|---|"]
    models = dict.fromkeys(r["model"] for r in results["rows"])
    for key in (k for k in PEERS if k in models):
        for a in PEERS[key].accuracy:
            lines.append(f"| {PEERS[key].title} | {a.dataset} | {a.task} | {a.dice:.2f} | {a.source} |")
    for a in SEGMATE_PAPER_ACCURACY:
        lines.append(f"| SegMate | {a.dataset} | {a.task} | {a.dice:.2f} | {a.source} |")
    default = catalogue_entry(default_model_id())
    if any(str(m).startswith(default["id"]) for m in models) and default.get("metrics"):
        metrics = default["metrics"]
        for organ, values in metrics["organs"].items():
            lines.append(f"| {default['id']} (bundled) | {metrics['dataset']} | {organ} | {100 * values['dice']:.1f} "
                         f"| Resources/models.json (`segmate evaluate`) |")
    return "\n".join(lines) + "\n"


def markdown_tables(results: dict[str, Any]) -> str:
    """Every row ranked (:func:`ranking_table`), the published accuracy beside it
    (:func:`accuracy_table`), the end-to-end rows against the 3D nnU-Net peer (:func:`peer_table`),
    then one markdown table per model: every row's seconds (wall and CPU), memory, dtype and Dice vs fp32."""
    from segmatecore.bench.compute_peak import peaks_text

    out = []
    peaks = results.get("machine", {}).get("matmul_gmacs_per_s") or {}
    if peaks:
        out.append("Matrix-multiply peak of this machine (`torch.mm`, best of 5), the ceiling of the "
                   f"\"% of peak\" column: {peaks_text(peaks)}\n")
    out += ["#### Every row of this run, fastest first\n", ranking_table(results)]
    out += ["#### Published accuracy: the papers' figures on their own data, not measured in this run\n",
            accuracy_table(results)]
    against_peer = peer_table(results)
    if against_peer:
        out += ["#### End to end, against the 3D nnU-Net peer of this run\n", against_peer]
    for model in dict.fromkeys(r["model"] for r in results["rows"]):
        rows = [r for r in results["rows"] if r["model"] == model]
        first = rows[0]
        out.append(f"#### {model}: {first['params_m']:.2f} M parameters, {first['gmacs_per_slice']:.2f} GMACs per slice\n")
        out.append("| configuration | s / volume | network s | compute floor s | % of peak | CPU s | peak RSS MB "
                   "| private MB | dtype | Dice vs fp32 (min) | load 1-min | CPU stolen % |")
        out.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            out.append(f"| {r['name'].split(': ', 1)[-1]} ({r['scope'].replace('_', ' ')}) | {_num(r.get('s_per_volume'))} "
                       f"| {_num(r['s_network'])} | {_num(r.get('compute_floor_s'))} | {_num(r.get('pct_of_peak'), 0)} "
                       f"| {_num(row_cpu_seconds(r))} | {_num(r['peak_rss_mb'], 0)} "
                       f"| {_num(r.get('peak_private_mb'), 0)} | {r['dtype']} | {_num(r.get('dice_min'), 4)} "
                       f"| {r['load_before_after'][0]} to {r['load_before_after'][1]} | {_num(r.get('cpu_steal_pct'))} |")
        out.append("")
    return "\n".join(out)


def format_row(row: dict[str, Any]) -> str:
    seconds = f"{row['s_per_volume']:.1f} s/volume" if row.get("s_per_volume") else "network only"
    return (f"{row['name']}: {seconds}, network {row['s_network']:.1f} s, peak {row['peak_rss_mb']:.0f} MB, "
            f"{row['dtype']}, load {row['load_before_after']}"
            + (f", {row['cpu_steal_pct']:.0f} % of the CPU stolen" if row.get("cpu_steal_pct") is not None else ""))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        sys.exit(run_worker(sys.argv[2]))
    sys.exit("usage: python -m segmatecore.bench.runner --worker JOB.json (use `segmate bench` instead)")
