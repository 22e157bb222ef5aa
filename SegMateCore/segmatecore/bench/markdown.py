"""``segmate bench --markdown``: the run's rows as markdown tables."""
from __future__ import annotations

from typing import Any

from segmatecore.bench.configs import PEER_MODEL
from segmatecore.bench.results import row_cpu_seconds, row_kind, row_seconds, segmate_references


def _num(value: float | None, digits: int = 1) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _gmacs(value: float | None) -> str:
    """GMACs per volume: whole GMACs from 100 up (thousands separated), else one decimal."""
    if value is None:
        return ""
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def peer_table(results: dict[str, Any]) -> str:
    """Every end-to-end row against the nnU-Net peer of the same run, as a markdown table ("" without a peer).

    Where the time went (segment()'s own timings: first pass + main pass of the network, resampling,
    post-processing) and how many times faster (wall and CPU seconds) and lighter than the peer each
    row was: ratios within one run, so that the machine's speed on the day cancels out.
    """
    rows = [r for r in results["rows"] if r["scope"] == "end_to_end"]
    peer = next((r for r in rows if r["model"] == PEER_MODEL), None)
    if peer is None:
        return ""

    def ratio(mine: float | None, theirs: float | None) -> str:
        return f"{theirs / mine:.1f}x" if mine and theirs else ""

    out = ["| configuration | s / volume | CPU s | z pass + network s | resample s | post-process s | peak RSS MB "
           "| private MB | vs 3D nnU-Net: faster (wall) | faster (CPU s) | less RSS | Dice vs fp32 (min) | CPU stolen % |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        t = r.get("timings") or {}
        network = (f"{t['z_pass']:.1f} + {t['network']:.1f}" if "z_pass" in t and "network" in t
                   else _num(t.get("network", r["s_network"])))
        mine = r is not peer
        dice = "reference" if row_kind(r) == "segmate" and r.get("reference") is None else _num(r.get("dice_min"), 4)
        out.append(f"| {r['model']}: {r['name'].split(': ', 1)[-1]} | {_num(r['s_per_volume'])} | {_num(r.get('cpu_s_per_volume'))} "
                   f"| {network} | {_num(t.get('resample'))} | {_num(t.get('postprocess'))} "
                   f"| {_num(r['peak_rss_mb'], 0)} | {_num(r.get('peak_private_mb'), 0)} "
                   f"| {ratio(r['s_per_volume'], peer['s_per_volume']) if mine else ''} "
                   f"| {ratio(r.get('cpu_s_per_volume'), peer.get('cpu_s_per_volume')) if mine else ''} "
                   f"| {ratio(r['peak_rss_mb'], peer['peak_rss_mb']) if mine else ''} "
                   f"| {dice} | {_num(r.get('cpu_steal_pct'), 0)} |")
    return "\n".join(out) + "\n"


def ranking_table(results: dict[str, Any]) -> str:
    """Every row of the run, fastest first, as a markdown table: SegMate's rows and the peers', their
    seconds (wall and CPU), memory, parameters and GMACs per volume, and each set against SegMate's
    default end-to-end rows of the same run (row / SegMate: wall s, CPU s, peak RSS)."""
    rows = sorted((r for r in results["rows"] if row_seconds(r)), key=row_seconds)
    references = list(dict.fromkeys(r["model"] for r in segmate_references(results["rows"])))
    header = ["rank", "configuration", "kind", "s / volume", "CPU s", "peak RSS MB", "private MB", "params M",
              "GMACs / volume"] + [f"x {model}: s / CPU s / RSS" for model in references]
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for rank, r in enumerate(rows, 1):
        kind = {"peer": "peer (random weights)", "revision": "SegMate, revision comparison"}.get(row_kind(r)) or \
            "SegMate" + (", network alone" if r["scope"] == "network" else "")
        cells = [str(rank), f"{r['model']}: {r['name'].split(': ', 1)[-1]}", kind, _num(row_seconds(r)),
                 _num(row_cpu_seconds(r)), _num(r["peak_rss_mb"], 0), _num(r.get("peak_private_mb"), 0),
                 _num(r.get("params_m"), 2), _gmacs(r.get("gmacs_per_volume"))]
        for model in references:
            ratio = (r.get("vs_segmate") or {}).get(model)
            cells.append(" / ".join(_num(ratio.get(k), 2) for k in ("wall", "cpu", "rss")) if ratio else "")
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def accuracy_table(results: dict[str, Any]) -> str:
    """Published accuracy of the run's peers and of SegMate, as a markdown table: the papers' own
    figures on their own data, with trained weights. Nothing in it was measured by the run."""
    from segmatecore.hub.catalogue import catalogue_entry, default_model_id
    from segmatecore.bench.peers import PEERS, SEGMATE_PAPER_ACCURACY

    lines = ["| network | dataset | task | Dice % (published) | source |", "|---|---|---|---|---|"]
    models = dict.fromkeys(r["model"] for r in results["rows"])
    for key in (k for k in PEERS if k in models):
        for a in PEERS[key].accuracy:
            lines.append(f"| {PEERS[key].title} | {a.dataset} | {a.task} | {a.dice:.2f} | {a.source} |")
    for a in SEGMATE_PAPER_ACCURACY:
        lines.append(f"| SegMate | {a.dataset} | {a.task} | {a.dice:.2f} | {a.source} |")
    default = catalogue_entry(default_model_id())
    if any(str(m).startswith(default["id"]) for m in models) and default.get("metrics"):
        metrics = default["metrics"]
        for organ, values in metrics["organs"].items():
            lines.append(f"| {default['id']} (bundled) | {metrics['dataset']} | {organ} | {100 * values['dice']:.1f} "
                         f"| Resources/models.json (`segmate evaluate`) |")
    return "\n".join(lines) + "\n"


def revision_table(results: dict[str, Any]) -> str:
    """The working tree's end-to-end row and the revision's (``--revision``), and their ratio, as a
    markdown table ("" without a revision): the same CT, model and ``segment()`` call on both."""
    rows = [r for r in results["rows"] if row_kind(r) == "revision"]
    if not rows:
        return ""
    out = ["| code | s / volume | CPU s | network s | peak RSS MB | private MB | Dice vs working tree (min) |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['name'].split(': ', 1)[-1]} | {_num(r['s_per_volume'])} | {_num(r.get('cpu_s_per_volume'))} "
                   f"| {_num(r['s_network'])} | {_num(r['peak_rss_mb'], 0)} | {_num(r.get('peak_private_mb'), 0)} "
                   f"| {'reference' if r.get('reference') is None else _num(r.get('dice_min'), 4)} |")
    for r in rows:
        if r.get("vs_revision"):
            v = r["vs_revision"]
            out.append(f"| working tree / {v['revision']} | {_num(v['wall'], 2)} | {_num(v['cpu'], 2)} | "
                       f"| {_num(v['rss'], 2)} | {_num(v['private'], 2)} | |")
    return "\n".join(out) + "\n"


def markdown_tables(results: dict[str, Any]) -> str:
    """Every row ranked (:func:`ranking_table`), the published accuracy beside it
    (:func:`accuracy_table`), the end-to-end rows against the 3D nnU-Net peer (:func:`peer_table`),
    the working tree against ``--revision`` (:func:`revision_table`), then one markdown table per
    model: every row's seconds (wall and CPU), memory, dtype and Dice vs fp32."""
    from segmatecore.bench.compute_peak import peaks_text

    out = []
    peaks = results.get("machine", {}).get("matmul_gmacs_per_s") or {}
    if peaks:
        out.append("Matrix-multiply peak of this machine (`torch.mm`, best of 5), the ceiling of the "
                   f"\"% of peak\" column: {peaks_text(peaks)}\n")
    out += ["#### Every row of this run, fastest first\n", ranking_table(results)]
    out += ["#### Published accuracy: the papers' figures on their own data, not measured in this run\n",
            accuracy_table(results)]
    against_peer = peer_table(results)
    if against_peer:
        out += ["#### End to end, against the 3D nnU-Net peer of this run\n", against_peer]
    against_revision = revision_table(results)
    if against_revision:
        out += ["#### The working tree against another revision, end to end in this run\n", against_revision]
    for model in dict.fromkeys(r["model"] for r in results["rows"]):
        rows = [r for r in results["rows"] if r["model"] == model]
        first = rows[0]
        out.append(f"#### {model}: {first['params_m']:.2f} M parameters, {first['gmacs_per_slice']:.2f} GMACs per slice\n")
        out.append("| configuration | s / volume | network s | compute floor s | % of peak | CPU s | peak RSS MB "
                   "| private MB | dtype | Dice vs fp32 (min) | load 1-min | CPU stolen % |")
        out.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            out.append(f"| {r['name'].split(': ', 1)[-1]} ({r['scope'].replace('_', ' ')}) | {_num(r.get('s_per_volume'))} "
                       f"| {_num(r['s_network'])} | {_num(r.get('compute_floor_s'))} | {_num(r.get('pct_of_peak'), 0)} "
                       f"| {_num(row_cpu_seconds(r))} | {_num(r['peak_rss_mb'], 0)} "
                       f"| {_num(r.get('peak_private_mb'), 0)} | {r['dtype']} | {_num(r.get('dice_min'), 4)} "
                       f"| {r['load_before_after'][0]} to {r['load_before_after'][1]} | {_num(r.get('cpu_steal_pct'))} |")
        out.append("")
    return "\n".join(out)
