"""A set of 64-bit hashes without numpy: a sorted `array('Q')` (8 bytes an entry) and a Python set of the
hashes added since the last merge, at most an eighth as many (8.5 bytes an entry after a merge, about 15
between merges, 30 at a merge's peak; `python bench/data.py --entry-sizes` measures it). A Python set of ints takes
about 70 bytes an entry, 70 MB at a million URLs in the crawler; Scrapy's process never imports numpy
(17 MB), and neither does this."""
from __future__ import annotations

import heapq
from array import array
from bisect import bisect_left
from collections.abc import Iterable

MERGE_AT_LEAST = 4096
MERGE_SHARE = 8  # merge when the recent hashes reach an eighth of the sorted ones: O(1) amortized per add


class HashSet:
    def __init__(self, values: Iterable[int] = ()):
        self.sorted = array("Q")
        self.recent: set[int] = set()
        for value in values:
            self.add(value)

    def __contains__(self, value: int) -> bool:
        if value in self.recent:
            return True
        i = bisect_left(self.sorted, value)
        return i < len(self.sorted) and self.sorted[i] == value

    def add(self, value: int) -> None:
        if value in self:
            return
        self.recent.add(value)
        if len(self.recent) >= max(MERGE_AT_LEAST, len(self.sorted) // MERGE_SHARE):
            self.merge()

    def merge(self) -> None:
        self.sorted = array("Q", heapq.merge(self.sorted, sorted(self.recent)))
        self.recent = set()

    def __len__(self) -> int:
        return len(self.sorted) + len(self.recent)
