"""The runtime seam: every network runs behind encode/decode, and a missing accelerator falls back."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from segmatecore.models import create_model
from segmatecore.models.checkpoint import default_metadata
from segmatecore.runtime import network as runtime_network
from segmatecore.runtime.network import SplitNetwork, WholeNetwork, prepare_network

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    model = create_model("fastvit_t12").eval()
    model.metadata = default_metadata("fastvit_t12")
    return model


def test_a_prepared_segmate_network_gives_the_eager_networks_masks(net):
    x, z = 0.1 * torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)), torch.tensor([0.2, 0.8])
    with torch.inference_mode():
        expected = net(x, z)
        network = prepare_network(net, CPU, "fp32")
        assert isinstance(network, SplitNetwork) and network.runtime == "torch"
        out = network.decode(network.encode(x), z, ("seg", "presence"))
    torch.testing.assert_close(out.seg, expected.seg, atol=2e-3, rtol=0)
    torch.testing.assert_close(out.presence, expected.presence, atol=2e-3, rtol=0)
    assert out.boundary is None  # not asked for: never computed


def test_any_module_taking_x_and_z_runs_whole():
    class Plain(nn.Module):
        metadata = default_metadata("fastvit_t12")

        def forward(self, x, z=None):
            return create_output(x)

    def create_output(x):
        from segmatecore.models import SegMateOutput
        seg = x.mean(dim=1, keepdim=True).expand(-1, 9, -1, -1)
        return SegMateOutput(seg, seg, seg.amax(dim=(2, 3)), ())

    network = prepare_network(Plain(), CPU, "fp32")
    assert isinstance(network, WholeNetwork) and not network.caches_encodings
    x = torch.randn(3, 3, 8, 8)
    torch.testing.assert_close(network.decode(network.encode(x), None, ("seg",)).seg, create_output(x).seg)


def test_a_module_without_metadata_is_refused_with_what_to_do():
    with pytest.raises(ValueError, match="needs a .metadata dict"):
        prepare_network(nn.Conv2d(3, 3, 1), CPU)


def test_the_gpu_policy_pads_short_batches_and_returns_only_the_real_slices(net, monkeypatch):
    monkeypatch.setattr(runtime_network, "FIXED_BATCH_DEVICES", ("cuda", "cpu"))
    with torch.inference_mode():
        network = prepare_network(net, CPU, "fp32")
        network.batch_size = 4
        seen = []
        handle = network.module.encoder.register_forward_hook(lambda m, a, o: seen.append(a[0].shape[0]))
        x = torch.randn(3, 3, 64, 64)
        out = network.decode(network.encode(x), torch.tensor([0.1, 0.5, 0.9]), ("seg",))
        handle.remove()
    assert seen == [4] and out.seg.shape[0] == 3


def test_openvino_asked_for_but_missing_is_a_clear_error_and_auto_falls_back_to_torch(net, monkeypatch):
    from segmatecore.runtime import openvino

    monkeypatch.setattr(openvino, "available", lambda: False)
    with pytest.raises(ValueError, match="OpenVINO is not installed"):
        prepare_network(net, CPU, "fp32", runtime="openvino")
    assert prepare_network(net, CPU, "fp32", runtime="auto").runtime == "torch"


def test_without_the_cpu_fusion_the_run_says_so_once_and_gives_eager_results(net, monkeypatch):
    from segmatecore.runtime import cpu_fusion

    monkeypatch.setattr(cpu_fusion, "available", lambda: False)
    x = 0.1 * torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        expected = net(x, None).seg
        network = prepare_network(net, CPU, "fp32")
        out = network.decode(network.encode(x), None, ("seg",)).seg
    assert len(network.notices) == 1 and "fusion" in network.notices[0].lower()
    assert not any(type(m).__name__ == "FusedConv2d" for m in network.module.modules())
    torch.testing.assert_close(out, expected, atol=2e-3, rtol=0)


def test_a_bf16_run_on_the_cpu_checks_the_fusion_outside_its_autocast(net):
    from segmatecore.runtime import cpu_fusion

    cpu_fusion.available.cache_clear()
    cpu_fusion._onednn_bf16.cache_clear()
    with torch.inference_mode():
        network = prepare_network(net, CPU, "bf16")
        out = network.decode(network.encode(torch.zeros(1, 3, 64, 64)), None, ("seg",))
    assert out.seg.shape == (1, 9, 64, 64) and torch.isfinite(out.seg.float()).all()
