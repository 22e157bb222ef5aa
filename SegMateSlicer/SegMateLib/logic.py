"""SegMateLogic: a CT volume node in, organ segments in a segmentation node out.

Everything the panel, the batch script and user scripts need, with no Qt: the volume is copied
to a SimpleITK image, ``segmatecore.segment`` (the same function the ``segmate`` command line
uses) computes the labelmap, and the organs are written as segments on the calling (main)
thread. ``process()`` does it synchronously; ``createJob()`` returns a job that computes on a
worker thread for the panel.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from .corepath import ensureSegMateCoreImportable
from .job import SegmentationJob
from .segments import placeInVolumeStudy, writeOrganSegments
from .terminology import NAMING_CHOICES
from .volume_image import imageFromVolumeNode

DEVICE_CHOICES = {"auto": "Auto", "gpu": "GPU", "cpu": "CPU"}
# segmatecore.inference.PRECISIONS, named here so that the panel can list them without importing PyTorch
PRECISION_CHOICES = {"auto": "Automatic", "fp32": "fp32", "bf16": "bf16"}


@dataclass
class SegMateRun:
    """What a run produced: the segmentation node, organ key -> segment ID, and SegMateCore's result."""

    segmentationNode: Any
    segmentIds: dict[str, str]
    result: Any = field(repr=False)

    def summary(self) -> str:
        return self.result.summary()


def torchDevice(choice: str) -> str:
    """The PyTorch device for a panel choice: "gpu" is CUDA, or Apple's MPS; others pass through."""
    name = str(choice).strip().lower()
    if name != "gpu":
        return name
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    raise ValueError("GPU was chosen but this PyTorch sees no usable GPU (CUDA or Apple MPS); choose Auto or CPU, "
                     "or reinstall PyTorch for your GPU with the 'PyTorch Util' module.")


class SegMateLogic:
    """Segment organs at risk of a CT volume node into a segmentation node (main thread for MRML)."""

    def __init__(self) -> None:
        ensureSegMateCoreImportable()

    # -- running ---------------------------------------------------------------------------------
    def createJob(self, inputVolume, outputSegmentation=None, organs=None, model=None, device: str = "auto",
                  progress: Optional[Callable[[str, int, int], None]] = None,
                  cancel: Optional[threading.Event] = None, *, batchSize: Optional[int] = None,
                  postprocess: Optional[dict] = None, naming: str = "slicer", zNorm: str = "auto",
                  tta: bool = False, precision: str = "auto",
                  featureCacheMb: Optional[float] = None) -> SegmentationJob:
        """A job that segments ``inputVolume`` (copied now) and writes into ``outputSegmentation`` on ``finish()``.

        ``outputSegmentation`` None creates a new segmentation node, but only when the run succeeded.
        Options are checked here, before any computation, so a typo fails at once.
        """
        if naming not in NAMING_CHOICES:
            raise ValueError(f"Unknown naming {naming!r}; use one of {', '.join(NAMING_CHOICES)}.")
        if precision not in PRECISION_CHOICES:
            raise ValueError(f"Unknown precision {precision!r}; use one of {', '.join(PRECISION_CHOICES)}.")
        if featureCacheMb is not None and not featureCacheMb >= 0:
            raise ValueError(f"featureCacheMb must be 0 (off) or more, got {featureCacheMb}.")
        image = imageFromVolumeNode(inputVolume)
        deviceName = torchDevice(device)
        organList = None if organs is None else list(organs)
        if organList is not None and not organList:
            raise ValueError("No organ selected: choose at least one organ to segment.")

        def compute(report, cancelEvent):
            import segmatecore

            cache = {} if featureCacheMb is None else {"feature_cache_mb": float(featureCacheMb)}
            return segmatecore.segment(image, model=model, organs=organList, device=deviceName, progress=report,
                                       cancel=cancelEvent, z_norm=zNorm, batch_size=batchSize,
                                       postprocess=postprocess, tta=tta, precision=precision, **cache)

        def write(result):
            return self.writeResult(inputVolume, outputSegmentation, result, naming=naming)

        return SegmentationJob(compute, write, progress=progress, cancel=cancel)

    def process(self, inputVolume, outputSegmentation=None, organs=None, model=None, device: str = "auto",
                progress: Optional[Callable[[str, int, int], None]] = None,
                cancel: Optional[threading.Event] = None, **options) -> SegMateRun:
        """Segment synchronously and write the organs as segments; returns the run's SegMateRun.

        ``organs``: organ keys (default: the organs the model was trained on); ``model``: None (the
        bundled default), a catalogue id, a .safetensors path or a loaded model; ``device``: auto,
        gpu, cpu (or a PyTorch device name); ``progress(stage, done, total)``; ``cancel``: a
        threading.Event. Options: ``batchSize``, ``postprocess``, ``naming`` ("slicer" or "tg263"),
        ``zNorm``, ``tta`` (mirror test-time augmentation, twice the network time), ``precision``
        ("auto", "fp32" or "bf16": about twice as fast on CPUs with AMX, slower on others, masks may
        differ at their edges), ``featureCacheMb`` (memory for the first pass's encoder outputs,
        which the main pass then reuses; 0 encodes every slice again: slower, a few hundred MB less;
        None: SegMateCore's default). If the run fails or is cancelled the scene is left exactly as it was.
        """
        job = self.createJob(inputVolume, outputSegmentation, organs, model, device, progress, cancel, **options)
        job.runInThisThread()
        return job.finish()

    def writeResult(self, inputVolume, outputSegmentation, result, naming: str = "slicer") -> SegMateRun:
        """Write a SegmentationResult of ``inputVolume`` into ``outputSegmentation`` (None: a new node)."""
        scene = inputVolume.GetScene()
        if scene is None:
            raise RuntimeError(f"{inputVolume.GetName()} was removed from the scene while it was being segmented; "
                               "nothing was written.")
        created = outputSegmentation is None or outputSegmentation.GetScene() is None
        if created:
            name = scene.GenerateUniqueName(f"{inputVolume.GetName()} segmentation")
            outputSegmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
        try:
            segmentIds = writeOrganSegments(outputSegmentation, inputVolume, result.labelmap, result.labels,
                                            naming=naming, tags=result.segment_tags())
        except Exception:
            if created:
                scene.RemoveNode(outputSegmentation)
            raise
        placeInVolumeStudy(outputSegmentation, inputVolume)
        return SegMateRun(outputSegmentation, segmentIds, result)

    # -- models ----------------------------------------------------------------------------------
    @staticmethod
    def modelChoices():
        from .model_choices import modelChoices

        return modelChoices()

    @staticmethod
    def downloadModel(modelId: str, progress: Optional[Callable[[int, int], None]] = None):
        from segmatecore.catalogue import download

        return download(modelId, progress=progress or False)

    @staticmethod
    def importModelFile(path: str):
        from segmatecore.catalogue import install_from_file

        return install_from_file(path)

    @staticmethod
    def modelFolder():
        from segmatecore.catalogue import cache_dir

        folder = cache_dir()
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    @staticmethod
    def clearModelCache():
        from segmatecore.catalogue import clear_cache

        return clear_cache()

    # -- organs ----------------------------------------------------------------------------------
    @staticmethod
    def organTable(organKeys=None):
        """The organs ``organKeys`` (a model's, in its channel order) with their names and colours;
        every structure SegMate knows when None."""
        from segmatecore.organs import known_organs, organ

        return known_organs() if organKeys is None else tuple(organ(key) for key in organKeys)
