"""What grows with the corpus while cleaning, kept compact: the boilerplate line counts and the
near-duplicate index answer as plain Python dicts would, and the hash sets as Python sets, across the
merges of their sorted arrays; the Dask runner cuts few shards of bounded size."""
from __future__ import annotations

import math
import random
from collections import Counter

import numpy as np
import pytest

import corpus.boilerplate as boilerplate
import corpus.near_dedup as near_dedup
import crawlers.hashset as hashset
from corpus.boilerplate import LineCounts, line_key
from corpus.config import NearDedupConfig


@pytest.mark.parametrize("max_in_memory, spills", [(100_000, 0), (700, (1, 30))])
def test_line_counts_match_a_counter_across_merges_and_spills(tmp_path, monkeypatch, max_in_memory, spills):
    monkeypatch.setattr(boilerplate, "MERGE_AT_LEAST", 7)  # a merge every few pages
    rng = random.Random(0)
    vocabulary = [f"line {i}" for i in range(300)]
    counts, expected = LineCounts(tmp_path / "spill.sqlite", max_in_memory=max_in_memory), {}
    for page in range(200):
        host = f"site{page % 3}"
        keys = {line_key(host, line) for line in rng.sample(vocabulary, rng.randint(0, 25))}
        counts.add_page(host, keys)
        expected.setdefault(host, Counter()).update(keys)
    for host, counter in expected.items():
        assert dict(counts.repeated(host)) == {k: n for k, n in counter.items() if n >= 2}
    sizes = counts.sizes()
    if spills:  # three sites' 900 distinct lines cannot stay under 700: spilled, but not at every page
        assert spills[0] <= sizes["spills"] <= spills[1] and sizes["peak_entries_in_memory"] <= max_in_memory + 25
    else:  # a site's keys waiting to merge are at most as many as it has merged: twice its distinct lines
        assert sizes["spills"] == 0 and len(vocabulary) <= sizes["peak_entries_in_memory"] <= 6 * len(vocabulary) + 25
    counts.close()


def _signature(rng) -> np.ndarray:
    return rng.integers(0, 2**32, size=128, dtype=np.uint64).astype(np.uint32)


def test_near_duplicate_index_finds_the_same_pages_across_merges(monkeypatch):
    rng = np.random.default_rng(0)
    pages, originals = [], []
    for i in range(400):
        if i % 5 == 0 or not originals:  # a new page
            values = _signature(rng)
            originals.append(values)
        else:  # a near copy (8 of 128 values changed) of any earlier page, often one merged long ago
            values = originals[int(rng.integers(len(originals)))].copy()
            values[rng.choice(128, 8, replace=False)] = _signature(rng)[:8]
        pages.append((f"https://h/{i}", values))
    # Pages that are not near copies but share the first band's values with page 0: a band value that
    # several documents hold.
    for i in range(400, 410):
        values = _signature(rng)
        values[:16] = pages[0][1][:16]
        pages.append((f"https://h/{i}", values))

    def run() -> list[str | None]:
        index = near_dedup.NearDuplicateIndex(NearDedupConfig())
        return [index.add(url, values) for url, values in pages]

    with_dicts = run()
    monkeypatch.setattr(near_dedup, "MERGE_AT_LEAST", 3)
    with_merges = run()
    assert with_merges == with_dicts
    kept = {url for (url, _), found in zip(pages, with_dicts) if found is None}
    assert len(kept) == 80 + 10 and all(found in kept for found in with_dicts if found is not None)
    assert with_dicts.count(None) == 90


def test_hash_index_finds_every_hash_across_merges(monkeypatch):
    monkeypatch.setattr(near_dedup, "MERGE_AT_LEAST", 5)
    rng = random.Random(0)
    hashes = [rng.getrandbits(64) for _ in range(200)]
    index = near_dedup.HashIndex()
    for doc, value in enumerate(hashes):
        index.add(value, doc)
    assert len(index) == 200 and index.recent_entries < 20  # most of it merged into the sorted arrays
    assert all(index.get(value) for value in hashes) and index.get(hashes[7]) == [7]
    assert not any(index.get(rng.getrandbits(64)) for _ in range(200))


def test_hash_set_answers_as_a_python_set_across_merges(monkeypatch):
    monkeypatch.setattr(hashset, "MERGE_AT_LEAST", 5)
    rng = random.Random(1)
    hashes = [rng.getrandbits(64) for _ in range(300)] + [0, 2**64 - 1]
    held = hashset.HashSet()
    for value in hashes + hashes[:50]:  # added twice: still once
        held.add(value)
    assert len(held) == len(set(hashes)) and len(held.recent) < 40  # most of it in the sorted array
    assert list(held.sorted) == sorted(held.sorted)
    assert all(value in held for value in hashes)
    assert not any(rng.getrandbits(64) in held for _ in range(300))


def test_dask_shards_start_small_grow_then_end_small_and_are_bounded_in_size():
    from corpus.config import CleanConfig
    from corpus.runners import chunks, shard_size

    def shards(config: CleanConfig, pages: int, workers: int, items=None, max_chars: float = math.inf) -> list[int]:
        items = [{}] * pages if items is None else items
        return [len(c) for c in chunks(items, shard_size(config, pages, workers), max_chars)]

    # On 2 workers: one smallest shard (256 pages) per worker, then doubling up to a quarter of the pages
    # left, then down to the smallest again.
    assert shards(CleanConfig(), 10_000, 2) == [256, 256, 512, 1024, 1988, 1491, 1119, 839, 629, 472, 354, 265,
                                                256, 256, 256, 27]
    # The smallest is bounded in pages, not a share of the pass: the first and last shards of a pass ten
    # times larger are no larger, and the number of shards grows with the logarithm of the pages.
    on_100k = shards(CleanConfig(), 100_000, 2)
    assert (on_100k[:2], on_100k[-4:-1], max(on_100k), len(on_100k)) == ([256, 256], [256] * 3, 16808, 27)
    on_8 = shards(CleanConfig(), 10_000, 8)  # a 128th of the pass (79) for each worker's first, at most 586
    assert (on_8[:8], on_8[8], min(on_8[:-1]), len(on_8)) == ([79] * 8, 586, 79, 55)
    assert shards(CleanConfig(), 30, 2) == [16, 14]  # never below a batch
    assert shards(CleanConfig(shard_pages=100), 1_000, 2) == [100] * 10
    # Shards cut short by their characters: the next size follows the pages really sent (200 large pages in
    # shards of 10, then a quarter of the 800 left), not the sizes asked for.
    large_then_small = [{"html": "x" * 1000}] * 200 + [{"html": "x"}] * 800
    assert shards(CleanConfig(), 1_000, 2, large_then_small, max_chars=10_000)[19:22] == [10, 200, 150]
    pages = [{"html": "x" * 1000}] * 10 + [{"blocks": [["p", "y" * 3000]]}] * 3
    assert [len(c) for c in chunks(pages, lambda sent: 4)] == [4, 4, 4, 1]
    assert [len(c) for c in chunks(pages, lambda sent: 100, max_chars=2500)] == [3, 3, 3, 2, 1, 1]
