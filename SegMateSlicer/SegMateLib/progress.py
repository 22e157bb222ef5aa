"""What the panel shows of a run in progress: the stage, the slices done, the time since it started.

SegMateCore reports ``progress(stage, done, total)`` between batches; the worker process forwards
those reports as events, and the panel's timer turns the latest one into the progress bar's text.
"""
from __future__ import annotations

from dataclasses import dataclass

STAGE_TITLES = {
    "starting": "Starting",
    "download": "Downloading the model",
    "loading": "Loading the model",
    "z_pass": "Finding the organs' extent",
    "network": "Segmenting",
    "postprocess": "Post-processing",
    "done": "Done",
}


@dataclass(frozen=True)
class JobProgress:
    """The latest progress report of a run: stage, units done of total, seconds since start."""

    stage: str
    done: int
    total: int
    elapsed: float

    @property
    def title(self) -> str:
        return STAGE_TITLES.get(self.stage, self.stage)

    def text(self) -> str:
        """For the progress bar: "Segmenting: slice 12 of 40", "Downloading the model: 12 of 25 MB"."""
        if self.stage in ("z_pass", "network") and self.total:
            return f"{self.title}: slice {self.done} of {self.total}"
        if self.stage == "download" and self.total:
            return f"{self.title}: {self.done / 2**20:.0f} of {self.total / 2**20:.0f} MB"
        return self.title


def elapsedText(seconds: float) -> str:
    minutes, seconds = divmod(int(round(seconds)), 60)
    return f"{minutes}:{seconds:02d}"
