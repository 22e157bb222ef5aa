"""What :func:`segmatecore.segment` returns, and the exception that a cancelled run raises."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import SimpleITK as sitk

from segmatecore import __version__
from segmatecore.hub.intended_use import UNSTATED, is_clinical, model_name

# Segment tags written into every .seg.nrrd (the CLI's and Slicer's), so a reviewer can tell what
# made a contour and how tight it was cut from the probabilities.
SOURCE_TAG = "SegMate.Source"  # SegMate version and model
THRESHOLD_TAG = "SegMate.Threshold"  # the probability above which the organ was drawn
Z_SMOOTHING_TAG = "SegMate.ZSmoothingMM"  # sigma (mm) of the smoothing along z before that threshold


class SegmentationCancelled(Exception):
    """Raised by segment() when its cancel token was set; nothing has been written anywhere."""


@dataclass
class SegmentationResult:
    """A labelmap on exactly the input's grid (0 = background) and its facts.

    ``labels`` is the labelmap's legend: organ key -> label value, which is the organ's channel in
    the model that made it plus one. ``timings`` are seconds for read, preprocess, z_pass, network, resample, postprocess, total;
    ``z_range`` holds the z_norm mode and the canonical slice indices first/last it used.
    """

    labelmap: sitk.Image
    organs: list[str]
    labels: dict[str, int]
    volumes_ml: dict[str, float]
    timings: dict[str, float]
    z_range: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    model_info: dict[str, Any] = field(default_factory=dict)
    source: str = "image"
    dicom_dir: str | None = None

    def organ_mask(self, key: str) -> sitk.Image:
        """A uint8 0/1 mask of one organ, with the labelmap's geometry."""
        if key not in self.organs:
            raise KeyError(f"{key!r} was not segmented; segmented organs: {', '.join(self.organs)}")
        label = self.labels[key]
        return sitk.BinaryThreshold(self.labelmap, label, label, 1, 0)

    def summary(self) -> str:
        """One line for logs and the CLI: organs found, total time, z-range."""
        found = sum(1 for k in self.organs if self.volumes_ml.get(k, 0.0) > 0)
        z = self.z_range
        zr = f"z {z['mode']} {z['first']}-{z['last']}/{z['num_slices']}" if z.get("first") is not None \
            else f"z {z['mode']}"
        return (f"{found}/{len(self.organs)} organs found, {self.timings.get('total', 0.0):.1f} s, {zr}"
                + (f", {len(self.warnings)} warning(s)" if self.warnings else ""))

    def source_text(self) -> str:
        """SegMate's version and the model that made this result, e.g. "SegMate 0.1.0, model demo 0.1.0"."""

        info = self.model_info or {}
        model = model_name(info.get("id"), info.get("version"))
        return f"SegMate {__version__}, model {model}".replace("|", "/").replace(":", " ")  # tag delimiters

    def made_by(self) -> dict[str, Any]:
        """What made this result, as every output file records it: SegMate's version, the model's id
        and version, its intended use and whether it is for clinical use (False unless the model says so)."""

        info = self.model_info or {}
        return {"segmate_version": __version__, "model_id": info.get("id"), "model_version": info.get("version"),
                "intended_use": info.get("intended_use") or UNSTATED, "clinical_use": is_clinical(info)}

    def segment_tags(self) -> dict[str, dict[str, str]]:
        """Organ key -> {tag: value}: the source, threshold and z smoothing each organ was drawn with."""
        info = self.model_info or {}
        thresholds, smoothing = info.get("mask_thresholds") or {}, info.get("z_smoothing_mm") or {}
        source = self.source_text()
        tags = {}
        for key in self.organs:
            tags[key] = {SOURCE_TAG: source}
            if key in thresholds:
                tags[key][THRESHOLD_TAG] = f"{thresholds[key]:.2f}"
            if key in smoothing:
                tags[key][Z_SMOOTHING_TAG] = f"{smoothing[key]:g}"
        return tags

    def to_dict(self) -> dict[str, Any]:
        """Everything but the labelmap, as JSON-ready values (the basis of report.json)."""
        image = self.labelmap
        return {"source": self.source, "organs": list(self.organs), "labels": dict(self.labels),
                "volumes_ml": {k: round(v, 3) for k, v in self.volumes_ml.items()},
                "timings": {k: round(v, 3) for k, v in self.timings.items()}, "z_range": dict(self.z_range),
                "warnings": list(self.warnings), "model": dict(self.model_info),
                "geometry": {"size": list(image.GetSize()), "spacing": list(image.GetSpacing()),
                             "origin": list(image.GetOrigin()), "direction": list(image.GetDirection())}}
