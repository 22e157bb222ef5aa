"""Nothing SegMate ships names a folder of the machine it was made on.

Docs, JSON results, model catalogues and model metadata are read on other computers, where an
absolute path of a build or development machine means nothing and tells the reader about that
machine. Every git-tracked text file is scanned line by line, and the bundled models' metadata too
(their files are binary, so the scan of text files cannot see it).
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# A home, root, scratch or workspace folder followed by a path component, on Linux, macOS or Windows.
# Relative paths (runs/..., Resources/...), ~/ and example placeholders (/path/to/...) are fine.
ABSOLUTE_PATH = re.compile(r"(?<![\w.~-])/(?:work|home|root|tmp|Users)/[\w.-]"
                           r"|\b[A-Za-z]:\\{1,2}Users\\{1,2}\w", re.IGNORECASE)


def absolute_paths_in(text: str) -> list[tuple[int, str]]:
    """(line number, line) for each line of ``text`` that holds an absolute path of a machine."""
    return [(number, line.strip()) for number, line in enumerate(text.splitlines(), start=1)
            if ABSOLUTE_PATH.search(line)]


def tracked_files() -> list[Path]:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout: the tracked files are unknown")
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    return [REPO / name for name in listed.decode("utf-8").split("\0") if name]


def test_the_scan_finds_machine_paths_and_passes_relative_ones():
    home = "/" + "home/someone/segmate/runs/model.safetensors"
    assert absolute_paths_in(f"a\nmodel: {home}\n") == [(2, f"model: {home}")]
    assert absolute_paths_in('"source": "' + "/" + 'work/main/Resources/ct.nii.gz"')
    assert absolute_paths_in("written to " + "/" + "tmp/p7/ab.py")
    assert absolute_paths_in("C:" + "\\Users\\someone\\SegMate")
    assert absolute_paths_in("C:" + "\\\\Users\\\\someone")
    for fine in ("Resources/SampleData/ct.nii.gz", "runs/data/openkbp7", "~/.local/share/SegMate/models",
                 "pip install --find-links /path/to/wheels", "%LOCALAPPDATA%\\SegMate\\models",
                 "/proc/self/status", "https://example.org/home/page"):
        assert absolute_paths_in(fine) == [], fine


def test_no_tracked_text_file_holds_an_absolute_path():
    found = []
    for path in tracked_files():
        if not path.is_file():
            continue
        data = path.read_bytes()
        if b"\0" in data:  # binary: images, compressed volumes, model weights
            continue
        text = data.decode("utf-8", errors="replace")
        found += [f"{path.relative_to(REPO).as_posix()}:{number}: {line[:160]}"
                  for number, line in absolute_paths_in(text)]
    assert not found, "absolute paths of a machine in tracked files (make them relative):\n" + "\n".join(found)


def test_no_bundled_model_metadata_holds_an_absolute_path():
    from safetensors import safe_open

    models = sorted((REPO / "Resources" / "Models").glob("*.safetensors"))
    assert models, "no bundled model found in Resources/Models"
    found = []
    for model in models:
        with safe_open(str(model), framework="numpy") as f:
            metadata = f.metadata() or {}
        for key, value in metadata.items():
            try:  # the metadata values are JSON text; pretty-print them so each path gets its own line
                value = json.dumps(json.loads(value), indent=1)
            except ValueError:
                pass
            found += [f"{model.name} metadata {key!r}: {line[:160]}" for _, line in absolute_paths_in(value)]
    assert not found, "absolute paths of a machine in the bundled models' metadata:\n" + "\n".join(found)
