"""The model catalogue and cache: downloads from a local HTTP server, imports, removal, the real catalogue.

Every download comes from an http.server on 127.0.0.1 serving a real (untrained) SegMate model
whole, cut short, altered, or dropped mid-body; the catalogue and cache live in temporary folders
(SEGMATE_RESOURCES, SEGMATE_HOME).
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import socket
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jsonschema
import pytest
import torch
from safetensors.torch import save_file

from segmatecore.hub import catalogue
from segmatecore.hub import download as installer
from segmatecore.cli import main as cli
from segmatecore.models.checkpoint import CheckpointError, default_metadata, read_metadata, save_model
from segmatecore.models import backbone_spec, create_model

REPO = Path(__file__).resolve().parents[2]
RESOURCES = REPO / "Resources"
TRAINED = ["spinal_cord", "esophagus"]


# ----------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    """A real FastViT-T12 SegMate model (fp16, untrained) and files that must be refused."""
    folder = tmp_path_factory.mktemp("model_files")
    torch.manual_seed(0)
    model = create_model("fastvit_t12")
    meta = default_metadata("fastvit_t12", trained_organs=TRAINED,
                            provenance={"source": "test: untrained weights"})
    meta["preprocessing"]["input_size"] = [64, 64]
    good = save_model(model, folder / "good.safetensors", meta, dtype=torch.float16)
    # the same weights with other provenance: other bytes, so other catalogue identities
    bundled = save_model(model, folder / "bundled.safetensors", dict(meta, provenance={"source": "test: bundled"}),
                         dtype=torch.float16)
    own = save_model(model, folder / "My_Finetune.safetensors", dict(meta, provenance={"source": "test: own"}),
                     dtype=torch.float16)

    state = {k: v.to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    wrong_meta = dict(meta, backbone=backbone_spec("mambaout_tiny").timm_name)
    wrong = folder / "wrong_architecture.safetensors"
    save_file(state, str(wrong), metadata={"segmate": json.dumps(wrong_meta)})

    foreign = folder / "not_segmate.safetensors"
    save_file({"weight": torch.zeros(3, 3)}, str(foreign))

    pickled = folder / "research.pth"
    torch.save({"model_state_dict": {"w": torch.zeros(2)}}, pickled)
    return {"good": good, "bundled": bundled, "own": own, "wrong": wrong, "foreign": foreign, "pickled": pickled,
            "bytes": good.read_bytes()}


class ModelServer(ThreadingHTTPServer):
    """Serves the good model bytes at /good, and broken variants of them at other paths."""

    daemon_threads = True

    def __init__(self, payload: bytes):
        self.payload = payload
        super().__init__(("127.0.0.1", 0), Handler)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        payload = self.server.payload
        name = self.path.strip("/")
        if name == "good":
            self._send(payload, len(payload))
        elif name == "truncated":  # the hosted file itself is short
            self._send(payload[: len(payload) // 2], len(payload) // 2)
        elif name == "tampered":  # same size, one byte changed in the tensors
            body = bytearray(payload)
            body[len(body) // 2] ^= 0xFF
            self._send(bytes(body), len(body))
        elif name == "interrupted":  # announces the whole file, closes after half of it
            self._send(payload[: len(payload) // 2], len(payload))
        elif name == "reset":  # connection reset mid-body
            self._send(payload[: len(payload) // 3], len(payload))
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        else:
            self.send_error(404)

    def _send(self, body: bytes, length: int) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()


@pytest.fixture(scope="module")
def server(model_files):
    httpd = ModelServer(model_files["bytes"])
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def entry(model_id: str, url: str, payload: bytes, **overrides) -> dict:
    fields = {"id": model_id, "title": f"test model {model_id}", "version": "1.0", "backbone": "fastvit_t12",
              "organs": read_organ_keys(), "trained_organs": TRAINED, "input_size": [64, 64],
              "file_size": len(payload), "sha256": hashlib.sha256(payload).hexdigest(), "license": "Apache-2.0",
              "url": url, "demo": True,
              "metrics": {"dataset": "none (test)", "cases": 1, "organs": {"spinal_cord": {"dice": 0.5}}},
              "cpu_seconds_per_volume": 1.0}
    fields.update(overrides)
    return fields


def read_organ_keys() -> list[str]:
    """The first nine structures of the organ table: the paper's organs, as the test models predict."""
    return [o["key"] for o in json.loads((RESOURCES / "organs.json").read_text())["organs"]][:9]


@pytest.fixture
def env(tmp_path, monkeypatch, model_files, server):
    """Temporary Resources/ (organ table, schema, a catalogue of test models) and SEGMATE_HOME."""
    resources = tmp_path / "Resources"
    (resources / "Models").mkdir(parents=True)
    for name in ("organs.json", "models.schema.json"):
        shutil.copy(RESOURCES / name, resources / name)
    payload = model_files["bytes"]
    shutil.copy(model_files["bundled"], resources / "Models" / "tiny_bundled.safetensors")
    models = [entry("tiny_bundled", "", model_files["bundled"].read_bytes())]
    models += [entry(f"tiny_{name}", f"{server.base_url}/{name}", payload)
               for name in ("good", "truncated", "tampered", "interrupted", "reset", "missing")]
    (resources / "models.json").write_text(json.dumps(
        {"format_version": 1, "default_model": "tiny_bundled", "models": models}, indent=2))
    home = tmp_path / "home"
    monkeypatch.setenv("SEGMATE_RESOURCES", str(resources))
    monkeypatch.setenv("SEGMATE_HOME", str(home))
    return {"resources": resources, "cache": home / "models", "payload": payload}


def cache_contents(env) -> list[str]:
    return sorted(p.name for p in env["cache"].iterdir()) if env["cache"].exists() else []


# ----------------------------------------------------------------------------------------------- downloads


def test_good_download_installs_a_verified_model(env):
    seen = []
    path = installer.download("tiny_good", progress=lambda done, total: seen.append((done, total)))
    assert path == env["cache"] / "tiny_good.safetensors"
    assert path.read_bytes() == env["payload"]
    assert cache_contents(env) == ["tiny_good.safetensors"]
    assert seen[-1] == (len(env["payload"]), len(env["payload"]))
    assert catalogue.resolve_model("tiny_good") == path
    listed = {m["id"]: m for m in catalogue.list_models(verify=True)}
    assert listed["tiny_good"]["installed"] and listed["tiny_good"]["verified"]
    assert not listed["tiny_tampered"]["installed"]
    assert read_metadata(path)["trained_organs"] == TRAINED


@pytest.mark.parametrize("name, message", [("truncated", "incomplete"), ("tampered", "SHA-256"),
                                           ("interrupted", "incomplete"), ("reset", "failed")])
def test_bad_download_is_rejected_and_leaves_nothing(env, name, message):
    with pytest.raises(catalogue.CatalogueError, match=message):
        installer.download(f"tiny_{name}", progress=False)
    assert cache_contents(env) == []
    with pytest.raises(FileNotFoundError, match=f"segmate models download tiny_{name}"):
        catalogue.resolve_model(f"tiny_{name}")


def test_download_stopped_by_the_user_leaves_nothing(env):
    def stop(done, total):
        if done > 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        installer.download("tiny_good", progress=stop)
    assert cache_contents(env) == []


def test_failed_download_keeps_the_installed_copy_and_http_errors_are_clear(env):
    installer.download("tiny_good", progress=False)
    with pytest.raises(catalogue.CatalogueError, match="HTTP 404"):
        installer.download("tiny_missing", progress=False)
    assert cache_contents(env) == ["tiny_good.safetensors"]
    with pytest.raises(catalogue.CatalogueError, match="bundled"):
        installer.download("tiny_bundled", progress=False)


# ----------------------------------------------------------------------------------------------- imports


def test_import_of_wrong_architecture_is_refused_with_a_clear_message(env, model_files):
    with pytest.raises(CheckpointError, match=r"do not fit a mambaout_tiny SegMateNet"):
        installer.install_from_file(model_files["wrong"])
    with pytest.raises(CheckpointError, match="not a SegMate model"):
        installer.install_from_file(model_files["foreign"])
    with pytest.raises(catalogue.CatalogueError, match="segmate import-research"):
        installer.install_from_file(model_files["pickled"])
    assert cache_contents(env) == []


def test_import_installs_checked_files_and_remove_deletes_them(env, model_files):
    installed = installer.install_from_file(model_files["own"])
    assert installed == env["cache"] / "my_finetune.safetensors"
    assert catalogue.resolve_model("my_finetune") == installed
    listed = {m["id"]: m for m in catalogue.list_models()}
    assert listed["my_finetune"]["source"] == "imported"
    assert listed["my_finetune"]["trained_organs"] == TRAINED

    # the bytes of a catalogue entry install as that entry; a bundled model's are already in place
    assert installer.install_from_file(model_files["good"]) == env["cache"] / "tiny_good.safetensors"
    assert installer.install_from_file(model_files["bundled"]) == env["resources"] / "Models" / "tiny_bundled.safetensors"
    assert catalogue.resolve_model("tiny_good").is_file()

    assert installer.remove("my_finetune") == installed and not installed.exists()
    with pytest.raises(catalogue.CatalogueError, match="bundled"):
        installer.remove("tiny_bundled")
    assert [p.name for p in installer.clear_cache()] == ["tiny_good.safetensors"]
    assert cache_contents(env) == []


def test_resolve_model(env, model_files):
    bundled = env["resources"] / "Models" / "tiny_bundled.safetensors"
    assert catalogue.resolve_model(None) == bundled
    assert catalogue.resolve_model("tiny_bundled") == bundled
    assert catalogue.resolve_model(model_files["good"]) == model_files["good"]
    assert catalogue.resolve_model(str(model_files["good"])) == model_files["good"]
    with pytest.raises(catalogue.CatalogueError, match="known models: tiny_bundled"):
        catalogue.resolve_model("no_such_model")
    with pytest.raises(FileNotFoundError):
        catalogue.resolve_model("/no/such/model.safetensors")
    bundled.unlink()
    with pytest.raises(FileNotFoundError, match="bundled model tiny_bundled is missing"):
        catalogue.resolve_model(None)


def _flip_one_weight_byte(path: Path) -> None:
    """Change one byte inside the tensor data (past the header), keeping size and format."""
    data = bytearray(path.read_bytes())
    header = struct.unpack("<Q", data[:8])[0]
    data[8 + header + 1001] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_model_damaged_on_disk_is_refused_at_load(env, model_files):
    """One flipped bit in an installed weight file still loads as safetensors; the SHA-256 must catch it."""
    from segmatecore.hub.loading import load_with_facts

    installed = installer.download("tiny_good", progress=False)
    assert load_with_facts("tiny_good")[0].metadata["trained_organs"] == TRAINED
    _flip_one_weight_byte(installed)
    read_metadata(installed)  # still a readable SegMate file: only the digest tells
    with pytest.raises(catalogue.DamagedModelError, match="segmate models remove tiny_good && segmate models download"):
        load_with_facts("tiny_good")

    bundled = env["resources"] / "Models" / "tiny_bundled.safetensors"
    _flip_one_weight_byte(bundled)
    with pytest.raises(catalogue.DamagedModelError, match="bundled model tiny_bundled is damaged"):
        catalogue.resolve_model(None)


# ----------------------------------------------------------------------------------------------- cache folder


def test_cache_dir_follows_segmate_home_else_the_user_data_folder(monkeypatch, tmp_path):
    from platformdirs import user_data_dir

    monkeypatch.setenv("SEGMATE_HOME", str(tmp_path / "elsewhere"))
    assert catalogue.cache_dir() == tmp_path / "elsewhere" / "models"
    monkeypatch.delenv("SEGMATE_HOME")
    assert catalogue.cache_dir() == Path(user_data_dir("SegMate", appauthor=False)) / "models"


# ----------------------------------------------------------------------------------------------- catalogue


def test_invalid_catalogue_entries_are_refused_naming_the_field(env):
    path = env["resources"] / "models.json"
    data = json.loads(path.read_text())
    data["models"][1]["sha256"] = "not-a-hash"
    path.write_text(json.dumps(data))
    with pytest.raises(catalogue.CatalogueError, match=r"models/1/sha256"):
        catalogue.list_models()
    data["models"][1]["sha256"] = "0" * 64
    data["default_model"] = "tiny_good"
    path.write_text(json.dumps(data))
    with pytest.raises(catalogue.CatalogueError, match="must be a bundled entry"):
        catalogue.list_models()


def test_cli_models_list_import_remove(env, model_files, capsys):
    assert cli.main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "tiny_bundled" in out and "[bundled]" in out and str(env["cache"]) in out
    assert cli.main(["models", "import", str(model_files["wrong"])]) == 2
    assert "do not fit" in capsys.readouterr().err
    assert cli.main(["models", "import", str(model_files["good"])]) == 0
    assert cli.main(["models", "remove", "tiny_good"]) == 0
    assert cache_contents(env) == []
    assert cli.main(["models", "download", "tiny_tampered", "--quiet"]) == 2
    assert "SHA-256" in capsys.readouterr().err


def test_models_entry_fills_a_bundled_entry_from_its_file(env, model_files, tmp_path, capsys):
    path = env["resources"] / "models.json"
    data = json.loads(path.read_text())
    pending = entry("tiny_pending", "", b"", trained_organs=None, file_size=None, sha256=None, metrics=None,
                    cpu_seconds_per_volume=None)
    data["models"].append(pending)
    path.write_text(json.dumps(data))
    weights = env["resources"] / "Models" / "tiny_pending.safetensors"
    shutil.copy(model_files["own"], weights)
    listed = {m["id"]: m for m in catalogue.list_models(verify=True)}
    assert listed["tiny_pending"]["installed"] and not listed["tiny_pending"]["verified"]

    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"dataset": "test split", "cases": 2,
                                   "organs": {"spinal_cord": {"dice": 0.8, "hd95_mm": 3.5}}}))
    assert cli.main(["models", "entry", str(weights), "--metrics", str(metrics), "--cpu-seconds", "12.5",
                     "--cpu-timing", "test", "--write"]) == 0
    filled = catalogue.catalogue_entry("tiny_pending")
    assert filled["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert filled["file_size"] == weights.stat().st_size and filled["trained_organs"] == TRAINED
    assert filled["metrics"]["organs"]["spinal_cord"]["dice"] == 0.8 and filled["cpu_seconds_per_volume"] == 12.5
    assert filled["title"] == pending["title"]
    assert {m["id"]: m for m in catalogue.list_models(verify=True)}["tiny_pending"]["verified"]

    metrics.write_text(json.dumps({"dataset": "test split", "cases": 2, "organs": {"spinal_cord": {"dice": 80}}}))
    before = path.read_text()
    assert cli.main(["models", "entry", str(weights), "--metrics", str(metrics), "--write"]) == 1
    assert "not written" in capsys.readouterr().out and path.read_text() == before


def test_the_real_catalogue_is_valid():
    data = json.loads((RESOURCES / "models.json").read_text())
    schema = json.loads((RESOURCES / "models.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(data, schema)
    entries = catalogue.load_catalogue()["models"]
    assert [e["id"] for e in entries if not e["url"]], "the catalogue needs a bundled model"


def test_bundled_model_files_match_the_catalogue():
    """The bundled weights are the exact files the catalogue describes (size, SHA-256, metadata)."""
    for item in catalogue.load_catalogue()["models"]:
        if item["url"]:
            continue
        path = RESOURCES / "Models" / f"{item['id']}.safetensors"
        assert path.is_file(), f"{path} is missing"
        assert item["sha256"] and item["trained_organs"] and item["metrics"] and item["cpu_seconds_per_volume"], \
            f"fill the catalogue entry of {item['id']} with: segmate models entry {path} --write (and --metrics, --cpu-seconds)"
        assert path.stat().st_size == item["file_size"]
        assert catalogue.verify_sha256(path, item["sha256"])
        meta = catalogue.check_model_file(path)
        assert backbone_spec(meta["backbone"]).key == item["backbone"]
        assert meta["organs"] == item["organs"]
        assert meta.get("trained_organs", meta["organs"]) == item["trained_organs"]
        assert meta["preprocessing"]["input_size"] == item["input_size"]


def _strings(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, str):
        yield value


def test_the_default_model_is_the_head_and_neck_model_and_carries_its_recipe():
    """What the docs say about the bundled model is what its file says: its seven organs, the recipe's
    stages, the held-out figures the catalogue shows, and no path of the machine that trained it."""
    entry = catalogue.catalogue_entry(catalogue.default_model_id())
    assert entry["organs"] == ["spinal_cord", "esophagus", "brainstem", "left_parotid", "right_parotid", "larynx",
                               "mandible"]
    meta = read_metadata(RESOURCES / "Models" / f"{entry['id']}.safetensors")
    recipe = json.loads((REPO / "SegMateCore" / "segmatecore" / "train" / "head_neck_provenance.json").read_text())
    assert meta["provenance"]["training_stages"] == recipe["training_stages"]
    assert "not for clinical use" in meta["provenance"]["intended_use"]
    assert meta["z_norm"]["extent_organs"] == ["spinal_cord", "brainstem", "left_parotid", "right_parotid"]
    held_out = meta["provenance"]["metrics"]["held_out"]
    assert held_out["split"] == "test"
    for key, figures in entry["metrics"]["organs"].items():
        assert figures["dice"] == pytest.approx(held_out["organs"][key]["dice"], abs=5e-4)
    absolute = [s for s in _strings(meta) if re.search(r"(?:^|[\s=:'\"(])(?:/(?!/)[A-Za-z]|~/|[A-Za-z]:\\)", s)]
    assert not absolute, absolute  # an absolute path (/..., ~/..., C:\...) of the training machine
