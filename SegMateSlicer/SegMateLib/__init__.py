"""SegMate's Slicer logic: everything below the Qt panel, importable with slicer-core alone.

Nothing here imports qt, ctk, slicer.modules or ScriptedLoadableModule, and SegMateCore (which
needs PyTorch) is imported only when used, so the module loads before its dependencies exist.
"""
from .corepath import ensureSegMateCoreImportable
from .dependencies import REQUIREMENTS, describe, installRequirements, missingRequirements
from .diagnostics import diagnosticsText
from .job import JobProgress, SegmentationJob, elapsedText
from .logic import DEVICE_CHOICES, PRECISION_CHOICES, SegMateLogic, SegMateRun, torchDevice
from .sample_data import sampleDataSources
from .terminology import NAMING_CHOICES

ensureSegMateCoreImportable()

__all__ = ["DEVICE_CHOICES", "JobProgress", "NAMING_CHOICES", "PRECISION_CHOICES", "REQUIREMENTS", "SegMateLogic", "SegMateRun",
           "SegmentationJob", "describe", "diagnosticsText", "elapsedText", "installRequirements",
           "missingRequirements", "sampleDataSources", "torchDevice"]
