"""The inputs every row shares: the CT resampled to the benchmark's size and one model file per backbone.

The CT is the bundled TotalSegmentator sample resampled with SimpleITK over its own physical extent.
The models are random (fixed seed): weights do not change cost. So that the Dice check against fp32
means something, their batch-norm statistics are re-estimated on CT slices and their output biases
centred (:func:`benchmark_model`); an untouched random network predicts the same value at every
pixel, which any precision reproduces.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk
import torch

from segmatecore.bench.configs import BUNDLED, SAMPLE_CT, SEED


def recorded_ct_path(path: Path) -> str:
    """The CT's path as the results record it: never an absolute path of the machine that ran them.

    Results are committed and shared, so a bundled resource is named ``Resources/...``, a file below
    the working folder by its relative path, and any other file by its name alone.
    """
    from segmatecore.resources import resources_dir

    path = Path(path).resolve()
    for root, prefix in ((resources_dir().resolve(), Path("Resources")), (Path.cwd().resolve(), Path())):
        if path.is_relative_to(root):
            return (prefix / path.relative_to(root)).as_posix()
    return path.name


def sample_ct_path() -> Path:
    """The bundled TotalSegmentator example CT (the shared data copy when the bundle is absent)."""
    from segmatecore.resources import resource_path

    bundled = resource_path(*SAMPLE_CT)
    if bundled.is_file():
        return bundled
    shared = Path(__file__).resolve().parents[4] / "shared" / "data" / "totalseg_example" / "example_ct.nii.gz"
    if shared.is_file():
        return shared
    raise FileNotFoundError(f"The benchmark CT {bundled} is missing; pass --ct PATH to a CT volume.")


def resample_to_size(image: sitk.Image, size: Sequence[int]) -> sitk.Image:
    """``image`` over the same physical extent on a ``size`` grid (linear, int16), as CTs are stored."""
    size = [int(s) for s in size]
    spacing = [n * s / m for n, s, m in zip(image.GetSize(), image.GetSpacing(), size)]
    # keep the extent: the first voxel centre moves by half the change of spacing
    direction = np.array(image.GetDirection()).reshape(3, 3)
    shift = direction @ ((np.array(spacing) - np.array(image.GetSpacing())) / 2)
    origin = (np.array(image.GetOrigin()) + shift).tolist()
    out = sitk.Resample(image, size, sitk.Transform(), sitk.sitkLinear, origin, spacing, image.GetDirection(),
                        -1024.0, sitk.sitkFloat32)
    return sitk.Cast(sitk.Round(out), sitk.sitkInt16)


def calibration_slices(image: sitk.Image, input_size: Sequence[int], count: int = 8) -> torch.Tensor:
    """Normalised 2.5D stacks of ``count`` slices spread over ``image``, at the model's input size."""
    from segmatecore.data.geometry import to_canonical
    from segmatecore.data.preprocess import Preprocessing, normalize_hu, resize_slices, stack_25d

    canonical, _ = to_canonical(image)
    pre = Preprocessing(input_size=tuple(int(v) for v in input_size))
    t = np.linspace(0, canonical.shape[2] - 1, count).round().astype(int)
    return resize_slices(torch.from_numpy(normalize_hu(stack_25d(canonical, t), pre)), pre.input_size)


@torch.no_grad()
def benchmark_model(backbone: str, calibration: torch.Tensor, seed: int = SEED, positive_fraction: float = 0.3):
    """A fixed-seed random SegMateNet whose outputs vary over the image like a trained model's.

    Batch-norm statistics are re-estimated on CT slices (the network is otherwise a constant
    function of position), then each organ's logit bias is set so that ``positive_fraction`` of
    the calibration pixels are positive and the presence biases so that half the slices are.
    """
    from segmatecore.models.checkpoint import default_metadata
    from segmatecore.models import create_model

    size = list(calibration.shape[-2:])
    meta = default_metadata(backbone, provenance={"source": "segmate bench", "seed": seed,
                                                  "note": "random weights, batch-norm statistics from CT"})
    meta["preprocessing"]["input_size"] = size
    torch.manual_seed(seed)
    model = create_model(backbone, metadata=meta)
    batchnorms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for bn in batchnorms:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the calibration batches
    model.train()
    z = torch.linspace(0, 1, len(calibration))
    for i in range(0, len(calibration), 4):
        model(calibration[i:i + 4], z[i:i + 4])
    model.eval()
    out = model(calibration, z)
    logits = out.seg.transpose(0, 1).reshape(model.num_classes, -1)
    model.seg_head.bias -= torch.quantile(logits[:, ::97].float(), 1 - positive_fraction, dim=1)
    model.presence_head[-1].bias -= out.presence.median(dim=0).values
    return model


@dataclass
class BenchSetup:
    """Files shared by all rows: the CT, one model file per backbone, the output folder."""

    workdir: Path
    ct: Path
    models: dict[str, Path]
    costs: dict[str, dict[str, float]]
    depth: int


def prepare_inputs(workdir: Path, backbones: Sequence[str], size: Sequence[int], ct_source: Path,
                   input_size: int) -> BenchSetup:
    """Write the resampled CT and a benchmark model per backbone; count parameters and MACs."""
    from segmatecore.models.checkpoint import save_model
    from segmatecore.models.cost import count_parameters, gmacs_per_slice

    image = resample_to_size(sitk.ReadImage(str(ct_source)), size)
    ct = workdir / "ct.nii.gz"
    sitk.WriteImage(image, str(ct))
    calibration = calibration_slices(image, (input_size, input_size))
    models, costs = {}, {}
    for backbone in backbones:
        model = benchmark_model(backbone, calibration)
        models[backbone] = save_model(model, workdir / f"{backbone}.safetensors")
        costs[backbone] = {"params_m": count_parameters(model) / 1e6,
                           "gmacs_per_slice": gmacs_per_slice(model, input_size)}
    return BenchSetup(workdir, ct, models, costs, int(size[2]))


def add_bundled_model(setup: BenchSetup) -> tuple[str, str]:
    """Register the catalogue's default (bundled, trained) model with ``setup``; returns (id, backbone).

    The file is used where it is installed (its SHA-256 is checked by resolve_model), not copied.
    """
    from segmatecore.hub.catalogue import default_model_id, resolve_model
    from segmatecore.models.checkpoint import load_model
    from segmatecore.models.cost import count_parameters, gmacs_per_slice

    model_id = default_model_id()
    path = resolve_model(model_id)
    model = load_model(path, reparameterize=False)
    input_size = int(model.metadata["preprocessing"]["input_size"][0])
    setup.models[BUNDLED] = path
    setup.costs[BUNDLED] = {"params_m": count_parameters(model) / 1e6,
                            "gmacs_per_slice": gmacs_per_slice(model, input_size), "input_size": input_size}
    return model_id, model.metadata["backbone"]


def peer_costs(key: str, quick: bool, calls: int, depth: int) -> dict[str, float]:
    """Parameters and MACs of a peer that made ``calls`` network calls (patches, or batches of one
    slice each) on a CT of ``depth`` slices (torch.utils.flop_counter; large inputs on the meta
    device, nothing computed)."""
    from segmatecore.bench.peers import peer_spec

    spec = peer_spec(key)
    cost = spec.benchmark_cost(quick)
    return {"params_m": cost.params_m, "gmacs_per_slice": cost.gmacs * calls / depth,
            "gmacs_per_volume": cost.gmacs * calls, "gmacs_per_call": cost.gmacs,
            "network_input": list(spec.network_input(quick)[1:])}
