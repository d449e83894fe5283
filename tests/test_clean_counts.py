"""What grows with the corpus while cleaning, kept compact: the boilerplate line counts and the
near-duplicate index answer as plain Python dicts would, across the merges of their sorted arrays."""
from __future__ import annotations

import random
from collections import Counter

import numpy as np

import corpus.boilerplate as boilerplate
import corpus.near_dedup as near_dedup
from corpus.boilerplate import LineCounts, line_key
from corpus.config import NearDedupConfig


def test_line_counts_match_a_counter_across_merges(tmp_path, monkeypatch):
    monkeypatch.setattr(boilerplate, "MERGE_AT_LEAST", 7)  # a merge every few pages
    rng = random.Random(0)
    vocabulary = [f"line {i}" for i in range(300)]
    counts, expected = LineCounts(tmp_path / "spill.sqlite", max_in_memory=10_000), {}
    for page in range(200):
        host = f"site{page % 3}"
        keys = {line_key(host, line) for line in rng.sample(vocabulary, rng.randint(0, 25))}
        counts.add_page(host, keys)
        expected.setdefault(host, Counter()).update(keys)
    for host, counter in expected.items():
        assert dict(counts.repeated(host)) == {k: n for k, n in counter.items() if n >= 2}
    assert counts.sizes()["spills"] == 0 and counts.sizes()["peak_entries_in_memory"] <= 10_000
    assert counts.sizes()["peak_entries_in_memory"] >= len(vocabulary)  # three sites, 300 lines each at most


def test_near_duplicate_index_finds_the_same_pages_across_merges(monkeypatch):
    rng = np.random.default_rng(0)
    originals = rng.integers(0, 2**32, size=(60, 128), dtype=np.uint64).astype(np.uint32)
    pages = []
    for i in range(240):  # every fourth page nearly copies an earlier one (8 of 128 values changed)
        values = originals[i // 4].copy() if i % 4 else rng.integers(0, 2**32, size=128, dtype=np.uint64).astype(np.uint32)
        if i % 4:
            values[rng.choice(128, 8, replace=False)] = rng.integers(0, 2**32, size=8, dtype=np.uint64).astype(np.uint32)
        else:
            originals[i // 4] = values
        pages.append((f"https://h/{i}", values))

    def run() -> list[str | None]:
        index = near_dedup.NearDuplicateIndex(NearDedupConfig())
        return [index.add(url, values) for url, values in pages]

    with_dicts = run()
    monkeypatch.setattr(near_dedup, "MERGE_AT_LEAST", 5)
    with_merges = run()
    assert with_merges == with_dicts
    assert with_dicts.count(None) == 60 and all(kept == f"https://h/{4 * (i // 4)}"
                                                for i, kept in enumerate(with_dicts) if i % 4)
