"""``python -m segmatecore.cli.demo`` (``make demo``): segment the bundled sample CT with the bundled model.

Runs on the CPU with no download: the default catalogue model (Resources/Models) on the first
sample of Resources/SampleData/samples.json, through the same ``segment()`` and ``write_outputs()``
as the CLI. If the model file is missing or differs from the catalogue, it says so and exits
non-zero; it never writes results it did not compute.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from tqdm import tqdm

from segmatecore.resources import resource_path

DEFAULT_OUTPUT = Path("demo-output")


def sample_entries() -> list[dict]:
    return json.loads(resource_path("SampleData", "samples.json").read_text(encoding="utf-8"))


class StageProgress:
    """A tqdm bar per stage of ``segment()`` (z pass, network, postprocess)."""

    def __init__(self) -> None:
        self.stage, self.bar = None, None

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage != self.stage:
            self.close()
            self.stage, self.bar = stage, tqdm(total=total, desc=f"{stage:>11}", unit="slice" if total > 1 else "step",
                                               leave=True)
        self.bar.n = done
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def default_model_file() -> tuple[dict, Path]:
    """The default catalogue entry and its bundled file, checked against the catalogue's SHA-256.

    Raises FileNotFoundError or ValueError with a message for the user.
    """
    from segmatecore.hub.catalogue import catalogue_entry, default_model_id, model_file, verify_sha256

    entry = catalogue_entry(default_model_id())
    path = model_file(entry)
    if not path.is_file():
        raise FileNotFoundError(f"The default model {entry['id']} is missing: {path} does not exist. It is part of "
                                "the SegMate repository (Resources/Models); restore it (for example git checkout "
                                "-- Resources/Models, or a fresh clone) and run make demo again.")
    if not entry["sha256"]:
        raise ValueError(f"The model catalogue (Resources/models.json) has no SHA-256 for {entry['id']} yet, so "
                         f"{path} cannot be verified. Fill its entry with: segmate models entry {path} --write")
    if not verify_sha256(path, entry["sha256"]):
        raise ValueError(f"{path} does not match the SHA-256 in the model catalogue (Resources/models.json): the "
                         "file is damaged or was replaced. Restore it from the repository.")
    return entry, path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m segmatecore.cli.demo",
                                     description="Segment the bundled sample CT with the bundled model on the CPU.")
    parser.add_argument("-o", "--output", type=Path, default=DEFAULT_OUTPUT, help="output folder (default demo-output)")
    args = parser.parse_args(argv)
    started = time.perf_counter()

    try:
        entry, model_path = default_model_file()
    except (FileNotFoundError, ValueError) as exc:
        print(f"SegMate demo: cannot run: {exc}", file=sys.stderr)
        return 1

    import SimpleITK as sitk

    from segmatecore.inference.predictor import segment
    from segmatecore.export.outputs import write_outputs

    sample = sample_entries()[0]
    ct_path = resource_path("SampleData", sample["file"])
    print(f"SegMate demo: {sample['name']} ({ct_path.name})")
    print(f"model: {entry['title']} [{entry['id']} {entry['version']}]"
          + (" - a demonstration model, not for clinical use" if entry["demo"] else ""))

    progress = StageProgress()
    try:
        result = segment(ct_path, model=model_path, organs=sample.get("organs"), device="cpu", progress=progress)
    finally:
        progress.close()
    written = write_outputs(result, args.output, image=sitk.ReadImage(str(ct_path)))
    elapsed = time.perf_counter() - started

    print(f"segmented {result.summary()}")
    for key in result.organs:
        print(f"  {key:<14} {result.volumes_ml.get(key, 0.0):8.1f} mL")
    for warning in result.warnings:
        print(f"  warning: {warning}")
    print(f"results in {args.output.resolve()}:")
    for path in written.values():
        print(f"  {path.name}")
    print(f"segmentation took {result.timings['total']:.1f} s on the CPU; the whole demo {elapsed:.1f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
