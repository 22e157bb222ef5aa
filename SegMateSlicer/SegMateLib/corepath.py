"""Make the SegMateCore copy that ships inside the extension importable.

Installed from the Extension Manager, the ``segmatecore`` package sits beside SegMate.py in
Slicer's qt-scripted-modules folder, which Slicer already puts on ``sys.path``. In a source
checkout (SegMateSlicer/ added to Slicer's additional module paths) it is ``../SegMateCore``;
this adds that folder once. SegMateCore is never pip-installed into Slicer's Python.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def checkoutCoreFolder() -> Path:
    """The SegMateCore folder of a source checkout, relative to this file."""
    return Path(__file__).resolve().parents[2] / "SegMateCore"


def ensureSegMateCoreImportable() -> None:
    """Put the bundled SegMateCore on ``sys.path`` if ``import segmatecore`` would not find it.

    ``find_spec`` locates the package without running its ``__init__`` (which imports torch,
    possibly not installed yet).
    """
    if importlib.util.find_spec("segmatecore") is not None:
        return
    folder = checkoutCoreFolder()
    if (folder / "segmatecore" / "__init__.py").is_file():
        sys.path.insert(0, str(folder))


def coreResourcePath(*parts: str) -> Path:
    """``segmatecore.resources.resource_path`` without importing the package (which needs PyTorch).

    SegMateCore's own ``resources.py`` is loaded by file path and asked, so the resources are found
    exactly where SegMateCore finds them, even before PyTorch is installed (sample data at startup).
    """
    ensureSegMateCoreImportable()
    spec = importlib.util.find_spec("segmatecore")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("SegMateCore is missing from the SegMate extension; reinstall SegMate.")
    location = Path(list(spec.submodule_search_locations)[0]) / "resources.py"
    loaderSpec = importlib.util.spec_from_file_location("_segmate_resources", location)
    resources = importlib.util.module_from_spec(loaderSpec)
    loaderSpec.loader.exec_module(resources)
    return resources.resource_path(*parts)
