"""Layers rewritten into forms oneDNN runs faster on the CPU, with the same arithmetic.

Three rewrites, each kept because ``segmate bench`` showed it faster (docs/benchmark.md):

- a convolution followed by GELU, SiLU or ReLU runs as one oneDNN convolution with the activation
  as a post-op (PyTorch's ``mkldnn._convolution_pointwise``, the op torch.compile's CPU backend
  emits for the same pattern): the activation no longer makes its own pass over memory;
- a grouped convolution with one input channel per group and k outputs each (FastViT's 7x7
  stride-2 downsampling, groups = in_channels, out = 2 x in) runs as k depthwise convolutions whose
  outputs are interleaved: oneDNN has a fast depthwise kernel but none for this shape;
- MambaOut's gated block (timm's ``GatedConvBlock``: one linear layer split into a gate, an identity
  part and a part for the depthwise convolution, then ``fc2(gelu(gate) * cat(identity, conv(part)))``)
  runs its first linear layer as three, so that the convolved part comes out contiguous (no copy
  before the convolution), and writes the product into one tensor (no concatenation). (Its GELU
  fused into the gate's linear layer, ``mkldnn._linear_pointwise``, made no difference, so it is not
  used.)

The fused convolution is a private PyTorch op whose presence and signature may change between
releases. Rather than trusting a version number, :func:`available` runs it once on a tiny input
and compares it with eager PyTorch; where that fails nothing is rewritten, inference runs eager
PyTorch, and :func:`notice` gives the line a run reports.

All rewrites are checked on an example before they are kept (in float64, see fuse_convolutions): if
the rewritten model does not give the original's outputs (a convolution output also used outside
the module graph, say), nothing is rewritten.
"""
from __future__ import annotations

import logging
from functools import cache
from typing import Callable

import torch
import torch.nn.functional as F
from timm.models.mambaout import GatedConvBlock
from torch import nn

log = logging.getLogger(__name__)

# (oneDNN post-op name, its algorithm) for each activation module it can absorb
_GELU_ALGORITHMS = {"none": "none", "tanh": "tanh"}


def _post_op(module: nn.Module) -> tuple[str, str] | None:
    if type(module) is nn.GELU and module.approximate in _GELU_ALGORITHMS:
        return "gelu", _GELU_ALGORITHMS[module.approximate]
    if type(module) is nn.SiLU:
        return "swish", ""
    if type(module) is nn.ReLU:
        return "relu", ""
    return None


_REFERENCE = {"gelu": lambda x, algorithm: F.gelu(x, approximate=algorithm if algorithm == "tanh" else "none"),
              "swish": lambda x, algorithm: F.silu(x), "relu": lambda x, algorithm: F.relu(x)}


_POST_OPS = (("gelu", "none"), ("gelu", "tanh"), ("swish", ""), ("relu", ""))
_NOTICE = "CPU convolution fusion is not available with this PyTorch ({}); running eager PyTorch."


def _pointwise_op() -> Callable | None:
    """oneDNN's fused convolution op, or None where this PyTorch build has none."""
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        return getattr(torch.ops.mkldnn, "_convolution_pointwise")
    except (AttributeError, RuntimeError):  # a missing op raises either, depending on the release
        return None


def _agrees_with_eager(op: Callable, dtype: torch.dtype, tolerance: float) -> bool:
    """Whether ``op`` runs a 3x3 convolution with each post-op FusedConv2d uses on a 1x4x8x8 input in
    ``dtype`` and gives eager PyTorch's result (computed in fp32 from the same values)."""
    with torch.autocast("cpu", enabled=False), torch.no_grad():  # the check may first run inside a bf16 run
        return _agrees(op, dtype, tolerance)


def _agrees(op: Callable, dtype: torch.dtype, tolerance: float) -> bool:
    generator = torch.Generator().manual_seed(0)
    x, weight, bias = (torch.randn(shape, generator=generator).to(dtype) for shape in ((1, 4, 8, 8), (4, 4, 3, 3), (4,)))
    for attr, algorithm in _POST_OPS:
        expected = _REFERENCE[attr](F.conv2d(x.float(), weight.float(), bias.float(), 1, 1), algorithm)
        try:
            got = op(x, weight, bias, [1, 1], [1, 1], [1, 1], 1, attr, [None], algorithm)
        except Exception:  # a changed signature or a CPU without the kernel: not usable
            return False
        if not (isinstance(got, torch.Tensor) and got.shape == expected.shape and torch.allclose(
                got.float(), expected, rtol=tolerance, atol=tolerance * expected.abs().max().item())):
            return False
    return True


@cache
def available() -> bool:
    """Whether this PyTorch's oneDNN fused convolution exists and computes what eager PyTorch does
    (checked once; where not, :func:`notice` says so and the network runs unfused)."""
    op = _pointwise_op()
    works = op is not None and _agrees_with_eager(op, torch.float32, 1e-4)
    if not works:
        log.info(_notice_text())
    return works


def _notice_text() -> str:
    return _NOTICE.format(".".join(torch.__version__.split(".")[:2]))


def notice() -> str | None:
    """The line a run on the CPU reports when this PyTorch cannot fuse convolutions, else None."""
    return None if available() else _notice_text()


@cache
def _onednn_bf16() -> bool:
    """Whether the fused convolution runs in bf16 on this CPU: oneDNN's bf16 kernels need AVX-512
    BW/VL/DQ or AVX-NE-CONVERT, and on a CPU with AVX2 alone the op raises instead of running."""
    return available() and _agrees_with_eager(_pointwise_op(), torch.bfloat16, 5e-2)


def onednn_runs(x: torch.Tensor) -> bool:
    """Whether oneDNN's fused convolution takes ``x``: a CPU tensor in fp32, or in bf16 where the CPU
    has oneDNN's bf16 kernels (float64 and other devices: never)."""
    if x.device.type != "cpu" or x.dtype == torch.float64 or not available():
        return False
    return x.dtype != torch.bfloat16 or _onednn_bf16()


class FusedConv2d(nn.Module):
    """A 2D convolution (zero padding) with an optional activation fused in, and, for a grouped
    convolution with one input channel per group and ``multiplier`` > 1 outputs each, run as
    ``multiplier`` depthwise convolutions whose outputs are interleaved (output channel c * k + j
    is part j's channel c, as in the grouped convolution)."""

    def __init__(self, conv: nn.Conv2d, post_op: tuple[str, str] | None = None, split: bool = False):
        super().__init__()
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError("FusedConv2d takes convolutions with explicit zero padding.")
        self.stride, self.padding, self.dilation = list(conv.stride), list(conv.padding), list(conv.dilation)
        self.groups = conv.groups
        self.multiplier = conv.out_channels // conv.in_channels if split else 1
        weight = conv.weight.detach()
        bias = conv.bias.detach() if conv.bias is not None else torch.zeros(conv.out_channels, dtype=weight.dtype,
                                                                              device=weight.device)
        k = self.multiplier
        # part j holds output channels j, j + k, j + 2k, ...: one depthwise convolution each
        self.weight = nn.Parameter(torch.cat([weight[j::k] for j in range(k)]), requires_grad=False)
        self.bias = nn.Parameter(torch.cat([bias[j::k] for j in range(k)]), requires_grad=False)
        self.post_op = post_op

    def _conv(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, groups: int) -> torch.Tensor:
        if self.post_op is None:
            return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, groups)
        attr, algorithm = self.post_op
        if not onednn_runs(x):  # the same function, unfused
            return _REFERENCE[attr](F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, groups),
                                    algorithm)
        return torch.ops.mkldnn._convolution_pointwise(x, weight, bias, self.padding, self.stride, self.dilation,
                                                       groups, attr, [None], algorithm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.multiplier
        if k == 1:
            return self._conv(x, self.weight, self.bias, self.groups)
        parts = [self._conv(x, w, b, self.groups) for w, b in zip(self.weight.chunk(k), self.bias.chunk(k))]
        n, c, h, w = parts[0].shape
        if parts[0].is_contiguous(memory_format=torch.channels_last):  # interleave in NHWC memory
            nhwc = torch.stack([p.permute(0, 2, 3, 1) for p in parts], dim=-1).reshape(n, h, w, c * k)
            return nhwc.permute(0, 3, 1, 2)
        return torch.stack(parts, dim=2).reshape(n, c * k, h, w)


def _linear_rows(linear: nn.Linear, start: int, stop: int) -> nn.Linear:
    """A linear layer computing output features ``start:stop`` of ``linear``."""
    part = nn.Linear(linear.in_features, stop - start, bias=linear.bias is not None,
                     device=linear.weight.device, dtype=linear.weight.dtype)
    part.weight = nn.Parameter(linear.weight.detach()[start:stop].clone(), requires_grad=False)
    if linear.bias is not None:
        part.bias = nn.Parameter(linear.bias.detach()[start:stop].clone(), requires_grad=False)
    return part


class FusedGatedBlock(nn.Module):
    """timm's MambaOut ``GatedConvBlock`` with the same arithmetic in fewer passes over memory.

    The original computes ``fc1`` once and splits it into gate ``g``, identity part ``i`` and
    convolved part ``c``: strided views, so the depthwise convolution first copies ``c``; it then
    concatenates ``i`` and ``conv(c)`` and multiplies by ``act(g)``. Here ``fc1`` runs as three
    linear layers, ``c`` comes out contiguous, and the product is written part by part into one
    tensor, which fuses the concatenation into the multiplication.
    """

    def __init__(self, block: nn.Module):
        super().__init__()
        hidden, identity, convolved = block.split_indices
        self.norm, self.act, self.conv, self.fc2, self.ls, self.drop_path = \
            block.norm, block.act, block.conv, block.fc2, block.ls, block.drop_path
        self.fc1_gate = _linear_rows(block.fc1, 0, hidden)
        self.fc1_identity = _linear_rows(block.fc1, hidden, hidden + identity) if identity else None
        self.fc1_conv = _linear_rows(block.fc1, hidden + identity, hidden + identity + convolved)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, H, W, C]
        shortcut = x
        x = self.norm(x)
        gate = self.act(self.fc1_gate(x))
        convolved = self.conv(self.fc1_conv(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        parts = [convolved] if self.fc1_identity is None else [self.fc1_identity(x), convolved]
        if torch.is_grad_enabled():  # out= has no gradient: the concatenating form
            product = gate * torch.cat(parts, dim=-1)
        else:  # act(g) * cat(i, conv(c)), each part written in place
            product = torch.empty_like(gate)
            start = 0
            for part in parts:
                stop = start + part.shape[-1]
                torch.mul(gate[..., start:stop], part, out=product[..., start:stop])
                start = stop
        return self.drop_path(self.ls(self.fc2(product))) + shortcut


def _splittable(conv: nn.Module) -> bool:
    return (type(conv) is nn.Conv2d and conv.groups > 1 and conv.groups == conv.in_channels
            and conv.out_channels > conv.in_channels and conv.out_channels % conv.in_channels == 0)


def _fusable(conv: nn.Module) -> bool:
    return type(conv) is nn.Conv2d and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)


def conv_output_readers(model: nn.Module, run: Callable[[], object]) -> dict[str, set[str]]:
    """{convolution: names of the modules that read its output}, found by running ``run()`` once
    with hooks, so it follows the real data flow of any model instead of naming conventions.

    Readers are leaf modules; Identity and Dropout pass the tensor on and are looked past. An in-place leaf
    (SiLU(inplace=True), timm's default) returns its input tensor: what reads it afterwards reads
    that module's output, not the convolution's. Reads by code outside modules (``y + conv(y)``)
    are not seen: callers check their rewrite on an example.
    """
    produced: dict[int, tuple[str, torch.Tensor]] = {}  # holding the outputs keeps their ids unique
    readers: dict[str, set[str]] = {}
    hooks = []

    def record(name):
        def hook(module, args, output):
            if isinstance(module, nn.Conv2d) or (args and output is args[0]):
                produced[id(output)] = (name, output)
        return hook

    def read(name):
        def hook(module, args):
            for value in args:
                entry = produced.get(id(value)) if isinstance(value, torch.Tensor) else None
                if entry is not None and entry[1] is value:
                    readers.setdefault(entry[0], set()).add(name)
        return hook

    for name, module in model.named_modules():
        if not any(True for _ in module.children()) and not isinstance(module, (nn.Identity, nn.Dropout)):
            hooks.append(module.register_forward_pre_hook(read(name)))
            hooks.append(module.register_forward_hook(record(name)))
    try:
        with torch.no_grad():
            run()
    finally:
        for hook in hooks:
            hook.remove()
    return {conv: names for conv, names in readers.items() if isinstance(model.get_submodule(conv), nn.Conv2d)}


def _conv_activation_pairs(model: nn.Module, run: Callable[[], object]) -> dict[str, str]:
    """{convolution: activation} where an activation oneDNN can absorb is the output's only reader."""
    pairs = {}
    for conv, names in conv_output_readers(model, run).items():
        if len(names) == 1:
            (act,) = names
            if _post_op(model.get_submodule(act)) is not None:
                pairs[conv] = act
    return pairs


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, module)


def _tensors(value: object) -> list[torch.Tensor]:
    """Every tensor in a model output (a tensor, or nested tuples and lists of them), in order."""
    if isinstance(value, torch.Tensor):
        return [value.detach()]
    if isinstance(value, (tuple, list)):
        return [t for item in value for t in _tensors(item)]
    return []


def fuse_convolutions(model: nn.Module, example: tuple[torch.Tensor, ...], *, fuse_activations: bool = True,
                      split_grouped: bool = True, fuse_gated_blocks: bool = True) -> int:
    """Rewrite ``model``'s convolutions as FusedConv2d, and MambaOut's gated blocks as
    FusedGatedBlock, in place (see the module docstring); returns how many were rewritten.

    ``model(*example)`` finds the data flow. The rewrite is then checked in float64, where a fused
    convolution computes the same function unfused: the rewritten model must give the original's
    outputs to 1e-6 of their largest value. Rounding cannot hide or fake a difference there (a deep
    random network can turn fp32 rounding into large output changes); a wrongly rewritten graph
    (a convolution output also read outside the module graph, say) gives one. If it fails, every
    rewrite is undone and 0 returned.
    """
    if not (fuse_activations or split_grouped or fuse_gated_blocks) or not available():
        return 0

    def outputs() -> list[torch.Tensor]:
        with torch.no_grad():
            return _tensors(model(*[t.double() if t.is_floating_point() else t for t in example]))

    dtype = next(model.parameters()).dtype
    model.double()
    try:
        expected = outputs()
        model.to(dtype)
        pairs = _conv_activation_pairs(model, lambda: model(*example)) if fuse_activations else {}
        undo: list[tuple[str, nn.Module]] = []
        if fuse_gated_blocks:
            for name, block in [(n, m) for n, m in model.named_modules() if type(m) is GatedConvBlock]:
                undo.append((name, block))
                _replace(model, name, FusedGatedBlock(block))
        for name, conv in list(model.named_modules()):
            split = split_grouped and _splittable(conv)
            act = pairs.get(name)
            if not (split or (act is not None and _fusable(conv))):
                continue
            post_op = _post_op(model.get_submodule(act)) if act is not None else None
            undo.append((name, conv))
            _replace(model, name, FusedConv2d(conv, post_op, split=split))
            if post_op is not None:
                undo.append((act, model.get_submodule(act)))
                _replace(model, act, nn.Identity())
        if not undo:
            return 0
        model.double()
        got = outputs()
    finally:
        model.to(dtype)
    if len(expected) == len(got) and all(
            a.shape == b.shape and (a - b).abs().max() <= 1e-6 * max(a.abs().max().item(), 1.0)
            for a, b in zip(expected, got)):
        return sum(isinstance(model.get_submodule(name), (FusedConv2d, FusedGatedBlock)) for name, _ in undo)
    for name, module in reversed(undo):
        _replace(model, name, module)
    log.warning("Convolution fusion changed the model's outputs on the check example; running unfused.")
    return 0
