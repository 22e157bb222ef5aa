"""The model catalogue (Resources/models.json) and the local model cache.

Bundled models ship in ``Resources/Models/<id>.safetensors``; downloaded and imported ones live in
the cache (``user_data_dir("SegMate")/models``, or ``$SEGMATE_HOME/models``). A file only ever
enters the cache whole (:mod:`segmatecore.hub.download` downloads, imports and removes models).
The CLI (``segmate models``) and the Slicer panel call these same functions.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from platformdirs import user_data_dir

from segmatecore.resources import resource_path

CATALOGUE_FILE = "models.json"
SCHEMA_FILE = "models.schema.json"
MODELS_FOLDER = "Models"
SUFFIX = ".safetensors"
CHUNK = 1 << 20


class CatalogueError(ValueError):
    """A catalogue, download or import problem; the message says what to do."""


class ModelNotInstalledError(FileNotFoundError):
    """A catalogue model whose file is not on this computer."""


# ----------------------------------------------------------------------------------------------- catalogue


def catalogue_path() -> Path:
    return resource_path(CATALOGUE_FILE)


def load_catalogue() -> dict[str, Any]:
    """Resources/models.json, validated against its JSON Schema and for consistency."""
    import jsonschema  # slow to import: only where a catalogue is read, so that --help stays light

    path = catalogue_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CatalogueError(f"The model catalogue {path} is missing; reinstall SegMate.") from None
    except json.JSONDecodeError as exc:
        raise CatalogueError(f"The model catalogue {path} is not valid JSON: {exc}") from None
    schema = json.loads(resource_path(SCHEMA_FILE).read_text(encoding="utf-8"))
    try:
        jsonschema.validate(data, schema)
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(top level)"
        raise CatalogueError(f"The model catalogue {path} is invalid at {where}: {exc.message}") from None
    ids = [m["id"] for m in data["models"]]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise CatalogueError(f"The model catalogue {path} lists {', '.join(duplicates)} more than once.")
    for m in data["models"]:
        extra = [o for o in m["trained_organs"] or [] if o not in m["organs"]]
        if extra:
            raise CatalogueError(f"{path}: {m['id']} lists trained organs {extra} that are not among its organs.")
    default = next((m for m in data["models"] if m["id"] == data["default_model"]), None)
    if default is None or default["url"]:
        raise CatalogueError(f"{path}: default_model {data['default_model']!r} must be a bundled entry (url \"\").")
    return data


def default_model_organs() -> tuple[str, list[str]] | None:
    """The default model's id and organ keys, read without validating the catalogue (None if unreadable).

    For help texts only: a damaged catalogue must not break ``segmate --help``, and reading it this
    way needs no JSON Schema; loading a model validates the catalogue as usual.
    """
    try:
        data = json.loads(catalogue_path().read_text(encoding="utf-8"))
        entry = next(m for m in data["models"] if m["id"] == data["default_model"])
        return str(entry["id"]), [str(k) for k in entry["organs"]]
    except (OSError, ValueError, KeyError, TypeError, StopIteration):
        return None


def catalogue_entries() -> list[dict[str, Any]]:
    return load_catalogue()["models"]


def catalogue_entry(model_id: str) -> dict[str, Any]:
    for entry in catalogue_entries():
        if entry["id"] == model_id:
            return entry
    known = ", ".join(e["id"] for e in catalogue_entries()) or "none"
    raise CatalogueError(f"No model {model_id!r} in the catalogue; known models: {known}. "
                         "List them with: segmate models list")


def default_model_id() -> str:
    return load_catalogue()["default_model"]


def is_bundled(entry: dict[str, Any]) -> bool:
    return entry["url"] == ""


# ----------------------------------------------------------------------------------------------- locations


def cache_dir() -> Path:
    """Where downloaded and imported models live: ``$SEGMATE_HOME/models`` or the user data folder."""
    home = os.environ.get("SEGMATE_HOME")
    if home:
        return Path(home).expanduser() / "models"
    return Path(user_data_dir("SegMate", appauthor=False)) / "models"


def bundled_dir() -> Path:
    return resource_path(MODELS_FOLDER)


def model_file(entry: dict[str, Any]) -> Path:
    """Where a catalogue model's file is (bundled) or would be (cached)."""
    folder = bundled_dir() if is_bundled(entry) else cache_dir()
    return folder / f"{entry['id']}{SUFFIX}"


# ----------------------------------------------------------------------------------------------- checks


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(path: str | Path, expected: str | None) -> bool:
    """True if the file's SHA-256 is ``expected`` (hex, any case); False when there is nothing to check against."""
    return bool(expected) and file_sha256(path) == expected.lower()


def check_model_file(path: str | Path) -> dict[str, Any]:
    """The SegMate metadata of ``path`` once its tensors are known to fit that architecture.

    The architecture is built on PyTorch's meta device, so no weights are allocated or read.
    """
    import torch
    from safetensors import SafetensorError, safe_open

    from segmatecore.models.checkpoint import CheckpointError, check_state_dict, model_from_metadata, read_metadata

    path = Path(path)
    meta = read_metadata(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            shapes = {k: fh.get_slice(k).get_shape() for k in fh.keys()}
    except SafetensorError as exc:
        raise CheckpointError(f"{path} could not be read as safetensors: {exc}") from None
    with torch.device("meta"):
        model = model_from_metadata(meta)
        state = {k: torch.empty(shape) for k, shape in shapes.items()}
    check_state_dict(model, state, str(path))
    return meta


# ----------------------------------------------------------------------------------------------- listing


def _describe_file(path: Path, model_id: str) -> dict[str, Any]:
    """A listing entry for a cached model that is not in the catalogue (an imported file)."""
    from segmatecore.models.checkpoint import CheckpointError, read_metadata
    from segmatecore.models import backbone_spec

    try:
        meta = read_metadata(path)
    except CheckpointError as exc:
        return {"id": model_id, "title": f"{path.name} (unreadable: {exc})", "installed": True, "path": str(path),
                "source": "imported", "file_size": path.stat().st_size}
    return {"id": model_id, "title": path.name, "version": str(meta.get("provenance", {}).get("version", "")),
            "backbone": backbone_spec(meta["backbone"]).key, "organs": meta["organs"],
            "trained_organs": meta.get("trained_organs", meta["organs"]),
            "input_size": meta["preprocessing"]["input_size"], "file_size": path.stat().st_size, "sha256": None,
            "license": meta.get("provenance", {}).get("license", ""), "url": "", "demo": None, "metrics": None,
            "cpu_seconds_per_volume": None, "installed": True, "path": str(path), "source": "imported"}


def list_models(verify: bool = False) -> list[dict[str, Any]]:
    """Catalogue entries plus ``installed``, ``path``, ``source`` (bundled, download, imported), ``default``.

    Cached files that are not in the catalogue (imported) follow. With ``verify`` each installed
    catalogue file's SHA-256 is checked and reported as ``verified``.
    """
    catalogue = load_catalogue()
    listing = []
    for entry in catalogue["models"]:
        path = model_file(entry)
        item = dict(entry, installed=path.is_file(), path=str(path),
                    source="bundled" if is_bundled(entry) else "download",
                    default=entry["id"] == catalogue["default_model"])
        if verify:
            item["verified"] = bool(item["installed"] and entry["sha256"] and verify_sha256(path, entry["sha256"]))
        listing.append(item)
    known = {e["id"] for e in catalogue["models"]}
    folder = cache_dir()
    if folder.is_dir():
        for path in sorted(folder.glob(f"*{SUFFIX}")):
            if path.stem not in known and not path.name.startswith("."):  # hidden: a download under way
                listing.append(dict(_describe_file(path, path.stem), default=False))
    return listing


# ----------------------------------------------------------------------------------------------- resolve


def resolve_model(model: str | os.PathLike | None = None) -> Path:
    """The weight file for ``model``: None (the default bundled model), a catalogue id, or a path."""
    if model is None:
        model = default_model_id()
    if isinstance(model, os.PathLike) or Path(str(model)).suffix == SUFFIX or os.sep in str(model) or \
            "/" in str(model):
        path = Path(model).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"Model file {path} does not exist.")
        return path
    model_id = str(model)
    entry = next((e for e in catalogue_entries() if e["id"] == model_id), None)
    if entry is None:
        cached = cache_dir() / f"{model_id}{SUFFIX}"
        if cached.is_file():
            return cached
        catalogue_entry(model_id)  # raises with the list of known ids
    path = model_file(entry)
    if not path.is_file():
        if is_bundled(entry):
            raise ModelNotInstalledError(
                f"The bundled model {model_id} is missing: {path} does not exist. It ships with SegMate; "
                "reinstall SegMate or restore Resources/Models from the repository.")
        raise ModelNotInstalledError(f"Model {model_id} is not installed. Download it with: "
                                     f"segmate models download {model_id}")
    _check_installed_file(path, entry)
    return path


class DamagedModelError(CatalogueError):
    """An installed catalogue model whose bytes no longer match the catalogue's SHA-256."""


_verified: dict[tuple[str, int, int], str] = {}


def _check_installed_file(path: Path, entry: dict[str, Any]) -> None:
    """Refuse a catalogue model whose file changed on disk since it was installed.

    A flipped bit in a weight file still loads and gives wrong contours without any error, so
    the SHA-256 is checked at every load. The digest is remembered per (path, size, mtime), so a
    session that segments many volumes hashes the file once.
    """
    expected = (entry.get("sha256") or "").lower()
    if not expected:
        return
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _verified:
        _verified[key] = file_sha256(path)
    if _verified[key] == expected:
        return
    if is_bundled(entry):
        raise DamagedModelError(
            f"The bundled model {entry['id']} is damaged: {path} does not match its SHA-256 in the catalogue. "
            "Restore Resources/Models from the repository or reinstall SegMate.")
    raise DamagedModelError(
        f"Model {entry['id']} is damaged: {path} does not match its SHA-256 in the catalogue. Reinstall it with: "
        f"segmate models remove {entry['id']} && segmate models download {entry['id']}")
