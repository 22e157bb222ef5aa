"""``segmate bench --plot``: every row on two panels (matplotlib, imported only when plotting)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from segmatecore.bench.results import row_kind, row_seconds


def _marker(row: dict[str, Any]) -> tuple[str, bool]:
    """(marker, filled): peers triangles, SegMate end to end filled circles, network alone hollow squares."""
    if row_kind(row) == "peer":
        return "^", True
    return ("o", True) if row["scope"] == "end_to_end" else ("s", False)


def plot(results: dict[str, Any], path: str | os.PathLike) -> Path:
    """Two panels for every row of the run, SegMate's and the peers': seconds per volume against peak
    memory, and GMACs per volume against seconds (network-alone rows: network seconds, hollow)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (memory_ax, compute_ax) = plt.subplots(1, 2, figsize=(15, 6.5))
    colours: dict[str, str] = {}
    for row in results["rows"]:
        seconds = row_seconds(row)
        if not seconds:
            continue
        colour = colours.setdefault(row["model"], f"C{len(colours) % 10}")
        marker, filled = _marker(row)
        label = row["name"].split(": ", 1)[-1] if row_kind(row) == "segmate" else row["model"]
        points = [(memory_ax, row["peak_rss_mb"], seconds)]
        if row.get("gmacs_per_volume"):
            points.append((compute_ax, row["gmacs_per_volume"], seconds))
        for ax, x, y in points:
            ax.scatter(x, y, s=70 if filled else 30, marker=marker, color=colour if filled else "none",
                       edgecolors=colour)
            ax.annotate(label, (x, y), fontsize=6, xytext=(3, 2), textcoords="offset points")
    for model, colour in colours.items():
        memory_ax.scatter([], [], color=colour, label=model)
    memory_ax.scatter([], [], color="grey", marker="o", label="SegMate end to end (s per volume)")
    memory_ax.scatter([], [], color="none", edgecolors="grey", marker="s", label="SegMate network alone")
    memory_ax.scatter([], [], color="grey", marker="^", label="peer end to end (random weights)")
    memory_ax.set_xlabel("peak resident memory (MB)")
    compute_ax.set_xlabel("GMACs per volume (torch.utils.flop_counter)")
    for ax in (memory_ax, compute_ax):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_ylabel("seconds per volume")
        ax.grid(True, which="both", alpha=0.3)
    size = results["ct"]["size"]
    fig.suptitle(f"SegMate and its peers, CT {size[0]} x {size[1]} x {size[2]}\n{results['machine']['cpu']}",
                 fontsize=9)
    memory_ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
