"""What a model is for: read from its file's metadata, else its catalogue entry, and never clinical by default."""
from __future__ import annotations

import pytest

from segmatecore.hub.catalogue import catalogue_entry, default_model_id, model_file
from segmatecore.models.checkpoint import read_metadata
from segmatecore.export.common import dicom_texts
from segmatecore.hub.intended_use import intended_use, notice


def test_the_bundled_model_is_a_demonstration_model_not_for_clinical_use():
    entry = catalogue_entry(default_model_id())
    meta = read_metadata(model_file(entry))
    use = intended_use(meta, entry)
    assert use["clinical_use"] is False
    assert use["intended_use"] == " ".join(meta["provenance"]["intended_use"].split())  # the file's own words
    assert entry["clinical_use"] is False and entry["demo"] is True


@pytest.mark.parametrize("meta, entry, clinical", [
    ({"clinical_use": True}, None, True),
    ({"provenance": {"clinical_use": "true"}}, None, True),  # safetensors metadata may hold strings
    ({"clinical_use": True, "provenance": {"demo": True}}, None, False),  # a demonstration model never is
    ({}, {"clinical_use": True, "demo": False}, True),  # the catalogue is the fallback
    ({"clinical_use": False}, {"clinical_use": True, "demo": False}, False),  # the file wins
    ({}, None, False),  # unknown: not for clinical use
    ({}, {"demo": False}, False),
])
def test_clinical_use_only_when_declared_and_not_a_demonstration(meta, entry, clinical):
    assert intended_use(meta, entry)["clinical_use"] is clinical


def test_intended_use_text_from_the_file_else_the_catalogue_else_unstated():
    assert intended_use({"provenance": {"intended_use": "Head and\n neck CT."}}, {"intended_use": "x"})[
        "intended_use"] == "Head and neck CT."
    assert intended_use({}, {"description": "Thorax CT model."})["intended_use"] == "Thorax CT model."
    assert intended_use({}, None)["intended_use"] == "not stated by the model"


def test_notice_and_dicom_texts_keep_the_value_lengths_dicom_allows():
    info = {"id": "a" * 80, "version": "1.2.3", "clinical_use": False, "intended_use": "x " * 700}
    assert "not for clinical use" in notice(info) and "\n" not in notice(info)
    assert notice({**info, "clinical_use": True}) is None
    texts = dicom_texts({"model_id": info["id"], "model_version": "1.2.3", "intended_use": info["intended_use"],
                         "clinical_use": False})
    assert texts["label"] == "NOT CLINICAL USE" and len(texts["label"]) <= 16  # SH
    assert len(texts["series_description"]) <= 64 and "not for clinical use" in texts["series_description"]  # LO
    assert all(len(v) <= 64 for v in texts["software_versions"])  # LO
    assert len(texts["description"]) <= 1024  # ST
    clinical = dicom_texts({"model_id": "m", "model_version": "1", "clinical_use": True})
    assert clinical["label"] == "SegMate" and "clinical" not in clinical["series_description"] + clinical["description"]


@pytest.mark.parametrize("model_id, version, name", [("head_neck", "1.2.0", "head_neck 1.2.0"),
                                                      ("head_neck", None, "head_neck"), (None, None, None)])
def test_the_notice_the_segment_tags_and_the_dicom_texts_name_the_model_alike(model_id, version, name):
    from segmatecore.inference.result import SegmentationResult

    info = {"id": model_id, "version": version, "clinical_use": False}
    result = SegmentationResult(labelmap=None, organs=[], labels={}, volumes_ml={}, timings={}, z_range={},
                                model_info=info)
    texts = dicom_texts({"model_id": model_id, "model_version": version})
    if name is None:  # no name known: each output says so in its own words
        assert texts["model"] == "custom model" and notice(info).startswith("notice: this model is")
        assert result.source_text().endswith("model custom model")
        return
    assert texts["model"] == name and texts["software_versions"][1] == name
    assert notice(info).startswith(f"notice: {name} is not for clinical use")
    assert result.source_text().endswith(f"model {name}")
