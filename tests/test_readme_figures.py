"""Every README table marked `<!-- figures: FILE -->` shows only numbers that FILE holds (at the precision
shown): a figure that was typed by hand, or left behind when the file was made again, fails.

Each row is checked against its own objects in FILE, found by the first of:
- `<!-- at: POINTER ... -->` in its first cell: JSON pointers (`/rows/0`, `/crawl/plain`; a segment
  `name=X` picks the list item named X), relative to the table's scope;
- objects whose "name", or the key they sit under, is the row's label;
- objects whose own string values include every cell of the row that is such a string.
A row with none of these is checked against the table's scope (`<!-- figures: FILE at POINTER -->`), and
fails when the marker names no scope: no row is checked against every number in a file. A header cell
may narrow its column: `<!-- in: POINTER -->` finds the row inside that part of the scope (one tool's
results of two), `<!-- at: POINTER -->` reads the column at that path inside the row's object. Lists of
more than LONG_LIST numbers (loss curves) are not figures. FILE may be a pattern (`memory-cpu-lowbit-*.json`)
for a benchmark run one process, and one file, per row."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MARK = re.compile(r"^<!-- figures: (\S+)(?: at (\S+))? -->")
ROW_AT = re.compile(r"<!-- at: (.+?) -->")
COLUMN = re.compile(r"<!-- (in|at): (\S+) -->")
NUMBER = re.compile(r"(?<![\w.])([+\-−](?=\d))?(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d+))?(%|×)?")
LONG_LIST = 32


def figure_tables(text: str) -> list[tuple[str, str | None, list[str], list[list[str]]]]:
    """(file, scope, header cells, rows of cells) for each marked table: the table right after its marker."""
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
            tables.append((match.group(1), match.group(2), rows[0] if rows else [], rows[1:]))
    return tables


def numbers_in(data) -> list[float]:
    if isinstance(data, bool):
        return []
    if isinstance(data, (int, float)):
        return [float(data)]
    if isinstance(data, dict):
        return [n for value in data.values() for n in numbers_in(value)]
    if isinstance(data, list):
        if len(data) > LONG_LIST and all(isinstance(v, (int, float)) for v in data):
            return []  # a curve
        return [n for value in data for n in numbers_in(value)]
    return []


def at(data, pointer: str):
    """The value at a JSON pointer; a segment `name=X` picks the list item whose "name" is X."""
    for segment in pointer.strip("/").split("/") if pointer.strip("/") else []:
        if segment.startswith("name=") and isinstance(data, list):
            data = next(item for item in data if isinstance(item, dict) and item.get("name") == segment[5:])
        else:
            data = data[int(segment)] if isinstance(data, list) else data[segment]
    return data


def _has(data, pointer: str) -> bool:
    try:
        at(data, pointer)
    except (KeyError, IndexError, StopIteration, TypeError):
        return False
    return True


def _walk(data, key: str = ""):
    """(key it sits under, object) for every object in data."""
    if isinstance(data, dict):
        yield key, data
        for k, value in data.items():
            yield from _walk(value, k)
    elif isinstance(data, list):
        for value in data:
            yield from _walk(value, key)


def plain_text(cell: str) -> str:
    return re.sub(r"[`*]", "", COLUMN.sub("", ROW_AT.sub("", cell))).strip().lower()


def _strings(obj: dict) -> set[str]:
    return {v.lower() for v in obj.values() if isinstance(v, str)}


def row_objects(data, cells: list[str]) -> list:
    """The row's own objects in data (see the module's docstring); empty when it has none."""
    if pointers := ROW_AT.search(cells[0]):
        return [at(data, pointer) for pointer in pointers.group(1).split()]
    label = plain_text(cells[0])
    named = [obj for key, obj in _walk(data) if str(obj.get("name", "")).lower() == label or key.lower() == label]
    if named:
        return named
    strings = set().union(*(_strings(obj) for _, obj in _walk(data)))
    texts = {c for c in map(plain_text, cells) if c in strings}
    return [obj for _, obj in _walk(data) if texts and texts <= _strings(obj)]


def row_texts(own: list, cells: list[str]) -> set[str]:
    """The row's cells that are strings of its own objects (a configuration's name), not figures."""
    strings = set().union(set(), *(_strings(obj) for obj in own if isinstance(obj, dict)))
    return {c for c in map(plain_text, cells) if c in strings}


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
    assert len(TABLES) >= 5 and all(rows for _, _, _, rows in TABLES), TABLES


def check_table(whole, scope: str | None, header: list[str], rows: list[list[str]]) -> tuple[list[str], list[str]]:
    """(figures the file does not hold, rows with no object of their own) of one table."""
    data = at(whole, scope or "")
    columns = [COLUMN.search(cell) for cell in header[1:]]
    missing, homeless = [], []
    for cells in rows:
        label, own = ROW_AT.sub("", cells[0]).strip(), row_objects(data, cells)
        if not own and scope is None:
            homeless.append(label)
        texts = row_texts(own, cells)
        for column, cell in zip(columns, cells[1:]):
            if plain_text(cell) in texts:
                continue
            if column and column.group(1) == "in":
                inside = column.group(2)
                pointers = ROW_AT.search(cells[0])
                candidates = numbers_in([at(data, p) for p in pointers.group(1).split() if p.startswith(inside)]
                                        if pointers else row_objects(at(data, inside), cells))
            elif column:  # a row without that part has no figure there
                candidates = numbers_in([at(obj, column.group(2)) for obj in own if _has(obj, column.group(2))])
            else:
                candidates = numbers_in(own or data)
            for sign, number, decimals, unit in NUMBER.findall(cell.replace("**", "")):
                if not held(number, decimals, unit, candidates, sign):
                    missing.append(f"{label}: {sign}{number}{'.' + decimals if decimals else ''}{unit}")
    return missing, homeless


@pytest.mark.parametrize("file, scope, header, rows", TABLES, ids=[f"{i}-{t[0]}" for i, t in enumerate(TABLES)])
def test_every_figure_in_a_marked_table_is_in_its_file(file, scope, header, rows):
    paths = sorted(ROOT.glob(file))  # a pattern names one benchmark's files, one per row
    assert paths, f"{file} matches no file"
    whole = [json.loads(p.read_text()) for p in paths] if "*" in file else json.loads(paths[0].read_text())
    missing, homeless = check_table(whole, scope, header, rows)
    assert not homeless, f"rows with no object of their own in {file} (and no scope in the marker): {homeless}"
    assert not missing, f"figures in README.md that {file} does not hold: {missing}"


def test_a_changed_figure_is_caught():
    data = [{"name": "row", "peak_mib": 873.2, "mfu": 0.7563}]
    assert held("873", "2", None, numbers_in(data)) and held("76", None, "%", numbers_in(data))
    assert not held("873", "3", None, numbers_in(data)) and not held("75", None, "%", numbers_in(data))
    assert held("0", "004", "%", [-0.004], "-") and not held("0", "004", "%", [-0.004], "+")  # a sign counts


def test_a_row_finds_its_own_object():
    data = {"rows": [{"name": "a", "model": "ref", "config": "plain", "mib": 1.5},
                     {"name": "b", "model": "ref", "config": "chunked", "mib": 2.5}],
            "kinds": {"email": {"recall": 0.9}}}
    assert row_objects(data, ["ref", "chunked", "2.5"]) == [data["rows"][1]]
    assert row_objects(data, ["Email", "0.9"]) == [data["kinds"]["email"]]
    assert row_objects(data, ["the first row <!-- at: /rows/name=a -->", "1.5"]) == [data["rows"][0]]
    assert row_objects(data, ["something else", "1.5"]) == []


def test_a_column_reads_its_own_part_of_the_row():
    data = {"tools": {"ours": {"sites": {"a": {"f1": 0.9}}, "total": {"f1": 0.8}},
                      "theirs": {"sites": {"a": {"f1": 0.7}}, "total": {"f1": 0.6}}},
            "rows": [{"name": "x", "peak": 5.0, "predicted": {"2": {"peak": 4.0}, "4": {"peak": 3.0}}}]}
    tools = ["site", "ours <!-- in: /tools/ours -->", "theirs <!-- in: /tools/theirs -->"]
    assert check_table(data, None, tools, [["a", "0.9", "0.7"], ["all <!-- at: /tools/ours/total /tools/theirs/total -->",
                                                                  "0.8", "0.6"]]) == ([], [])
    assert check_table(data, None, tools, [["a", "0.7", "0.9"]])[0] == ["a: 0.7", "a: 0.9"]  # columns swapped
    assert check_table(data, None, tools, [["all <!-- at: /tools/ours/total /tools/theirs/total -->", "0.6", "0.8"]])[0]
    ranks = ["row", "peak", "at 2 <!-- at: /predicted/2 -->", "at 4 <!-- at: /predicted/4 -->"]
    assert check_table(data, None, ranks, [["x", "5.0", "4.0", "3.0"]]) == ([], [])
    assert check_table(data, None, ranks, [["x", "5.0", "3.0", "4.0"]])[0] == ["x: 3.0", "x: 4.0"]
