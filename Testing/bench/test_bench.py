"""`segmate bench --quick`: one row per configuration with the documented fields, sane values, outputs
equal to fp32 within the Dice bar, the peers (nnU-Net built as its default 3d_fullres plans, LightMedSeg,
HRMedSeg, Light-UNETR) in the rows, the ranking, the published-accuracy table and the plot."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from segmatecore.bench.configs import DICE_BAR, PEER_MODEL, QUICK_SIZE, ROW_FIELDS
from segmatecore.bench.inputs import resample_to_size
from segmatecore.bench.markdown import markdown_tables
from segmatecore.bench.results import row_seconds
from segmatecore.hub.catalogue import catalogue_entry, default_model_id
from segmatecore.cli.main import main
from segmatecore.data.organs import PAPER_ORGANS
from segmatecore.bench.peers import (build_nnunet_3d_fullres, gaussian_importance, run_nnunet_peer,
                                     sliding_window_starts)


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SEGMATE_HOME", str(out / "home"))  # the OpenVINO rows' converted models
        code = main(["bench", "--quick", "--backbones", "fastvit_t12", "--json", str(out / "bench.json"),
                     "--plot", str(out / "bench.png"), "--markdown", str(out / "bench.md")])
    assert code == 0
    return json.loads((out / "bench.json").read_text()), out


def test_every_row_has_the_documented_fields(quick):
    from segmatecore.runtime.devices import DEFAULT_BATCH
    from segmatecore.runtime.optimize import cpu_description

    results, _ = quick
    assert results["batch_size"] == DEFAULT_BATCH["cpu"]  # what `segmate predict` runs, unless told otherwise
    assert results["ct"]["size"] == list(QUICK_SIZE)
    # results are committed and shared: the bundled CT is named relative to the repository
    assert results["ct"]["source"] == "Resources/SampleData/totalsegmentator_example_ct.nii.gz"
    assert results["machine"]["cpu"] == cpu_description()  # every figure says which CPU made it
    for row in results["rows"]:
        missing = [f for f in ROW_FIELDS if f not in row]
        assert not missing, (row["name"], missing)


def test_values_are_sane(quick):
    results, _ = quick
    rows = results["rows"]
    for row in rows:
        assert row["device"] == "cpu" and row["peak_gpu_mb"] is None
        assert row["s_network"] > 0 and row["peak_rss_mb"] > 50
        assert row["peak_rss_mb"] <= row["kernel_peak_rss_mb"] * 1.05 + 5
        assert row["dtype"] in ("float32", "bfloat16")
        assert row["cpu_steal_pct"] is None or 0.0 <= row["cpu_steal_pct"] <= 100.0
        if row["scope"] == "end_to_end":
            assert row["s_per_volume"] >= row["s_network"]
    segmate = [r for r in rows if r["model"] == "fastvit_t12"]
    assert {r["params_m"] for r in segmate} == {segmate[0]["params_m"]}
    assert 12.0 < segmate[0]["params_m"] < 13.0  # FastViT-T12 SegMate: 12.5 M
    assert 0 < segmate[0]["gmacs_per_slice"] < 1.0  # 9.1 GMACs at 512, so (64/512)^2 of that here
    peer = [r for r in rows if r["model"] == "nnunet_3d_fullres"]
    assert len(peer) == 1 and peer[0]["patches"] >= 1 and peer[0]["s_per_volume"] > 0
    assert 30 < peer[0]["params_m"] < 33  # nnU-Net 3d_fullres, 6 stages: 31.2 M


def test_every_peer_segments_the_ct_and_reports_its_cost_against_segmate(quick):
    from segmatecore.bench.peers import PEERS

    results, _ = quick
    rows = results["rows"]
    peers = {r["model"]: r for r in rows if r["kind"] == "peer"}
    assert list(peers) == list(PEERS)
    depth = results["ct"]["size"][2]
    references = [r for r in rows if r["kind"] == "segmate" and r["scope"] == "end_to_end" and r["reference"] is None]
    assert {r["model"].split(" ")[0] for r in references} == {"fastvit_t12", catalogue_entry(default_model_id())["id"]}
    for key, row in peers.items():
        assert row["scope"] == "end_to_end" and row["dtype"] == "float32" and row["s_per_volume"] >= row["s_network"] > 0
        assert row["cpu_s_per_volume"] > 0 and row["peak_private_mb"] > 0
        # rows keep 3 decimals: the rounding of GMACs per call grows with the number of calls
        assert row["gmacs_per_volume"] == pytest.approx(row["gmacs_per_call"] * row["patches"], rel=1e-3,
                                                        abs=5e-4 * (row["patches"] + 1))
        assert row["gmacs_per_slice"] == pytest.approx(row["gmacs_per_volume"] / depth, rel=1e-3, abs=5e-4)  # rows keep 3 decimals
        for ref in references:
            ratio = row["vs_segmate"][ref["model"]]
            assert ratio["wall"] == pytest.approx(row["s_per_volume"] / ref["s_per_volume"], abs=0.006)
            assert ratio["rss"] == pytest.approx(row["peak_rss_mb"] / ref["peak_rss_mb"], abs=0.006)
            assert ratio["cpu"] == pytest.approx(row["cpu_s_per_volume"] / ref["cpu_s_per_volume"], abs=0.006)
    assert peers["hrmedseg"]["patches"] == depth                      # slice by slice
    assert peers["hrmedseg"]["network_input"] == [3, 64, 64]          # --quick: 64 x 64 instead of 1024
    assert peers["lightmedseg"]["network_input"] == [1, 32, 32, 32]   # --quick: one 32^3 patch at 12 mm
    assert peers["light_unetr"]["patches"] == peers["lightmedseg"]["patches"] == 1
    assert 0.25 < peers["lightmedseg"]["params_m"] < 0.28 and 3.3 < peers["hrmedseg"]["params_m"] < 3.5
    assert 1.35 < peers["light_unetr"]["params_m"] < 1.5
    for row in rows:  # SegMate's per-volume convention: the network once per slice
        if row["kind"] == "segmate":
            assert row["gmacs_per_volume"] == pytest.approx(row["gmacs_per_slice"] * depth, rel=1e-3, abs=5e-4 * (depth + 1))  # both rounded to 3 decimals


def test_each_optimisation_is_a_row_that_agrees_with_fp32(quick):
    from segmatecore.hub.catalogue import catalogue_entry, default_model_id

    rows = quick[0]["rows"]
    names = [r["name"] for r in rows]
    for step in ("+ inference_mode", "+ reparameterize", "+ fold batchnorm", "+ fuse convolutions", "+ channels_last", "+ bf16",
                 "end_to_end: default"):
        assert any(step in n for n in names), step
    compared = [r for r in rows if r.get("reference")]
    assert len(compared) >= 6
    bundled = catalogue_entry(default_model_id())
    for row in compared:
        # each row is compared on its own model's organs: the random paper-configuration network's
        # nine, the bundled model's own
        organs = bundled["organs"] if row["model"].startswith(bundled["id"]) else list(PAPER_ORGANS)
        assert list(row["dice_vs_fp32"]) == organs
        assert row["agrees_with_fp32"] == (row["dice_min"] >= DICE_BAR)
        if row["dtype"] != "bfloat16":
            assert row["dice_min"] >= DICE_BAR, (row["name"], row["dice_vs_fp32"])
        elif row["scope"] == "network":
            # The random benchmark network puts 30 % of its pixels above threshold with no margin at all,
            # so bf16 rounding flips about 1 % of them: that is why bf16 is opt-in (docs/benchmark.md).
            assert row["dice_min"] >= 0.97, (row["name"], row["dice_vs_fp32"])
        elif row["model"] != "fastvit_t12":
            # The trained bundled model end to end: close, though not within the 0.99 bar.
            assert row["dice_min"] >= 0.95, (row["name"], row["dice_vs_fp32"])
        # End to end, the random network's presence outputs sit on the threshold by construction, so
        # bf16 changes which slices the presence gate keeps: no bar, the row reports what it measured.
    bf16 = [r for r in rows if r["name"].endswith("network: + bf16")]
    assert bf16[0]["dtype"] == "bfloat16"
    skip = [r for r in rows if r.get("skip_outside_extent")]
    assert skip and skip[0]["z_range"]["mode"] in ("auto", "volume")


def test_the_bundled_model_runs_end_to_end_at_its_own_input_size(quick):
    """Besides the random paper-configuration rows, the default job: the trained model users get."""
    from segmatecore.hub.catalogue import catalogue_entry, default_model_id

    entry = catalogue_entry(default_model_id())
    rows = [r for r in quick[0]["rows"] if r["model"].startswith(entry["id"])]
    assert [r["precision"] for r in rows] == ["fp32", "fp32", "bf16", "auto", "fp32", "bf16"]
    assert all(r["scope"] == "end_to_end" and r["input_size"] == entry["input_size"][0] for r in rows)
    assert all(r["optimisations"]["threads"] == 1 for r in rows)  # --quick's thread count, as every other row
    assert rows[0]["model"] == f"{entry['id']} (input {entry['input_size'][0]})"
    # the feature cache switched off: the first pass's slices are encoded again, same labels
    assert rows[0]["feature_cache"]["slices_reused"] == rows[0]["z_range"]["slices_run"] > 0
    assert rows[1]["feature_cache_mb"] == 0 and rows[1]["feature_cache"] is None
    assert rows[1]["reference"] == rows[0]["name"] and rows[1]["dice_min"] >= DICE_BAR
    assert rows[2]["reference"] == rows[0]["name"] and "dice_min" in rows[2]
    assert rows[3]["skip_outside_extent"] and rows[3]["z_range"]["mode"] in ("auto", "volume")
    # OpenVINO (pinned, so installed) in fp32 and bf16: two compiled graphs, so the feature cache works there too
    for row, dtype in zip(rows[4:], ("float32", "bfloat16")):
        assert row["runtime"] == "OpenVINONetwork" and row["optimisations"]["runtime"] == "openvino"
        assert row["dtype"] == dtype and row["reference"] == rows[0]["name"]
        assert row["feature_cache"]["slices_reused"] == row["z_range"]["slices_run"] > 0
    assert rows[4]["dice_min"] >= DICE_BAR  # fp32 compiled by OpenVINO: the eager fp32 labels
    assert 12.0 < rows[0]["params_m"] < 13.0  # the bundled model is a FastViT-T12 SegMate


def test_plot_is_written_with_two_panels(quick):
    """Seconds against peak memory and GMACs per volume against seconds, side by side."""
    _, out = quick
    import matplotlib.image

    image = matplotlib.image.imread(out / "bench.png")[..., :3]  # decoded: a real PNG
    height, width = image.shape[:2]
    assert width > 2 * height
    coloured = image.max(axis=2) - image.min(axis=2) > 0.25     # the rows' markers; axes and text are grey
    left, right = coloured[:, : width // 2], coloured[:, width // 2:]
    assert left.sum() > 100 and right.sum() > 100, "a panel has no rows drawn on it"


def test_plot_shows_every_row_and_every_peer_on_both_panels(quick, tmp_path, monkeypatch):
    import matplotlib.axes

    from segmatecore.bench.plot import plot

    results, _ = quick
    drawn: list = []
    original = matplotlib.axes.Axes.scatter

    def scatter(ax, x, y, *args, **kwargs):
        if np.size(x):
            drawn.append((id(ax), float(np.ravel(x)[0]), float(np.ravel(y)[0])))
        return original(ax, x, y, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "scatter", scatter)
    plot(results, tmp_path / "plot.png")
    panels = {}
    for ax, x, y in drawn:
        panels.setdefault(ax, []).append((x, y))
    memory, compute = panels.values()
    rows = results["rows"]
    assert sorted(memory) == sorted((r["peak_rss_mb"], row_seconds(r)) for r in rows)
    assert sorted(compute) == sorted((r["gmacs_per_volume"], row_seconds(r)) for r in rows)


def test_markdown_opens_with_every_row_ranked_and_the_published_accuracy_beside_it(quick):
    results, out = quick
    text = (out / "bench.md").read_text()
    sections = text.split("#### ")
    assert sections[1].startswith("Every row of this run, fastest first")
    table = [line for line in sections[1].splitlines() if line.startswith("| ")]
    header, body = table[0], table[1:]
    assert "x fastvit_t12: s / CPU s / RSS" in header and "GMACs / volume" in header
    rows = sorted(results["rows"], key=row_seconds)
    assert len(body) == len(rows)
    for rank, (line, row) in enumerate(zip(body, rows), 1):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[0] == str(rank) and cells[1].startswith(row["model"])
        assert float(cells[3]) == round(row_seconds(row), 1)
        gmacs = row["gmacs_per_volume"]
        assert cells[7] == f"{row['params_m']:.2f}" and cells[8] == (f"{gmacs:,.0f}" if gmacs >= 100 else f"{gmacs:.1f}")
        assert ("peer" in cells[2]) == (row["kind"] == "peer")
        ratio = row["vs_segmate"]["fastvit_t12"]
        assert cells[9] == f"{ratio['wall']:.2f} / {ratio['cpu']:.2f} / {ratio['rss']:.2f}"
    assert sections[2].startswith("Published accuracy: the papers' figures on their own data, not measured")
    accuracy = sections[2]
    for title in ("LightMedSeg", "HRMedSeg", "Light-UNETR", "SegMate", f"{catalogue_entry(default_model_id())['id']} (bundled)"):
        assert f"| {title} |" in accuracy, title
    assert "| LightMedSeg | BraTS (brain MRI, 4 modalities) | 3 tumour regions | 83.40 |" in accuracy


def test_markdown_sets_every_end_to_end_row_against_the_peer_of_the_run(quick):
    results, out = quick
    text = (out / "bench.md").read_text()
    assert "\n#### End to end, against the 3D nnU-Net peer of this run" in text
    section = next(s for s in text.split("#### ") if s.startswith("End to end, against the 3D nnU-Net peer"))
    table = [line for line in section.splitlines() if line.startswith("| ")][1:]
    rows = [r for r in results["rows"] if r["scope"] == "end_to_end"]
    peer = next(r for r in rows if r["model"] == PEER_MODEL)
    assert len(table) == len(rows) > 1
    for line, row in zip(table, rows):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[0].startswith(row["model"]) and float(cells[1]) == round(row["s_per_volume"], 1)
        assert cells[3].replace(" ", "") == f"{row['timings']['z_pass']:.1f}+{row['timings']['network']:.1f}" \
            if "z_pass" in row["timings"] else float(cells[3]) == round(row["timings"]["network"], 1)
        if row is peer:
            assert cells[8:11] == ["", "", ""]
        if row["kind"] == "peer":
            assert cells[11] == ""  # no Dice reference for a peer
        else:
            assert cells[8] == f"{peer['s_per_volume'] / row['s_per_volume']:.1f}x"
            assert cells[9] == f"{peer['cpu_s_per_volume'] / row['cpu_s_per_volume']:.1f}x"
            assert cells[10] == f"{peer['peak_rss_mb'] / row['peak_rss_mb']:.1f}x"
    without_peer = {**results, "rows": [r for r in results["rows"] if r.get("kind") != "peer"]}
    assert "peer" not in markdown_tables(without_peer)


def test_network_rows_are_read_against_the_machines_matrix_multiply_peak_of_the_same_run(quick):
    results, out = quick
    peaks = results["machine"]["matmul_gmacs_per_s"]
    network = [r for r in results["rows"] if r["scope"] == "network"]
    assert {str(r["threads"]) for r in network} == set(peaks)  # one measurement per thread count used
    peers = [r for r in results["rows"] if r["kind"] == "peer"]
    assert len(peers) == 4
    for row in network + peers:
        peak = peaks[str(row["threads"])][row["dtype"]]
        floor = row["gmacs_per_slice"] * results["ct"]["size"][2] / peak
        assert row["compute_floor_s"] == pytest.approx(floor, rel=1e-6)
        assert row["pct_of_peak"] == pytest.approx(100 * floor / row["s_network"], abs=0.05)
    text = (out / "bench.md").read_text()
    assert text.startswith("Matrix-multiply peak of this machine")
    line = next(x for x in text.splitlines() if x.startswith(f"| {network[0]['name'].split(': ', 1)[-1]} (network)"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[3] == f"{network[0]['compute_floor_s']:.1f}" and cells[4] == f"{network[0]['pct_of_peak']:.0f}"


def test_peer_is_nnunet_default_3d_fullres():
    net = build_nnunet_3d_fullres()
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv3d)]
    assert all(c.kernel_size in ((3, 3, 3), (1, 1, 1)) for c in convs)
    assert list(net.encoder.output_channels) == [32, 64, 128, 256, 320, 320]
    assert [list(s) for s in net.encoder.strides] == [[1, 1, 1]] + [[2, 2, 2]] * 5
    assert sum(p.numel() for p in net.parameters()) == 31_202_034


def test_sliding_window_places_patches_like_nnunet():
    # 50 % overlap, first and last patch flush with the borders
    assert sliding_window_starts((224, 202, 244), (128, 128, 128)) == [[0, 48, 96], [0, 37, 74], [0, 58, 116]]
    assert sliding_window_starts((100,), (128,)) == [[0]]
    weight = gaussian_importance((8, 8, 8))
    assert weight.max() == 1.0 and weight.min() > 0
    assert torch.equal(weight, weight.flip(0))


def test_peer_returns_labels_on_the_input_grid():
    image = sitk.GetImageFromArray(np.full((20, 24, 28), -500, dtype=np.int16))
    image.SetSpacing((4.0, 4.0, 5.0))
    image.SetOrigin((10.0, -3.0, 7.0))
    torch.manual_seed(0)
    result = run_nnunet_peer(image, patch=(64, 64, 64), spacing_mm=6.0)
    assert result.labelmap.GetSize() == image.GetSize()
    assert result.labelmap.GetSpacing() == image.GetSpacing()
    assert result.labelmap.GetOrigin() == image.GetOrigin()
    assert result.patches == 1
    with pytest.raises(ValueError, match="multiple of 32"):
        run_nnunet_peer(image, patch=(48, 64, 64))


def test_resample_to_size_keeps_the_physical_extent():
    image = sitk.GetImageFromArray(np.zeros((10, 20, 30), dtype=np.int16))
    image.SetSpacing((1.0, 2.0, 3.0))
    out = resample_to_size(image, (15, 40, 5))
    assert out.GetSize() == (15, 40, 5)
    extent = [n * s for n, s in zip(out.GetSize(), out.GetSpacing())]
    assert extent == pytest.approx([30.0, 40.0, 30.0])
    first_edge = np.array(out.GetOrigin()) - np.array(out.GetSpacing()) / 2
    assert first_edge == pytest.approx(np.array(image.GetOrigin()) - np.array(image.GetSpacing()) / 2)
    assert out.GetPixelID() == sitk.sitkInt16


def test_no_openvino_leaves_out_every_openvino_row(tmp_path, monkeypatch):
    """OpenVINO is installed (pinned); --no-openvino must still keep its slow conversion out of a run."""
    from segmatecore.bench import run as bench
    from segmatecore.runtime import openvino as openvino_runtime

    assert openvino_runtime.available()
    measured: list = []
    fake_row = {"s_network": 1.0, "peak_rss_mb": 1.0, "dtype": "float32", "load_before_after": [0, 0]}
    monkeypatch.setattr(bench, "run_config", lambda config, *args, **kwargs: measured.append(config) or dict(fake_row))
    monkeypatch.setattr(bench, "compare_with_references", lambda rows: None)
    assert main(["bench", "--quick", "--backbones", "fastvit_t12", "--no-peer", "--no-openvino",
                 "--workdir", str(tmp_path)]) == 0
    assert measured and not any(c.optimizations["runtime"] == "openvino" for c in measured)
    assert any(c.model_key == bench.BUNDLED for c in measured)
    measured.clear()
    assert main(["bench", "--quick", "--backbones", "fastvit_t12", "--no-peer", "--workdir", str(tmp_path)]) == 0
    # the ladder's fp32 and bf16, and fp32 and bf16 end to end for FastViT-T12 and the bundled model
    assert sum(c.optimizations["runtime"] == "openvino" for c in measured) == 6


def test_profile_shows_the_network_inference_runs():
    """`segmate bench --profile`: the prepared network (fused convolutions), masks and presence only,
    so the boundary head's full-size upsampling is not counted (two upsamplings, the decoder's and
    the masks'; three with every head)."""
    from segmatecore.bench.profiling import profile_network

    # every operator listed (top=200): at 64 x 64 the upsampling may not be among the 15 slowest
    table = profile_network("fastvit_t12", precision="fp32", runtime="torch", input_size=64, batch_size=2, top=200)
    assert "mkldnn::_convolution_pointwise" in table
    upsampling = next(line for line in table.splitlines() if "aten::upsample_bilinear2d" in line)
    assert upsampling.split()[-1] == "2", upsampling


def test_each_row_records_the_share_of_cpu_time_the_hypervisor_stole():
    """A row that ran while the host gave the VM's CPUs to others must say so (Linux /proc/stat)."""
    from segmatecore.bench.memory import machine_cpu_seconds, steal_percent

    assert steal_percent((100.0, 10.0), (200.0, 30.0)) == 20.0
    assert steal_percent(None, (200.0, 30.0)) is None and steal_percent((5.0, 1.0), (5.0, 1.0)) is None
    if Path("/proc/stat").exists():
        first = machine_cpu_seconds()
        sum(i * i for i in range(200_000))
        second = machine_cpu_seconds()
        assert first is not None and second[0] >= first[0] and second[1] >= first[1] >= 0.0


def test_a_rows_peak_memory_is_its_own_not_the_parents(tmp_path):
    """Rows run in fresh processes started by the benchmark; the kernel's figure must be the row's own
    peak, not the parent's (Linux keeps ru_maxrss across fork and exec)."""
    import resource
    import subprocess
    import sys

    if not Path("/proc/self/status").exists():
        pytest.skip("needs Linux /proc")
    ballast = np.ones(2**27)  # 1 GiB touched in this (parent) process
    parent_peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # what a row's process imports, then the kernel's figure of its own peak
    code = ("import segmatecore.bench.worker\nfrom segmatecore.bench.memory import kernel_peak_mb\n"
            "print(kernel_peak_mb())")
    child_mb = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    del ballast
    assert 50 < child_mb < parent_peak_mb - 512, (child_mb, parent_peak_mb)


def test_saved_results_of_earlier_runs_are_completed_each_from_its_own_run():
    """`--from-json` on results saved before rows had kind, GMACs per volume and the SegMate ratios:
    each run's rows get them from that run alone, so ratios never mix machines or days."""
    from segmatecore.bench.markdown import ranking_table
    from segmatecore.bench.results import merge

    def run(segmate_s: float, peer_s: float) -> dict:
        common = {"scope": "end_to_end", "reference": None, "s_network": 1.0, "peak_private_mb": 500.0}
        rows = [{**common, "name": "fastvit_t12 end_to_end: default fp32", "model": "fastvit_t12",
                 "s_per_volume": segmate_s, "cpu_s_per_volume": 2 * segmate_s, "peak_rss_mb": 1000.0,
                 "params_m": 12.2, "gmacs_per_slice": 9.0},
                {**common, "name": f"{PEER_MODEL} end_to_end: fp32", "model": PEER_MODEL, "s_per_volume": peer_s,
                 "cpu_s_per_volume": 2 * peer_s, "peak_rss_mb": 3000.0, "params_m": 31.2, "gmacs_per_slice": 80.0}]
        return {"machine": {"cpu": "test"}, "ct": {"size": [512, 512, 10]}, "rows": rows}

    merged = merge([run(10.0, 100.0), run(20.0, 100.0)])
    rows = merged["rows"]
    assert [r["kind"] for r in rows] == ["segmate", "peer", "segmate", "peer"]
    assert rows[1]["gmacs_per_volume"] == 800.0 and rows[0]["gmacs_per_volume"] == 90.0
    assert rows[1]["vs_segmate"]["fastvit_t12"] == {"wall": 10.0, "cpu": 10.0, "rss": 3.0, "private": 1.0}
    assert rows[3]["vs_segmate"]["fastvit_t12"]["wall"] == 5.0  # against the SegMate row of its own run
    table = ranking_table(merged).splitlines()
    assert len(table) == 2 + 4 and table[0].count("x fastvit_t12") == 1
    assert table[-2].startswith("| 3 | nnunet_3d_fullres") and table[-2].endswith("| 10.00 / 10.00 / 3.00 |")
    assert table[-1].startswith("| 4 | nnunet_3d_fullres") and table[-1].endswith("| 5.00 / 5.00 / 3.00 |")
