"""What ``segmate bench`` measures: its sizes and bars, and one :class:`Config` per row.

Two kinds of SegMate rows: ``network`` (the network alone on a few slices spread over the volume,
the optimisations of :mod:`segmatecore.runtime.optimize` switched on one at a time) and
``end_to_end`` (the product path, from reading the model file to the written labels). Each peer
(:mod:`segmatecore.bench.peers`) is one end-to-end row.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from segmatecore.bench.peers.nnunet import NNUNET_MODEL
from segmatecore.choices import BENCH_BACKBONES
from segmatecore.runtime.feature_cache import DEFAULT_MAX_MB
from segmatecore.runtime.optimize import DEFAULT, NONE, Optimizations


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
BUNDLED = "bundled"          # the model key of the catalogue's default (bundled, trained) model
ROW_FIELDS = ("name", "model", "kind", "device", "dtype", "params_m", "gmacs_per_slice", "gmacs_per_volume",
              "s_per_volume", "s_network", "peak_rss_mb", "peak_gpu_mb", "optimisations")


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
