"""``segmate predict INPUT [INPUT ...] -o OUTDIR``: segment CT volumes and write one folder per case.

Each case is written into a hidden temporary folder inside OUTDIR and renamed to OUTDIR/<case>
only when every file is complete, so a failure or Ctrl-C never leaves a partial case folder.
A failing case is reported and the others still run; the exit code is 1 if any case failed.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import traceback
from collections import Counter
from pathlib import Path

from segmatecore.choices import DICOM_FORMATS, FEATURE_CACHE_MB, PRECISIONS, RUNTIMES, Z_NORM_MODES
from segmatecore.data.organs import NAMINGS
from segmatecore.cli.commands import add_device_option, add_organs_option

FORMATS = ("nifti", "seg.nrrd", "report", "preview", "rtstruct", "dicomseg")
DEFAULT_FORMATS = "nifti,seg.nrrd,report,preview"
# --low-memory: the settings that bound the memory a case needs, each at its most frugal value.
LOW_MEMORY = {"batch_size": 1, "feature_cache_mb": 0.0}
EXIT_CODES = """exit codes:
  0    every case was written (or skipped with --skip-existing)
  1    some case failed; the other cases were still processed
  2    usage error: bad option or value, unknown organ or model, no such device, dicomseg for a
       non-DICOM input
  130  interrupted (Ctrl-C); the case in progress leaves nothing behind"""


def _organ_help() -> str:
    from segmatecore.hub.catalogue import default_model_organs

    default = default_model_organs()
    listed = (f"; the default model {default[0]} has: {', '.join(default[1])}" if default else "")
    return ("organ keys to segment, comma-separated (default: every organ the model was trained on"
            + listed + "; 'segmate models list' shows every model's organs)")


def register(sub) -> None:
    p = sub.add_parser("predict", help="segment CT volumes (files or DICOM folders) into organ labelmaps",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXIT_CODES,
                       description="Segment each INPUT (NIfTI, NRRD, MHA/MHD file or DICOM series folder) and\n"
                                   "write OUTDIR/<case>/ with the formats asked for.")
    basics = p.add_argument_group("basics")
    basics.add_argument("inputs", nargs="+", metavar="INPUT", help="CT volume file or DICOM series folder")
    basics.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="folder for the per-case output folders")
    basics.add_argument("--model", metavar="PATH_OR_ID", help="a .safetensors model or a catalogue id (default: the "
                                                               "catalogue's default model)")
    add_organs_option(basics, _organ_help())
    add_device_option(basics)
    basics.add_argument("--series", metavar="UID", help="SeriesInstanceUID to read from a DICOM folder with several "
                                                        "series (default: its CT series with the most slices)")

    outputs = p.add_argument_group("outputs")
    outputs.add_argument("--format", default=DEFAULT_FORMATS, metavar="LIST",
                         help=f"comma-separated outputs among {', '.join(FORMATS)}; rtstruct and dicomseg only for "
                              "DICOM input (default: %(default)s)")
    outputs.add_argument("--naming", choices=NAMINGS, default="standard",
                         help="segment names in the .seg.nrrd and the DICOM SEG: the organ's standard name (Left "
                              "lung) or its TG-263 name (Lung_L); RTSTRUCT ROIs always carry TG-263 names "
                              "(default: %(default)s)")
    outputs.add_argument("--skip-existing", action="store_true",
                         help="leave a case alone when its folder already holds every file asked for, and say so "
                              "(default: off: such a case is segmented and written again)")
    outputs.add_argument("-q", "--quiet", action="store_true",
                         help="print only errors: no progress bars, case lines, warnings or notices (default: off)")

    speed = p.add_argument_group("speed and memory")
    speed.add_argument("--batch-size", type=int, metavar="N",
                       help="slices per batch (default: 16 on CUDA, 8 on MPS, 2 on the CPU; 1 with --low-memory)")
    speed.add_argument("--precision", choices=PRECISIONS, default="auto",
                       help="auto = fp16 on CUDA or bf16 on a CPU with AMX where the model records masks "
                            "agreeing with fp32, else fp32 (default: %(default)s)")
    speed.add_argument("--runtime", choices=RUNTIMES, default="torch",
                       help="on the CPU: torch (eager PyTorch), openvino (the network compiled by OpenVINO, "
                            "converted once per model; faster in fp32 for FastViT-T12 and EfficientNetV2-M on CPUs "
                            "without AMX) or auto (openvino where installed) (default: %(default)s)")
    speed.add_argument("--feature-cache-mb", type=float, metavar="MB",
                       help="memory the first pass may use to keep its slices' encoder outputs, so that the main "
                            f"pass does not encode them again; 0 = off: less memory, slower (default: "
                            f"{FEATURE_CACHE_MB:g}; 0 with --low-memory)")
    speed.add_argument("--low-memory", action="store_true",
                       help="use as little memory as the options allow: --batch-size 1 and --feature-cache-mb 0 "
                            "(slower); an option given explicitly still wins (default: off)")
    speed.add_argument("--skip-outside-extent", action="store_true",
                       help="with --z-norm auto, do not run slices outside the estimated organ extent (default: off)")
    speed.add_argument("--shard", metavar="i/n", help="process only the i-th of n interleaved parts of the inputs "
                                                      "(0 <= i < n), for several machines or GPUs (default: all)")

    advanced = p.add_argument_group("advanced")
    advanced.add_argument("--z-norm", choices=Z_NORM_MODES, default="auto",
                          help="slice position for FiLM: auto (label-free organ-extent estimate), volume or none "
                               "(default: %(default)s)")
    advanced.add_argument("--no-postprocess", action="store_true",
                          help="keep the thresholded network output (no z smoothing, no largest component, no hole "
                               "filling, no presence gate) (default: off)")
    advanced.add_argument("--no-presence-gate", action="store_true",
                          help="keep organs where the first pass did not find them (default: off: such masks are "
                               "dropped)")
    advanced.add_argument("--threshold", action="append", default=[], metavar="ORGAN=P",
                          help="draw ORGAN where its probability exceeds P (0 < P < 1) instead of the model's "
                               "calibrated threshold; repeat for several organs (default: the model's, 0.5 when it "
                               "has none)")
    advanced.add_argument("--z-smoothing", action="append", default=[], metavar="ORGAN=MM",
                          help="smooth ORGAN's probability along z with a Gaussian of sigma MM millimetres before the "
                               "threshold (0 = off) instead of the model's calibrated value; repeat for several "
                               "organs (default: the model's)")
    advanced.add_argument("--tta", action="store_true",
                          help="also segment every slice mirrored left to right and average the two (test-time "
                               "augmentation): slightly smoother contours, twice the network time (default: off)")
    p.set_defaults(func=run)


def parse_shard(text: str | None) -> tuple[int, int]:
    if not text:
        return 0, 1
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard {text!r}: expected i/n, e.g. 0/4.") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"--shard {text!r}: need 0 <= i < n, e.g. 0/4 ... 3/4.")
    return i, n


def parse_organ_values(items: list[str], option: str = "--threshold",
                       example: str = "ORGAN=P, e.g. spinal_cord=0.6") -> dict[str, float]:
    """``["spinal_cord=0.6", ...]`` -> {"spinal_cord": 0.6}; the range is checked by segment()."""
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            number = float(value)
        except ValueError:
            number = None
        if not key.strip() or number is None:
            raise ValueError(f"{option} {item!r}: expected {example}.")
        out[key.strip()] = number
    return out


def parse_formats(text: str) -> list[str]:
    formats = [f.strip() for f in text.split(",") if f.strip()]
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ValueError(f"--format {text!r}: unknown {', '.join(unknown) or 'empty list'}; choose among "
                         f"{', '.join(FORMATS)}.")
    return formats


def case_names(inputs: list[str]) -> list[str]:
    """A distinct output folder name per input: its own name, prefixed by its parent's on a clash."""
    from segmatecore.data.io import case_name

    names = [case_name(p) for p in inputs]
    clashes = Counter(names)
    names = [f"{Path(p).resolve().parent.name}_{n}" if clashes[n] > 1 else n for p, n in zip(inputs, names)]
    seen: Counter[str] = Counter()
    unique = []
    for n in names:
        seen[n] += 1
        unique.append(n if seen[n] == 1 else f"{n}_{seen[n]}")
    return unique


class _Progress:
    """A tqdm bar per case that follows segment()'s (stage, done, total) callbacks."""

    def __init__(self, name: str, quiet: bool = False):
        from tqdm import tqdm  # not imported for --help

        self.name = name
        self.bar = tqdm(total=0, desc=name, unit="slice", leave=False, file=sys.stderr, disable=True if quiet else None)
        self.stage = None

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage != self.stage or total != self.bar.total:
            self.stage = stage
            self.bar.reset(total=total)
            self.bar.set_description(f"{self.name} [{stage}]")
        self.bar.n = done
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def _write_case(result, loaded, formats: list[str], outdir: Path, name: str, naming: str = "standard") -> Path:
    """Write all outputs into a temporary folder, then rename it to OUTDIR/<name>."""
    from segmatecore.export.outputs import write_outputs

    dest = outdir / name
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".partial", dir=outdir))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it private; the case folder should not be
    old = None
    try:
        write_outputs(result, tmp, formats=tuple(formats), image=loaded.image, dicom_dir=loaded.dicom_dir,
                      series_uid=loaded.series_uid, naming=naming)
        if dest.exists():
            old = dest.rename(outdir / f".{name}.old-{tmp.name}")
        tmp.rename(dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and old.exists():
            if dest.exists():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.rename(dest)
    return dest


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    message = text[0] if text else ""
    from segmatecore.data.validation import InputError

    if isinstance(exc, (InputError, ValueError, FileNotFoundError, MemoryError)):
        return message or type(exc).__name__
    return f"{type(exc).__name__}: {message}"


def memory_settings(args) -> tuple[int | None, float]:
    """(batch size, feature cache MB) from the options: explicit values, else --low-memory's, else the defaults."""
    low = LOW_MEMORY if args.low_memory else {}
    batch_size = args.batch_size if args.batch_size is not None else low.get("batch_size")
    cache_mb = args.feature_cache_mb if args.feature_cache_mb is not None else low.get("feature_cache_mb",
                                                                                       float(FEATURE_CACHE_MB))
    if batch_size is not None and batch_size < 1:
        raise ValueError("--batch-size must be at least 1.")
    if cache_mb < 0:
        raise ValueError("--feature-cache-mb must be 0 (off) or more.")
    return batch_size, cache_mb


def expected_files(source: str, formats: list[str]) -> list[str]:
    """The files a case folder holds when every format asked for was written (DICOM-only ones for DICOM input)."""
    from segmatecore.export.outputs import OUTPUT_FILES
    from segmatecore.data.io import is_dicom_input

    dicom = is_dicom_input(source)
    return [OUTPUT_FILES[f] for f in formats if dicom or f not in DICOM_FORMATS]


def check_dicom_formats(formats: list[str], inputs: list[str]) -> None:
    """DICOM SEG references the images it was made from: refuse it up front for an input that is not DICOM."""
    from segmatecore.data.io import is_dicom_input

    if "dicomseg" in formats:
        other = [s for s in inputs if not is_dicom_input(s)]
        if other:
            raise ValueError(f"--format dicomseg needs DICOM series input, but {other[0]} is not a DICOM folder or "
                             "file; give its DICOM series, or leave dicomseg out.")


def postprocess_settings(args, keys: list[str], meta: dict) -> dict:
    """The post-processing overrides the options ask for; a bad value is a usage error, reported once."""
    from segmatecore.inference.postprocess import mask_thresholds, z_smoothing_mm

    postprocess = {"largest_component": False, "fill_holes": False, "presence_gate": False} \
        if args.no_postprocess else ({"presence_gate": False} if args.no_presence_gate else {})
    thresholds = parse_organ_values(args.threshold)
    if thresholds:
        postprocess["thresholds"] = thresholds
    smoothing = dict.fromkeys(keys, 0.0) if args.no_postprocess else {}
    smoothing.update(parse_organ_values(args.z_smoothing, "--z-smoothing", "ORGAN=MM, e.g. spinal_cord=4"))
    if smoothing:
        postprocess["z_smoothing_mm"] = smoothing
    mask_thresholds(keys, meta, postprocess)
    z_smoothing_mm(keys, meta, postprocess)
    return postprocess


def run(args) -> int:
    from segmatecore.inference.predictor import SegMatePredictor, choose_organs
    from segmatecore.hub.intended_use import notice
    from segmatecore.data.io import load_volume

    quiet = getattr(args, "quiet", False)
    say = (lambda *_a, **_k: None) if quiet else print
    formats = parse_formats(args.format)
    shard, shards = parse_shard(args.shard)
    organs = args.organs or None
    batch_size, feature_cache_mb = memory_settings(args)
    names = case_names(list(args.inputs))
    cases = list(zip(args.inputs, names))[shard::shards]
    check_dicom_formats(formats, [source for source, _ in cases])
    outdir = Path(args.output)
    outdir.mkdir(parents=True, exist_ok=True)
    # Loaded and prepared once for every case; a missing GPU or an unknown model is reported once.
    predictor = SegMatePredictor(args.model, device=args.device, precision=args.precision, runtime=args.runtime,
                                 batch_size=batch_size, feature_cache_mb=feature_cache_mb)
    keys, _ = choose_organs(organs, predictor.metadata)  # an unknown organ is a usage error, not a failure of every case
    postprocess = postprocess_settings(args, keys, predictor.metadata)
    model_notice = notice(predictor.model_info)
    if model_notice:
        say(model_notice, flush=True)

    failed = skipped = 0
    for source, name in cases:
        if args.skip_existing and all((outdir / name / f).is_file() for f in expected_files(source, formats)):
            skipped += 1
            say(f"{name}: skipped, its outputs exist in {outdir / name}", flush=True)
            continue
        progress = _Progress(name, quiet)
        try:
            loaded = load_volume(source, series_uid=args.series)
            result = predictor.segment(loaded, organs=organs, z=args.z_norm, tta=args.tta, postprocess=postprocess,
                                       skip_outside_extent=args.skip_outside_extent, progress=progress)
            case_formats = formats
            if "rtstruct" in formats and not result.dicom_dir:
                case_formats = [f for f in formats if f != "rtstruct"]
                result.warnings.append("rtstruct needs a DICOM series as input; not written for this case.")
            dest = _write_case(result, loaded, case_formats, outdir, name, naming=args.naming)
            progress.close()
            say(f"{name}: ok, {result.summary()} -> {dest}", flush=True)
            for warning in result.warnings:
                say(f"  warning: {warning}", flush=True)
        except Exception as exc:  # noqa: BLE001 - one failing case must not stop the others
            progress.close()
            failed += 1
            print(f"{name}: FAILED: {_one_line(exc)}", file=sys.stderr if quiet else sys.stdout, flush=True)
            if getattr(args, "verbose", False):
                traceback.print_exc()
        finally:
            progress.close()
            loaded = result = None  # free this case's volumes before the next one is read
    say(f"{len(cases) - failed} of {len(cases)} case(s) done" + (f", {skipped} skipped" if skipped else "")
        + (f", {failed} failed" if failed else ""), flush=True)
    return 1 if failed else 0
