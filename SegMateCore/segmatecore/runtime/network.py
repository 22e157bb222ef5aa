"""A network ready to run, behind one interface: ``encode``, ``decode`` and its ``metadata``.

Inference never calls a module directly. :func:`prepare_network` applies the speed-ups of
:mod:`segmatecore.runtime.optimize` once (re-parameterisation, BatchNorm folding, the CPU
convolution fusion, channels-last, or OpenVINO) and returns a :class:`Network`:

- :class:`SplitNetwork` for a network with ``encode``/``decode`` (SegMateNet in eager PyTorch, or
  compiled by OpenVINO). Its encodings do not depend on z, so the feature cache can keep them;
- :class:`WholeNetwork` for any other module taking ``(x, z)`` (a test network, a research
  model): ``encode`` only holds the input and ``decode`` runs the whole module.

Both run under the precision's autocast and, on a CUDA GPU, always run full batches (the last slice
repeated): a GPU prepares its kernels once per batch shape, so a short last batch would cost more
than the repeated slices.
"""
from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from typing import Any, Collection, NamedTuple

import torch
from torch import nn

from segmatecore.models import Encoded, SegMateOutput
from segmatecore.models.network import module_metadata
from segmatecore.runtime.devices import autocast_dtype
from segmatecore.runtime.optimize import DEFAULT, fusion_notice, prepare_for_inference

FIXED_BATCH_DEVICES = ("cuda",)


class WholeInput(NamedTuple):
    """What :class:`WholeNetwork` "encodes": the input itself, with the methods the cache uses."""

    x: torch.Tensor

    def select(self, index: int) -> "WholeInput":
        return WholeInput(self.x[index:index + 1].clone())

    def rows(self, start: int, stop: int) -> "WholeInput":
        return WholeInput(self.x[start:stop])

    def to(self, device: torch.device) -> "WholeInput":
        return WholeInput(self.x.to(device))

    @staticmethod
    def cat(parts: "list[WholeInput]") -> "WholeInput":
        return WholeInput(torch.cat([p.x for p in parts]))

    @property
    def nbytes(self) -> int:
        return self.x.nbytes


def num_rows(encoded: Any) -> int:
    """How many slices an encoding (or a tuple of views of one) holds."""
    if isinstance(encoded, Encoded):
        return int(encoded.context.shape[0])
    if isinstance(encoded, WholeInput):
        return int(encoded.x.shape[0])
    return num_rows(encoded[0])


def pad_rows(x: torch.Tensor | None, rows: int) -> torch.Tensor | None:
    """``x`` with its last row repeated up to ``rows`` rows (itself when it has them)."""
    if x is None:
        return None
    extra = rows - x.shape[0]
    return x if extra <= 0 else torch.cat([x, x[-1:].expand(extra, *x.shape[1:])])


def first_rows(out: SegMateOutput, rows: int) -> SegMateOutput:
    """The outputs of the first ``rows`` slices of a (possibly padded) batch, as views."""
    def first(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t[:rows]
    return SegMateOutput(first(out.seg), first(out.boundary), first(out.presence), tuple(t[:rows] for t in out.deep))


class Network(ABC):
    """A prepared network on one device. ``batch_size`` is the batch a CUDA GPU always runs."""

    caches_encodings = True

    def __init__(self, module: nn.Module, metadata: dict[str, Any], device: torch.device, precision: str):
        self.module = module
        self.metadata = metadata
        self.device = device
        self.precision = precision
        self.batch_size = 1
        self.notices: list[str] = []

    @property
    def runtime(self) -> str:
        return str(getattr(self.module, "runtime", "torch"))

    @abstractmethod
    def encode(self, x: torch.Tensor) -> Any:
        """Everything before FiLM for a batch of inputs."""

    @abstractmethod
    def decode(self, encoded: Any, z: torch.Tensor | None, outputs: Collection[str]) -> SegMateOutput:
        """FiLM on ``z`` (None: off) and the heads named in ``outputs``."""

    def autocast(self) -> contextlib.AbstractContextManager:
        dtype = autocast_dtype(self.device, self.precision)
        return contextlib.nullcontext() if dtype is None else torch.autocast(device_type=self.device.type, dtype=dtype)

    def full_rows(self, rows: int) -> int:
        """How many slices a call on ``rows`` slices runs: on a CUDA GPU always the batch size."""
        return max(rows, self.batch_size) if self.device.type in FIXED_BATCH_DEVICES else rows

    def move_to_cpu(self) -> None:
        """Carry on on the CPU (after the GPU ran out of memory), in fp32 unless bf16 was asked for."""
        self.module.to(torch.device("cpu"))
        self.device = torch.device("cpu")
        if self.precision in ("auto", "fp16"):
            self.precision = "fp32"


class SplitNetwork(Network):
    """A module with ``encode`` and ``decode`` (SegMateNet, or its OpenVINO compilation)."""

    def encode(self, x: torch.Tensor) -> Encoded:
        rows = x.shape[0]
        with self.autocast():
            return self.module.encode(pad_rows(x, self.full_rows(rows))).rows(0, rows)

    def decode(self, encoded: Encoded, z: torch.Tensor | None, outputs: Collection[str]) -> SegMateOutput:
        rows = num_rows(encoded)
        full = self.full_rows(rows)
        padded = Encoded(tuple(pad_rows(s, full) for s in encoded.skips), pad_rows(encoded.context, full),
                         encoded.size)
        with self.autocast():
            return first_rows(self.module.decode(padded, pad_rows(z, full), tuple(outputs)), rows)


class WholeNetwork(Network):
    """Any module called as ``module(x, z)``; it computes every head each time."""

    caches_encodings = False

    def encode(self, x: torch.Tensor) -> WholeInput:
        return WholeInput(x)

    def decode(self, encoded: WholeInput, z: torch.Tensor | None, outputs: Collection[str]) -> SegMateOutput:
        rows = num_rows(encoded)
        full = self.full_rows(rows)
        with self.autocast():
            return first_rows(self.module(pad_rows(encoded.x, full), pad_rows(z, full)), rows)


def prepare_network(model: nn.Module, device: torch.device, precision: str = "auto", runtime: str = "torch", *,
                    copy: bool = True) -> Network:
    """``model`` prepared once for ``device``, ``precision`` and ``runtime``, behind :class:`Network`.

    ``copy`` False prepares the module in place (folding cannot be undone: only for a model the
    caller will not train or save again). A module prepared before runs as it is.
    """
    metadata = module_metadata(model)
    optimizations = DEFAULT.with_(runtime=runtime)
    prepared = prepare_for_inference(model, device, precision, optimizations=optimizations, copy_model=copy)[0]
    splits = callable(getattr(prepared, "encode", None)) and callable(getattr(prepared, "decode", None))
    network = (SplitNetwork if splits else WholeNetwork)(prepared, metadata, device, precision)
    notice = fusion_notice(device, optimizations) if splits else None
    if notice:
        network.notices.append(notice)
    return network
