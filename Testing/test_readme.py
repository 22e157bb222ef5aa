"""The README's table of what the default model can do is the catalogue's own measurement.

The README shows each organ's held-out Dice and HD95 for the default model; the catalogue
(Resources/models.json, the default entry's ``metrics``) records what ``segmate evaluate`` measured.
When a retrained model replaces the default, the catalogue changes with it, and these tests fail
until the README says the same, so users never read figures of a model they are not running.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
KEY = re.compile(r"^`([a-z0-9_]+)`$")


def default_model_entry() -> dict:
    catalogue = json.loads((REPO / "Resources" / "models.json").read_text(encoding="utf-8"))
    return next(m for m in catalogue["models"] if m["id"] == catalogue["default_model"])


def markdown_tables(text: str) -> list[list[list[str]]]:
    """Every pipe table of ``text``: rows of stripped cells, the header first, the separator dropped."""
    tables, current = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            if not all(re.fullmatch(r":?-{3,}:?", cell) for cell in cells):
                current.append(cells)
        elif current:
            tables.append(current)
            current = []
    return tables


def readme_accuracy_rows() -> dict[str, dict[str, str]]:
    """The README's per-organ accuracy table, as {organ key: {column header: printed value}}."""
    tables = [t for t in markdown_tables(README.read_text(encoding="utf-8")) if "Dice (mean)" in t[0]]
    assert len(tables) == 1, "the README must have exactly one table with a 'Dice (mean)' column"
    header, *rows = tables[0]
    assert "key" in header, "the README's Dice table must name each organ's key in a 'key' column"
    parsed = {}
    for row in rows:
        cells = dict(zip(header, row))
        match = KEY.match(cells["key"])
        assert match, f"README Dice table: {cells['key']!r} is not an organ key in backticks"
        parsed[match.group(1)] = cells
    return parsed


def test_the_readme_dice_table_lists_exactly_the_default_models_measured_organs():
    metrics = default_model_entry()["metrics"]["organs"]
    assert set(readme_accuracy_rows()) == set(metrics)


@pytest.mark.parametrize("column, field, decimals", [("Dice (mean)", "dice", 3), ("HD95 (mean, mm)", "hd95_mm", 1),
                                                     ("cases", "cases", 0)])
def test_each_readme_figure_equals_the_catalogue_as_printed(column, field, decimals):
    metrics = default_model_entry()["metrics"]["organs"]
    for key, cells in readme_accuracy_rows().items():
        expected = f"{metrics[key][field]:.{decimals}f}"
        assert cells[column] == expected, (f"README: {key} {column} is {cells[column]}, the catalogue's "
                                           f"default model says {expected}")


def test_the_readme_names_the_number_of_validation_patients_the_catalogue_measured_on():
    cases = default_model_entry()["metrics"]["cases"]
    text = README.read_text(encoding="utf-8")
    assert f"**{cases} OpenKBP validation patients**" in text
