"""Downloading, importing and removing models of the cache.

A file only ever enters the cache whole: downloads stream to a temporary file in the cache folder
(:func:`segmatecore.data.atomic.atomic_path`), are checked against the catalogue's size and SHA-256,
and only then replace the cached file; imports are checked against the architecture their metadata
names first. On any failure, Ctrl-C included, nothing is left behind.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import re
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Union

from tqdm import tqdm

from segmatecore.data.atomic import atomic_path
from segmatecore.hub.catalogue import (CHUNK, SUFFIX, CatalogueError, ModelNotInstalledError, cache_dir,
                                       catalogue_entries, catalogue_entry, check_model_file, file_sha256,
                                       is_bundled, model_file, verify_sha256)

Progress = Union[bool, Callable[[int, int], None]]


def _progress_reporter(progress: Progress, total: int, label: str):
    """A (update(n), close()) pair: a tqdm bar, a callback(done, total), or nothing."""
    if callable(progress):
        done = [0]

        def update(n: int) -> None:
            done[0] += n
            progress(done[0], total)

        return update, lambda: None
    if progress:
        bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=label)
        return bar.update, bar.close
    return (lambda n: None), (lambda: None)


def download(model_id: str, progress: Progress = True, timeout: float = 60.0) -> Path:
    """Download a catalogue model into the cache and return its path.

    The file streams to a temporary file in the cache folder and only replaces the cached model
    once its size and SHA-256 match the catalogue; on any failure (bad size or hash, dropped
    connection, Ctrl-C) nothing is left behind. ``progress``: True for a tqdm bar, False for
    none, or a callable ``(bytes_done, bytes_total)``.
    """
    entry = catalogue_entry(model_id)
    if is_bundled(entry):
        raise CatalogueError(f"{model_id} is bundled with SegMate; there is nothing to download.")
    target = model_file(entry)
    if target.is_file() and verify_sha256(target, entry["sha256"]):
        return target
    with atomic_path(target) as temp:
        size, digest = _fetch(entry, temp, progress, timeout)
        _check_download(entry, size, digest)
    return target


def _fetch(entry: dict[str, Any], temp: Path, progress: Progress, timeout: float) -> tuple[int, str]:
    """Stream the entry's URL into ``temp`` (stopping past the expected size); its size and SHA-256."""
    model_id = entry["id"]
    digest, size = hashlib.sha256(), 0
    update, close = _progress_reporter(progress, entry["file_size"], model_id)
    try:
        with urllib.request.urlopen(entry["url"], timeout=timeout) as response, temp.open("wb") as out:
            for block in iter(lambda: response.read(CHUNK), b""):
                out.write(block)
                digest.update(block)
                size += len(block)
                update(len(block))
                if size > entry["file_size"]:
                    break
    except urllib.error.HTTPError as exc:
        raise CatalogueError(f"Download of {model_id} from {entry['url']} failed: HTTP {exc.code} "
                             f"{exc.reason}.") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise CatalogueError(f"Download of {model_id} from {entry['url']} failed: {reason}. "
                             "Check the connection and try again.") from None
    finally:
        close()
    return size, digest.hexdigest()


def _check_download(entry: dict[str, Any], size: int, digest: str) -> None:
    """Raise unless the downloaded size and SHA-256 are the catalogue's."""
    model_id = entry["id"]
    if size != entry["file_size"]:
        raise CatalogueError(f"Download of {model_id} is incomplete or wrong: got {size} bytes, expected "
                             f"{entry['file_size']}. Nothing was installed; try again.")
    if digest != entry["sha256"]:
        raise CatalogueError(f"Download of {model_id} does not match the catalogue's SHA-256 (got "
                             f"{digest}, expected {entry['sha256']}); the file was damaged or "
                             "altered. Nothing was installed.")


def install_from_file(path: str | os.PathLike) -> Path:
    """Copy a SegMate model file into the cache after checking it; return the installed path.

    A file whose SHA-256 is a catalogue entry's is installed as that model; any other valid
    SegMate model is installed under its own file name. Files whose metadata or tensors do not
    fit a SegMate architecture are refused before anything is copied.
    """
    source = Path(path).expanduser()
    if not source.is_file():
        raise FileNotFoundError(f"Model file {source} does not exist.")
    if source.suffix != SUFFIX:
        raise CatalogueError(f"{source} is not a .safetensors file. SegMate imports only SegMate safetensors "
                             "models; convert research .pth checkpoints with segmate import-research.")
    check_model_file(source)
    digest = file_sha256(source)
    entries = catalogue_entries()
    match = next((e for e in entries if e["sha256"] == digest), None)
    if match is not None:
        if is_bundled(match):
            return model_file(match)
        model_id = match["id"]
    else:
        model_id = source.stem.lower()
        named = next((e for e in entries if e["id"] == model_id), None)
        if named is not None:
            raise CatalogueError(f"{source.name} has the name of catalogue model {model_id} but not its SHA-256; "
                                 "rename the file to import it as a separate model.")
        if not _valid_id(model_id):
            raise CatalogueError(f"{source.name}: model file names may use only letters, digits, '_', '-' and '.'; "
                                 "rename the file and import it again.")
    target = cache_dir() / f"{model_id}{SUFFIX}"
    with atomic_path(target) as temp:
        shutil.copyfile(source, temp)
        if file_sha256(temp) != digest:
            raise CatalogueError(f"Copying {source} changed its contents (disk full or file being written?); "
                                 "nothing was installed.")
    return target


def _valid_id(model_id: str) -> bool:
    return re.fullmatch(r"[a-z0-9][a-z0-9_.-]{1,79}", model_id) is not None


def remove(model_id: str) -> Path:
    """Delete a downloaded or imported model from the cache; bundled models cannot be removed."""
    entry = next((e for e in catalogue_entries() if e["id"] == model_id), None)
    if entry is not None and is_bundled(entry):
        raise CatalogueError(f"{model_id} is bundled with SegMate and cannot be removed.")
    path = cache_dir() / f"{model_id}{SUFFIX}"
    if not path.is_file():
        raise ModelNotInstalledError(f"Model {model_id} is not installed in {cache_dir()}.")
    path.unlink()
    return path


def clear_cache() -> list[Path]:
    """Delete every cached model and any leftover temporary file; return what was removed."""
    folder = cache_dir()
    removed = []
    if folder.is_dir():
        for path in sorted(folder.glob(f"*{SUFFIX}")):
            path.unlink()
            removed.append(path)
    return removed
