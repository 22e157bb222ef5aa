"""``segmate bench``'s run: every configuration's row on one CT, in one run.

After the rows, the outputs are compared with their fp32 references, every row is set against
SegMate's default end-to-end rows of the run (:func:`~segmatecore.bench.results.add_segmate_ratios`),
and the machine's matrix-multiply peak gives the rows their compute floors
(:func:`~segmatecore.bench.machine.add_compute_floors`).
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

from segmatecore.bench.configs import (BACKBONES, BENCH_SIZE, BUNDLED, NETWORK_SLICES, QUICK_NETWORK_SLICES, QUICK_SIZE,
                                       SCOPES, Config, bundled_configs, peer_configs, segmate_configs)
from segmatecore.bench.inputs import BenchSetup, add_bundled_model, peer_costs, prepare_inputs, recorded_ct_path, sample_ct_path
from segmatecore.bench.jobs import compare_with_references, run_config
from segmatecore.bench.machine import add_compute_floors, machine_description
from segmatecore.bench.results import add_segmate_ratios, make_row
from segmatecore.bench.revision import Checkout, revision_checkout, revision_rows


def run_benchmark(*, quick: bool = False, backbones: Sequence[str] = BACKBONES, precision: str = "auto",
                  device: str = "cpu", peers: Sequence[str] | None = None, ct: str | os.PathLike | None = None,
                  workdir: str | os.PathLike | None = None, batch_size: int | None = None, network_slices: int | None = None,
                  threads: int | None = None, timeout: float = 3600.0, scopes: Sequence[str] = SCOPES,
                  bundled: bool = True, openvino: bool = True, revision: str | None = None, repeat: int = 1,
                  repository: str | os.PathLike | None = None,
                  report: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run every configuration and return ``{"machine", "ct", "batch_size", "rows"}`` (rows as
    documented in ROW_FIELDS).

    ``peers``: the peers' keys (:data:`segmatecore.bench.peers.PEERS`; None: all of them, empty: none),
    measured with the end-to-end rows. ``openvino`` False leaves out the OpenVINO rows even where
    OpenVINO is installed (its conversion of a large backbone takes minutes). ``batch_size`` None:
    segment()'s own default for the device (2 on the CPU), so that the rows measure what users run.
    ``revision``: a git revision of ``repository`` (default: the checkout this package runs from)
    whose SegMateCore segments the same CT with the same model beside the working tree's
    (:mod:`segmatecore.bench.revision`); checked out before anything is measured. ``repeat``: how many
    times each side of that comparison runs, taking turns; each side reports its median run.
    """
    from segmatecore.bench.peers import PEERS
    from segmatecore.runtime.devices import DEFAULT_BATCH, resolve_device
    from segmatecore.models.encoder import backbone_spec

    if revision is not None and "end_to_end" not in scopes:
        raise ValueError("--revision compares end-to-end rows: use it with --scope all or end_to_end.")
    backbones = [backbone_spec(b).key for b in backbones]
    if repeat < 1:
        raise ValueError("--repeat must be at least 1.")
    if revision is not None and not (bundled or backbones):
        raise ValueError("--revision needs a model to run: the bundled one or a backbone.")
    plan = {"quick": quick, "precision": precision, "device": device, "timeout": timeout,
            "repeat": repeat, "batch_size": batch_size or DEFAULT_BATCH.get(resolve_device(device).type, 4),
            "network_slices": network_slices or (QUICK_NETWORK_SLICES if quick else NETWORK_SLICES),
            # --quick's tiny tensors: thread start-up and barriers would dominate, worst on a busy machine
            "threads": 1 if quick and threads is None else threads}
    size = QUICK_SIZE if quick else BENCH_SIZE
    source = Path(ct) if ct else sample_ct_path()
    with contextlib.ExitStack() as stack:
        checkout = stack.enter_context(revision_checkout(repository, revision)) if revision is not None else None
        folder = Path(stack.enter_context(contextlib.nullcontext(workdir) if workdir
                                          else tempfile.TemporaryDirectory(prefix="segmate-bench-")))
        folder.mkdir(parents=True, exist_ok=True)
        machine = machine_description()
        setup = prepare_inputs(folder, backbones, size, source, 64 if quick else 512)
        configs, labels = _configs(setup, backbones, scopes, bundled, openvino, plan,
                                   list(PEERS) if peers is None else list(dict.fromkeys(peers)))
        rows = [_measure(config, setup, labels, plan, report) for config in configs]
        if checkout is not None:
            rows += _revision_rows(checkout, setup, labels, bundled, backbones, plan, report)
        compare_with_references(rows)
        add_segmate_ratios(rows)
        round_rows(rows)
        machine["matmul_gmacs_per_s"] = add_compute_floors(rows, setup.depth, device, quick)
        machine["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    return {"machine": machine, "ct": {"source": recorded_ct_path(source), "size": list(size), "quick": quick},
            "batch_size": plan["batch_size"], "rows": rows}


def _configs(setup: BenchSetup, backbones: Sequence[str], scopes: Sequence[str], bundled: bool, openvino: bool,
             plan: dict[str, Any], peers: Sequence[str]) -> tuple[list[Config], dict[str, tuple[str, str]]]:
    """The run's rows in order, and for each model key the prefix of its rows' names and its model label
    (a backbone's are its name)."""
    from segmatecore.runtime import openvino as openvino_runtime

    openvino = openvino and openvino_runtime.available()
    configs = [c for b in backbones for c in segmate_configs(b, openvino, plan["precision"], plan["threads"])
               if c.scope in scopes]
    labels = {b: (b, b) for b in backbones}
    if bundled and "end_to_end" in scopes:
        model_id, bundled_backbone = add_bundled_model(setup)
        labels[BUNDLED] = model_id, f"{model_id} (input {setup.costs[BUNDLED]['input_size']})"
        configs += bundled_configs(model_id, bundled_backbone, plan["precision"], plan["threads"], openvino)
    if "end_to_end" in scopes:
        configs += peer_configs(peers, plan["device"], plan["quick"])
    return configs, labels


def _measure(config: Config, setup: BenchSetup, labels: dict[str, tuple[str, str]], plan: dict[str, Any],
             report: Callable[[dict[str, Any]], None] | None) -> dict[str, Any]:
    """One row: measured (in a fresh process unless --quick) and given its model's parameters and GMACs."""
    measured = run_config(config, setup, plan["device"], plan["batch_size"], plan["network_slices"], plan["quick"],
                          plan["threads"], plan["timeout"], isolate=not plan["quick"])
    if config.kind == "peer":
        costs, model = peer_costs(config.peer, plan["quick"], measured["patches"], setup.depth), config.peer
    else:
        key = config.model_key or config.backbone
        costs, model = segmate_costs(setup, key), labels[key][1]
    row = make_row(config, model, plan["device"], costs, measured)
    if report:
        report(row)
    return row


def _revision_rows(checkout: Checkout, setup: BenchSetup, labels: dict[str, tuple[str, str]], bundled: bool, backbones: Sequence[str],
                   plan: dict[str, Any], report: Callable[[dict[str, Any]], None] | None) -> list[dict[str, Any]]:
    """The working tree's and the revision's end-to-end rows, with the bundled model (else the first backbone's)."""
    key = BUNDLED if bundled else backbones[0]
    rows = revision_rows(checkout, setup, key, *labels[key], segmate_costs(setup, key), plan)
    for row in rows:
        if report:
            report(row)
    return rows


def segmate_costs(setup: BenchSetup, key: str) -> dict[str, Any]:
    """A SegMate model's costs in the paper's per-volume convention: the network once on every slice."""
    costs = setup.costs[key]
    return {**costs, "gmacs_per_volume": costs["gmacs_per_slice"] * setup.depth}


ROUNDED = ("params_m", "gmacs_per_slice", "gmacs_per_volume", "gmacs_per_call", "s_per_volume", "s_network",
           "s_per_slice", "s_prepare", "cpu_s_network", "cpu_s_per_volume", "peak_rss_mb", "peak_private_mb",
           "kernel_peak_rss_mb", "peak_gpu_mb")


def round_rows(rows: list[dict[str, Any]]) -> None:
    """Rows as saved: three decimals, and no working folder (results are committed and shared)."""
    for row in rows:
        row.pop("outdir", None)
        for key in ROUNDED:
            if isinstance(row.get(key), float):
                row[key] = round(row[key], 3)
