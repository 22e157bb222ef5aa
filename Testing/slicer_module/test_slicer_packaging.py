"""The extension's packaging: the ExtensionsIndex entry, its URLs, and the oldest Slicer it supports.

The index takes a JSON file per extension (the .s4ext format is no longer accepted); the extension's
homepage, icon and screenshot URLs live in its CMakeLists.txt. Where a URL is not known yet it is a
placeholder, and placeholders live in one file, extension-urls.json, each carrying a visible marker,
so none can reach the index entry looking like a real address.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from SegMateLib.slicer_version import MINIMUM_SLICER_VERSION, unsupportedSlicerMessage

REPO = Path(__file__).resolve().parents[2]

# The ExtensionsIndex catalog entry schema, version 1.0.2: its required and allowed keys.
SCHEMA = "https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/slicer-extension-catalog-entry-schema-v1.0.2.json#"
REQUIRED = {"$schema", "category", "scm_url"}
ALLOWED = REQUIRED | {"scm_revision", "scm_type", "build_dependencies", "dicom_support_rule", "build_subdirectory",
                      "enabled", "tier"}
URL = re.compile(r"https?://[^\s\"')]+")


def urls() -> dict:
    return json.loads((REPO / "extension-urls.json").read_text(encoding="utf-8"))


def cmake_metadata() -> str:
    return (REPO / "CMakeLists.txt").read_text(encoding="utf-8")


def test_index_entry_is_json_in_the_current_schema():
    assert not (REPO / "SegMate.s4ext").exists()
    entry = json.loads((REPO / "SegMate.json").read_text(encoding="utf-8"))
    assert entry["$schema"] == SCHEMA
    assert REQUIRED <= set(entry) <= ALLOWED
    assert entry["category"] == "Segmentation" and entry["build_dependencies"] == ["PyTorch"]
    assert entry["build_subdirectory"] == "." and entry["scm_type"] == "git" and entry["scm_revision"]
    assert isinstance(entry["tier"], int) and 1 <= entry["tier"] <= 5


def test_every_url_of_the_index_entry_and_the_metadata_comes_from_the_one_place():
    known = urls()
    values = {key: value for key, value in known.items() if key not in ("about", "marker", "unknown")}
    entry = json.loads((REPO / "SegMate.json").read_text(encoding="utf-8"))
    assert entry["scm_url"] == values["repository"]
    cmake = cmake_metadata()
    assert not URL.findall(cmake), "CMakeLists.txt must take its URLs from extension-urls.json"
    for key, field in (("homepage", "HOMEPAGE"), ("icon", "ICONURL"), ("screenshot", "SCREENSHOTURLS")):
        variable = re.search(rf'string\(JSON (\w+) GET "\$\{{SEGMATE_URLS\}}" {key}\)', cmake).group(1)
        assert re.search(rf'set\(EXTENSION_{field} "\$\{{{variable}\}}"\)', cmake), field
    for name in ("EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION", "EXTENSION_DEPENDS"):
        assert re.search(rf'set\({name} "[^"]+"\)', cmake), name


def test_a_placeholder_url_cannot_reach_the_index_entry_unmarked():
    known = urls()
    marker = known["marker"]
    assert marker and set(known["unknown"]) <= set(known) - {"about", "marker", "unknown"}
    for key in known["unknown"]:
        assert marker in known[key], f"{key} is listed as not known yet but {known[key]!r} does not say so"
    for key, value in known.items():
        if key not in ("about", "marker", "unknown") and key not in known["unknown"]:
            assert marker not in value, f"{key} is marked as a placeholder but not listed as unknown"
    # whatever the index entry and the metadata carry is one of these values, so a placeholder arrives marked
    entry = json.loads((REPO / "SegMate.json").read_text(encoding="utf-8"))
    placeholders = [known[key] for key in known["unknown"]]
    assert entry["scm_url"] not in placeholders or marker in entry["scm_url"]
    guide = (REPO / "docs" / "developer.md").read_text(encoding="utf-8")  # where maintainers learn it
    assert "extension-urls.json" in guide and "placeholder" in guide.lower()


def test_the_slicer_floor_is_the_same_in_the_build_the_start_up_check_and_the_docs():
    floor = ".".join(str(v) for v in MINIMUM_SLICER_VERSION)
    assert floor == "5.10"
    cmake = cmake_metadata()
    assert f'set(SEGMATE_MINIMUM_SLICER_VERSION "{floor}")' in cmake
    assert "find_package(Slicer ${SEGMATE_MINIMUM_SLICER_VERSION} REQUIRED)" in cmake
    assert f"Slicer {floor}" in (REPO / "docs" / "slicer.md").read_text(encoding="utf-8")
    assert unsupportedSlicerMessage(5, 10, (3, 12)) is None
    assert unsupportedSlicerMessage(5, 11, (3, 12)) is None  # the preview
    assert unsupportedSlicerMessage(6, 0, (3, 13)) is None
    message = unsupportedSlicerMessage(5, 8, (3, 12))
    assert "needs 3D Slicer 5.10 or newer" in message and "this is Slicer 5.8" in message
    assert "download.slicer.org" in message
    assert "its Python is 3.9" in unsupportedSlicerMessage(5, 10, (3, 9))
