"""`segmate evaluate`: runs segment() on prepared cases and writes per-case, per-organ metrics."""
from __future__ import annotations

import csv

import numpy as np
import pytest

from segmatecore.data.geometry import canonical_image, to_canonical
from segmatecore.data.prepared import load_cases
from segmatecore.evaluation.evaluate import evaluate
from segmatecore.inference.predictor import SegMatePredictor
from segmatecore.inference.zstrategy import GroundTruthZ
from segmatecore.train.dataset import z_norm_for

SHAPE = (12, 64, 64)  # z, y, x: 64 x 64 slices need no resizing at input size 64


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, band_centre, prepared_pairs):
    """Three cases painted with the intensity model's bands; case02's cord label lacks one slice."""
    pairs = []
    for n in range(3):
        ct = np.zeros(SHAPE, dtype=np.int16)
        lab = np.zeros(SHAPE, dtype=np.uint8)
        lab[2:10, 40:46, 28:34] = 1
        lab[4:11, 24:30, 30:36] = 2
        ct[lab == 1] = band_centre("spinal_cord")
        ct[lab == 2] = band_centre("esophagus")
        if n == 2:
            lab[9, 40:46, 28:34] = 0  # the painted cord has 8 slices, its label 7
        pairs.append((ct, lab))
    return prepared_pairs(tmp_path_factory.mktemp("eval"), pairs, {"spinal_cord": 1, "esophagus": 2, "liver": 9},
                          (0.0, 0.0, 1.0), spacing=(1.5, 1.5, 4.0))


def test_canonical_image_maps_back_onto_the_prepared_array(prepared):
    case = load_cases([prepared], "test")[0]
    image = canonical_image(case.image, case.record["spacing"])
    array = np.array(to_canonical(image)[0])
    np.testing.assert_array_equal(array, case.image)


def test_evaluate_writes_csv_summary_and_boxplot(prepared, tmp_path, intensity_model):
    model = intensity_model(organs=["spinal_cord", "esophagus"], input_size=64)
    summary = evaluate(model, [prepared], tmp_path, split="test", device="cpu", ground_truth_z=True)
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    # liver is annotated but the model was not trained on it: not scored
    assert {(r["case"], r["organ"], r["mode"]) for r in rows} == {
        (f"case{n:02d}", organ, mode) for n in range(3) for organ in ("spinal_cord", "esophagus")
        for mode in ("label_free", "ground_truth_z")}
    by = {(r["case"], r["organ"], r["mode"]): r for r in rows}
    exact = by[("case00", "spinal_cord", "label_free")]
    assert float(exact["dice"]) == 1.0 and float(exact["hd95_mm"]) == 0.0
    short = by[("case02", "spinal_cord", "label_free")]
    assert float(short["dice"]) == pytest.approx(2 * 7 / 15, abs=1e-6)  # 8 predicted slices, 7 labelled
    assert float(short["precision"]) == pytest.approx(7 / 8, abs=1e-6) and float(short["recall"]) == 1.0
    assert float(short["truth_ml"]) == pytest.approx(7 * 36 * 1.5 * 1.5 * 4.0 / 1000, abs=1e-6)
    assert float(short["volume_error_pct"]) == pytest.approx(100 / 7, abs=1e-4)  # one slice too many
    assert float(exact["volume_error_pct"]) == 0.0
    cord = summary["modes"]["label_free"]["spinal_cord"]["dice"]
    assert cord["n"] == 3 and cord["mean"] == pytest.approx((2 + 14 / 15) / 3)
    text = (tmp_path / "summary.md").read_text(encoding="utf-8")
    assert "spinal_cord" in text and "HD95" in text and "volume error" in text
    assert (tmp_path / "boxplot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ground_truth_z_norm_follows_the_organ_extent(prepared, intensity_model):
    case = load_cases([prepared], "test")[0]
    model = intensity_model(organs=["spinal_cord", "esophagus"], input_size=64)
    image = canonical_image(case.image, case.record["spacing"])
    result = SegMatePredictor(model, device="cpu").segment(image, z=GroundTruthZ(*case.record["extent"]))
    seen = np.concatenate([z.cpu().numpy() for z in model.z_seen if z is not None])
    expected = z_norm_for(np.arange(case.depth), case.record["extent"], case.depth)
    np.testing.assert_allclose(np.sort(seen), np.sort(expected), atol=1e-6)
    assert result.z_range["mode"] == "ground_truth" and [result.z_range["first"], result.z_range["last"]] == \
        list(case.record["extent"])


def test_held_out_results_are_recorded_in_the_model_file(tmp_path):
    import torch
    from safetensors import safe_open

    from segmatecore import create_model, read_metadata, save_model
    from segmatecore.evaluation.evaluate import record_in_model, summarise

    path = save_model(create_model("fastvit_t12"), tmp_path / "m.safetensors",
                      {"trained_organs": ["spinal_cord"]}, dtype=torch.float16)
    rows = [{"case": f"c{n}", "organ": "spinal_cord", "mode": "label_free", "dice": d, "hd95_mm": h, "iou": 0.5,
             "precision": 0.5, "recall": 0.5} for n, (d, h) in enumerate([(0.8, 2.0), (0.6, 4.0)])]
    summary = {**summarise(rows), "data": ["d"], "split": "test", "cases": 2}
    record_in_model(path, summary, "segmate evaluate ...")
    held_out = read_metadata(path)["provenance"]["metrics"]["held_out"]
    assert held_out["organs"]["spinal_cord"]["dice"] == pytest.approx(0.7)
    assert held_out["organs"]["spinal_cord"]["hd95_mm"] == pytest.approx(3.0)
    assert held_out["cases"] == 2 and held_out["split"] == "test"
    with safe_open(str(path), framework="pt") as fh:
        assert fh.get_tensor(next(iter(fh.keys()))).dtype == torch.float16


def test_held_out_results_in_the_catalogues_form():
    from segmatecore.evaluation.evaluate import catalogue_metrics, summarise

    rows = [{"case": f"c{n}", "organ": organ, "mode": "label_free", "dice": d, "hd95_mm": h, "iou": 0.5,
             "precision": 0.5, "recall": 0.5}
            for n, (organ, d, h) in enumerate([("larynx", 0.61234, 2.04), ("larynx", 0.4, 4.0), ("mandible", 0.9, 1.0)])]
    summary = {**summarise(rows), "data": ["runs/data/openkbp7"], "split": "test", "cases": 3}
    metrics = catalogue_metrics(summary, "segmate evaluate --split test")
    assert metrics["organs"] == {"larynx": {"dice": 0.506, "hd95_mm": 3.0, "cases": 2},
                                 "mandible": {"dice": 0.9, "hd95_mm": 1.0, "cases": 1}}
    assert metrics["cases"] == 3 and metrics["command"] == "segmate evaluate --split test"
    assert "runs/data/openkbp7" in metrics["dataset"] and "test" in metrics["dataset"]
