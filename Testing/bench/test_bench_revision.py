"""`segmate bench --revision REV`: another revision's SegMateCore segments the same CT with the same model
beside the working tree's, through `segment()` alone, with a clear error for a revision or folder git does
not know (the tiny repository's SegMateCore is nothing but a `segment()`: the script imports nothing else);
and the inference path never imports the benchmark."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import SimpleITK as sitk

from segmatecore.bench.configs import BUNDLED, QUICK_SIZE
from segmatecore.bench.inputs import BenchSetup, resample_to_size, sample_ct_path
from segmatecore.bench.revision import RevisionError, measure_core, revision_checkout, revision_rows
from segmatecore.cli.main import main

REPOSITORY = Path(__file__).resolve().parents[2]
PLAN = {"device": "cpu", "precision": "fp32", "batch_size": 2, "threads": 1, "timeout": 600.0}

# A revision's whole SegMateCore in the tiny repository: a segment() that records how it was called.
FAKE_SEGMATECORE = '''
import json
from types import SimpleNamespace

import SimpleITK as sitk


def segment(path, **kwargs):
    image = sitk.ReadImage(str(path))
    labels = sitk.Image(image.GetSize(), sitk.sitkUInt8)
    labels.CopyInformation(image)
    with open("segment_call.json", "w") as f:  # the row's folder is the working directory
        json.dump({"path": str(path), **kwargs}, f)
    return SimpleNamespace(labelmap=labels, timings={"network": 0.25, "total": 0.5}, z_range={"mode": "fake"})
'''


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=SegMate", "-c", "user.email=segmate@example.org",
                           *args], check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def tiny_repo(tmp_path) -> Path:
    """HEAD~1 holds a SegMateCore with a recording segment(); HEAD has none."""
    repo = tmp_path / "repo"
    package = repo / "SegMateCore" / "segmatecore"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(FAKE_SEGMATECORE)
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "a segment() that records its call")
    git(repo, "rm", "-q", "-r", "SegMateCore")
    git(repo, "commit", "-q", "-m", "no SegMateCore")
    return repo


def small_setup(folder: Path, model: Path) -> BenchSetup:
    image = resample_to_size(sitk.ReadImage(str(sample_ct_path())), QUICK_SIZE)
    ct = folder / "ct.nii.gz"
    sitk.WriteImage(image, str(ct))
    costs = {"params_m": 12.2, "gmacs_per_slice": 0.5, "gmacs_per_volume": 0.5 * QUICK_SIZE[2]}
    return BenchSetup(folder, ct, {BUNDLED: model}, {BUNDLED: costs}, QUICK_SIZE[2])


def test_a_revision_runs_its_own_segmatecore_through_segment_alone(tiny_repo, tmp_path):
    setup = small_setup(tmp_path, tmp_path / "model.safetensors")
    with revision_checkout(tiny_repo, "HEAD~1") as checkout:
        assert checkout.commit == git(tiny_repo, "rev-parse", "HEAD~1")
        assert checkout.label == f"HEAD~1 {git(tiny_repo, 'rev-parse', '--short', 'HEAD~1')}"
        row = measure_core(checkout.core, "old revision", setup, setup.models[BUNDLED], PLAN)
        extracted = checkout.core.parent
        assert (checkout.core / "segmatecore" / "__init__.py").is_file()
    assert not extracted.exists()  # the checkout is removed afterwards
    assert git(tiny_repo, "status", "--porcelain") == ""  # and the repository left as it was
    # the revision's own segment() ran, called with the keyword arguments every revision has
    call = json.loads((tmp_path / "rows" / "old_revision" / "segment_call.json").read_text())
    assert call == {"path": str(setup.ct), "model": str(setup.models[BUNDLED]), "device": "cpu", "precision": "fp32",
                    "batch_size": 2}
    assert row["s_network"] == 0.25 and row["timings"] == {"network": 0.25, "total": 0.5}
    assert row["s_per_volume"] > 0 and row["cpu_s_per_volume"] > 0
    assert row["peak_rss_mb"] > 50 and row["threads"] == 1 and len(row["load_before_after"]) == 2
    labels = sitk.ReadImage(str(tmp_path / "rows" / "old_revision" / "labels.nii.gz"))
    assert labels.GetSize() == tuple(QUICK_SIZE)


def test_repeated_sides_take_turns_and_each_row_is_its_sides_median_run(tiny_repo, tmp_path, monkeypatch):
    """`--repeat 3`: a machine that slows down during the run slows both sides, and one slow run moves neither row."""
    from segmatecore.bench import revision
    from segmatecore.bench.results import revision_text

    order, seconds = [], iter([10.0, 20.0, 30.0, 11.0, 12.0, 19.0])  # ours, theirs, ours, theirs, ours, theirs
    monkeypatch.setattr(revision, "measure_core", lambda core, name, *args: order.append(core) or
                        {"s_per_volume": next(seconds), "cpu_s_per_volume": 1.0, "peak_rss_mb": 100.0, "s_network": 1.0})
    setup = small_setup(tmp_path, tmp_path / "model.safetensors")
    with revision_checkout(tiny_repo, "HEAD~1") as checkout:
        rows = revision_rows(checkout, setup, BUNDLED, "m", "m", setup.costs[BUNDLED], {**PLAN, "repeat": 3})
    assert order == [revision.working_tree_core(), checkout.core] * 3
    assert [r["s_per_volume"] for r in rows] == [12.0, 19.0]
    assert rows[0]["runs_s_per_volume"] == [10.0, 30.0, 12.0] and rows[1]["runs_s_per_volume"] == [20.0, 11.0, 19.0]
    assert rows[0]["vs_revision"]["wall"] == pytest.approx(12.0 / 19.0, abs=0.006)
    text = revision_text(rows)
    assert text[1:] == ["  working tree: 10.0, 30.0, 12.0 s per run, in turn; the median is the row's",
                        f"  {checkout.label}: 20.0, 11.0, 19.0 s per run, in turn; the median is the row's"]


@pytest.mark.slow  # the real segment() twice in child processes; the tiny repository above covers the mechanism
def test_head_and_the_working_tree_segment_the_same_ct_side_by_side(tmp_path):
    from segmatecore.bench.jobs import compare_with_references
    from segmatecore.bench.markdown import markdown_tables
    from segmatecore.bench.results import revision_text
    from segmatecore.hub.catalogue import catalogue_entry, default_model_id, resolve_model

    if not (REPOSITORY / ".git").exists():
        pytest.skip("needs a git checkout of SegMate")
    entry = catalogue_entry(default_model_id())
    setup = small_setup(tmp_path, resolve_model(entry["id"]))
    with revision_checkout(None, "HEAD") as checkout:
        rows = revision_rows(checkout, setup, BUNDLED, entry["id"], f"{entry['id']} (input 128)",
                             setup.costs[BUNDLED], PLAN)
    compare_with_references(rows)
    head = git(REPOSITORY, "rev-parse", "HEAD")
    assert [r["name"] for r in rows] == [f"{entry['id']} end_to_end: working tree",
                                         f"{entry['id']} end_to_end: HEAD {checkout.short}"]
    assert head.startswith(checkout.short) and rows[1]["revision"] == {"revision": "HEAD", "commit": head}
    for row in rows:
        assert row["kind"] == "revision" and row["scope"] == "end_to_end" and row["dtype"] == "float32"
        assert row["s_per_volume"] >= row["s_network"] > 0 and row["peak_rss_mb"] > 50
    # the revision's labels are compared with the working tree's, organ by organ
    assert rows[1]["reference"] == rows[0]["name"] and list(rows[1]["dice_vs_fp32"]) == entry["organs"]
    ratio = rows[0]["vs_revision"]
    assert ratio["revision"] == checkout.label
    assert ratio["wall"] == pytest.approx(rows[0]["s_per_volume"] / rows[1]["s_per_volume"], abs=0.006)
    assert ratio["rss"] == pytest.approx(rows[0]["peak_rss_mb"] / rows[1]["peak_rss_mb"], abs=0.006)
    assert revision_text(rows) == [f"working tree / {checkout.label}: wall {ratio['wall']}, CPU {ratio['cpu']}, "
                                   f"peak RSS {ratio['rss']} (below 1: the working tree takes less)"]
    text = markdown_tables({"machine": {}, "ct": {"size": list(QUICK_SIZE)}, "rows": rows})
    section = text.split("#### The working tree against another revision")[1].split("####")[0]
    table = [line for line in section.splitlines() if line.startswith("| ")]
    assert [t.split("|")[1].strip() for t in table[1:]] == ["working tree", checkout.label,
                                                           f"working tree / {checkout.label}"]
    assert table[-1].split("|")[2].strip() == f"{ratio['wall']:.2f}"


def test_a_revision_or_folder_git_does_not_know_is_a_clear_error(tiny_repo, tmp_path, capsys):
    outside = tmp_path / "not_a_checkout"
    outside.mkdir()
    with pytest.raises(RevisionError, match="is not a git checkout"):
        with revision_checkout(outside, "HEAD"):
            pass
    with pytest.raises(RevisionError, match="'no-such-branch' is not a revision of"):
        with revision_checkout(tiny_repo, "no-such-branch"):
            pass
    with pytest.raises(RevisionError, match="has no SegMateCore"):
        with revision_checkout(tiny_repo, "HEAD"):
            pass
    # from the command line: an error before anything is measured
    assert main(["bench", "--quick", "--backbones", "--no-peer", "--revision", "no-such-revision-xyz"]) == 2
    assert "'no-such-revision-xyz' is not a revision of" in capsys.readouterr().err
    assert main(["bench", "--quick", "--scope", "network", "--revision", "HEAD"]) == 2
    assert "--revision compares end-to-end rows" in capsys.readouterr().err


def test_the_inference_path_imports_no_benchmark_module():
    code = ("import sys\nimport segmatecore.inference.predictor, segmatecore.cli.commands.predict\n"
            "from segmatecore.cli.main import build_parser\nbuild_parser()\n"
            "print(sorted(m for m in sys.modules if m.startswith('segmatecore.bench')))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "[]"
    loaded = subprocess.run([sys.executable, "-c", "import sys, segmatecore.bench\n"
                             "print('segmatecore.bench' in sys.modules)"],
                            check=True, capture_output=True, text=True).stdout
    assert loaded.strip() == "True"  # the check above can see a benchmark module when one is imported

