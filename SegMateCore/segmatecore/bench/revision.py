"""``segmate bench --revision REV``: another revision's SegMateCore segments the same CT with the same
model file beside the working tree's, in the same run, so that a change's cost is read as a ratio.

The revision's ``SegMateCore`` and ``Resources`` come out of ``git archive`` into a temporary folder:
the repository itself is left as it is. Both rows run one standalone script,
:data:`SEGMENT_SCRIPT`, by path, with PYTHONPATH at one SegMateCore or the other: it calls only
``segmatecore.segment(path, model=..., device=..., precision=..., batch_size=...)``, which every
revision has, so no module of the working tree's layout runs in the revision's row. The two rows
are timed the same way (``segment()`` with the model file, then the labels written) and their peak
memory is sampled from outside the process.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from segmatecore.bench.configs import Config
from segmatecore.bench.inputs import BenchSetup
from segmatecore.bench.jobs import read_result, row_folder
from segmatecore.bench.memory import PeakMemory, machine_cpu_seconds, steal_percent
from segmatecore.bench.results import make_row, ratio
from segmatecore.runtime.optimize import DEFAULT, compute_dtype

SEGMENT_SCRIPT = Path(__file__).with_name("revision_segment.py")
WORKING_TREE = "working tree"
ARCHIVED = ("SegMateCore", "Resources")  # the package and the organ table, catalogue and models it reads


class RevisionError(ValueError):
    """The revision to compare with cannot be checked out."""


@dataclass(frozen=True)
class Checkout:
    """A revision's SegMateCore, extracted into a temporary folder."""

    revision: str   # as the user named it
    commit: str     # its full SHA
    short: str
    core: Path      # the folder to put on PYTHONPATH

    @property
    def label(self) -> str:
        return f"{self.revision} {self.short}"


def working_tree_core() -> Path:
    """The SegMateCore folder this package runs from."""
    return Path(__file__).resolve().parents[2]


def _git(repository: Path, *args: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["git", "-C", str(repository), *args], capture_output=True)
    except FileNotFoundError as exc:
        raise RevisionError("--revision needs git, which is not installed.") from exc


def _text(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout.decode().strip()


def resolve_commit(repository: Path, revision: str) -> tuple[Path, str, str]:
    """(repository root, full SHA, short SHA) of ``revision``, or a RevisionError saying what is wrong."""
    top = _git(repository, "rev-parse", "--show-toplevel")
    if top.returncode != 0:
        raise RevisionError(f"{repository} is not a git checkout: --revision compares with a revision of the "
                            "repository SegMate runs from.")
    root = Path(_text(top))
    commit = _git(root, "rev-parse", "--verify", "--quiet", "--end-of-options", f"{revision}^{{commit}}")
    if commit.returncode != 0 or not _text(commit):
        raise RevisionError(f"{revision!r} is not a revision of {root} (a commit, branch, tag or "
                            "expression such as main~3).")
    sha = _text(commit)
    return root, sha, _text(_git(root, "rev-parse", "--short", sha))


@contextlib.contextmanager
def revision_checkout(repository: str | os.PathLike | None, revision: str) -> Iterator[Checkout]:
    """``revision``'s SegMateCore (and Resources) in a temporary folder, removed afterwards.

    ``repository`` None: the checkout this package runs from.
    """
    root, sha, short = resolve_commit(Path(repository) if repository else working_tree_core(), revision)
    present = set(_text(_git(root, "ls-tree", "--name-only", sha)).splitlines())
    if "SegMateCore" not in present:
        raise RevisionError(f"{revision!r} ({short}) has no SegMateCore folder to benchmark.")
    archive = _git(root, "archive", "--format=tar", sha, "--", *[p for p in ARCHIVED if p in present])
    if archive.returncode != 0:
        raise RevisionError(f"git archive of {revision!r} failed: {archive.stderr.decode().strip()}")
    with tempfile.TemporaryDirectory(prefix="segmate-revision-") as folder:
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(folder, **safe)
        yield Checkout(revision, sha, short, Path(folder) / "SegMateCore")


def revision_rows(checkout: Checkout, setup: BenchSetup, model_key: str, prefix: str, model_label: str,
                  costs: dict[str, Any], plan: dict[str, Any]) -> list[dict[str, Any]]:
    """The working tree's row, then the revision's (whose labels are compared with the working tree's),
    the working tree's carrying ``vs_revision``: its wall and CPU seconds and memory over the revision's.
    ``plan``: the run's device, precision, batch size, threads, timeout and ``repeat``.

    With ``repeat`` above 1 the two sides take turns (working tree, revision, working tree, ...), so
    that a drift of the machine's speed during the run falls on both, and each row is its side's
    median run, listing every run's seconds in ``runs_s_per_volume``.
    """
    model = setup.models[model_key]
    ours = Config(f"{prefix} end_to_end: {WORKING_TREE}", "revision", "end_to_end",
                  precision=plan["precision"], optimizations={})
    theirs = Config(f"{prefix} end_to_end: {checkout.label}", "revision", "end_to_end",
                    precision=plan["precision"], optimizations={}, reference=ours.name)
    sides = ((ours, working_tree_core(), {"revision": WORKING_TREE}),
             (theirs, checkout.core, {"revision": checkout.revision, "commit": checkout.commit}))
    runs: dict[str, list[dict[str, Any]]] = {config.name: [] for config, _, _ in sides}
    for _ in range(plan.get("repeat", 1)):
        for config, core, code in sides:
            runs[config.name].append({**measure_core(core, config.name, setup, model, plan), "revision": code})
    rows = [make_row(config, model_label, plan["device"], costs, median_run(runs[config.name]))
            for config, _, _ in sides]
    rows[0]["vs_revision"] = {"revision": checkout.label, **revision_ratios(rows[0], rows[1])}
    return rows


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run whose wall seconds are the median (the lower of the middle two for an even count), with
    every run's seconds beside it."""
    ordered = sorted(runs, key=lambda run: run["s_per_volume"])
    return {**ordered[(len(ordered) - 1) // 2], "runs_s_per_volume": [round(run["s_per_volume"], 2) for run in runs]}


def revision_ratios(mine: dict[str, Any], theirs: dict[str, Any]) -> dict[str, float | None]:
    """Wall seconds, CPU seconds, peak RSS and private memory of ``mine`` over ``theirs`` (below 1: less)."""
    return {"wall": ratio(mine["s_per_volume"], theirs["s_per_volume"]),
            "cpu": ratio(mine.get("cpu_s_per_volume"), theirs.get("cpu_s_per_volume")),
            "rss": ratio(mine["peak_rss_mb"], theirs["peak_rss_mb"]),
            "private": ratio(mine.get("peak_private_mb"), theirs.get("peak_private_mb"))}


def measure_core(core: Path, name: str, setup: BenchSetup, model: Path, plan: dict[str, Any]) -> dict[str, Any]:
    """Run :data:`SEGMENT_SCRIPT` with ``core`` first on PYTHONPATH; its timings, and its peak memory
    and the machine's load and stolen CPU time measured from here."""
    outdir = row_folder(setup.workdir, name)
    job = {"ct": str(setup.ct), "model": str(model), "outdir": str(outdir), "device": plan["device"],
           "precision": plan["precision"], "batch_size": plan["batch_size"], "threads": plan["threads"]}
    (outdir / "job.json").write_text(json.dumps(job))
    env = {**os.environ, "PYTHONPATH": str(core), "SEGMATE_HOME": str(setup.workdir / "home")}
    load_before, cpu_before = os.getloadavg(), machine_cpu_seconds()
    proc = subprocess.Popen([sys.executable, str(SEGMENT_SCRIPT), str(outdir / "job.json")], env=env, cwd=outdir,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with PeakMemory(pid=proc.pid) as memory:
        try:
            _, stderr = proc.communicate(timeout=plan["timeout"])
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark row {name!r} failed:\n{stderr[-3000:]}")
    row = read_result(outdir)
    if not Path(row.pop("segmatecore")).resolve().is_relative_to(core.resolve()):
        raise RuntimeError(f"benchmark row {name!r} did not run the SegMateCore in {core}.")
    dtype = compute_dtype(torch.device(plan["device"]), plan["precision"], DEFAULT)
    row.update(peak_rss_mb=memory.peak_mb, peak_private_mb=memory.peak_private_mb,
               dtype=str(dtype).split(".")[-1], load_before_after=[round(load_before[0], 2),
                                                                 round(os.getloadavg()[0], 2)],
               cpu_steal_pct=steal_percent(cpu_before, machine_cpu_seconds()))
    return row
