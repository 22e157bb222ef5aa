"""The oldest Slicer SegMate supports, and the message an older one gets at start-up.

SegMate is built and tested for 3D Slicer 5.10 (Python 3.12) and the preview release. The same
floor is declared in the extension's CMakeLists.txt (``find_package(Slicer ...)``) and in
docs/slicer.md; a test keeps the three equal.
"""
from __future__ import annotations

import sys
from typing import Optional

MINIMUM_SLICER_VERSION = (5, 10)
MINIMUM_PYTHON_VERSION = (3, 10)


def versionText(version) -> str:
    return ".".join(str(part) for part in version)


def unsupportedSlicerMessage(major: int, minor: int, python: tuple[int, int] = tuple(sys.version_info[:2])
                             ) -> Optional[str]:
    """What to tell the user of a Slicer (or its Python) older than SegMate supports; None when supported."""
    problems = []
    if (int(major), int(minor)) < MINIMUM_SLICER_VERSION:
        problems.append(f"this is Slicer {major}.{minor}")
    if tuple(python) < MINIMUM_PYTHON_VERSION:
        problems.append(f"its Python is {versionText(python)}")
    if not problems:
        return None
    return (f"SegMate needs 3D Slicer {versionText(MINIMUM_SLICER_VERSION)} or newer (Python "
            f"{versionText(MINIMUM_PYTHON_VERSION)} or newer), but {' and '.join(problems)}. Install the current "
            "Slicer release (or the preview) from https://download.slicer.org and install SegMate in it from the "
            "Extensions Manager.")
