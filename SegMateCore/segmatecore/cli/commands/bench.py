"""``segmate bench``: seconds and peak memory per CT for each backbone and optimisation, and the peers
(a 3D nnU-Net, LightMedSeg, HRMedSeg, Light-UNETR) on the same CT."""
from __future__ import annotations

import json
from pathlib import Path

from segmatecore.choices import BENCH_BACKBONES as BACKBONES
from segmatecore.choices import PEER_KEYS as PEERS
from segmatecore.cli.commands import add_device_option
from segmatecore.data.atomic import write_text_atomic


def register(sub) -> None:
    p = sub.add_parser("bench", help="speed and memory per CT volume against its peers (3D nnU-Net, LightMedSeg, "
                                     "HRMedSeg, Light-UNETR), in one run",
                       description="Runs each configuration in a fresh process on the bundled sample CT resampled to "
                                   "512 x 512 x 162 (64 x 64 x 12 with --quick) and prints one line per row. The peers "
                                   "segment the same CT with random weights, the way each runs in practice (3D ones "
                                   "by sliding-window patches on a 1.5 mm grid, HRMedSeg slice by slice at 1024 x "
                                   "1024): the rows measure cost, not accuracy.")
    p.add_argument("--quick", action="store_true", help="a tiny volume and input size: checks the benchmark runs "
                                                        "(figures are not meaningful)")
    p.add_argument("--json", metavar="FILE", help="write every row (and the machine) as JSON")
    p.add_argument("--plot", metavar="FILE", help="write a PNG of two panels: seconds per volume against peak memory, "
                                                  "and GMACs per volume against seconds (every row and peer)")
    p.add_argument("--backbones", nargs="*", default=list(BACKBONES), metavar="BACKBONE",
                   help=f"backbones to measure (default: {' '.join(BACKBONES)}; none: only the peer)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="precision of the skip_outside_extent row (auto: fp32 on the CPU, fp16 on CUDA)")
    add_device_option(p, "device to measure on")
    p.add_argument("--peers", nargs="*", default=list(PEERS), choices=list(PEERS), metavar="PEER",
                   help=f"peers segmenting the same CT with the end-to-end rows (default: {' '.join(PEERS)}; "
                        "none: no peer)")
    p.add_argument("--no-peer", dest="peers", action="store_const", const=[], help="leave out every peer (--peers "
                                                                                 "with no name)")
    p.add_argument("--check-peers", action="store_true",
                   help="measure nothing: print each peer's parameters and GFLOPs against its paper's, at the "
                        "paper's input size and in the paper's counting convention (docs/peers.md)")
    p.add_argument("--no-bundled", dest="bundled", action="store_false",
                   help="leave out the rows of the bundled trained model (the default job, at its own input size)")
    p.add_argument("--no-openvino", dest="openvino", action="store_false",
                   help="leave out the OpenVINO rows even where OpenVINO is installed")
    p.add_argument("--ct", metavar="PATH", help="another CT to resample and use (default: the bundled sample)")
    p.add_argument("--batch-size", type=int, help="slices per batch, SegMate's and HRMedSeg's (default: segment()'s own, 2 on the CPU, "
                                                  "as in every run in docs/benchmark.md)")
    p.add_argument("--network-slices", type=int, help="slices timed in the network-alone rows (default 16)")
    p.add_argument("--threads", type=int, help="PyTorch threads in every row (default: PyTorch's own)")
    p.add_argument("--scope", choices=("all", "network", "end_to_end"), default="all",
                   help="only the network-alone rows, or only the end-to-end rows (and the peers)")
    p.add_argument("--from-json", nargs="+", metavar="FILE",
                   help="measure nothing: merge these saved results and write --json/--plot from them")
    p.add_argument("--markdown", metavar="FILE", help="write markdown tables: every row ranked by seconds per volume "
                                                      "(with parameters, GMACs per volume and the ratio to SegMate's "
                                                      "default rows), the published accuracy of each network, every "
                                                      "end-to-end row against the 3D nnU-Net peer, then one table per "
                                                      "model")
    p.add_argument("--profile", metavar="BACKBONE", help="measure nothing else: print where BACKBONE's network time "
                                                        "goes (OpenVINO layer counters or torch.profiler)")
    p.add_argument("--runtime", choices=("auto", "torch", "openvino"), default="auto", help="runtime for --profile")
    p.add_argument("--revision", metavar="REV",
                   help="also segment the CT with the SegMateCore of this git revision (a commit, branch, tag or "
                        "main~3) beside the working tree's, end to end with the same model, and report both rows "
                        "and their ratio")
    p.add_argument("--repeat", type=int, default=1, metavar="N",
                   help="with --revision: run each side N times, taking turns, and report each side's median run "
                        "(default 1)")
    p.add_argument("--workdir", metavar="DIR", help="keep the CT, models and outputs here (default: a temporary folder)")
    p.set_defaults(func=run)


def run(args) -> int:
    from segmatecore.bench.configs import SCOPES
    from segmatecore.bench.plot import plot
    from segmatecore.bench.results import format_row, merge, revision_text
    from segmatecore.bench.run import run_benchmark
    from segmatecore.runtime.devices import resolve_device

    args.device = str(resolve_device(args.device))  # the rows name the device they ran on

    if (args.batch_size is not None and args.batch_size < 1) or (args.network_slices is not None and args.network_slices < 1):
        raise ValueError("--batch-size and --network-slices must be at least 1.")
    if args.check_peers:
        from segmatecore.bench.peers.paper_check import paper_check_markdown

        print(paper_check_markdown(), end="")
        return 0
    if args.profile:
        from segmatecore.bench.profiling import profile_network

        print(profile_network(args.profile, precision=args.precision, runtime=args.runtime,
                              input_size=64 if args.quick else 512, batch_size=args.batch_size or 4, ct=args.ct))
        return 0
    if args.from_json:
        results = merge([json.loads(Path(f).read_text()) for f in args.from_json])
        for row in results["rows"]:
            print(format_row(row))
    else:
        results = run_benchmark(quick=args.quick, backbones=args.backbones, precision=args.precision,
                                device=args.device, peers=args.peers, bundled=args.bundled, openvino=args.openvino, ct=args.ct, workdir=Path(args.workdir).resolve() if args.workdir else None,
                                batch_size=args.batch_size, network_slices=args.network_slices, threads=args.threads,
                                scopes=SCOPES if args.scope == "all" else (args.scope,), revision=args.revision,
                                repeat=args.repeat, report=lambda row: print(format_row(row), flush=True))
    for row in results["rows"]:
        if "dice_min" in row:
            verdict = "agrees" if row["agrees_with_fp32"] else "DIFFERS"
            print(f"{row['name']}: Dice vs fp32 min {row['dice_min']:.4f} ({verdict})")
    for line in revision_text(results["rows"]):
        print(line)
    peaks = results["machine"].get("matmul_gmacs_per_s")
    if peaks:
        from segmatecore.bench.compute_peak import peaks_text

        print(f"matrix-multiply peak: {peaks_text(peaks)}")
    for row in results["rows"]:
        if "pct_of_peak" in row:
            print(f"{row['name']}: compute floor {row['compute_floor_s']:.1f} s, "
                  f"network at {row['pct_of_peak']:.0f} % of the matrix-multiply peak")
    if args.json:
        write_text_atomic(args.json, json.dumps(results, indent=1, default=str))
        print(f"wrote {args.json}")
    if args.plot:
        print(f"wrote {plot(results, args.plot)}")
    if args.markdown:
        from segmatecore.bench.markdown import markdown_tables

        write_text_atomic(args.markdown, markdown_tables(results))
        print(f"wrote {args.markdown}")
    return 0
