"""PII benchmark: precision and recall per kind of memlm's PII step on the labelled set in
`tests/pii_cases/cases.jsonl` (true PII strings in context, and hard negatives from documentation:
decimals, versions, timestamps, hashes, UUIDs, benchmark output, table rows, section numbers, ports).

A found string counts as right only when its kind and its exact extent match a labelled one; anything
else it finds is a false positive of its kind, and a labelled string not found exactly is a miss.

    python bench/pii.py                                   # table on stdout
    python bench/pii.py --json bench/results/pii.json
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from corpus.config import PIIConfig  # noqa: E402
from corpus.pii import PLACEHOLDERS, find  # noqa: E402

CASES_FILE = ROOT / "tests" / "pii_cases" / "cases.jsonl"
# Written after the detector was settled on cases.jsonl and scored once, without changes after: a
# check of how far its rules carry beyond the cases they were made on.
HELDOUT_FILE = ROOT / "tests" / "pii_cases" / "heldout.jsonl"


def load_cases(path: Path = CASES_FILE) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def score(cases: list[dict], cfg: PIIConfig | None = None) -> dict:
    """Per kind: labelled, found, right, precision, recall; and the misses and false positives."""
    cfg = cfg or PIIConfig()
    labelled: Counter[str] = Counter()
    found: Counter[str] = Counter()
    right: Counter[str] = Counter()
    misses, false_positives = [], []
    negatives_hit: Counter[str] = Counter()
    for case in cases:
        text = case["text"]
        gold = set()
        for kind, value in case["pii"]:
            start = text.index(value)
            gold.add((kind, start, start + len(value)))
        hits = {(f.kind, f.start, f.end) for f in find(text, cfg)}
        for kind, _, _ in gold:
            labelled[kind] += 1
        for kind, start, end in hits:
            found[kind] += 1
            if (kind, start, end) in gold:
                right[kind] += 1
            else:
                false_positives.append({"kind": kind, "found": text[start:end], "text": text})
                for family, _ in case.get("hard", []):
                    negatives_hit[family] += 1
        misses += [{"kind": kind, "value": text[s:e], "text": text} for kind, s, e in gold - hits]
    kinds = {}
    for kind in PLACEHOLDERS:
        kinds[kind] = {"labelled": labelled[kind], "found": found[kind], "right": right[kind],
                       "precision": round(right[kind] / found[kind], 4) if found[kind] else 1.0,
                       "recall": round(right[kind] / labelled[kind], 4) if labelled[kind] else 1.0}
    hard = Counter(family for case in cases for family, _ in case.get("hard", []))
    return {"kinds": kinds, "true_pii": sum(labelled.values()), "hard_negatives": sum(hard.values()),
            "hard_negative_families": dict(hard), "hard_negatives_with_a_false_positive": dict(negatives_hit),
            "misses": misses, "false_positives": false_positives}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    result = {"command": "python bench/pii.py --json " + str(args.json),
              "sets": {path.name: score(load_cases(path)) for path in (CASES_FILE, HELDOUT_FILE)}}
    for name, scored in result["sets"].items():
        print(f"{name}: {scored['true_pii']} true PII strings, {scored['hard_negatives']} hard negatives")
        print(f"{'kind':<8} {'labelled':>8} {'found':>6} {'right':>6} {'precision':>9} {'recall':>7}")
        for kind, row in scored["kinds"].items():
            print(f"{kind:<8} {row['labelled']:>8} {row['found']:>6} {row['right']:>6} {row['precision']:>9.3f} "
                  f"{row['recall']:>7.3f}")
        for miss in scored["misses"]:
            print(f"missed {miss['kind']}: {miss['value']!r} in {miss['text'][:80]!r}")
        for fp in scored["false_positives"]:
            print(f"false {fp['kind']}: {fp['found']!r} in {fp['text'][:80]!r}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
