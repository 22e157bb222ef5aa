"""The first pass's encodings serve the main pass: same labels, and no slice encoded twice."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from segmatecore.bench.inputs import benchmark_model, calibration_slices
from segmatecore.data.geometry import to_canonical
from segmatecore.inference.labels import ProbabilitiesOnGrid
from segmatecore.inference.predictor import SegMatePredictor
from segmatecore.runtime.feature_cache import DEFAULT_MAX_MB, FeatureCache
from segmatecore.models import Encoded


@pytest.fixture(scope="module")
def ct(shared_data) -> sitk.Image:
    return sitk.ReadImage(str(shared_data / "totalseg_example" / "example_ct_sm.nii.gz"))


@pytest.fixture(scope="module")
def network(ct):
    """A random FastViT-T12 at 64 x 64 whose masks and presence vary over the CT (segmate bench's)."""
    model = benchmark_model("fastvit_t12", calibration_slices(ct, (64, 64)))
    model.eval().reparameterize()
    model.encoded_slices = []

    def count(module, args, out):  # segment() runs under inference_mode; preparing the network does not
        if torch.is_inference_mode_enabled():
            model.encoded_slices.append(args[0].shape[0])

    model.encoder.register_forward_hook(count)  # kept by the copy segment() prepares
    model.boundary_calls = []  # a training signal: inference never computes it
    model.boundary_head.register_forward_hook(
        lambda module, args, out: model.boundary_calls.append(1) if torch.is_inference_mode_enabled() else None)
    model.decoded_slices = []
    model.decoder.register_forward_hook(
        lambda module, args, out: model.decoded_slices.append(args[0].shape[0]) if torch.is_inference_mode_enabled()
        else None)
    return model


def run(ct, network, batch_size=4, feature_cache_mb=DEFAULT_MAX_MB, **kwargs):
    """Labels, main-pass probabilities and the number of slices the encoder ran.

    The probabilities come from a second run through the predictor's stream, the same passes; the
    slice counts are the segmentation's own."""
    predictor = SegMatePredictor(network, device="cpu", batch_size=batch_size, feature_cache_mb=feature_cache_mb)
    counted = (network.encoded_slices, network.decoded_slices, network.boundary_calls)
    for values in counted:
        values.clear()
    result = predictor.segment(ct, **kwargs)
    kept = [list(values) for values in counted]
    probabilities = {}
    network.resampled_slices = []

    def sink(t, p):
        network.resampled_slices.append(len(t))
        for i, index in enumerate(t):
            probabilities[int(index)] = p[i].clone()

    size = to_canonical(ct)[0].shape[:2]
    predictor.stream(ct, ProbabilitiesOnGrid(sink, size), tta=kwargs.get("tta", False))
    for values, before in zip(counted, kept):
        values[:] = before
    return result, sitk.GetArrayFromImage(result.labelmap), probabilities, sum(network.encoded_slices)


def assert_same(a, b):
    result_a, labels_a, probabilities_a, _ = a
    result_b, labels_b, probabilities_b, _ = b
    assert probabilities_a.keys() == probabilities_b.keys()
    for index in probabilities_a:
        torch.testing.assert_close(probabilities_a[index], probabilities_b[index], atol=1e-5, rtol=0)
    assert np.mean(labels_a != labels_b) < 1e-4
    assert result_a.z_range == result_b.z_range


def test_the_main_pass_decodes_what_the_first_pass_encoded_and_draws_the_same_labels(ct, network):
    depth = ct.GetSize()[2]
    again = run(ct, network, feature_cache_mb=0)
    assert network.boundary_calls == []  # a training signal: not computed without the cache either
    reused = run(ct, network)
    assert_same(reused, again)
    first_pass = again[0].z_range["slices_run"]
    assert 0 < first_pass < depth
    # without the cache every first-pass slice is encoded twice; with it, every slice exactly once
    assert again[3] == depth + first_pass
    assert reused[3] == depth
    assert network.boundary_calls == []
    cache = reused[0].model_info["feature_cache"]
    assert cache["slices_stored"] == cache["slices_reused"] == first_pass and not cache["cap_reached"]
    assert again[0].model_info["feature_cache"] is None


@pytest.mark.parametrize("batch_size", [2, 4])
def test_the_encoder_still_runs_full_batches_when_half_the_slices_come_from_the_cache(ct, network, batch_size):
    """bf16 on a CPU encodes one slice at half the speed of two: the main pass takes twice the
    batch, so that the slices it must encode still fill one, and decodes it in two."""
    result = run(ct, network, batch_size=batch_size)[0]
    batches = network.encoded_slices
    assert result.model_info["feature_cache"]["slices_reused"] > 0
    assert all(n == batch_size for n in batches[:-1]), batches
    # the decoder's and the resampling's memory stay one batch's
    assert max(network.decoded_slices) == max(network.resampled_slices) == batch_size
    assert result.model_info["batch_size"] == batch_size


def test_a_cache_too_small_for_every_slice_encodes_the_rest_again(ct, network):
    one_slice = sum(t.numel() * t.element_size() for t in (*network_encoding(network).skips,
                                                            network_encoding(network).context))
    small = run(ct, network, feature_cache_mb=2.5 * one_slice / 2**20)
    reference = run(ct, network, feature_cache_mb=0)
    assert_same(small, reference)
    cache = small[0].model_info["feature_cache"]
    assert cache["slices_stored"] == 2 and cache["cap_reached"]
    assert small[3] == reference[3] - 2


def test_mirror_tta_reuses_both_views(ct, network):
    again = run(ct, network, feature_cache_mb=0, tta=True)
    reused = run(ct, network, tta=True)
    assert_same(reused, again)
    depth = ct.GetSize()[2]
    assert reused[3] == 2 * depth and again[3] == 2 * (depth + again[0].z_range["slices_run"])


def network_encoding(network) -> Encoded:
    with torch.inference_mode():
        return network.encode(torch.zeros(1, 3, 64, 64)).to(torch.device("cpu"))


def test_the_cache_keeps_whole_slices_under_its_cap_and_forgets_what_was_used():
    def encoded(batch: int, value: float) -> Encoded:
        return Encoded((torch.full((batch, 2, 4, 4), value),), torch.full((batch, 3, 1, 1), value), (8, 8))

    slice_bytes = (2 * 16 + 3) * 4
    cache = FeatureCache(max_bytes=3 * slice_bytes)
    cache.put([5, 7], encoded(2, 1.0))
    cache.put([9, 11], encoded(2, 2.0))
    assert sorted(cache.entries) == [5, 7, 9] and cache.full
    assert torch.all(cache.get(9).context == 2.0) and cache.get(11) is None
    assert cache.get(5).skips[0].shape == (1, 2, 4, 4)
    cache.release([5, 6])
    cache.keep_only([9])
    assert list(cache.entries) == [9] and cache.bytes == slice_bytes
    assert cache.summary() == {"slices_stored": 3, "slices_reused": 1, "peak_mb": round(3 * slice_bytes / 2**20, 1),
                               "cap_reached": True}


@pytest.mark.parametrize("options", [{}, {"feature_cache_mb": 0}, {"tta": True}])
def test_on_a_gpu_every_network_call_runs_a_full_batch_and_the_labels_stay_the_same(ct, network, monkeypatch,
                                                                                 options):
    """A GPU prepares its kernels once per batch shape, so there segment() repeats the last slice of
    a short batch up to the batch size and drops the extra outputs (checked here on the CPU with the
    GPU's policy; Testing/runtime/test_cuda.py runs it on a GPU)."""
    from segmatecore.runtime import network as runtime_network

    plain = run(ct, network, batch_size=4, **options)
    assert any(n != 4 for n in network.encoded_slices + network.decoded_slices)  # the case has short batches
    monkeypatch.setattr(runtime_network, "FIXED_BATCH_DEVICES", ("cuda", "cpu"))
    padded = run(ct, network, batch_size=4, **options)
    assert set(network.encoded_slices) == set(network.decoded_slices) == {4}
    assert_same(padded, plain)
    assert padded[0].model_info["feature_cache"] == plain[0].model_info["feature_cache"]
