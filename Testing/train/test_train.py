"""`segmate train` / `segmate finetune`: a tiny run writes a loadable model with its provenance, and resumes."""
from __future__ import annotations

import json

import pytest
import torch

from segmatecore import load_model, read_metadata
from segmatecore.cli.main import main
from segmatecore.data.prepare import prepare


@pytest.fixture(scope="module")
def data(tmp_path_factory, nifti_pairs):
    root = tmp_path_factory.mktemp("train")
    src = nifti_pairs(root / "src", cases=4)
    prepare("nifti-pairs", src, root / "data", workers=1, fractions=(0.5, 0.5, 0.0), progress=False)
    return root / "data"


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory, tiny_training):
    run = tmp_path_factory.mktemp("run")
    code = main(["train", "--backbone", "fastvit_t12", "--data", str(data), *tiny_training, "--max-steps", "3", "--run-dir", str(run),
                 "--organs", "spinal_cord,esophagus,liver,left_kidney",  # liver: a model organ the data never annotate
                 "-o", str(run / "model.safetensors"), "--dtype", "fp16"])
    assert code == 0
    return run


def test_tiny_run_writes_a_loadable_model_with_provenance(trained, data):
    model = load_model(trained / "model.safetensors")
    meta = model.metadata
    assert meta["backbone"] == "fastvit_t12" and meta["preprocessing"]["input_size"] == [64, 64]
    assert meta["organs"] == ["spinal_cord", "esophagus", "liver", "left_kidney"]  # --organs, in that order
    assert meta["trained_organs"] == ["spinal_cord", "esophagus", "left_kidney"]  # the data have no liver
    assert not meta["deep_supervision"] and len(model.deep_heads) == 0  # training-only heads dropped
    prov = meta["provenance"]
    assert prov["source"] == "segmate train"
    assert prov["data"][0]["path"] == data.name  # outside the working folder: its name alone, never an absolute path
    assert prov["data"][0]["splits"] == json.loads((data / "dataset.json").read_text())["splits"]
    assert prov["recipe"]["lr"] == 2e-4 and prov["recipe"]["optimizer"] == "AdamW"
    assert prov["recipe"]["steps_done"] == 3
    assert "commit" in prov["code"]
    assert prov["metrics"]["validation"]["step"] in (2, 3)
    with torch.no_grad():
        out = model(torch.zeros(1, 3, 64, 64), torch.tensor([0.5]))
    assert out.seg.shape == (1, 4, 64, 64)
    history = json.loads((trained / "history.json").read_text())
    assert [h["step"] for h in history] == [2, 3]
    assert (trained / "tb").is_dir() and (trained / "best.safetensors").is_file()
    # fp16 on disk
    assert (trained / "model.safetensors").stat().st_size < (trained / "best.safetensors").stat().st_size * 0.6


def test_resume_continues_where_the_run_stopped(trained, data, tiny_training):
    assert main(["train", "--backbone", "fastvit_t12", "--data", str(data), *tiny_training, "--max-steps", "5", "--run-dir", str(trained),
                 "--resume"]) == 0
    history = json.loads((trained / "history.json").read_text())
    assert [h["step"] for h in history] == [2, 3, 4, 5]
    state = torch.load(trained / "checkpoint.pt", weights_only=True)
    assert state["step"] == 5 and state["epoch"] == 2


def test_finetune_keeps_the_encoder_frozen_at_first(trained, data, tmp_path, tiny_training):
    start = trained / "model.safetensors"
    code = main(["finetune", "--model", str(start), "--data", str(data), *tiny_training, "--max-steps", "2",
                 "--freeze-encoder-epochs", "1", "--run-dir", str(tmp_path), "-o", str(tmp_path / "ft.safetensors")])
    assert code == 0
    before = load_model(start, reparameterize=False)
    after = load_model(tmp_path / "ft.safetensors", reparameterize=False)
    params_before = dict(before.named_parameters())
    changed = {n for n, p in after.named_parameters() if not torch.equal(p, params_before[n])}
    assert changed and not any(n.startswith("encoder.") for n in changed)
    meta = read_metadata(tmp_path / "ft.safetensors")
    assert meta["provenance"]["source"] == "segmate finetune"
    assert meta["provenance"]["recipe"]["schedule"] == "cosine" and meta["provenance"]["recipe"]["lr"] == 5e-6


def test_two_process_ddp_run_under_torchrun(data, tmp_path, tiny_training):
    """The documented multi-GPU command, on the CPU: torchrun starts 2 ranks (gloo), they split the
    samples, rank 0 alone validates and writes, and the model records world size 2."""
    import os
    import subprocess
    import sys

    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "segmatecore.cli.main", "train", "--backbone", "fastvit_t12", "--data", str(data), *tiny_training,
           "--max-steps", "2", "--device", "cpu", "--run-dir", str(run), "-o", str(run / "model.safetensors")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    meta = read_metadata(run / "model.safetensors")
    recipe = meta["provenance"]["recipe"]
    assert recipe["world_size"] == 2 and recipe["steps_done"] == 2
    assert recipe["samples_per_epoch"] == 4  # 4 samples per epoch over 2 ranks: 1 step of 2 per rank
    history = json.loads((run / "history.json").read_text())
    assert [h["step"] for h in history] == [1, 2]  # validated once per epoch, by rank 0 only
    assert done.stderr.count("final model") == 1


def test_fit_presence_changes_only_the_presence_head_and_records_why(trained, data, tmp_path):
    start, out = trained / "model.safetensors", tmp_path / "refit.safetensors"
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"training_stages": [{"stage": 1}, {"stage": 2, "command": "segmate fit-presence"}]}))
    assert main(["fit-presence", "--model", str(start), "--data", str(data), "--every", "1",
                 "--provenance", str(recipe), "-o", str(out)]) == 0
    before = load_model(start, reparameterize=False)
    after = load_model(out, reparameterize=False)
    params_before = dict(before.named_parameters())
    changed = {n for n, p in after.named_parameters() if not torch.equal(p, params_before[n])}
    assert changed and changed <= {"presence_head.3.weight", "presence_head.3.bias"}
    record = read_metadata(out)["provenance"]["presence_head"]
    assert set(record["organs"]) == {"spinal_cord", "esophagus", "left_kidney"}  # the organs the data annotates
    for organ, fit in record["organs"].items():
        assert fit["present"] >= 5 and fit["absent"] >= 5
        assert fit["accuracy_after"] >= fit["accuracy_before"], organ
    assert read_metadata(out)["provenance"]["source"] == read_metadata(start)["provenance"]["source"]
    assert read_metadata(out)["provenance"]["training_stages"][1]["command"] == "segmate fit-presence"


def test_presence_features_count_out_of_field_organs_as_absent(trained, data):
    from segmatecore.train.presence_fit import collect_features

    net = load_model(trained / "model.safetensors").eval()
    plain = collect_features(net, [data], "train", every=4)
    liver = list(net.metadata["organs"]).index("liver")
    assert not plain.annotated[:, liver].any()
    with_field = collect_features(net, [data], "train", every=4, out_of_field={"nifti-pairs": ("liver",)})
    assert with_field.annotated[:, liver].all() and not with_field.targets[:, liver].any()
    assert torch.equal(with_field.features, plain.features)
    assert plain.features.shape == (len(plain.targets), net.presence_head[-1].in_features)
