"""Inference-time preparation of a loaded model for a device and precision.

Every step here was kept because ``segmate bench`` showed it makes inference faster on the CPU
while the outputs stay equal to fp32 (Dice >= 0.99 per organ); docs/benchmark.md has the figures:

- FastViT re-parameterisation (timm's ``reparameterize_model``) and BatchNorm folding into the
  preceding convolution (``torch.nn.utils.fusion.fuse_conv_bn_eval``);
- on the CPU, convolutions rewritten into forms oneDNN runs faster with the same arithmetic
  (:mod:`segmatecore.runtime.cpu_fusion`): an activation fused into the convolution before it,
  FastViT's grouped downsampling convolutions run as depthwise ones, and MambaOut's gated blocks
  without the copy and the concatenation of timm's version;
- channels-last memory layout, which oneDNN's convolutions prefer;
- bf16 weights and activations, which only AMX makes faster than fp32 (oneDNN's bf16 kernels
  without AMX are no faster, and the conversions cost extra). Whether a model's masks survive bf16
  is the model's own property: ``precision="auto"`` uses it only where the model records that they
  do (:mod:`segmatecore.runtime.precision`), and :func:`bf16_warning` tells a user who asks for
  bf16 on a CPU without AMX;
- opt-in (``runtime="openvino"``): the network compiled by OpenVINO (see
  :mod:`segmatecore.runtime.openvino`), which fuses what eager PyTorch runs op by op. Whether it
  pays depends on the CPU, the thread count and the load, and its first run pays a conversion, so
  eager PyTorch stays the default (docs/benchmark.md has the measurements).

The caller runs the returned model under ``torch.inference_mode()`` (as ``segment`` does).
"""
from __future__ import annotations

import copy
import logging
import os
import platform
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from functools import lru_cache

import torch
from timm.layers import get_notrace_functions, get_notrace_modules
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from segmatecore.runtime import cpu_fusion
from segmatecore.runtime import openvino as openvino_runtime
from segmatecore.choices import RUNTIMES
from segmatecore.models import SegMateNet

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class Optimizations:
    """Which inference-time speed-ups to apply. The defaults are the ones the benchmark kept.

    ``bf16`` makes ``precision="auto"`` use bf16 on a CPU with AMX (off: bf16 missed the
    Dice bar, docs/benchmark.md); ``precision="bf16"`` always uses bf16 and ``"fp32"`` never does. ``threads`` None leaves PyTorch's default (one per
    physical core). ``runtime`` ``openvino`` compiles the network with OpenVINO on the CPU;
    ``auto`` does so when OpenVINO is installed; ``torch`` (the default) runs eager PyTorch.
    """

    reparameterize: bool = True
    fold_batchnorm: bool = True
    fuse_convolutions: bool = True
    channels_last: bool = True
    bf16: bool = False
    threads: int | None = None
    runtime: str = "torch"

    def __post_init__(self) -> None:
        if self.runtime not in RUNTIMES:
            raise ValueError(f"Unknown runtime {self.runtime!r}; use {', '.join(RUNTIMES)}.")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be at least 1, got {self.threads}.")

    def with_(self, **changes) -> "Optimizations":
        return replace(self, **changes)

    def as_dict(self) -> dict:
        return asdict(self)


DEFAULT = Optimizations()
NONE = Optimizations(reparameterize=False, fold_batchnorm=False, fuse_convolutions=False, channels_last=False,
                     bf16=False, runtime="torch")


@lru_cache(maxsize=1)
def _cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU's feature flags as Linux lists them (empty where there is no such file)."""
    try:
        with open(cpuinfo, encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_bf16_is_faster() -> bool:
    """True where bf16 inference beats fp32 on this CPU: an x86 CPU with AMX (tile matrix units)
    and a PyTorch with oneDNN.

    Without AMX, oneDNN's bf16 kernels (AVX512-BF16 dot products, or none at all on AVX2) run no
    faster than its fp32 ones and the conversions cost extra, so bf16 is slower there
    (docs/benchmark.md, "What limits each figure").
    """
    if platform.machine().lower() not in ("x86_64", "amd64") or not torch.backends.mkldnn.is_available():
        return False
    flags = _cpu_flags()
    if flags:
        return {"amx_bf16", "amx_tile"} <= flags
    return _torch_sees_amx()


@lru_cache(maxsize=1)
def _torch_sees_amx() -> bool:
    """PyTorch's own AMX probe, where there is no /proc/cpuinfo to read. It is private (``torch.cpu``),
    so a PyTorch without it, or one where it fails, counts as no AMX: fp32, the safe choice."""
    check = getattr(torch.cpu, "_is_amx_tile_supported", None)
    try:
        return bool(check is not None and check())
    except Exception:  # a changed signature or a probe that raises: unknown, so no AMX
        return False


def bf16_warning(device: torch.device, precision: str) -> str | None:
    """The warning for a user who asked for bf16 where it makes inference slower, else None."""
    if precision != "bf16" or device.type != "cpu" or cpu_bf16_is_faster():
        return None
    return ("precision bf16: this CPU has no AMX, so bf16 runs slower than fp32 here and its masks "
            "may differ at their edges; use precision auto (fp32) instead.")


def fusion_notice(device: torch.device, optimizations: Optimizations = DEFAULT) -> str | None:
    """The line for a run's warnings where eager PyTorch on the CPU would fuse convolutions but this
    PyTorch cannot (:func:`segmatecore.runtime.cpu_fusion.available`), else None."""
    if torch.device(device).type != "cpu" or not optimizations.fuse_convolutions:
        return None
    if optimizations.runtime != "torch" and openvino_runtime.available():
        return None
    return cpu_fusion.notice()


def compute_dtype(device: torch.device, precision: str, optimizations: Optimizations = DEFAULT) -> torch.dtype:
    """The dtype the network computes in for ``precision`` (auto, fp32, bf16) on ``device``."""
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise ValueError(f"Unknown precision {precision!r}; use auto, fp32 or bf16.")
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16" or (precision == "auto" and device.type == "cuda"):
        return torch.float16
    if precision == "auto" and device.type == "cpu" and optimizations.bf16 and cpu_bf16_is_faster():
        return torch.bfloat16
    return torch.float32


class _ModuleTracer(fx.Tracer):
    """torch.fx tracer that keeps convolutions, batch norms (timm's BatchNormAct2d too) and the
    modules and functions timm marks as untraceable as single nodes."""

    def __init__(self):
        super().__init__(autowrap_functions=tuple(f for f in get_notrace_functions() if callable(f)))
        self.leaves = (nn.Conv2d, nn.BatchNorm2d, *get_notrace_modules())

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return isinstance(module, self.leaves) or super().is_leaf_module(module, qualified_name)


def _traced_graphs(module: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module, fx.Graph]]:
    """(name prefix, module, torch.fx graph) for the largest sub-modules holding a batch norm whose
    forward torch.fx traces. A forward that does not trace (shape checks, a ModuleList) is looked
    into: its children are traced instead."""
    if not any(isinstance(m, nn.BatchNorm2d) for m in module.modules()):
        return
    try:
        graph = _ModuleTracer().trace(module)
    except Exception:  # untraceable Python raises many kinds of error in torch.fx
        graph = None
    if graph is not None:
        yield prefix, module, graph
        return
    for name, child in module.named_children():
        yield from _traced_graphs(child, f"{prefix}{name}.")


def _conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(convolution, batch norm) module names where the norm is the only reader of the convolution's
    output, read off torch.fx graphs (which see reads by plain code, ``y + conv(y)``, as well as by
    modules). A module called more than once is left alone: one of its calls may not be a pair."""
    calls: Counter[str] = Counter()
    candidates = []
    for prefix, root, graph in _traced_graphs(model):
        for node in graph.nodes:
            if node.op != "call_module":
                continue
            calls[prefix + node.target] += 1
            source = node.args[0] if len(node.args) == 1 and not node.kwargs else None
            if (isinstance(source, fx.Node) and source.op == "call_module" and len(source.users) == 1
                    and isinstance(root.get_submodule(node.target), nn.BatchNorm2d)
                    and isinstance(root.get_submodule(source.target), nn.Conv2d)):
                candidates.append((prefix + source.target, prefix + node.target))
    return [(conv, bn) for conv, bn in candidates if calls[conv] == calls[bn] == 1]


def _norm_remainder(bn: nn.BatchNorm2d) -> nn.Module:
    """What is left of a batch norm once its affine transform lives in the convolution.

    timm's BatchNormAct2d applies dropout and an activation after normalising; they stay.
    """
    if type(bn) is nn.BatchNorm2d:
        return nn.Identity()
    rest = [m for m in (getattr(bn, "drop", None), getattr(bn, "act", None)) if isinstance(m, nn.Module)]
    return nn.Sequential(*rest) if rest else nn.Identity()


def _example(model: nn.Module, size: int = 64, random: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """A one-slice (input, z) pair on the model's device and dtype, zeros or fixed-seed noise."""
    parameter = next(model.parameters())
    shape = (1, 3, size, size)
    # noise of a tenth of the normalised CT's spread: unit-variance noise drives a deep random network
    # (EfficientNetV2-M's 70 blocks) into a regime where a change of 1e-6 moves its outputs by 60 %
    x = (0.1 * torch.randn(shape, generator=torch.Generator().manual_seed(0)) if random else torch.zeros(shape))
    return (x.to(parameter.device, parameter.dtype),
            torch.full((1,), 0.5, device=parameter.device, dtype=parameter.dtype))


def fold_batchnorm(model: nn.Module) -> int:
    """Fold every eval-mode batch norm into the convolution that feeds it alone (timm's
    BatchNormAct2d keeps its activation); returns how many were folded."""
    if model.training:
        raise ValueError("BatchNorm folding needs a model in eval mode (model.eval()).")
    folded = 0
    for conv_name, bn_name in _conv_bn_pairs(model):
        conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
        if bn.running_mean is None or bn.running_var is None:
            continue
        for name, module in ((conv_name, fuse_conv_bn_eval(conv, bn)), (bn_name, _norm_remainder(bn))):
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, attr, module)
        folded += 1
    return folded


def set_threads(threads: int | None) -> None:
    """Intra-op threads for PyTorch (None: leave the default, one per physical core)."""
    if threads is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def prepare_torch(model: SegMateNet, device: torch.device, dtype: torch.dtype,
                  optimizations: Optimizations = DEFAULT) -> SegMateNet:
    """The eager PyTorch path: re-parameterise, fold, fuse, cast and lay out ``model`` (in place)."""
    model.eval()
    if optimizations.reparameterize:
        model.reparameterize()
    if optimizations.fold_batchnorm:
        log.debug("folded %d batch norms", fold_batchnorm(model))
    if optimizations.fuse_convolutions and device.type == "cpu":
        log.debug("fused %d convolutions", cpu_fusion.fuse_convolutions(model, _example(model, random=True)))
    model.to(device)
    if optimizations.channels_last:
        model.to(memory_format=torch.channels_last)
    if device.type == "cpu" and dtype == torch.bfloat16:
        model.to(torch.bfloat16)  # SegMateNet.encode casts its input to the weights' dtype
    model.inference_prepared = True
    return model


def prepare_for_inference(model: nn.Module, device: torch.device, precision: str = "auto", *,
                          optimizations: Optimizations | None = None, copy_model: bool = True
                          ) -> tuple[nn.Module, torch.dtype | None]:
    """Return (model ready to run, autocast dtype for the caller or None).

    A SegMateNet gets the optimisations above, on a copy unless ``copy_model`` is False (folding
    cannot be undone, so a model that is still being trained must not be prepared in place). Any
    other module (a test network, say) is only put in eval mode on ``device``.
    With bf16 on the CPU the network is cast to bf16 and casts its own input, so no autocast is
    needed; on CUDA the caller autocasts to fp16 (``auto``) or bf16.
    """
    optimizations = optimizations or DEFAULT
    device = torch.device(device)
    dtype = compute_dtype(device, precision, optimizations)
    autocast = dtype if device.type != "cpu" and dtype != torch.float32 else None
    if not isinstance(model, SegMateNet) or getattr(model, "inference_prepared", False):
        dtype = compute_dtype(device, precision, optimizations.with_(bf16=False))
        return model.eval().to(device), (dtype if dtype != torch.float32 else None)
    if device.type == "cpu":
        set_threads(optimizations.threads)
    if copy_model:
        model = copy.deepcopy(model)
    if device.type == "cpu" and optimizations.runtime != "torch":
        if openvino_runtime.available():
            return openvino_runtime.compile_network(model, dtype, optimizations), None
        if optimizations.runtime == "openvino":
            raise ValueError("The OpenVINO runtime was requested but OpenVINO is not installed "
                             "(pip install openvino); or use runtime 'torch'.")
    return prepare_torch(model, device, dtype, optimizations), autocast


def cpu_description() -> str:
    """The CPU model, core count and bf16 support, for benchmark reports."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    flags = sorted({"avx512_bf16", "amx_bf16", "amx_tile", "avx512f", "avx2"} & _cpu_flags())
    return f"{name}, {os.cpu_count()} logical CPUs, {' '.join(flags) or 'no AVX flags read'}"
