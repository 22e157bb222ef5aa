"""SegMate's Python packages inside Slicer: what is missing, and installing it after one confirmation.

PyTorch comes through the PyTorch extension (``PyTorchUtils``), which picks the build that fits
the computer's GPU driver, with the torchvision that matches it; the small pure-Python packages
come with ``slicer.util.pip_install``. A package that was already imported in Slicer's process
keeps its old version there until Slicer restarts, so the panel offers a restart after such an
upgrade (the worker process always starts with the installed versions).
What Slicer ships (SimpleITK, numpy, vtk) is never installed, upgraded or downgraded: pip runs
with a constraints file that pins the versions Slicer has. SegMateCore itself ships inside the
extension and is not installed at all. The version ranges are SegMateCore's (pyproject.toml).
"""
from __future__ import annotations

import importlib
import importlib.metadata
import logging
import os
import sys
import tempfile
from dataclasses import dataclass
from typing import Callable, Optional

SHIPPED_WITH_SLICER = ("SimpleITK", "numpy", "vtk")


@dataclass(frozen=True)
class Requirement:
    """A distribution SegMateCore needs at run time, with its version range."""

    name: str
    specifier: str
    purpose: str
    importName: str = ""

    @property
    def moduleName(self) -> str:
        """The name Python imports it by."""
        return self.importName or self.name

    @property
    def text(self) -> str:
        return f"{self.name}{self.specifier}"

    def installedVersion(self) -> Optional[str]:
        try:
            return importlib.metadata.version(self.name)
        except importlib.metadata.PackageNotFoundError:
            return None

    def isSatisfied(self) -> bool:
        from packaging.specifiers import SpecifierSet

        version = self.installedVersion()
        return version is not None and SpecifierSet(self.specifier).contains(version, prereleases=True)


TORCH = Requirement("torch", ">=2.4,<2.16", "neural network inference (installed by the PyTorch extension)")
TORCHVISION = Requirement("torchvision", ">=0.19,<0.30",
                          "image operations the network backbones use (installed with PyTorch by the PyTorch extension)")
INSTALLED_WITH_TORCH = ("torch", "torchvision")
REQUIREMENTS = (
    TORCH,
    TORCHVISION,
    Requirement("timm", ">=1.0.31,<1.1", "network backbones"),
    Requirement("safetensors", ">=0.4,<0.9", "model files"),
    Requirement("jsonschema", ">=4", "model catalogue checks"),
    Requirement("platformdirs", ">=3", "model cache folder"),
    Requirement("tqdm", ">=4.60", "download progress"),
    Requirement("psutil", ">=5.9", "ending the worker process and its children on Cancel"),
)


def missingRequirements(requirements=REQUIREMENTS) -> list[Requirement]:
    """The requirements that are not installed, or installed in a version outside their range."""
    return [requirement for requirement in requirements if not requirement.isSatisfied()]


def describe(requirements) -> str:
    """One line per package for the confirmation dialog: name, range, what it is for, what is installed."""
    lines = []
    for requirement in requirements:
        installed = requirement.installedVersion()
        state = f"installed {installed}, needs {requirement.specifier}" if installed else "not installed"
        lines.append(f"- {requirement.name} ({state}): {requirement.purpose}")
    return "\n".join(lines)


def shippedVersionConstraints() -> str:
    """pip constraints that keep Slicer's own SimpleITK, numpy and vtk exactly as they are."""
    lines = []
    for name in SHIPPED_WITH_SLICER:
        try:
            lines.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return "\n".join(lines) + "\n"


def installTorch(requirements=(TORCH, TORCHVISION), log: Callable[[str], None] = logging.info) -> None:
    """Install PyTorch and torchvision through the PyTorch extension, or explain why an installed PyTorch stays.

    ``requirements``: the torch and torchvision requirements to satisfy (the missing ones).
    """
    try:
        import PyTorchUtils
    except ModuleNotFoundError:
        raise RuntimeError("SegMate needs the PyTorch extension: install 'PyTorch' from the Extensions Manager, "
                           "restart Slicer and try again.") from None
    torch = next((r for r in requirements if r.name == "torch"), TORCH)
    torchvision = next((r for r in requirements if r.name == "torchvision"), TORCHVISION)
    installed = torch.installedVersion()
    if installed is not None and not torch.isSatisfied():
        raise RuntimeError(f"PyTorch {installed} is installed but SegMate needs torch{torch.specifier}. Other "
                           "extensions may rely on the installed version, so SegMate does not replace it: open the "
                           f"'PyTorch Util' module, uninstall PyTorch and install it with the requirement "
                           f"'{torch.specifier}', then restart Slicer.")
    log(f"Installing PyTorch {torch.specifier} and torchvision {torchvision.specifier} with the PyTorch extension "
        "(this can take several minutes)...")
    torchLogic = PyTorchUtils.PyTorchUtilsLogic()
    if torchLogic.installTorch(askConfirmation=False, torchVersionRequirement=torch.specifier,
                               torchvisionVersionRequirement=torchvision.specifier) is None:
        raise RuntimeError("PyTorch was not installed; SegMate cannot segment without it.")


def restartNeededAfterInstalling(requirements, modules=None) -> list[Requirement]:
    """The requirements that were already imported in this process: their new version is used only after a
    restart of Slicer (call before installing; ``modules`` defaults to ``sys.modules``)."""
    modules = sys.modules if modules is None else modules
    return [requirement for requirement in requirements if requirement.moduleName in modules]


def installRequirements(requirements, log: Callable[[str], None] = logging.info) -> None:
    """Install the given missing requirements (ask the user first: see ``describe``)."""
    import slicer

    requirements = list(requirements)
    torchRequirements = [r for r in requirements if r.name in INSTALLED_WITH_TORCH]
    if torchRequirements:
        installTorch(torchRequirements, log)
    others = [r for r in requirements if r.name not in INSTALLED_WITH_TORCH]
    if not others:
        return
    handle, constraints = tempfile.mkstemp(prefix="segmate-constraints-", suffix=".txt")
    try:
        with os.fdopen(handle, "w") as stream:
            stream.write(shippedVersionConstraints())
        log("Installing " + ", ".join(r.text for r in others) + "...")
        slicer.util.pip_install([r.text for r in others] + ["--constraint", constraints])
    finally:
        os.remove(constraints)
    importlib.invalidate_caches()
    still = missingRequirements(others)
    if still:
        raise RuntimeError("These packages could not be installed: " + ", ".join(r.text for r in still)
                           + ". See the Python console for pip's messages.")
