"""From per-organ probabilities to a clean labelmap: smoothing, threshold, overlaps, components, holes,
laterality.

Probabilities may first be smoothed along z (``z_smoothing_mm``, :mod:`segmatecore.inference.zsmoothing`).
They are thresholded after they were resized back to the input's in-plane grid, at 0.5
or at the organ's threshold calibrated on validation cases (``mask_thresholds`` in the model's
metadata, see :mod:`segmatecore.train.calibrate`); where several organs pass, the most probable
one wins. Connected components and hole filling use SimpleITK on each organ's bounding box, so
memory stays at the size of the organ.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np
import SimpleITK as sitk
import torch

from segmatecore.choices import MAX_Z_SMOOTHING_MM
from segmatecore.data.organs import mirror_key, organ
from segmatecore.data.preprocess import resize_slices

THRESHOLD = 0.5
# A sided organ is reported only when its centroid is this far on the wrong side, so that organs
# near the midline (or a midline guessed from the body outline) do not raise false alarms.
LATERALITY_MARGIN_MM = 5.0
# A channel whose largest probability is this far below its threshold cannot pass it after a
# bilinear resize, whatever the rounding of the interpolation weights.
MARGIN = 1e-6

# Per organ: (keep the largest connected component, fill enclosed holes). Solid organs are one
# piece; tubular ones (cord, oesophagus, aorta, trachea) may be split by a missed slice, and
# keeping only the largest piece would then delete real anatomy, so they are left as predicted.
DEFAULT_POSTPROCESS: dict[str, tuple[bool, bool]] = {
    "left_lung": (True, True), "right_lung": (True, True), "liver": (True, True),
    "left_kidney": (True, True), "right_kidney": (True, True),
    "spinal_cord": (False, False), "esophagus": (False, False), "aorta": (False, False), "trachea": (False, False),
    "brainstem": (True, True), "left_parotid": (True, True), "right_parotid": (True, True), "larynx": (True, True),
    "mandible": (True, False),  # a U of bone: its hollow is not a hole, and filling is skipped
}


def labels_from_probabilities(probabilities: torch.Tensor, labels: torch.Tensor,
                              threshold: float | torch.Tensor = THRESHOLD) -> torch.Tensor:
    """[B, C, H, W] probabilities -> [B, H, W] uint8 labels: the most probable organ above its threshold.

    ``labels[c]`` is the label value of channel c (its model channel + 1); ``threshold`` is one
    value for all channels or a [C] tensor, one per channel.
    """
    if isinstance(threshold, torch.Tensor):
        above = probabilities > threshold.to(probabilities)[None, :, None, None]
        probabilities = torch.where(above, probabilities, torch.zeros_like(probabilities))
        threshold = 0.0
    best, channel = probabilities.max(dim=1)
    out = labels.to(probabilities.device)[channel]
    return torch.where(best > threshold, out, torch.zeros_like(out))


def labels_on_grid(probabilities: torch.Tensor, size: Sequence[int], labels: torch.Tensor,
                   thresholds: torch.Tensor) -> torch.Tensor:
    """[B, C, h, w] network-grid probabilities -> [B, *size] uint8 labels on the CT's in-plane grid.

    The same labels as resizing every channel and calling :func:`labels_from_probabilities`, but a
    channel that stays below its threshold on every pixel of the batch is neither resized nor
    compared: bilinear interpolation never exceeds the largest of its inputs, so it cannot pass
    anywhere. Most organs are absent from most slices, so this is most of the resampling work.
    """
    thresholds = thresholds.to(probabilities.device, torch.float32)
    peaks = probabilities.float().amax(dim=(0, 2, 3))
    active = torch.nonzero(peaks > thresholds - MARGIN).flatten()
    if active.numel() == 0:
        return torch.zeros((probabilities.shape[0], *(int(v) for v in size)), dtype=torch.uint8,
                           device=probabilities.device)
    if active.numel() < probabilities.shape[1]:
        probabilities = probabilities.index_select(1, active)
        labels, thresholds = labels.to(active.device)[active], thresholds[active]
    return labels_from_probabilities(resize_slices(probabilities, size), labels, thresholds)


def labels_on_grid_from_logits(logits: torch.Tensor, size: Sequence[int], labels: torch.Tensor,
                               thresholds: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
    """[B, C, h, w] mask logits -> [B, *size] uint8 labels: :func:`labels_on_grid` of
    ``sigmoid(logits) * keep`` without computing a probability where none is needed.

    ``keep`` ([B, C], 0 or 1): the presence gate; a closed channel never passes on that slice. The
    sigmoid is monotone, so "probability above its threshold" is "logit above the threshold's logit",
    and the most probable organ is the one with the largest logit. On the network's own grid the
    labels therefore come straight from the logits, one channel at a time, faster than the
    probabilities' sigmoid, gate product and channel max. They are the
    probabilities' labels except where float32 cannot tell the probabilities apart (above about
    0.9999, e.g. logits 20 and 25 both give 1.0): there the larger logit wins, not the first organ,
    and a threshold above 0.9999 is compared exactly. When the CT's grid differs, the probabilities
    are what is interpolated, as before, but only for channels that reach their threshold on some slice.
    """
    size = tuple(int(v) for v in size)
    thresholds = thresholds.to(logits.device, torch.float32)
    # float64 on the CPU (Apple's MPS has no float64), used in float32 on the logits' device
    limits = torch.logit(thresholds.detach().cpu().double()).float().to(logits.device)
    # [B, C]: the slices where a channel may pass, by labels_on_grid's own test on the largest
    # probability (the sigmoid of the largest logit: the sigmoid is monotone in float32 too)
    reaching = torch.sigmoid(logits.amax(dim=(2, 3)).float()) > (thresholds - MARGIN)[None, :]
    if keep is not None:
        reaching &= keep.to(reaching.device) != 0
    if tuple(logits.shape[-2:]) != size:
        active = torch.nonzero(reaching.any(dim=0)).flatten()
        if active.numel() == 0:
            return torch.zeros((logits.shape[0], *size), dtype=torch.uint8, device=logits.device)
        probabilities = torch.sigmoid(logits.index_select(1, active).float())
        if keep is not None:
            probabilities = probabilities * keep.to(probabilities)[:, active, None, None]
        return labels_on_grid(probabilities, size, labels.to(active.device)[active], thresholds[active])
    best = torch.full((logits.shape[0], *size), float("-inf"), dtype=logits.dtype, device=logits.device)
    out = torch.zeros((logits.shape[0], *size), dtype=torch.uint8, device=logits.device)
    for c in torch.nonzero(reaching.any(dim=0)).flatten().tolist():
        channel = logits[:, c]
        better = (channel > limits[c:c + 1]) & (channel > best)  # a 1-element tensor: compared in float32
        if not bool(reaching[:, c].all()):
            better &= reaching[:, c, None, None]
        torch.where(better, channel, best, out=best)
        out.masked_fill_(better, int(labels[c]))
    return out


def _per_organ_values(organ_keys: list[str], calibrated: Mapping[str, Any] | None,
                     postprocess: Mapping[str, Any] | None, option: str, default: float,
                     valid: Callable[[float], bool], name: str, unit: str, rule: str,
                     one_for_all: bool = False) -> list[float]:
    """Per organ: the caller's ``postprocess[option]`` (a mapping; also a single number with
    ``one_for_all``), else the model's ``calibrated`` value, else ``default``; each value checked."""
    override = (postprocess or {}).get(option)
    if override is None:
        override = {}
    if one_for_all and isinstance(override, (int, float)) and not isinstance(override, bool):
        override = dict.fromkeys(organ_keys, override)
    if not isinstance(override, Mapping):
        raise ValueError(f"postprocess[{option!r}] must map organ keys to {unit}.")
    unknown = sorted(set(override) - set(organ_keys))
    if unknown:
        raise ValueError(f"{name} given for organs not being segmented: {', '.join(unknown)}.")
    calibrated = calibrated or {}
    values = [float(override.get(k, calibrated.get(k, default))) for k in organ_keys]
    bad = [f"{k}={v}" for k, v in zip(organ_keys, values) if not valid(v)]
    if bad:
        raise ValueError(f"{rule}: {', '.join(bad)}.")
    return values


def mask_thresholds(organ_keys: list[str], meta: Mapping[str, Any],
                    postprocess: Mapping[str, Any] | None = None) -> list[float]:
    """Per organ, the probability a voxel must exceed: ``postprocess["thresholds"]``, else the
    model's calibrated ``mask_thresholds``, else 0.5."""
    return _per_organ_values(organ_keys, meta.get("mask_thresholds"), postprocess, "thresholds",
                             THRESHOLD, lambda v: 0.0 < v < 1.0, "thresholds", "values between 0 and 1",
                             "a mask threshold must lie strictly between 0 and 1")


def z_smoothing_mm(organ_keys: list[str], meta: Mapping[str, Any],
                   postprocess: Mapping[str, Any] | None = None) -> list[float]:
    """Per organ, the sigma in mm of the Gaussian its probability is smoothed with along z before the
    threshold (:mod:`segmatecore.inference.zsmoothing`): ``postprocess["z_smoothing_mm"]`` (per organ, or one
    number for all), else the model's calibrated ``z_smoothing_mm``, else 0 (off)."""
    return _per_organ_values(organ_keys, meta.get("z_smoothing_mm"), postprocess, "z_smoothing_mm", 0.0,
                             lambda v: 0.0 <= v <= MAX_Z_SMOOTHING_MM, "z smoothing", "millimetres (0 = off)",
                             f"z smoothing must lie between 0 (off) and {MAX_Z_SMOOTHING_MM:g} mm", one_for_all=True)


def postprocess_options(organ_keys: list[str], postprocess: Mapping[str, Any] | None) -> dict[str, tuple[bool, bool]]:
    """Per organ (largest_component, fill_holes): the defaults above, overridden by ``postprocess``.

    ``postprocess`` may set ``largest_component`` / ``fill_holes`` for all organs, or give
    ``{"organs": {key: {"largest_component": ..., "fill_holes": ...}}}`` per organ.
    """
    postprocess = dict(postprocess or {})
    unknown = set(postprocess) - {"largest_component", "fill_holes", "organs", "presence_gate", "thresholds",
                                  "z_smoothing_mm"}
    if unknown:
        raise ValueError(f"Unknown post-processing options {sorted(unknown)}; "
                         "use largest_component, fill_holes, presence_gate, thresholds, z_smoothing_mm, organs.")
    for handled_elsewhere in ("presence_gate", "thresholds", "z_smoothing_mm"):
        postprocess.pop(handled_elsewhere, None)
    per_organ = postprocess.get("organs", {}) or {}
    options = {}
    for key in organ_keys:
        lcc, fill = DEFAULT_POSTPROCESS.get(key, (False, False))
        own = {**{k: v for k, v in postprocess.items() if k != "organs"}, **per_organ.get(key, {})}
        options[key] = (bool(own.get("largest_component", lcc)), bool(own.get("fill_holes", fill)))
    return options


def presence_gate_enabled(postprocess: Mapping[str, Any] | None) -> bool:
    """Whether masks are kept only where the first pass found their organ (default: yes)."""
    return bool((postprocess or {}).get("presence_gate", True))


def _bounding_box(mask_any_axis: np.ndarray) -> tuple[int, int] | None:
    idx = np.flatnonzero(mask_any_axis)
    return (int(idx[0]), int(idx[-1]) + 1) if idx.size else None


def clean_organs(labels: np.ndarray, options: dict[str, tuple[bool, bool]], legend: Mapping[str, int]) -> None:
    """Apply largest-component and hole filling per organ, in place, on a [X, Y, Z] uint8 labelmap
    whose ``legend`` maps organ keys to label values.

    Hole filling only claims background voxels, never another organ's.
    """
    for key, (largest, fill) in options.items():
        if not (largest or fill):
            continue
        value = legend[key]
        present = labels == value
        boxes = [_bounding_box(present.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
        if boxes[0] is None:
            continue
        region = tuple(slice(a, b) for a, b in boxes)  # type: ignore[misc]
        del present
        crop = labels[region]
        mask = sitk.GetImageFromArray((crop == value).view(np.uint8))
        if largest:
            mask = _largest_component(mask)
        if fill:
            mask = fill_holes(mask)
        keep = sitk.GetArrayViewFromImage(mask)
        crop[(crop == value) & (keep == 0)] = 0
        crop[(keep != 0) & (crop == 0)] = value


def _largest_component(mask: sitk.Image) -> sitk.Image:
    """The largest connected component of a 0/1 mask.

    Component sizes are counted from the label image slab by slab (np.bincount works on int64
    copies); RelabelComponent would sort them too but writes a second 32-bit label image, and
    shape statistics per component were far slower on noisy masks (thousands of specks).
    """
    labeller = sitk.ConnectedComponentImageFilter()
    pieces = labeller.Execute(mask)
    if labeller.GetObjectCount() == 0:
        return sitk.Cast(pieces != pieces, mask.GetPixelID())
    array = sitk.GetArrayViewFromImage(pieces)  # a view: ``pieces`` must outlive it
    counts = np.zeros(labeller.GetObjectCount() + 1, dtype=np.int64)
    slab = max(1, (1 << 21) // max(1, array[0].size))
    for start in range(0, array.shape[0], slab):
        counts += np.bincount(array[start:start + slab].ravel(), minlength=counts.size)
    del array
    counts[0] = 0
    return sitk.Cast(sitk.Equal(pieces, int(np.argmax(counts))), mask.GetPixelID())


def fill_holes(mask: sitk.Image) -> sitk.Image:
    """A 0/1 mask with every background region that does not reach the border made foreground.

    The same voxels as sitk.BinaryFillhole(fullyConnected=False), found by labelling the background
    once with a one-voxel background margin around the mask: every background region that reaches
    the border joins the margin's region, and everything else is foreground or a hole.
    BinaryFillhole's morphological reconstruction slows down badly on speckled masks, where one
    labelling does not; peak memory is one 32-bit label image and three 8-bit ones.
    """
    padded = sitk.ConstantPad(mask, [1, 1, 1], [1, 1, 1], 0)
    pieces = sitk.ConnectedComponent(padded == 0, False)
    del padded
    inside = pieces != pieces.GetPixel(0, 0, 0)
    del pieces
    out = sitk.Cast(sitk.Crop(inside, [1, 1, 1], [1, 1, 1]), mask.GetPixelID())
    out.CopyInformation(mask)
    return out


def volumes_ml(labels: np.ndarray, legend: Mapping[str, int], spacing: tuple[float, float, float]) -> dict[str, float]:
    """Volume of each organ of ``legend`` (key -> label value) in millilitres (voxel count x voxel volume).

    Counted slab by slab: np.bincount works on int64 copies, 8 bytes per voxel of the slab.
    """
    counts = np.zeros(256, dtype=np.int64)
    slab = max(1, (1 << 20) // max(1, labels[0].size))
    for start in range(0, labels.shape[0], slab):
        counts += np.bincount(labels[start:start + slab].ravel(), minlength=256)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    return {key: float(counts[value]) * voxel_ml for key, value in legend.items()}


def _body_midline_x(image: sitk.Image) -> float | None:
    """Physical x (LPS, +x = patient's left) of the centroid of the body (voxels above -500 HU)."""
    factors = [max(1, s // 128) for s in image.GetSize()]
    small = sitk.Shrink(image, factors) if any(f > 1 for f in factors) else image
    body = sitk.BinaryThreshold(sitk.Cast(small, sitk.sitkFloat32), -500.0, 1e30, 1, 0)
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(body)
    return stats.GetCentroid(1)[0] if stats.HasLabel(1) else None


def laterality_warnings(labelmap: sitk.Image, image: sitk.Image, legend: Mapping[str, int]) -> list[str]:
    """Warn when a left organ's centroid lies on the patient's right, or the reverse (``legend``: the
    labelmap's organ key -> label value).

    Works in physical (LPS) coordinates, where +x is the patient's left: a sided organ is compared
    with its counterpart when both were found, else with the spinal cord, else with the body's centroid.
    """
    organ_keys = list(legend)
    sided = [k for k in organ_keys if organ(k).side in ("left", "right")]
    if not sided:
        return []
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.ComputePerimeterOff()
    stats.ComputeFeretDiameterOff()
    stats.Execute(labelmap)

    def centroid_x(key: str) -> float | None:
        label = legend[key]
        return stats.GetCentroid(label)[0] if stats.HasLabel(label) else None

    cord = centroid_x("spinal_cord") if "spinal_cord" in organ_keys else None
    midline = cord
    warnings = []
    for key in sided:
        x = centroid_x(key)
        if x is None:
            continue
        side = organ(key).side
        other = mirror_key(key)
        other_x = centroid_x(other) if other in organ_keys else None
        if other_x is not None:
            reference, what = other_x, f"the {organ(other).name}"
        else:
            if midline is None:
                midline = _body_midline_x(image)
            if midline is None:
                continue
            reference, what = midline, "the midline" if cord is None else "the spinal cord"
        wrong_by = (reference - x) if side == "left" else (x - reference)
        if wrong_by > LATERALITY_MARGIN_MM:
            wrong = "right" if side == "left" else "left"
            warnings.append(f"laterality: the {organ(key).name} lies on the patient's {wrong} of {what} "
                            f"(by {wrong_by:.0f} mm); check the image orientation (direction matrix).")
    return warnings
