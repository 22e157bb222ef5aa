"""SegMateLogic: a CT volume node in, organ segments in a segmentation node out.

Everything the panel, the batch script and user scripts need, with no Qt. The volume is copied
to a SimpleITK image, ``segmatecore.segment`` (the same function the ``segmate`` command line
uses) computes the labelmap, and the organs are written as segments on the calling (main)
thread. ``process()`` computes in this process, synchronously (scripts, the batch script, tests);
``startSegmentation()`` computes in the SegMate worker process and returns a job the panel polls,
so Slicer stays responsive and a crash of the network's libraries cannot take Slicer down.

Importing this module imports nothing heavy (no numpy, SimpleITK or PyTorch): Slicer loads it at
start-up, and those are imported when a run needs them.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from .corepath import ensureSegMateCoreImportable
from .devices import DEVICE_CHOICES, torchDevice
from .terminology import NAMING_CHOICES

# segmatecore.choices.PRECISIONS, named here so that the panel can list them without importing PyTorch
PRECISION_CHOICES = {"auto": "Automatic", "fp32": "fp32", "bf16": "bf16"}

__all__ = ["DEVICE_CHOICES", "NAMING_CHOICES", "PRECISION_CHOICES", "SegMateLogic", "SegMateRun", "torchDevice"]


@dataclass
class SegMateRun:
    """What a run produced: the segmentation node, organ key -> segment ID, and SegMateCore's result."""

    segmentationNode: Any
    segmentIds: dict[str, str]
    result: Any = field(repr=False)

    def summary(self) -> str:
        return self.result.summary()


def _checkOptions(organs, naming: str, precision: str, featureCacheMb: Optional[float]) -> Optional[list[str]]:
    """Refuse a typo before any work; returns the organ list (None: the model's trained organs)."""
    if naming not in NAMING_CHOICES:
        raise ValueError(f"Unknown naming {naming!r}; use one of {', '.join(NAMING_CHOICES)}.")
    if precision not in PRECISION_CHOICES:
        raise ValueError(f"Unknown precision {precision!r}; use one of {', '.join(PRECISION_CHOICES)}.")
    if featureCacheMb is not None and not featureCacheMb >= 0:
        raise ValueError(f"featureCacheMb must be 0 (off) or more, got {featureCacheMb}.")
    organList = None if organs is None else [str(key) for key in organs]
    if organList is not None and not organList:
        raise ValueError("No organ selected: choose at least one organ to segment.")
    return organList


class SegMateLogic:
    """Segment organs at risk of a CT volume node into a segmentation node (main thread for MRML)."""

    def __init__(self) -> None:
        ensureSegMateCoreImportable()
        self._workerClient = None

    # -- running in this process -----------------------------------------------------------------
    def process(self, inputVolume, outputSegmentation=None, organs=None, model=None, device: str = "auto",
                progress: Optional[Callable[[str, int, int], None]] = None,
                cancel: Optional[threading.Event] = None, *, batchSize: Optional[int] = None,
                postprocess: Optional[dict] = None, naming: str = "slicer", zNorm: str = "auto",
                tta: bool = False, precision: str = "auto", featureCacheMb: Optional[float] = None) -> SegMateRun:
        """Segment synchronously, in this process, and write the organs as segments; returns the SegMateRun.

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
        from .volume_image import imageFromVolumeNode

        organList = _checkOptions(organs, naming, precision, featureCacheMb)
        image = imageFromVolumeNode(inputVolume)
        deviceName = torchDevice(device)
        import segmatecore

        cache = {} if featureCacheMb is None else {"feature_cache_mb": float(featureCacheMb)}
        result = segmatecore.segment(image, model=model, organs=organList, device=deviceName, progress=progress,
                                     cancel=cancel, z_norm=zNorm, batch_size=batchSize, postprocess=postprocess,
                                     tta=tta, precision=precision, **cache)
        return self.writeResult(inputVolume, outputSegmentation, result, naming=naming)

    # -- running in the worker process -----------------------------------------------------------
    def workerClient(self):
        """The worker process client of this logic (the worker itself starts with the first request)."""
        if self._workerClient is None:
            from .worker_client import WorkerClient

            self._workerClient = WorkerClient()
        return self._workerClient

    def shutdownWorker(self) -> None:
        """End the worker process (module cleanup, scene close, new packages installed)."""
        if self._workerClient is not None:
            self._workerClient.shutdown()

    def startSegmentation(self, inputVolume, outputSegmentation=None, organs=None, model: Optional[str] = None,
                          device: str = "auto", *, batchSize: Optional[int] = None, postprocess: Optional[dict] = None,
                          naming: str = "slicer", zNorm: str = "auto", tta: bool = False, precision: str = "auto",
                          featureCacheMb: Optional[float] = None, download: bool = False, client=None):
        """Start segmenting ``inputVolume`` in the worker process; returns a WorkerSegmentationJob.

        The volume is copied now. Poll the job from a timer (``job.poll()``); once ``job.done``,
        ``job.finish()`` writes the segments into ``outputSegmentation`` (None: a new node, made only
        when the run succeeded). ``model`` is None, a catalogue id or a .safetensors path (a loaded
        network cannot travel to another process: use ``process()``). ``download`` lets the worker
        download a catalogue model that is not installed yet, with progress. The other options are
        ``process()``'s.
        """
        from .volume_image import imageFromVolumeNode
        from .worker_job import WorkerSegmentationJob

        organList = _checkOptions(organs, naming, precision, featureCacheMb)
        if model is not None and not isinstance(model, (str, os.PathLike)):
            raise ValueError("The worker process loads models from files: pass None, a catalogue id or a "
                             ".safetensors path, or run a loaded network with process().")
        if str(device).strip().lower() not in DEVICE_CHOICES and not str(device).startswith(("cuda", "mps")):
            raise ValueError(f"Unknown device {device!r}; use one of {', '.join(DEVICE_CHOICES)} or a PyTorch "
                             "device such as cuda:1.")
        image = imageFromVolumeNode(inputVolume)
        request = {"model": None if model is None else str(model), "organs": organList, "device": str(device),
                   "batchSize": batchSize, "postprocess": postprocess, "zNorm": zNorm, "tta": bool(tta),
                   "precision": precision, "featureCacheMb": featureCacheMb, "download": bool(download)}

        def write(result):
            return self.writeResult(inputVolume, outputSegmentation, result, naming=naming)

        return WorkerSegmentationJob(client or self.workerClient(), image, request, write)

    def requestModelChoices(self, client=None):
        """Ask the worker for the model choices (it reads model files with PyTorch); a WorkerTask to poll.

        Once done, ``modelChoicesFromTask(task)`` turns its result into ModelChoice entries.
        """
        return (client or self.workerClient()).submit("models")

    @staticmethod
    def modelChoicesFromTask(task):
        from .model_choices import ModelChoice

        if task.error is not None:
            raise task.error
        return [ModelChoice(**{key: tuple(value) if isinstance(value, list) else value for key, value in entry.items()})
                for entry in task.result["models"]]

    def requestModelImport(self, path: str, client=None):
        """Check a model file and install it into the model cache, in the worker; a WorkerTask to poll."""
        return (client or self.workerClient()).submit("import", {"path": str(path)})

    # -- writing ---------------------------------------------------------------------------------
    def writeResult(self, inputVolume, outputSegmentation, result, naming: str = "slicer") -> SegMateRun:
        """Write a SegmentationResult of ``inputVolume`` into ``outputSegmentation`` (None: a new node)."""
        from .segments import placeInVolumeStudy, writeOrganSegments

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
        """The model choices, read in this process (imports PyTorch to read imported model files)."""
        from .model_choices import modelChoices

        return modelChoices()

    @staticmethod
    def downloadModel(modelId: str, progress: Optional[Callable[[int, int], None]] = None):
        from segmatecore.hub.download import download

        return download(modelId, progress=progress or False)

    @staticmethod
    def importModelFile(path: str):
        from segmatecore.hub.download import install_from_file

        return install_from_file(path)

    @staticmethod
    def modelFolder():
        from segmatecore.hub.catalogue import cache_dir

        folder = cache_dir()
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    @staticmethod
    def clearModelCache():
        from segmatecore.hub.download import clear_cache

        return clear_cache()

    # -- organs ----------------------------------------------------------------------------------
    @staticmethod
    def organTable(organKeys=None):
        """The organs ``organKeys`` (a model's, in its channel order) with their names and colours;
        every structure SegMate knows when None. Read from organs.json, without PyTorch."""
        from segmatecore.data.organs import known_organs, organ

        return known_organs() if organKeys is None else tuple(organ(key) for key in organKeys)
