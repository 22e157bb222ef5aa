"""SegMateCore: the SegMate organ-at-risk segmentation engine (no Slicer imports)."""
from .checkpoint import CheckpointError, load_model, read_metadata, save_model
from .models import SegMateNet, SegMateOutput, create_model
from .inference import segment
from .result import SegmentationCancelled, SegmentationResult

__version__ = "0.1.0"

__all__ = ["CheckpointError", "SegMateNet", "SegMateOutput", "create_model", "load_model", "read_metadata",
           "save_model", "segment", "SegmentationCancelled", "SegmentationResult", "__version__"]
