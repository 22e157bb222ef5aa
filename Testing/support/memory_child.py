"""Child of the memory test: ``python -m support.memory_child CT NETWORK`` segments the file as the
command line does and prints the result's figures and its kernel peak memory as one JSON line.

NETWORK is ``intensity-SIZE`` (the intensity test network) or ``BACKBONE-SIZE`` (random weights).
"""
from __future__ import annotations

import json
import resource
import sys

import psutil
import torch

import segmatecore
from segmatecore.models.checkpoint import default_metadata
from support.intensity_model import IntensityModel


def network(spec: str) -> torch.nn.Module:
    name, size = spec.rsplit("-", 1)
    if name == "intensity":
        return IntensityModel(input_size=int(size))
    torch.manual_seed(0)
    model = segmatecore.create_model(name).eval()
    model.metadata = default_metadata(name)
    model.metadata["preprocessing"]["input_size"] = [int(size), int(size)]
    return model


def main(ct_path: str, spec: str) -> None:
    torch.set_num_threads(1)  # memory does not depend on it; on a shared CPU a second thread mostly waits
    model = network(spec)
    baseline = psutil.Process().memory_info().rss
    result = segmatecore.segment(ct_path, model=model, device="cpu")
    print(json.dumps({"maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                      "baseline_bytes": baseline, "timings": result.timings, "organs": result.organs,
                      "volumes_ml": result.volumes_ml, "size": list(result.labelmap.GetSize())}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
