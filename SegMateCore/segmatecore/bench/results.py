"""Rows as the reports read them: their kind and seconds, their ratios to SegMate's default rows of
the same run, and saved runs merged (``--from-json``)."""
from __future__ import annotations

from typing import Any, Sequence

from segmatecore.bench.configs import PEER_MODEL, Config


def make_row(config: Config, model: str, device: str, costs: dict[str, Any], measured: dict[str, Any]
             ) -> dict[str, Any]:
    """One row of the results: what ran (``config``, ``model`` its label), its costs and its measurements."""
    return {"name": config.name, "model": model, "kind": config.kind, "device": device, "scope": config.scope,
            "precision": config.precision, "grad_mode": config.grad_mode, "optimisations": config.optimizations,
            "skip_outside_extent": config.skip_outside_extent, "feature_cache_mb": config.feature_cache_mb,
            "reference": config.reference, **costs, "s_per_volume": None, "peak_gpu_mb": None, **measured}


def complete_rows(result: dict[str, Any]) -> None:
    """Give the rows of a run saved before ``kind``, ``gmacs_per_volume`` and ``vs_segmate`` existed
    those fields, from that run alone (ratios never mix runs)."""
    depth = result["ct"]["size"][2]
    for row in result["rows"]:
        row.setdefault("kind", row_kind(row))
        if row.get("gmacs_per_volume") is None and row.get("gmacs_per_slice") is not None:
            row["gmacs_per_volume"] = row["gmacs_per_slice"] * depth
    if not any("vs_segmate" in row for row in result["rows"]):
        add_segmate_ratios(result["rows"])


def merge(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Several runs' results as one (rows concatenated; each row keeps its own load figures and its
    ratios to the SegMate rows of its own run)."""
    if not results:
        raise ValueError("No benchmark results to merge.")
    for result in results:
        complete_rows(result)
    merged = dict(results[0])
    merged["rows"] = [row for r in results for row in r["rows"]]
    merged["runs"] = [{"machine": r["machine"], "ct": r["ct"], "rows": len(r["rows"])} for r in results]
    return merged


def row_kind(row: dict[str, Any]) -> str:
    """"segmate", "peer" or "revision" (``--revision``'s rows; results saved before rows carried
    ``kind`` had one peer, nnU-Net)."""
    return row.get("kind") or ("peer" if row["model"] == PEER_MODEL else "segmate")


def row_seconds(row: dict[str, Any]) -> float | None:
    """Seconds per volume: end to end for an end-to-end row, the network's for a network-alone row."""
    return row["s_per_volume"] if row["scope"] == "end_to_end" else row["s_network"]


def row_cpu_seconds(row: dict[str, Any]) -> float | None:
    return row.get("cpu_s_per_volume") if row["scope"] == "end_to_end" else row.get("cpu_s_network")


def segmate_references(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """SegMate's default end-to-end row of each SegMate model in the run (its fp32 Dice reference)."""
    return [r for r in rows if row_kind(r) == "segmate" and r["scope"] == "end_to_end"
            and r.get("reference") is None and r.get("s_per_volume")]


def ratio(mine: float | None, reference: float | None) -> float | None:
    return round(mine / reference, 2) if mine and reference else None


def add_segmate_ratios(rows: list[dict[str, Any]]) -> None:
    """Give every row ``vs_segmate``: for each of SegMate's default end-to-end rows of the same run
    (:func:`segmate_references`), the row's wall seconds, CPU seconds, peak RSS and private memory
    divided by that row's (above 1: the row is that many times slower or heavier than SegMate)."""
    references = segmate_references(rows)
    if not references:
        return
    for row in rows:
        row["vs_segmate"] = {ref["model"]: {"wall": ratio(row_seconds(row), ref["s_per_volume"]),
                                            "cpu": ratio(row_cpu_seconds(row), ref.get("cpu_s_per_volume")),
                                            "rss": ratio(row["peak_rss_mb"], ref["peak_rss_mb"]),
                                            "private": ratio(row.get("peak_private_mb"), ref.get("peak_private_mb"))}
                             for ref in references}


def format_row(row: dict[str, Any]) -> str:
    seconds = f"{row['s_per_volume']:.1f} s/volume" if row.get("s_per_volume") else "network only"
    return (f"{row['name']}: {seconds}, network {row['s_network']:.1f} s, peak {row['peak_rss_mb']:.0f} MB, "
            f"{row['dtype']}, load {row['load_before_after']}"
            + (f", {row['cpu_steal_pct']:.0f} % of the CPU stolen" if row.get("cpu_steal_pct") is not None else ""))


def revision_text(rows: Sequence[dict[str, Any]]) -> list[str]:
    """``--revision``'s ratios as lines: the working tree's seconds and memory over the revision's, then
    each side's runs where it ran more than once (``--repeat``)."""
    lines = []
    for mine in (r for r in rows if r.get("vs_revision")):
        v = mine["vs_revision"]
        lines.append(f"working tree / {v['revision']}: wall {v['wall']}, CPU {v['cpu']}, peak RSS {v['rss']} "
                     "(below 1: the working tree takes less)")
        theirs = [r for r in rows if r.get("reference") == mine["name"] and r.get("kind") == "revision"]
        for side, row in (("working tree", mine), *((v["revision"], r) for r in theirs)):
            seconds = row.get("runs_s_per_volume", [])
            if len(seconds) > 1:
                lines.append(f"  {side}: {', '.join(f'{s:.1f}' for s in seconds)} s per run, in turn; the median "
                             "is the row's")
    return lines
