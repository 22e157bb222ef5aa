"""Damaged, hostile and inconsistent weight files: each refused with a clear message, nothing loaded or run.

The file under attack is a real (untrained) FastViT-T12 SegMate model; hypothesis fuzzes its header,
flips its bytes and cuts it short with a fixed seed and a bounded number of examples.
"""
from __future__ import annotations

import hashlib
import json
import pickle
import re
import shutil
import struct
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from segmatecore.hub import catalogue
from segmatecore.hub import download as installer
from segmatecore.models import checkpoint
from segmatecore.models.checkpoint import CheckpointError, default_metadata, load_model, read_metadata, save_model
from segmatecore.models import backbone_spec, create_model
from segmatecore.models.research import load_research_checkpoint

REPO = Path(__file__).resolve().parents[2]
FUZZ = settings(derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def fuzz(examples: int) -> settings:
    """A fixed seed and a bounded number of examples, so the suite stays fast and repeatable."""
    return settings(FUZZ, max_examples=examples)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A real SegMate model file and what a faithful load of it gives."""
    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    model = create_model("fastvit_t12")
    meta = default_metadata("fastvit_t12", provenance={"source": "test: untrained weights"})
    meta["preprocessing"]["input_size"] = [64, 64]
    path = save_model(model, folder / "segmate.safetensors", meta, dtype=torch.float16)
    data = path.read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    state = {k: v.to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    return {"path": path, "bytes": data, "header_end": 8 + header_len, "sha256": hashlib.sha256(data).hexdigest(),
            "meta": meta, "state": state, "tensors": load_file(str(path))}


def scratch_file(name: str, payload: bytes) -> Path:
    """A fresh file for one hypothesis example (fixtures such as tmp_path are per test, not per example)."""
    folder = Path(tempfile.mkdtemp(prefix="segmate-fuzz-"))
    path = folder / name
    path.write_bytes(payload)
    return path


def assert_refused(path: Path) -> CheckpointError:
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    return info.value


# ---- fuzzed header ----------------------------------------------------------------------------

json_values = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                                       max_size=4),
                           max_leaves=12)


@st.composite
def damaged_headers(draw, weights_data):
    """The model file with its safetensors header damaged in one of several ways."""
    data, header_end = weights_data["bytes"], weights_data["header_end"]
    kind = draw(st.sampled_from(["bytes", "length", "json", "metadata"]))
    if kind == "bytes":  # a few bytes anywhere in the length prefix or the JSON header
        body = bytearray(data)
        for _ in range(draw(st.integers(1, 6))):
            at = draw(st.integers(0, header_end - 1))
            body[at] = draw(st.integers(0, 255).filter(lambda b, at=at: b != data[at]))
        return bytes(body)
    if kind == "length":  # the header length itself
        length = draw(st.integers(0, 2**64 - 1).filter(lambda n: n != header_end - 8))
        return struct.pack("<Q", length) + data[8:]
    header = json.loads(data[8:header_end])
    if kind == "json":  # a random JSON header in place of the real one, the tensors unchanged
        header = draw(json_values)
    else:  # the SegMate metadata replaced by random JSON, or one of its keys changed to random JSON
        meta = json.loads(header["__metadata__"]["segmate"])
        if draw(st.booleans()):
            meta = draw(json_values)
        else:
            meta[draw(st.sampled_from(sorted(meta)))] = draw(json_values)
        header["__metadata__"] = {"segmate": json.dumps(meta)}
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data[header_end:]


@fuzz(40)
@given(data=st.data())
def test_fuzzed_header_is_refused_or_changes_nothing(weights, data):
    damaged = data.draw(damaged_headers(weights))
    path = scratch_file("segmate.safetensors", damaged)
    assert not catalogue.verify_sha256(path, weights["sha256"])
    try:
        model = load_model(path, reparameterize=False)
    except CheckpointError as exc:
        assert str(path) in str(exc) and "\n" not in str(exc)
        event(str(exc).replace(str(path), "FILE")[:60])  # shown by --hypothesis-show-statistics
    else:  # a change the format tolerates (e.g. in a free-text field): the very same tensors were loaded
        loaded = model.state_dict()
        assert all(torch.equal(loaded[k].to(torch.float16), v) for k, v in weights["tensors"].items())
    finally:
        shutil.rmtree(path.parent)


# ---- byte flips and the catalogue's SHA-256 -----------------------------------------------------

@fuzz(30)
@given(at=st.floats(0.0, 1.0, exclude_max=True), mask=st.integers(1, 255))
def test_any_byte_flip_is_caught_by_the_sha256(weights, at, mask):
    body = bytearray(weights["bytes"])
    body[int(at * len(body))] ^= mask
    path = scratch_file("segmate.safetensors", bytes(body))
    try:
        assert not catalogue.verify_sha256(path, weights["sha256"])
    finally:
        shutil.rmtree(path.parent)
    assert catalogue.verify_sha256(weights["path"], weights["sha256"])


def test_a_flip_in_the_tensor_data_loads_silently_without_the_sha256(weights, tmp_path):
    """Why the catalogue checks SHA-256: the format alone cannot see a flipped weight."""
    body = bytearray(weights["bytes"])
    body[(weights["header_end"] + len(body)) // 2] ^= 0x40
    path = tmp_path / "segmate.safetensors"
    path.write_bytes(bytes(body))
    changed = load_file(str(path))
    assert any(not torch.equal(changed[k], v) for k, v in weights["tensors"].items())
    assert not catalogue.verify_sha256(path, weights["sha256"])


class PayloadServer(ThreadingHTTPServer):
    """Serves whatever bytes ``payload`` holds at any address, on 127.0.0.1."""

    daemon_threads = True

    def __init__(self):
        self.payload = b""
        super().__init__(("127.0.0.1", 0), PayloadHandler)


class PayloadHandler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        body = self.server.payload
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def catalogue_entry(model_id: str, payload: bytes, url: str) -> dict:
    organs = [o["key"] for o in json.loads((REPO / "Resources" / "organs.json").read_text())["organs"]]
    return {"id": model_id, "title": f"test model {model_id}", "version": "1.0", "backbone": "fastvit_t12",
            "organs": organs, "trained_organs": organs, "input_size": [64, 64], "file_size": len(payload),
            "sha256": hashlib.sha256(payload).hexdigest(), "license": "Apache-2.0", "url": url, "demo": True,
            "metrics": {"dataset": "none (test)", "cases": 1, "organs": {"liver": {"dice": 0.5}}},
            "cpu_seconds_per_volume": 1.0}


@pytest.fixture(scope="module")
def served_catalogue(weights, tmp_path_factory):
    """A catalogue (temporary Resources/ and cache) listing the model file for download from 127.0.0.1."""
    root = tmp_path_factory.mktemp("catalogue")
    resources = root / "Resources"
    (resources / "Models").mkdir(parents=True)
    for name in ("organs.json", "models.schema.json"):
        shutil.copy(REPO / "Resources" / name, resources / name)
    server = PayloadServer()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/segmate.safetensors"
    shutil.copy(weights["path"], resources / "Models" / "bundled_model.safetensors")
    models = [catalogue_entry("bundled_model", weights["bytes"], ""),
              catalogue_entry("served_model", weights["bytes"], url)]
    (resources / "models.json").write_text(json.dumps({"format_version": 1, "default_model": "bundled_model",
                                                       "models": models}))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SEGMATE_RESOURCES", str(resources))
        patch.setenv("SEGMATE_HOME", str(root / "home"))
        yield {"server": server, "cache": root / "home" / "models"}
    server.shutdown()
    server.server_close()


@fuzz(6)
@given(at=st.floats(0.0, 1.0, exclude_max=True), mask=st.integers(1, 255))
def test_download_with_a_flipped_byte_is_refused_and_nothing_installed(weights, served_catalogue, at, mask):
    body = bytearray(weights["bytes"])
    body[int(at * len(body))] ^= mask
    served_catalogue["server"].payload = bytes(body)
    with pytest.raises(catalogue.CatalogueError, match="does not match the catalogue's SHA-256 .*Nothing was "
                                                       "installed"):
        installer.download("served_model", progress=False)
    cache = served_catalogue["cache"]
    assert not cache.exists() or list(cache.iterdir()) == []


@pytest.mark.parametrize("where", ["header", "tensors"])
def test_damaged_copy_is_not_imported_under_a_catalogue_name(weights, served_catalogue, tmp_path, where):
    body = bytearray(weights["bytes"])
    body[weights["header_end"] // 2 if where == "header" else (weights["header_end"] + len(body)) // 2] ^= 0x01
    path = tmp_path / "served_model.safetensors"
    path.write_bytes(bytes(body))
    with pytest.raises((catalogue.CatalogueError, CheckpointError),
                       match="has the name of catalogue model served_model but not its SHA-256|not a safetensors|"
                             "metadata|do not fit|could not be read"):
        installer.install_from_file(path)
    cache = served_catalogue["cache"]
    assert not cache.exists() or list(cache.iterdir()) == []


# ---- truncated files ------------------------------------------------------------------------------

@fuzz(30)
@given(keep=st.floats(0.0, 1.0, exclude_max=True))
def test_truncated_file_is_refused_before_any_tensor_is_read(weights, keep, monkeypatch):
    cut = int(keep * len(weights["bytes"]))
    path = scratch_file("segmate.safetensors", weights["bytes"][:cut])
    reads = []
    monkeypatch.setattr(checkpoint, "load_file", lambda *a, **k: reads.append(a))
    try:
        error = assert_refused(path)
        assert "truncated" in str(error) or "not a safetensors file" in str(error)
    finally:
        shutil.rmtree(path.parent)
    assert reads == []


# ---- pickles ----------------------------------------------------------------------------------

class Payload:
    """Unpickling this object runs code: it writes the file named by ``marker``."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pickle code ran')",))


def hostile_files(folder: Path, marker: Path) -> dict[str, Path]:
    """Files that run code when unpickled, in every form a .pth takes, plus a harmless state dict."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        files[f"pickle-protocol-{protocol}"] = folder / f"protocol{protocol}.pth"
        files[f"pickle-protocol-{protocol}"].write_bytes(pickle.dumps({"state_dict": Payload(marker)}, protocol))
    torch.save({"model_state_dict": Payload(marker)}, folder / "torch_zip.pth")
    torch.save({"model_state_dict": Payload(marker)}, folder / "torch_legacy.pth", _use_new_zipfile_serialization=False)
    torch.save(Payload(marker), folder / "disguised.safetensors")
    files.update({"torch.save zip": folder / "torch_zip.pth", "torch.save legacy": folder / "torch_legacy.pth",
                  "named .safetensors": folder / "disguised.safetensors"})
    return files


def test_the_hostile_pickles_really_run_code_when_unpickled(tmp_path):
    """The control: unpickled the unsafe way, each payload does write its (harmless) marker."""
    marker = tmp_path / "control-marker"
    for name, path in hostile_files(tmp_path / "control", marker).items():
        with path.open("rb") as fh:  # a file object: torch.load would hand a .safetensors name to safetensors
            pickle.load(fh) if name.startswith("pickle") else torch.load(fh, weights_only=False)
        assert marker.read_text() == "pickle code ran", name
        marker.unlink()


def test_pickles_presented_as_models_are_refused_and_never_run(tmp_path, monkeypatch, weights):
    marker = tmp_path / "marker"
    unpickled = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: unpickled.append(a))
    monkeypatch.setattr(pickle, "load", lambda *a, **k: unpickled.append(a))
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: unpickled.append(a))
    for name, path in hostile_files(tmp_path / "files", marker).items():
        error = assert_refused(path)
        if "protocol-0" not in name and "protocol-1" not in name:
            assert "pickled PyTorch checkpoint (.pth), which SegMate never loads" in str(error), name
        with pytest.raises(CheckpointError):
            read_metadata(path)
        with pytest.raises((catalogue.CatalogueError, CheckpointError), match="not a .safetensors file|"
                                                                              "not a safetensors file|pickled"):
            installer.install_from_file(path)
    assert unpickled == [] and not marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch notes the raw pickles' protocols 3-5
def test_research_import_reads_only_tensors_and_refuses_code(tmp_path):
    marker = tmp_path / "marker"
    for name, path in hostile_files(tmp_path / "files", marker).items():
        with pytest.raises(ValueError, match="with weights_only=True"):
            load_research_checkpoint(path)
    assert not marker.exists()


def test_a_plain_pickled_state_dict_is_refused_with_the_conversion_command(weights, tmp_path):
    path = tmp_path / "model.pth"
    torch.save(weights["state"], path)
    error = assert_refused(path)
    assert "segmate import-research CKPT.pth --backbone NAME -o OUT.safetensors" in str(error)


# ---- metadata that does not fit the tensors ---------------------------------------------------------

def with_metadata(weights, folder: Path, **changes) -> Path:
    meta = json.loads(json.dumps(weights["meta"]))
    for key, value in changes.items():
        if key == "input_size":
            meta["preprocessing"]["input_size"] = value
        else:
            meta[key] = value
    path = folder / "segmate.safetensors"
    save_file(weights["state"], str(path), metadata={"segmate": json.dumps(meta)})
    return path


@pytest.mark.parametrize("changes, message", [
    ({"organs": default_metadata("fastvit_t12")["organs"][:8],
      "trained_organs": default_metadata("fastvit_t12")["organs"][:8]},
     r"do not fit a fastvit_t12 SegMateNet with 8 organs .*has shape \(9, 32, 1, 1\), expected \(8, 32, 1, 1\)"),
    ({"organs": ["liver"] * 9}, "'organs' must be a list of distinct organ keys"),
    ({"organs": ["left_lung", "right_lung", "spinal_cord", "esophagus", "liver", "left_kidney", "right_kidney",
                 "aorta", "pancreas"]}, r"unknown organ keys \['pancreas'\]"),
    ({"backbone": backbone_spec("mambaout_tiny").timm_name}, "do not fit a mambaout_tiny SegMateNet"),
    ({"deep_supervision": True}, "missing deep_heads.0.weight"),
    ({"input_size": [500, 500]}, r"input_size \[500, 500\] must be two positive multiples of 32"),
    ({"input_size": [64]}, r"input_size \[64\] must be two positive multiples of 32"),
])
def test_metadata_that_does_not_fit_the_tensors_is_refused(weights, tmp_path, changes, message):
    error = assert_refused(with_metadata(weights, tmp_path, **changes))
    assert re.search(message, str(error)), str(error)


def test_input_size_is_bound_to_the_file_by_the_sha256(weights, served_catalogue, tmp_path):
    """A fully convolutional network has no tensor that fixes its input size: the catalogue's SHA-256 does."""
    other = with_metadata(weights, tmp_path, input_size=[128, 128])
    assert read_metadata(other)["preprocessing"]["input_size"] == [128, 128]
    named = tmp_path / "served_model.safetensors"
    other.rename(named)
    with pytest.raises(catalogue.CatalogueError, match="has the name of catalogue model served_model but not its "
                                                       "SHA-256"):
        installer.install_from_file(named)
