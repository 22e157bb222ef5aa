"""``segmate bench --profile``: where one backbone's network time goes."""
from __future__ import annotations

import os
import time

import SimpleITK as sitk
import torch

from segmatecore.bench.inputs import benchmark_model, calibration_slices, sample_ct_path
from segmatecore.runtime.optimize import DEFAULT


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
        return _openvino_profile(net, x, z, top)
    return _torch_profile(net, autocast, x, z, top)


def _openvino_profile(net, x: torch.Tensor, z: torch.Tensor, top: int) -> str:
    """OpenVINO's per-layer counters of one timed batch, grouped by layer type and execution kernel."""
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
    size = x.shape[-1]
    lines = [f"OpenVINO {net.precision}, batch {len(x)}, {size}x{size}: {wall:.3f} s wall, "
             f"{total:.3f} s summed over layers", "| layer type | kernel | layers | s | share |",
             "|---|---|---|---|---|"]
    for (kind, kernel), (seconds, count) in sorted(groups.items(), key=lambda kv: -kv[1][0])[:top]:
        lines.append(f"| {kind} | {kernel} | {count} | {seconds:.3f} | {seconds / total:.0%} |")
    return "\n".join(lines)


def _torch_profile(net, autocast: torch.dtype | None, x: torch.Tensor, z: torch.Tensor, top: int) -> str:
    """torch.profiler's operator table of one batch after a warm-up one."""
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
