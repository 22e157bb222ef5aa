"""PNG preview: axial, coronal and sagittal views through the organs with the contours overlaid."""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from segmatecore.data.atomic import atomic_path
from segmatecore.data.geometry import to_canonical
from segmatecore.data.organs import Organ
from segmatecore.export.common import check_labelmap, resolve_legend

# Window (level, width) in HU for the preview.
WINDOWS = {"soft_tissue": (40.0, 400.0), "lung": (-600.0, 1500.0)}
OVERLAY_ALPHA = 0.45


def _label_statistics(labelmap: sitk.Image) -> sitk.LabelShapeStatisticsImageFilter:
    """Voxel counts and centroids of every label, in one pass of ITK (memory stays at the labelmap's)."""
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.ComputePerimeterOff()
    stats.ComputeFeretDiameterOff()
    stats.Execute(labelmap)
    return stats


def _organs_centre(labelmap: sitk.Image, stats: sitk.LabelShapeStatisticsImageFilter,
                   chosen: Sequence[tuple[Organ, int]], frame: Any) -> tuple[int, int, int]:
    """Canonical voxel index of the organs' centre of mass (the volume centre when there are none)."""
    present = [value for _, value in chosen if value in set(stats.GetLabels())]
    if not present:
        return tuple(n // 2 for n in frame.canonical_shape)  # type: ignore[return-value]
    weights = np.array([stats.GetNumberOfPixels(label) for label in present], dtype=float)
    centroid = weights @ np.array([stats.GetCentroid(label) for label in present]) / weights.sum()
    index = labelmap.TransformPhysicalPointToContinuousIndex(centroid.tolist())
    centre = []
    for c, axis in enumerate(frame.axes):
        value = frame.size[axis] - 1 - index[axis] if frame.flips[c] else index[axis]
        centre.append(int(np.clip(round(value), 0, frame.size[axis] - 1)))
    return tuple(centre)  # type: ignore[return-value]


def oriented_views(image: sitk.Image, labelmap: sitk.Image, legend: Mapping[str, int],
                   stats: sitk.LabelShapeStatisticsImageFilter | None = None) -> dict[str, dict[str, Any]]:
    """Axial, coronal and sagittal slices through the organs' centre, in radiological display layout.

    Each view has ``ct`` and ``labels`` 2D arrays whose row 0 is the top of the picture, the
    physical ``pixel_mm`` (height, width), the slice ``position`` (RAS, as Slicer shows it) and the
    patient directions at the ``left``/``right`` edges. Axial: seen from the feet, patient's right
    on the left, anterior up. Coronal: seen from the front, patient's right on the left, superior
    up. Sagittal: anterior on the left, superior up. Built on the canonical RAS layout, so any input
    direction shows upright anatomy.
    """
    if image.GetSize() != labelmap.GetSize():
        raise ValueError(f"The CT ({image.GetSize()}) and the labelmap ({labelmap.GetSize()}) differ in size; "
                         "pass the image that was segmented.")
    if not (np.allclose(image.GetSpacing(), labelmap.GetSpacing(), rtol=1e-5)
            and np.allclose(image.GetDirection(), labelmap.GetDirection(), atol=1e-5)
            and np.allclose(image.GetOrigin(), labelmap.GetOrigin(), atol=1e-3)):
        raise ValueError("The CT and the labelmap have different geometry; pass the image that was segmented.")
    ct, frame = to_canonical(image)
    labels, _ = to_canonical(labelmap)
    stats = stats or _label_statistics(labelmap)
    ci, cj, ck = _organs_centre(labelmap, stats, resolve_legend(legend), frame)
    sr, sa, ss = frame.spacing
    index = [0, 0, 0]
    for c, value in enumerate((ci, cj, ck)):
        axis = frame.axes[c]
        index[axis] = frame.size[axis] - 1 - value if frame.flips[c] else value
    x, y, z = labelmap.TransformIndexToPhysicalPoint(index)
    right, anterior, superior = -x, -y, z  # LPS -> RAS, as Slicer shows slice offsets
    # Canonical axes: i -> patient right, j -> anterior, k -> superior. Reversing i puts the patient's
    # right on the picture's left; reversing j / k puts anterior / superior at the top.
    views = {
        "axial": (np.s_[::-1, ::-1, ck], (sa, sr), f"S {superior:.1f} mm", ("R", "L")),
        "coronal": (np.s_[::-1, cj, ::-1], (ss, sr), f"A {anterior:.1f} mm", ("R", "L")),
        "sagittal": (np.s_[ci, ::-1, ::-1], (ss, sa), f"R {right:.1f} mm", ("A", "P")),
    }
    # Copies: the canonical arrays are views of the images' buffers, which the caller may free.
    return {name: {"ct": np.array(ct[cut].T), "labels": np.array(labels[cut].T), "pixel_mm": pixel_mm,
                   "position": position, "left": edges[0], "right": edges[1]}
            for name, (cut, pixel_mm, position, edges) in views.items()}


def write_preview(image: sitk.Image, labelmap: sitk.Image, legend: Mapping[str, int], path: str | os.PathLike,
                  window: str | tuple[float, float] = "soft_tissue", title: str | None = None) -> Path:
    """PNG of axial, coronal and sagittal views with the organs overlaid in their colours and a legend.

    ``window`` is "soft_tissue" (level 40, width 400 HU), "lung" (-600, 1500) or (level, width).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    labelmap = check_labelmap(labelmap)
    chosen = resolve_legend(legend)
    if isinstance(window, str):
        if window not in WINDOWS:
            raise ValueError(f"Unknown preview window {window!r}; use one of {', '.join(WINDOWS)} or (level, width).")
        window = WINDOWS[window]
    level, width = window
    stats = _label_statistics(labelmap)
    views = oriented_views(image, labelmap, legend, stats)

    colours = np.zeros((256, 4))
    for o, value in chosen:
        colours[value] = (*o.color_float, OVERLAY_ALPHA)
    found = set(stats.GetLabels())

    fig = Figure(figsize=(13.5, 5.6), dpi=100, facecolor="black")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3, gridspec_kw={"left": 0.01, "right": 0.99, "top": 0.9, "bottom": 0.16, "wspace": 0.04})
    for ax, (name, view) in zip(axes, views.items()):
        rows, cols = view["ct"].shape
        height_mm, width_mm = rows * view["pixel_mm"][0], cols * view["pixel_mm"][1]
        extent = (0.0, width_mm, height_mm, 0.0)  # physical extent: correct aspect ratio whatever the spacing
        ax.imshow(view["ct"].astype(np.float32), cmap="gray", vmin=level - width / 2, vmax=level + width / 2,
                  extent=extent, interpolation="bilinear")
        ax.imshow(colours[view["labels"]], extent=extent, interpolation="nearest")
        ax.set_title(f"{name}   {view['position']}", color="white", fontsize=11)
        text = {"color": "yellow", "fontsize": 13, "fontweight": "bold", "va": "center"}
        ax.text(0.02, 0.5, view["left"], transform=ax.transAxes, ha="left", **text)
        ax.text(0.98, 0.5, view["right"], transform=ax.transAxes, ha="right", **text)
        ax.set_axis_off()
    handles = [Patch(facecolor=o.color_float, edgecolor="white", label=o.display_name)
               for o, value in chosen if value in found]
    if handles:
        legend = fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 0.04),
                            ncol=min(len(handles), 5), frameon=False, fontsize=10)
        for label in legend.get_texts():
            label.set_color("white")
    missing = [o.display_name for o, value in chosen if value not in found]
    if missing:
        fig.text(0.5, 0.015, "Not found: " + ", ".join(missing), color="#bbbbbb", fontsize=9, ha="center")
    if title:
        fig.suptitle(title, color="white", fontsize=12)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", facecolor=fig.get_facecolor())
    return Path(path)
