"""SegMateCore: the SegMate organ-at-risk segmentation engine (no Slicer imports).

The public names are imported on first use (PEP 562), so ``import segmatecore.data.organs`` or
``segmatecore.inference.result`` does not import PyTorch: the Slicer panel reads the organ table and writes
results without loading the network's libraries into Slicer's process.
"""
from importlib import import_module

__version__ = "0.1.0"

_PUBLIC = {
    "CheckpointError": "models.checkpoint", "load_model": "models.checkpoint", "read_metadata": "models.checkpoint",
    "save_model": "models.checkpoint", "SegMateNet": "models", "SegMateOutput": "models", "create_model": "models",
    "segment": "inference.predictor", "SegMatePredictor": "inference.predictor", "SegmentationCancelled": "inference.result",
    "SegmentationResult": "inference.result",
}

__all__ = sorted(_PUBLIC) + ["__version__"]


def __getattr__(name: str):
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
