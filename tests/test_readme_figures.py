"""Every README table marked `<!-- figures: FILE -->` shows only numbers that FILE holds (at the precision
shown): a figure that was typed by hand, or left behind when the file was made again, fails."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MARK = re.compile(r"<!-- figures: (\S+) -->")
NUMBER = re.compile(r"(?<![\w.])([+\-−](?=\d))?(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d+))?(%|×)?")


def figure_tables(text: str) -> list[tuple[str, list[list[str]]]]:
    """(file, rows of cells) for each marked table: the table right after its marker."""
    tables = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if match := MARK.search(line):
            rows = []
            for row in lines[i + 1:]:
                if not row.startswith("|"):
                    break
                cells = [c.strip() for c in row.strip().strip("|").split("|")]
                if not all(set(c) <= set("-: ") for c in cells):  # not the header's rule
                    rows.append(cells)
            tables.append((match.group(1), rows[1:]))  # without the header
    return tables


def numbers_in(data) -> list[float]:
    if isinstance(data, bool):
        return []
    if isinstance(data, (int, float)):
        return [float(data)]
    if isinstance(data, dict):
        return [n for value in data.values() for n in numbers_in(value)]
    if isinstance(data, list):
        return [n for value in data for n in numbers_in(value)]
    return []


def objects_named(data, name: str) -> list[dict]:
    """The JSON objects whose "name" is the row's label (a row's figures come from its own object)."""
    found = []
    if isinstance(data, dict):
        if str(data.get("name", "")).lower() == name.lower():
            found.append(data)
        for value in data.values():
            found += objects_named(value, name)
    elif isinstance(data, list):
        for value in data:
            found += objects_named(value, name)
    return found


def held(shown: str, decimals: str | None, unit: str | None, candidates: list[float], sign: str = "") -> bool:
    value = float(shown.replace(",", "") + (f".{decimals}" if decimals else "")) * (-1 if sign in "-−" and sign else 1)
    places = len(decimals or "")
    for x in candidates:
        for scaled in ((x, x * 100) if unit == "%" else (x,)):
            if round(scaled, places) == value or abs(scaled - value) < 0.5 * 10 ** -places + 1e-9:
                return True
    return False


TABLES = figure_tables((ROOT / "README.md").read_text())


def test_the_readme_marks_its_figure_tables():
    assert len(TABLES) >= 5, TABLES


@pytest.mark.parametrize("file, rows", TABLES, ids=[f"{i}-{f}" for i, (f, _) in enumerate(TABLES)])
def test_every_figure_in_a_marked_table_is_in_its_file(file, rows):
    data = json.loads((ROOT / file).read_text())
    everything = numbers_in(data)
    missing = []
    for label, *cells in rows:
        own = [n for obj in objects_named(data, label.strip("`* ")) for n in numbers_in(obj)]
        for cell in cells:
            for sign, whole, decimals, unit in NUMBER.findall(cell.replace("**", "")):
                if not held(whole, decimals, unit, own or everything, sign):
                    missing.append(f"{label}: {sign}{whole}{'.' + decimals if decimals else ''}{unit}")
    assert not missing, f"figures in README.md that {file} does not hold: {missing}"


def test_a_changed_figure_is_caught():
    data = [{"name": "row", "peak_mib": 873.2, "mfu": 0.7563}]
    assert held("873", "2", None, numbers_in(data)) and held("76", None, "%", numbers_in(data))
    assert not held("873", "3", None, numbers_in(data)) and not held("75", None, "%", numbers_in(data))
    assert held("0", "004", "%", [-0.004], "-") and not held("0", "004", "%", [-0.004], "+")  # a sign counts
