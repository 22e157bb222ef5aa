"""Weight files: exact round trip, and every refusal with a message that says what to do."""
from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from segmatecore import CheckpointError, create_model, load_model, read_metadata, save_model
from segmatecore.models import SegMateWidths
from segmatecore.models.checkpoint import default_metadata


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = create_model("fastvit_t12").eval()
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_var.uniform_(0.5, 1.5)
    return m


@pytest.fixture(scope="module")
def saved(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "m.safetensors"
    meta = default_metadata("fastvit_t12", provenance={"source": "test", "note": "round trip"})
    meta["preprocessing"]["input_size"] = [64, 64]
    save_model(model, path, meta)
    return path


def test_round_trip_gives_identical_forward(model, saved):
    loaded = load_model(saved, reparameterize=False)
    assert not loaded.training
    x, z = torch.randn(1, 3, 64, 64), torch.tensor([0.4])
    with torch.no_grad():
        a, b = model(x, z), loaded(x, z)
    for t1, t2 in zip(a[:3], b[:3]):
        assert torch.equal(t1, t2)
    assert loaded.metadata["provenance"] == {"source": "test", "note": "round trip"}
    assert loaded.metadata["backbone"] == "fastvit_t12"
    assert loaded.metadata["preprocessing"]["input_size"] == [64, 64]


def test_loading_reparameterises_fastvit_without_changing_outputs(model, saved):
    loaded = load_model(saved)
    assert loaded.is_reparameterized
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a, b = model(x).seg, loaded(x).seg
    assert (a - b).abs().max() / a.abs().max() <= 1e-4


def test_fp16_weights_load_back_as_float32(model, tmp_path):
    path = save_model(model, tmp_path / "half.safetensors", dtype=torch.float16)
    assert path.stat().st_size < 30e6
    loaded = load_model(path, reparameterize=False)
    assert next(loaded.parameters()).dtype == torch.float32


def test_metadata_is_readable_without_loading_tensors(saved):
    meta = read_metadata(saved)
    assert meta["organs"][0] == "left_lung" and len(meta["organs"]) == 9
    assert set(meta["preprocessing"]) >= {"hu_window", "normalize", "input_size", "slice_convention"}


def test_not_safetensors_is_refused(tmp_path):
    path = tmp_path / "notes.safetensors"
    path.write_text("these are not weights, just some text that is long enough")
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_model(path)


def test_truncated_file_is_refused(saved, tmp_path):
    data = saved.read_bytes()
    path = tmp_path / "cut.safetensors"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_model(path)


def test_pickle_payload_is_never_unpickled(tmp_path):
    marker = tmp_path / "executed"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.safetensors"
    path.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(CheckpointError):
        load_model(path)
    pth = tmp_path / "model.pth"
    torch.save({"state": torch.zeros(2), "payload": Payload()}, pth)
    with pytest.raises(CheckpointError, match="pickled PyTorch checkpoint"):
        load_model(pth)
    assert not marker.exists()


def test_safetensors_without_metadata_is_refused(tmp_path):
    path = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(3)}, str(path))
    with pytest.raises(CheckpointError, match="no SegMate metadata"):
        load_model(path)


@pytest.mark.parametrize("change,message", [
    ({"architecture": "UNet"}, "unknown architecture"),
    ({"backbone": "no_such_backbone"}, "Unknown backbone"),
    ({"format_version": 99}, "format version"),
    ({"organs": ["left_lung", "spleen"]}, "unknown organ"),
])
def test_unknown_metadata_is_refused(model, tmp_path, change, message):
    meta = default_metadata("fastvit_t12")
    meta.update(change)
    path = tmp_path / "bad.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path),
              metadata={"segmate": json.dumps(meta)})
    with pytest.raises(CheckpointError, match=message):
        load_model(path)


def test_missing_metadata_keys_are_listed(model, tmp_path):
    meta = default_metadata("fastvit_t12")
    del meta["preprocessing"], meta["z_norm"]
    path = tmp_path / "bad.safetensors"
    save_file({"w": torch.zeros(1)}, str(path), metadata={"segmate": json.dumps(meta)})
    with pytest.raises(CheckpointError, match="preprocessing, z_norm"):
        load_model(path)


def test_tensors_that_do_not_fit_are_listed(model, tmp_path):
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    state["seg_head.weight"] = torch.zeros(5, 32, 1, 1)
    del state["aspp.project.0.weight"]
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "shapes.safetensors"
    save_file(state, str(path), metadata={"segmate": json.dumps(default_metadata("fastvit_t12"))})
    with pytest.raises(CheckpointError) as err:
        load_model(path)
    text = str(err.value)
    assert "missing aspp.project.0.weight" in text and "seg_head.weight has shape (5, 32, 1, 1)" in text
    assert "unexpected extra.weight" in text


def test_wrong_backbone_in_metadata_is_refused(model, tmp_path):
    path = tmp_path / "mismatch.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path),
              metadata={"segmate": json.dumps(default_metadata("mambaout_tiny"))})
    with pytest.raises(CheckpointError, match="do not fit a mambaout_tiny"):
        load_model(path)


def test_input_size_not_multiple_of_32_is_refused(model, tmp_path):
    meta = default_metadata("fastvit_t12")
    meta["preprocessing"]["input_size"] = [100, 100]
    with pytest.raises(CheckpointError, match="multiples of 32"):
        save_model(model, tmp_path / "x.safetensors", meta)


def test_header_length_beyond_file_is_refused(tmp_path):
    path = tmp_path / "lying.safetensors"
    path.write_bytes(struct.pack("<Q", 10_000) + b"{}" * 10)
    with pytest.raises(CheckpointError, match="truncated"):
        read_metadata(path)


def test_update_metadata_copies_the_tensors_as_stored_and_refuses_bad_metadata(model, tmp_path):
    from safetensors import safe_open

    from segmatecore.models.checkpoint import update_metadata

    path = save_model(model, tmp_path / "m.safetensors", dtype=torch.float16)
    out = tmp_path / "updated.safetensors"
    update_metadata(path, lambda meta: meta.update(mask_thresholds={"spinal_cord": 0.7}), output=out)
    assert read_metadata(out)["mask_thresholds"] == {"spinal_cord": 0.7}
    with safe_open(str(path), framework="pt") as a, safe_open(str(out), framework="pt") as b:
        assert set(a.keys()) == set(b.keys())
        for key in a.keys():
            assert b.get_tensor(key).dtype == a.get_tensor(key).dtype and torch.equal(a.get_tensor(key), b.get_tensor(key))
    before = path.read_bytes()
    with pytest.raises(CheckpointError, match="mask_thresholds"):
        update_metadata(path, lambda meta: meta.update(mask_thresholds={"spinal_cord": 1.5}))
    assert path.read_bytes() == before  # nothing written


REPO = Path(__file__).resolve().parents[2]
BUNDLED = REPO / "Resources" / "Models" / "segmate_hn_fastvit_t12.safetensors"


def test_widths_are_saved_and_rebuild_the_same_network(tmp_path):
    torch.manual_seed(0)
    narrow = SegMateWidths(align=(8, 16, 24, 32), decoder=(32, 24, 16, 8), blocks=(32, 24, 16, 12), aspp=48)
    model = create_model("fastvit_t12", widths=narrow).eval()
    path = save_model(model, tmp_path / "narrow.safetensors")
    assert read_metadata(path)["widths"] == {"align": [8, 16, 24, 32], "decoder": [32, 24, 16, 8],
                                            "blocks": [32, 24, 16, 12], "aspp": 48}
    loaded = load_model(path, reparameterize=False)
    assert loaded.widths == narrow
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x).seg, loaded(x).seg)


def test_bad_widths_in_metadata_are_refused(model, tmp_path):
    meta = default_metadata("fastvit_t12", widths={"align": [40, 64], "decoder": [1, 2, 3, 4],
                                                   "blocks": [1, 2, 3, 4], "aspp": 8})
    path = tmp_path / "bad.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path), metadata={"segmate": json.dumps(meta)})
    with pytest.raises(CheckpointError, match="align"):
        load_model(path)


def test_a_file_without_widths_loads_with_the_papers_bit_identically(tmp_path):
    """The bundled model predates recorded widths: it loads as the paper's network, every tensor as stored."""
    from safetensors.torch import load_file

    assert "widths" not in read_metadata(BUNDLED)
    loaded = load_model(BUNDLED, reparameterize=False)
    assert loaded.widths == SegMateWidths()
    stored = load_file(str(BUNDLED))
    state = loaded.state_dict()
    assert set(stored) == set(state)
    assert all(torch.equal(stored[k].to(state[k].dtype), state[k]) for k in stored)


@pytest.mark.parametrize("backbone", ["resnet18", "efficientnet_b0"])
def test_a_backbone_outside_the_papers_saves_and_loads(backbone, tmp_path):
    torch.manual_seed(0)
    model = create_model(backbone).eval()
    path = save_model(model, tmp_path / f"{backbone}.safetensors")
    assert read_metadata(path)["backbone"] == backbone
    loaded = load_model(path)
    assert loaded.backbone == backbone and loaded.metadata["backbone"] == backbone
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a, b = model(x, torch.tensor([0.3])), loaded(x, torch.tensor([0.3]))
    assert torch.equal(a.seg, b.seg) and torch.equal(a.presence, b.presence)


def test_metadata_is_the_networks_own_from_construction(saved):
    """load_model builds the network with its file's metadata; save_model reads it back."""
    assert create_model("fastvit_t12").metadata is None
    loaded = load_model(saved, reparameterize=False)
    assert loaded.metadata == read_metadata(saved)
    meta = default_metadata("fastvit_t12", provenance={"source": "test", "note": "given at construction"})
    assert create_model("fastvit_t12", metadata=meta).metadata is meta
