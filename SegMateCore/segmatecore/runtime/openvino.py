"""A SegMateNet compiled by OpenVINO for CPU inference, converted once and cached on disk.

OpenVINO fuses the many small operations of the decoder's attention blocks and runs convolutions
in bf16 on CPUs that have it (AMX, AVX512-BF16). It is opt-in (``SegMatePredictor(runtime="openvino")``,
``segmate predict --runtime openvino``): whether it beats eager PyTorch depends on the CPU, the
thread count and the load (docs/benchmark.md). The compiled network has ``encode`` and ``decode``
like SegMateNet's, so it runs behind :class:`segmatecore.runtime.network.SplitNetwork`.

The network is converted as two graphs, the encoder (everything before FiLM) and the decoder (FiLM,
decoder, mask and presence heads), so that segment()'s feature cache works here too: slices the
first pass encoded are only decoded again. One decoder graph serves both passes: FiLM is switched
off by a negative z (the first, label-free pass runs with ``z_norm=None``). The batch size is
dynamic; the slice size is the model's.
The converted model is cached under ``$SEGMATE_HOME/cache/openvino`` (or the user cache folder),
keyed by a hash of the weights, so only the first run on a machine pays for the conversion.
"""
from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from platformdirs import user_cache_dir
from torch import nn

from segmatecore import __version__
from segmatecore.models import Encoded, SegMateNet, SegMateOutput
from segmatecore.models.network import check_slices

log = logging.getLogger(__name__)

GRAPH_VERSION = 3  # bump when the exported graphs' inputs or outputs change


def available() -> bool:
    return importlib.util.find_spec("openvino") is not None


def cache_root() -> Path:
    """``$SEGMATE_HOME/cache/openvino`` or the user cache folder's ``SegMate/openvino``."""
    home = os.environ.get("SEGMATE_HOME")
    if home:
        return Path(home).expanduser() / "cache" / "openvino"
    return Path(user_cache_dir("SegMate", appauthor=False)) / "openvino"


class SwitchableFiLM(nn.Module):
    """FiLM that a negative z switches off, so one traced graph covers ``z_norm=None`` too."""

    def __init__(self, film: nn.Module):
        super().__init__()
        self.film = film

    def forward(self, x: torch.Tensor, z_norm: torch.Tensor) -> torch.Tensor:
        on = (z_norm >= 0).to(x.dtype)[:, None, None, None]
        return on * self.film(x, z_norm.clamp(min=0)) + (1 - on) * x


class EncoderGraph(nn.Module):
    """The traced encoder: x -> (aligned skips..., ASPP context)."""

    def __init__(self, net: SegMateNet):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        encoded = self.net.encode(x)
        return (*encoded.skips, encoded.context)


class DecoderGraph(nn.Module):
    """The traced decoder: (skips..., context, z) -> (seg logits, presence logits)."""

    def __init__(self, net: SegMateNet, size: tuple[int, int]):
        super().__init__()
        net.film = SwitchableFiLM(net.film)
        self.net = net
        self.size = size

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        *skips, context, z_norm = inputs
        out = self.net.decode(Encoded(tuple(skips), context, self.size), z_norm, outputs=("seg", "presence"))
        return out.seg, out.presence


def cache_key(net: SegMateNet, input_size: tuple[int, int]) -> str:
    """A hash of everything the converted graph depends on: weights, sizes, library versions."""
    import openvino

    digest = hashlib.sha256()
    header = (GRAPH_VERSION, __version__, openvino.__version__, torch.__version__, net.backbone, tuple(input_size),
              net.num_classes, net.is_reparameterized)
    digest.update(repr(header).encode())
    for name, tensor in net.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:24]


def _traced(graph: nn.Module, example: tuple[torch.Tensor, ...]) -> torch.jit.ScriptModule:
    """``graph`` traced once for OpenVINO's TorchScript front end. Given a module, the converter traces
    it with ``check_trace`` on, which traces it a second time only to compare the two: that doubles the
    conversion for a graph whose outputs the tests compare with eager PyTorch anyway."""
    return torch.jit.trace(graph.eval(), example, strict=False, check_trace=False)


def convert(net: SegMateNet, input_size: tuple[int, int], folder: Path | None = None) -> tuple[Path, Path]:
    """The OpenVINO IRs (.xml) of ``net``'s encoder and decoder for ``input_size`` slices, converting
    only when not cached."""
    import openvino as ov

    folder = folder or cache_root()
    target = folder / cache_key(net, input_size)
    xmls = (target / "encoder.xml", target / "decoder.xml")
    if all(xml.is_file() for xml in xmls):
        return xmls
    folder.mkdir(parents=True, exist_ok=True)
    h, w = (int(v) for v in input_size)
    net = net.eval()
    log.info("converting the network for OpenVINO (once per model; cached in %s)", folder)
    with torch.no_grad(), warnings.catch_warnings():
        # The tracer's notes on the input checks (constant at a fixed slice size, which is what the
        # graphs are converted for) and on its own deprecation tell a user nothing they can act on.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.trace", category=FutureWarning)
        example = torch.zeros(1, 3, h, w)
        encoder = ov.convert_model(_traced(EncoderGraph(net), (example,)), input=[([-1, 3, h, w], ov.Type.f32)])
        features = EncoderGraph(net)(example)
        decoder = ov.convert_model(_traced(DecoderGraph(net, (h, w)), (*features, torch.full((1,), 0.5))),
                                   input=[([-1, *f.shape[1:]], ov.Type.f32) for f in features] + [([-1], ov.Type.f32)])
    staging = Path(tempfile.mkdtemp(dir=folder, prefix=".partial-"))
    try:
        for model, xml in zip((encoder, decoder), xmls):
            ov.save_model(model, staging / xml.name, compress_to_fp16=False)
        try:
            os.replace(staging, target)
        except OSError:  # another process cached the same model meanwhile
            if not all(xml.is_file() for xml in xmls):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return xmls


class OpenVINONetwork(nn.Module):
    """A compiled SegMateNet behind the segment() model contract (CPU only, no gradients), with
    ``encode``/``decode`` like SegMateNet's. It computes masks and presence, never boundaries."""

    runtime = "openvino"  # segment() reports it in model_info (a PyTorch network has no such attribute)

    def __init__(self, encoder: Any, decoder: Any, metadata: dict[str, Any], backbone: str, precision: str,
                 input_size: tuple[int, int]):
        super().__init__()
        self.encoder_graph = encoder
        self.decoder_graph = decoder
        self.metadata = metadata
        self.backbone = backbone
        self.precision = precision
        self.input_size = input_size
        self.is_reparameterized = True

    def forward(self, x: torch.Tensor, z_norm: torch.Tensor | None = None) -> SegMateOutput:
        return self.decode(self.encode(x), z_norm)

    def encode(self, x: torch.Tensor) -> Encoded:
        check_slices(x)
        outputs = self.encoder_graph([x.detach().to("cpu", torch.float32).contiguous().numpy()]).to_tuple()
        *skips, context = (torch.from_numpy(o) for o in outputs)
        return Encoded(tuple(skips), context, self.input_size)

    def decode(self, encoded: Encoded, z_norm: torch.Tensor | None = None,
               outputs: tuple[str, ...] = ("seg", "presence")) -> SegMateOutput:
        batch = encoded.context.shape[0]
        z = np.full((batch,), -1.0, dtype=np.float32) if z_norm is None else \
            z_norm.detach().to("cpu", torch.float32).numpy()
        inputs = [t.detach().to("cpu", torch.float32).contiguous().numpy() for t in (*encoded.skips, encoded.context)]
        seg, presence = self.decoder_graph([*inputs, z]).to_tuple()
        return SegMateOutput(torch.from_numpy(seg) if "seg" in outputs else None, None,
                             torch.from_numpy(presence), ())

    def extra_repr(self) -> str:
        return f"backbone={self.backbone}, precision={self.precision}"


def compile_network(net: SegMateNet, dtype: torch.dtype, optimizations: Any,
                    perf_counters: bool = False) -> OpenVINONetwork:
    """Convert (or load from the cache) and compile ``net`` for this CPU in ``dtype`` (bf16 or fp32);
    ``perf_counters`` makes OpenVINO time every layer (``segmate bench --profile``)."""
    import openvino as ov

    metadata = dict(getattr(net, "metadata", {}) or {})
    input_size = tuple(metadata.get("preprocessing", {}).get("input_size", (512, 512)))
    if optimizations.reparameterize:
        net.reparameterize()
    encoder_xml, decoder_xml = convert(net.eval(), input_size)
    precision = "bf16" if dtype == torch.bfloat16 else "f32"
    config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY",
              "CACHE_DIR": str(encoder_xml.parent.parent / "compiled")}
    if optimizations.threads:
        config["INFERENCE_NUM_THREADS"] = int(optimizations.threads)
    if perf_counters:
        config["PERF_COUNT"] = True
    core = ov.Core()
    encoder, decoder = (core.compile_model(str(xml), "CPU", config) for xml in (encoder_xml, decoder_xml))
    return OpenVINONetwork(encoder, decoder, metadata, net.backbone, precision, input_size)
