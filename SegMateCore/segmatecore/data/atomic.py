"""Atomic writes: a file (or folder) is either its previous self or its complete new self, never half-written.

The writer writes to a temporary path in the target's own folder, so the final ``os.replace`` stays
on one file system and is atomic; the temporary path keeps the target's extensions, because
writers such as SimpleITK and matplotlib choose the format by extension. On any error, Ctrl-C
included, the temporary path is removed and the target is left as it was. The writer creates the
temporary file itself, so it gets the usual permissions (umask). Temporary names start with a
dot, so listings of the folder (e.g. the model cache) can skip them.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

PARTIAL = ".partial"  # marks a temporary path in its name


def temporary_sibling(path: str | os.PathLike) -> Path:
    """A fresh hidden path beside ``path`` with the same extensions, e.g. ``.labels.nii.gz.<id>.partial.nii.gz``."""
    path = Path(path)
    bare = path.name.lstrip(".")
    extension = bare[bare.index("."):] if "." in bare else ""
    return path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}{PARTIAL}{extension}"


def remove_path(path: Path) -> None:
    """Delete a file or a folder tree if it exists."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends without error it replaces ``path``.

    The block writes a file (or creates a folder) at the yielded path; nothing is created
    beforehand. A folder can only replace a missing or empty folder (POSIX ``rename``), so remove
    an old one at the end of the block.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        remove_path(tmp)


def write_text_atomic(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically; return ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding=encoding)
    return Path(path)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; return ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)
