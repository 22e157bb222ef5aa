"""The panel's device choices and the PyTorch device each one means.

Resolving "gpu" needs PyTorch, so it happens where the network runs (the worker process, or
``SegMateLogic.process`` in a script), never when the panel opens.
"""
from __future__ import annotations

DEVICE_CHOICES = {"auto": "Auto", "gpu": "GPU", "cpu": "CPU"}


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
