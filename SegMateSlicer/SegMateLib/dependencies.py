"""SegMate's Python packages inside Slicer: what is missing, and installing it after one confirmation.

PyTorch comes through the PyTorch extension (``PyTorchUtils``), which picks the build that fits
the computer's GPU driver; the small pure-Python packages come with ``slicer.util.pip_install``.
What Slicer ships (SimpleITK, numpy, vtk) is never installed, upgraded or downgraded: pip runs
with a constraints file that pins the versions Slicer has. SegMateCore itself ships inside the
extension and is not installed at all. The version ranges are SegMateCore's (pyproject.toml).
"""
from __future__ import annotations

import importlib
import importlib.metadata
import logging
import os
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


TORCH = Requirement("torch", ">=2.4,<2.15", "neural network inference (installed by the PyTorch extension)")
REQUIREMENTS = (
    TORCH,
    Requirement("timm", ">=1.0.31,<1.1", "network backbones"),
    Requirement("safetensors", ">=0.4,<0.9", "model files"),
    Requirement("jsonschema", ">=4", "model catalogue checks"),
    Requirement("platformdirs", ">=3", "model cache folder"),
    Requirement("tqdm", ">=4.60", "download progress"),
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


def installTorch(requirement: Requirement = TORCH, log: Callable[[str], None] = logging.info) -> None:
    """Install PyTorch through the PyTorch extension, or explain why an installed one cannot be used."""
    try:
        import PyTorchUtils
    except ModuleNotFoundError:
        raise RuntimeError("SegMate needs the PyTorch extension: install 'PyTorch' from the Extensions Manager, "
                           "restart Slicer and try again.") from None
    torchLogic = PyTorchUtils.PyTorchUtilsLogic()
    installed = requirement.installedVersion()
    if installed is not None and torchLogic.torchInstalled():
        raise RuntimeError(f"PyTorch {installed} is installed but SegMate needs torch{requirement.specifier}. Other "
                           "extensions may rely on the installed version, so SegMate does not replace it: open the "
                           f"'PyTorch Util' module, uninstall PyTorch and install it with the requirement "
                           f"'{requirement.specifier}', then restart Slicer.")
    log(f"Installing PyTorch {requirement.specifier} with the PyTorch extension (this can take several minutes)...")
    if torchLogic.installTorch(askConfirmation=False, torchVersionRequirement=requirement.specifier) is None:
        raise RuntimeError("PyTorch was not installed; SegMate cannot segment without it.")


def installRequirements(requirements, log: Callable[[str], None] = logging.info) -> None:
    """Install the given missing requirements (ask the user first: see ``describe``)."""
    import slicer

    requirements = list(requirements)
    if any(r.name == "torch" for r in requirements):
        installTorch(next(r for r in requirements if r.name == "torch"), log)
    others = [r for r in requirements if r.name != "torch"]
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
