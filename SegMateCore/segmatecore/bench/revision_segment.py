"""One timed ``segment()`` by whichever SegMateCore is first on PYTHONPATH: a row of ``segmate bench
--revision`` (:mod:`segmatecore.bench.revision`).

Run by path, never imported: ``python revision_segment.py JOB.json``. It runs with the SegMateCore
of any revision, so it imports nothing of SegMate but the package itself and calls only
``segmatecore.segment(path, model=..., device=..., precision=..., batch_size=...)``, which every
revision has. It writes the labels and ``result.json`` beside the job file.
"""
import os
import sys

# Run by path, its own folder would come first on sys.path: the modules beside it are not top-level ones.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402


def kernel_peak_mb():
    """The kernel's high-water mark of this process's resident set (Linux), else None."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def main(job_path):
    job = json.loads(Path(job_path).read_text())
    import SimpleITK as sitk
    import torch

    import segmatecore

    if job.get("threads"):
        torch.set_num_threads(int(job["threads"]))
    cuda = torch.device(job["device"]).type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start, cpu_start = time.perf_counter(), time.process_time()
    result = segmatecore.segment(job["ct"], model=job["model"], device=job["device"], precision=job["precision"],
                                 batch_size=job["batch_size"])
    sitk.WriteImage(result.labelmap, str(Path(job["outdir"]) / "labels.nii.gz"), True)
    total, cpu_total = time.perf_counter() - start, time.process_time() - cpu_start
    row = {"s_per_volume": total, "cpu_s_per_volume": cpu_total, "s_network": result.timings.get("network"),
           "timings": {k: round(v, 3) for k, v in result.timings.items()}, "z_range": result.z_range,
           "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
           "kernel_peak_rss_mb": kernel_peak_mb(), "threads": torch.get_num_threads(), "runtime": "segment()",
           "segmatecore": os.path.dirname(os.path.abspath(segmatecore.__file__))}
    Path(job_path).with_name("result.json").write_text(json.dumps(row, default=str))
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python revision_segment.py JOB.json (use `segmate bench --revision REV` instead)")
    sys.exit(main(sys.argv[1]))
