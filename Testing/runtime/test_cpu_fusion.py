"""Convolutions fused with their activation, grouped convolutions split into depthwise ones, and
MambaOut's gated blocks rewritten must compute what the original model computes
(segmatecore.runtime.cpu_fusion)."""
from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from segmatecore.runtime import cpu_fusion
from segmatecore.bench.inputs import benchmark_model, calibration_slices
from segmatecore.runtime.cpu_fusion import FusedConv2d, FusedGatedBlock, fuse_convolutions
from segmatecore.runtime.optimize import DEFAULT, fusion_notice, prepare_for_inference

pytestmark = pytest.mark.usefixtures("one_torch_thread")
needs_fusion = pytest.mark.skipif(not cpu_fusion.available(), reason="this PyTorch cannot fuse convolutions")

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def slices(sample_ct) -> torch.Tensor:
    """Four normalised 2.5D stacks of the bundled sample CT at 64 x 64."""
    return calibration_slices(sample_ct, (64, 64), count=4)


@pytest.mark.parametrize("activation", [nn.GELU(), nn.GELU(approximate="tanh"), nn.SiLU(), nn.ReLU(), None],
                         ids=["gelu", "gelu_tanh", "silu", "relu", "none"])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("groups,out_channels", [(1, 12), (6, 12), (6, 18)], ids=["dense", "grouped_x2", "grouped_x3"])
def test_fused_convolution_computes_the_convolution_then_the_activation(activation, layout, groups, out_channels):
    torch.manual_seed(0)
    conv = nn.Conv2d(6, out_channels, 7, stride=2, padding=3, groups=groups)
    x = (3 * torch.randn(2, 6, 20, 18)).contiguous(memory_format=layout)
    expected = conv(x)
    if activation is not None:
        expected = activation(expected)
    post_op = cpu_fusion._post_op(activation) if activation is not None else None
    split = groups == 6
    fused = FusedConv2d(conv, post_op, split=split)
    assert fused.multiplier == (out_channels // 6 if split else 1)
    with torch.inference_mode():
        got = fused(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@needs_fusion
def test_fastvit_is_rewritten_and_its_outputs_are_kept(slices):
    model = benchmark_model("fastvit_t12", slices)
    z = torch.linspace(0, 1, len(slices))
    plain, _ = prepare_for_inference(model, CPU, "fp32", optimizations=DEFAULT.with_(fuse_convolutions=False))
    fused, _ = prepare_for_inference(model, CPU, "fp32", optimizations=DEFAULT)
    rewritten = [m for m in fused.modules() if isinstance(m, FusedConv2d)]
    # every ConvMlp's GELU, the GELU of FastViT's blocks, the decoder's ReLUs; and the three 7x7
    # downsampling convolutions (64 -> 128, 128 -> 256, 256 -> 512 channels) split in two
    assert sum(m.post_op == ("gelu", "none") for m in rewritten) >= 12
    assert sum(m.post_op == ("relu", "") for m in rewritten) >= 1
    assert sorted(m.weight.shape[0] for m in rewritten if m.multiplier == 2) == [128, 256, 512]
    assert not any(isinstance(m, FusedConv2d) for m in plain.modules())
    with torch.inference_mode():
        expected, got = plain(slices, z), fused(slices, z)
    torch.testing.assert_close(got.seg, expected.seg, rtol=1e-4, atol=1e-4 * expected.seg.abs().max().item())
    torch.testing.assert_close(got.presence, expected.presence, rtol=0, atol=1e-5)


@needs_fusion
@pytest.mark.parametrize("backbone,at_least", [("fastvit_t12", 45), ("efficientnetv2_m", 165), ("mambaout_tiny", 24)])
def test_every_backbone_is_rewritten_and_keeps_its_masks(backbone, at_least, slices, assert_agrees):
    """The check at preparation must not reject a sound rewrite (the random EfficientNetV2-M turns
    fp32 rounding into large output changes, which an fp32 comparison took for a wrong rewrite), and
    timm's in-place activations are fused (EfficientNetV2-M: 61 without that)."""
    model = benchmark_model(backbone, slices)
    z = torch.linspace(0, 1, len(slices))
    plain, _ = prepare_for_inference(model, CPU, "fp32", optimizations=DEFAULT.with_(fuse_convolutions=False))
    fused, _ = prepare_for_inference(model, CPU, "fp32", optimizations=DEFAULT)
    assert sum(isinstance(m, FusedConv2d) for m in fused.modules()) >= at_least
    with torch.inference_mode():
        assert_agrees(fused(slices, z).seg > 0, plain(slices, z).seg > 0)


@needs_fusion
def test_a_convolution_whose_output_is_also_read_elsewhere_is_left_alone():
    class Shared(nn.Module):
        """The GELU module is the convolution's only module reader, but forward also adds the raw output."""

        def __init__(self):
            super().__init__()
            self.conv, self.act = nn.Conv2d(3, 4, 3, padding=1), nn.GELU()

        def forward(self, x):
            y = self.conv(x)
            return self.act(y) + y

    model = Shared().eval()
    x = torch.randn(1, 3, 8, 8)
    expected = model(x)
    assert fuse_convolutions(model, (x,)) == 0
    assert type(model.conv) is nn.Conv2d and type(model.act) is nn.GELU
    torch.testing.assert_close(model(x), expected)


@needs_fusion
def test_identity_and_dropout_between_convolution_and_activation_are_looked_past():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Identity(), nn.Dropout(0.5), nn.SiLU(),
                          nn.Conv2d(4, 4, 1), nn.Sigmoid()).eval()
    x = torch.randn(2, 3, 8, 8)
    expected = model(x)
    assert fuse_convolutions(model, (x,)) == 1
    assert isinstance(model[0], FusedConv2d) and model[0].post_op == ("swish", "")
    assert isinstance(model[3], nn.Identity)
    assert type(model[4]) is nn.Conv2d, "no activation oneDNN can absorb follows it"
    torch.testing.assert_close(model(x), expected)


@pytest.fixture
def fresh_check():
    """The capability checks run again under the test's PyTorch, and again after it."""
    for check in (cpu_fusion.available, cpu_fusion._onednn_bf16):
        check.cache_clear()
    yield
    for check in (cpu_fusion.available, cpu_fusion._onednn_bf16):
        check.cache_clear()


def _changed_signature(*args):
    raise TypeError("_convolution_pointwise() takes 9 positional arguments but 10 were given")


def _activation_ignored(x, weight, bias, padding, stride, dilation, groups, attr, scalars, algorithm):
    return torch.nn.functional.conv2d(x, weight, bias, stride, padding, dilation, groups)


@pytest.mark.parametrize("mkldnn", [SimpleNamespace(), SimpleNamespace(_convolution_pointwise=_changed_signature),
                                    SimpleNamespace(_convolution_pointwise=_activation_ignored)],
                         ids=["op_missing", "signature_changed", "result_differs"])
def test_a_pytorch_whose_fused_convolution_is_missing_or_differs_gets_a_notice(mkldnn, fresh_check, monkeypatch):
    monkeypatch.setattr(torch.ops, "mkldnn", mkldnn)
    assert not cpu_fusion.available()
    version = ".".join(torch.__version__.split(".")[:2])
    assert cpu_fusion.notice() == (f"CPU convolution fusion is not available with this PyTorch ({version}); "
                                   "running eager PyTorch.")
    assert fusion_notice(CPU) == cpu_fusion.notice()
    assert fusion_notice(torch.device("cuda")) is None and fusion_notice(CPU, DEFAULT.with_(fuse_convolutions=False)) is None
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.GELU()).eval()
    x = torch.randn(1, 3, 8, 8)
    expected = model(x)
    assert fuse_convolutions(model, (x,)) == 0 and type(model[0]) is nn.Conv2d
    torch.testing.assert_close(model(x), expected)


def test_without_fusion_the_network_runs_eager_and_the_notice_is_given_once(slices, fresh_check, monkeypatch, caplog):
    """The op taken away: nothing is rewritten, the outputs are eager PyTorch's, and the check (and
    its log line) happens once however many networks are prepared."""
    tries = []

    def missing(*args):
        tries.append(args)
        raise RuntimeError("No such operator mkldnn::_convolution_pointwise")

    monkeypatch.setattr(torch.ops, "mkldnn", SimpleNamespace(_convolution_pointwise=missing))
    model = benchmark_model("fastvit_t12", slices)
    z = torch.linspace(0, 1, len(slices))
    plain, _ = prepare_for_inference(model, CPU, "fp32", optimizations=DEFAULT.with_(fuse_convolutions=False))
    with caplog.at_level(logging.INFO, logger=cpu_fusion.__name__):
        nets = [prepare_for_inference(model, CPU, precision)[0] for precision in ("fp32", "fp32", "bf16")]
    assert len(tries) == 1, "checked once, and the check stops at the first failure"
    assert [r.getMessage() for r in caplog.records if "fusion" in r.getMessage()] == [cpu_fusion.notice()]
    assert not any(isinstance(m, (FusedConv2d, FusedGatedBlock)) for net in nets for m in net.modules())
    with torch.inference_mode():
        expected = plain(slices, z)
        for net in nets[:2]:
            got = net(slices, z)
            assert torch.equal(got.seg, expected.seg) and torch.equal(got.presence, expected.presence)
        assert torch.isfinite(nets[2](slices, z).seg.float()).all()


@needs_fusion
def test_a_cpu_without_bf16_fused_kernels_runs_them_unfused(fresh_check, monkeypatch):
    """oneDNN raises for a bf16 fused convolution on a CPU without its bf16 kernels: found by the
    check, after which a fused layer computes its bf16 convolution and activation eagerly."""
    real = torch.ops.mkldnn._convolution_pointwise

    def fp32_only(x, *args):
        if x.dtype == torch.bfloat16:
            raise RuntimeError("mkldnn_convolution: bf16 path needs the cpu support avx512bw, avx512vl and avx512dq")
        return real(x, *args)

    monkeypatch.setattr(torch.ops, "mkldnn", SimpleNamespace(_convolution_pointwise=fp32_only))
    assert cpu_fusion.available() and not cpu_fusion._onednn_bf16() and cpu_fusion.notice() is None
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 12, 3, padding=1).to(torch.bfloat16)
    x = torch.randn(2, 6, 10, 10).to(torch.bfloat16)
    fused = FusedConv2d(conv, ("swish", ""))
    with torch.inference_mode():
        torch.testing.assert_close(fused(x), nn.functional.silu(conv(x)))


@needs_fusion
def test_fused_model_runs_in_bf16_channels_last(slices):
    model = benchmark_model("fastvit_t12", slices)
    net, _ = prepare_for_inference(model, CPU, "bf16")
    block = next(m for m in net.modules() if isinstance(m, FusedConv2d) and m.multiplier == 2)
    assert block.weight.dtype == torch.bfloat16
    with torch.inference_mode():
        out = net(slices, torch.linspace(0, 1, len(slices)))
    assert out.seg.dtype == torch.bfloat16 and torch.isfinite(out.seg.float()).all()
    # the split convolution's output keeps the channels-last layout oneDNN wants downstream
    x = torch.randn(1, block.weight.shape[0] // 2, 16, 16).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        assert block(x).is_contiguous(memory_format=torch.channels_last)


@needs_fusion
def test_an_in_place_activation_is_fused_and_a_second_reader_prevents_it():
    """timm's activations work in place: the tensor the next layer reads is the convolution's output
    object, now holding the activation's values. That is a read of the activation, not of the conv."""
    class Block(nn.Module):
        def __init__(self, also_read: bool):
            super().__init__()
            self.conv, self.act, self.next = nn.Conv2d(3, 4, 3, padding=1), nn.SiLU(inplace=True), nn.Conv2d(4, 4, 1)
            self.other, self.also_read = nn.Conv2d(4, 4, 1), also_read

        def forward(self, x):
            y = self.conv(x)
            raw = self.other(y) if self.also_read else 0  # a second module reads the raw output
            return self.next(self.act(y)) + raw

    x = torch.randn(2, 3, 8, 8)
    fused = Block(also_read=False).eval()
    expected = fused(x)
    assert fuse_convolutions(fused, (x,)) == 1
    assert isinstance(fused.conv, FusedConv2d) and isinstance(fused.act, nn.Identity)
    torch.testing.assert_close(fused(x), expected)
    shared = Block(also_read=True).eval()
    assert fuse_convolutions(shared, (x,)) == 0
    assert type(shared.conv) is nn.Conv2d


def gated_block(dim: int, conv_ratio: float) -> nn.Module:
    from timm.models.mambaout import GatedConvBlock

    torch.manual_seed(0)
    return GatedConvBlock(dim, conv_ratio=conv_ratio).eval()


@pytest.mark.parametrize("dtype,tolerance", [(torch.float64, 1e-12), (torch.float32, 1e-5), (torch.bfloat16, 1e-2)],
                         ids=["float64", "fp32", "bf16"])
@pytest.mark.parametrize("conv_ratio", [1.0, 8 / 3], ids=["identity_part", "all_convolved"])
def test_gated_block_computes_what_timms_block_computes(dtype, tolerance, conv_ratio):
    """fc1 in three parts and the product written without a concatenation: MambaOut's default split
    (an identity part and a convolved part) and one with no identity part."""
    block = gated_block(24, conv_ratio).to(dtype)
    x = (2 * torch.randn(2, 9, 11, 24)).to(dtype)  # timm's MambaOut blocks work on [B, H, W, C]
    with torch.inference_mode():
        expected = block(x)
        fused = FusedGatedBlock(block)
        assert (fused.fc1_identity is None) == (conv_ratio != 1.0)
        got = fused(x)
    assert got.dtype == dtype and got.shape == expected.shape
    scale = expected.abs().max().item()
    torch.testing.assert_close(got, expected, rtol=tolerance, atol=tolerance * scale)


@needs_fusion
def test_mambaout_gated_blocks_are_rewritten_and_keep_the_outputs(slices):
    from timm.models.mambaout import GatedConvBlock

    model = benchmark_model("mambaout_tiny", slices)
    blocks = sum(type(m) is GatedConvBlock for m in model.modules())
    z = torch.linspace(0, 1, len(slices))
    plain, _ = prepare_for_inference(model, CPU, "fp32", optimizations=DEFAULT.with_(fuse_convolutions=False))
    fused, _ = prepare_for_inference(model, CPU, "fp32", optimizations=DEFAULT)
    assert blocks == 18  # MambaOut-Tiny: 3 + 3 + 9 + 3
    assert sum(isinstance(m, FusedGatedBlock) for m in fused.modules()) == blocks
    assert not any(type(m) is GatedConvBlock for m in fused.modules())
    with torch.inference_mode():
        expected, got = plain(slices, z), fused(slices, z)
    torch.testing.assert_close(got.seg, expected.seg, rtol=1e-4, atol=1e-4 * expected.seg.abs().max().item())


@needs_fusion
def test_a_wrong_gated_rewrite_is_undone(monkeypatch):
    """The float64 check at preparation covers the gated blocks too: a rewrite that changed the
    function (here, fc1's rows taken without their bias) leaves every block as timm wrote it."""
    from timm.models.mambaout import GatedConvBlock

    model = nn.Sequential(gated_block(16, 1.0), gated_block(16, 1.0)).eval()
    x = torch.randn(1, 6, 6, 16)
    expected = model(x)
    correct = cpu_fusion._linear_rows

    def without_bias(linear, start, stop):
        part = correct(linear, start, stop)
        part.bias.data.zero_()
        return part

    monkeypatch.setattr(cpu_fusion, "_linear_rows", without_bias)
    assert fuse_convolutions(model, (x,)) == 0
    assert all(type(m) is GatedConvBlock for m in model)
    torch.testing.assert_close(model(x), expected)
    monkeypatch.undo()
    assert fuse_convolutions(model, (x,)) == 2
    assert all(isinstance(m, FusedGatedBlock) for m in model)
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
    with torch.inference_mode():  # the path that writes the product in place
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
