"""Segment every CT volume of a folder with SegMate, from the command line, through Slicer.

    Slicer --no-main-window --python-script SegMateSlicer/Scripts/segmate_batch.py -- --input IN --output OUT [options]

IN is a volume file, a DICOM series folder, or a folder of volume files (NIfTI, NRRD, MetaImage)
and DICOM series sub-folders; OUT receives one <case>.seg.nrrd per case and segmate_batch.csv.
Each case goes through SegMateLogic.process: the panel's segmentation and segment writing, run in
Slicer's own process (a batch has no GUI to keep responsive, so no worker process is needed).

Every way out of this script ends Slicer with an exit code (a headless Slicer whose script
raised would otherwise wait forever): 0 every case succeeded, 1 some cases failed, 2 bad
arguments or missing Python packages, 3 an unexpected error (its traceback is printed), 130
interrupted. The script lives in the module's Scripts/ folder, not beside SegMate.py, because
Slicer loads every Python file there as a module.
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import Optional


def _addModuleFolderToPath() -> None:
    """SegMateLib is in this script's parent folder, in a source checkout and in the installed extension."""
    folder = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if folder not in sys.path:
        sys.path.insert(0, folder)


_addModuleFolderToPath()

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
SCRIPT = "SegMateSlicer/Scripts/segmate_batch.py"


def buildParser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"Slicer --no-main-window --python-script {SCRIPT} --",
        description="Segment organs at risk in every CT volume of a folder into .seg.nrrd files, with a CSV log.")
    parser.add_argument("--input", required=True, help="volume file, DICOM folder, or folder of volumes/DICOM folders")
    parser.add_argument("--output", required=True, help="folder for the .seg.nrrd files and the CSV log")
    parser.add_argument("--organs", default=None,
                        help="organ keys separated by commas, e.g. liver,aorta (default: the organs the model was "
                             "trained on)")
    parser.add_argument("--model", default=None,
                        help="catalogue model id or .safetensors file (default: the bundled default model)")
    parser.add_argument("--device", default="auto", help="auto, gpu, cpu, or a PyTorch device such as cuda:1")
    parser.add_argument("--batch-size", type=int, default=None, help="slices per network batch (default: automatic)")
    parser.add_argument("--naming", choices=["slicer", "tg263"], default="slicer",
                        help="segment names: Slicer standard names (default) or AAPM TG-263 names")
    parser.add_argument("--no-postprocess", action="store_true",
                        help="keep every connected piece and hole, organs the first pass did not find, and the "
                             "probabilities unsmoothed along z (default: clean solid organs, drop organs not found, "
                             "smooth as calibrated)")
    parser.add_argument("--tta", action="store_true",
                        help="also segment each slice mirrored left to right and average (twice the network time)")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                        help="auto: fp16 on a CUDA GPU, fp32 on the CPU; bf16 is about twice as fast on CPUs with "
                             "AMX and slower than fp32 on others")
    parser.add_argument("--feature-cache-mb", type=float, default=None, metavar="MB",
                        help="memory for the first pass's encoder outputs, reused by the main pass (default: "
                             "SegMateCore's, 512; 0: encode every slice again, less memory, slower)")
    parser.add_argument("--csv", default=None, help="CSV log path (default: OUTPUT/segmate_batch.csv)")
    parser.add_argument("--skip-existing", action="store_true", help="leave cases whose .seg.nrrd exists alone")
    return parser


def parseArguments(argv: list[str]) -> argparse.Namespace:
    """Parse the script's arguments; Slicer may pass a leading ``--`` through, which is dropped."""
    args = [a for a in argv if a != "--"]
    parsed = buildParser().parse_args(args)
    if parsed.batch_size is not None and parsed.batch_size < 1:
        buildParser().error("--batch-size must be at least 1")
    if parsed.feature_cache_mb is not None and not parsed.feature_cache_mb >= 0:
        buildParser().error("--feature-cache-mb must be 0 (off) or more")
    if not os.path.exists(parsed.input):
        buildParser().error(f"--input {parsed.input} does not exist")
    return parsed


def main(argv: Optional[list[str]] = None, log=print) -> int:
    """Run the batch and return the exit code (see the module's docstring); never raises."""
    try:
        args = parseArguments(sys.argv[1:] if argv is None else argv)
    except SystemExit as exc:
        return EXIT_USAGE if exc.code else EXIT_OK
    try:
        from SegMateLib import missingRequirements
        from SegMateLib.batch import parseOrgans, runBatch

        missing = missingRequirements()
        if missing:
            log("SegMate's Python packages are missing (" + ", ".join(r.text for r in missing) + "). Open the "
                "SegMate module in Slicer once to install them, then run the batch again.")
            return EXIT_USAGE
        rows = runBatch(args.input, args.output, csvPath=args.csv, skipExisting=args.skip_existing, log=log,
                        organs=parseOrgans(args.organs), model=args.model, device=args.device,
                        batchSize=args.batch_size, naming=args.naming, tta=args.tta, precision=args.precision,
                        featureCacheMb=args.feature_cache_mb,
                        postprocess={"largest_component": False, "fill_holes": False, "presence_gate": False,
                                     "z_smoothing_mm": 0.0} if args.no_postprocess else None)
    except (ValueError, FileNotFoundError) as exc:
        log(f"SegMate batch: error: {exc}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        log("SegMate batch: interrupted.")
        return EXIT_INTERRUPTED
    except BaseException as exc:  # noqa: BLE001 - whatever happens, the script must end with an exit code
        log(f"SegMate batch: unexpected error: {type(exc).__name__}: {exc}\n{traceback.format_exc()}")
        return EXIT_ERROR
    failed = sum(row["status"] == "failed" for row in rows)
    log(f"SegMate batch: {len(rows) - failed} of {len(rows)} case(s) done, {failed} failed; log: "
        f"{args.csv or os.path.join(args.output, 'segmate_batch.csv')}")
    return EXIT_SOME_FAILED if failed else EXIT_OK


def exitProcess(code: int) -> None:
    """End Slicer (or this Python) with ``code``."""
    try:
        import slicer
    except ImportError:
        slicer = None
    if slicer is not None and getattr(slicer, "app", None) is not None:
        slicer.util.exit(code)
    else:
        sys.exit(code)


if __name__ == "__main__":
    exitCode = EXIT_ERROR
    try:
        exitCode = main()
    finally:
        exitProcess(exitCode)
