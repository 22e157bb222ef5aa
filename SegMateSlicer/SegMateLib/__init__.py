"""SegMate's Slicer logic: everything below the Qt panel, importable with slicer-core alone.

Nothing here imports qt, ctk, slicer.modules or ScriptedLoadableModule. The names below are
imported on first use (PEP 562): Slicer loads the module at start-up, and SegMate must not make
that start-up import numpy, SimpleITK or PyTorch. The worker process (``worker.py``) imports this
package too, and must not import Slicer's own modules.
"""
from importlib import import_module

from .corepath import ensureSegMateCoreImportable

_PUBLIC = {
    "DEVICE_CHOICES": "devices", "torchDevice": "devices",
    "NAMING_CHOICES": "terminology",
    "PRECISION_CHOICES": "logic", "SegMateLogic": "logic", "SegMateRun": "logic",
    "JobProgress": "progress", "elapsedText": "progress",
    "REQUIREMENTS": "dependencies", "describe": "dependencies", "installRequirements": "dependencies",
    "missingRequirements": "dependencies", "restartNeededAfterInstalling": "dependencies",
    "diagnosticsText": "diagnostics",
    "sampleDataSources": "sample_data",
    "unsupportedSlicerMessage": "slicer_version", "MINIMUM_SLICER_VERSION": "slicer_version",
    "WorkerClient": "worker_client", "WorkerCrashed": "worker_client", "WorkerError": "worker_client",
}

__all__ = sorted(_PUBLIC)

ensureSegMateCoreImportable()


def __getattr__(name: str):
    module = _PUBLIC.get(name)
    if module is None:
        try:  # a submodule, e.g. SegMateLib.terminology
            return import_module(f".{name}", __name__)
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
