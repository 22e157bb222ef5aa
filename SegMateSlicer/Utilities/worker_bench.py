"""What a click on Segment OARs costs: the first run in a new worker process, then the next ones.

Runs the panel's path (``SegMateLogic.startSegmentation``, polled every 200 ms like the panel's
timer, then ``finish()`` writing the segments) on a slicer-core MRML scene, without the Slicer
application, and prints one line per run: the wall time from the click to the written segments,
and the worker's share of it (starting Python, importing PyTorch and SegMateCore, loading the
model, segmenting).

    .venv/bin/python SegMateSlicer/Utilities/worker_bench.py [--ct FILE] [--organs a,b] [--runs 2]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

MODULE_DIR = Path(__file__).resolve().parents[1]
REPO = MODULE_DIR.parent
sys.path.insert(0, str(MODULE_DIR))

POLL_S = 0.2


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ct", default=str(REPO / "Resources" / "SampleData" / "openkbp_validation_pt_201_ct.nii.gz"),
                        help="CT volume file (default: the bundled OpenKBP sample, 128 x 128 x 128)")
    parser.add_argument("--organs", default=None, help="organ keys separated by commas (default: the model's trained organs)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args(argv)

    import SimpleITK as sitk
    import slicer

    from SegMateLib.logic import SegMateLogic
    from SegMateLib.segments import ensureConverterRules
    from SegMateLib.volume_image import volumeNodeFromImage
    from SegMateLib.worker_client import WorkerClient

    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene
    ensureConverterRules()
    volume = volumeNodeFromImage(sitk.ReadImage(args.ct), "CT", scene)
    organs = args.organs.split(",") if args.organs else None
    client = WorkerClient()
    logic = SegMateLogic()
    try:
        for index in range(1, args.runs + 1):
            click = time.monotonic()
            job = logic.startSegmentation(volume, None, organs=organs, device=args.device, client=client)
            while not job.done:
                time.sleep(POLL_S)
                job.poll()
            run = job.finish()
            wall = time.monotonic() - click
            startup = client.startupSeconds if index == 1 else 0.0
            print(f"run {index}: {wall:.1f} s from click to written segments; worker: start {startup:.1f} s, "
                  f"imports {job.workerTimings['import']:.1f} s, model load {job.modelLoad['seconds']:.1f} s "
                  f"({'kept from the previous run' if job.modelLoad['cached'] else 'loaded'}), segment() "
                  f"{run.result.timings['total']:.1f} s; {run.summary()}", flush=True)
    finally:
        client.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
